"""The bundle under evaluation: its model, the training means its baselines use, and feature batches
of an aligned dataset. Shared by ``mdgm-ros evaluate`` (:mod:`.evaluate`) and the temporal model's
comparison (:mod:`.temporal_vs_frame`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import Bundle, load_bundle
from ..data.dataset import AlignedDataset


@dataclass
class EvalModel:
    bundle: Bundle
    means: dict[str, torch.Tensor]          # per-element training mean of the un-normalised features

    @property
    def model(self):
        return self.bundle.model

    def features(self, name: str, raw: np.ndarray) -> torch.Tensor:
        """Raw arrays (B, *shape) -> standardised features."""
        x = torch.as_tensor(np.asarray(raw, np.float32), device=self.model.device)
        with torch.no_grad():
            return self.model.features({name: x})[name]

    def standardize(self, name: str, feats: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Un-normalised features (e.g. the node's imputed log-mel) -> standardised features."""
        x = torch.as_tensor(np.asarray(feats, np.float32), device=self.model.device)
        with torch.no_grad():
            return self.model.normalize(name, x)

    def mean_prediction(self, name: str) -> torch.Tensor:
        return self.standardize(name, self.means[name].numpy())


def load_eval_model(path: str | Path, device: str = "cpu") -> EvalModel:
    bundle = load_bundle(path, device=device)
    return EvalModel(bundle, bundle.training_means())   # older bundles: the normalisation mean stands in


def batched(em: EvalModel, data: AlignedDataset, step, batch: int = 256, with_rows: bool = False) -> list[np.ndarray]:
    """``step(feats, mask)`` over the dataset in batches (standardised features, presence mask);
    ``with_rows``: ``step(feats, mask, rows)`` with the batch's slice of the dataset."""
    model = em.model
    raw = data.float_raw()
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(data), batch):
        sl = slice(start, start + batch)
        mask = torch.from_numpy(data.mask[sl]).to(model.device)
        feats = model.complete({n: em.features(n, raw[n][sl]) for n in model.names}, mask)
        with torch.no_grad():
            out = step(feats, mask, sl) if with_rows else step(feats, mask)
            parts.append([t.cpu().numpy() for t in out])
    return [np.concatenate(column) for column in zip(*parts)]
