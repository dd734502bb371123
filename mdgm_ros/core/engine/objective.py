"""The per-sample objective of a model's family, with the options every family takes (Shi et al.'s
contrastive term) and rows with no observed modality dropped."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..families import contrastive
from ..model.family import LABELS, ObjectiveOutput
from ..model.registry import get_family
from ..model.vae import MultimodalVAE


def compute_objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                      beta: float = 1.0, generator: torch.Generator | None = None,
                      name: str | None = None, stage: str | None = None, **options: Any) -> ObjectiveOutput:
    """Per-sample objective of family ``name`` (default: the model's own, with its configured options);
    ``stage`` selects a training stage's terms (None: the whole objective)."""
    name = name or model.config.family
    opts = {**model.config.family_options, **options} if name == model.config.family else options
    family = get_family(name)
    labels = feats.get(LABELS) if family.uses_labels else None
    feats = model.complete(feats, mask)
    if labels is not None:                          # per-row class labels (-1: none) for label heads
        feats[LABELS] = labels
    rows = mask.any(1)
    extra = opts.pop("contrastive", None)           # Shi et al.'s term over pairs, for any family

    def run(f, m):
        out = family.objective(model, f, m, beta=beta, generator=generator, stage=stage, **opts)
        return contrastive.add_term(model, f, m, out, extra, generator) if extra else out

    if bool(rows.all()):
        return run(feats, mask)
    idx = rows.nonzero(as_tuple=True)[0]
    out = run({k: v.index_select(0, idx) for k, v in feats.items()}, mask.index_select(0, idx))

    def scatter(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mask.shape[0], dtype=values.dtype, device=values.device).index_copy(0, idx, values)

    return ObjectiveOutput(scatter(out.loss), {k: scatter(v) for k, v in out.terms.items()})
