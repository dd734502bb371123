"""A PolyDigits model's inputs and latent codes, and the linear probe of the digit on a code: what
``bench zoo`` (:mod:`.zoo`, the shared latent c) and its private-latent checks (:mod:`.zoo_private`,
the s_m) both measure with."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..core import MultimodalVAE
from ..data.polydigits import PolyDigits


def normalized_images(model: MultimodalVAE, data: PolyDigits, rows: slice) -> dict[str, torch.Tensor]:
    """The ``rows`` of every modality, standardised as the model's inputs, on the model's device."""
    return {n: model.normalize(n, torch.from_numpy(data.images[n][rows]).to(model.device)) for n in model.names}


def shared_code(model: MultimodalVAE, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The mean of q(c | all modalities): (B, D)."""
    return model.posterior_summary(*model.experts(feats, mask), mask)[0]


@torch.no_grad()
def latent_means(model: MultimodalVAE, data: PolyDigits, n: int, chunk: int = 500,
                 code: Callable[..., torch.Tensor] = shared_code) -> np.ndarray:
    """``code(model, feats, mask)`` of the first n tuples, every modality observed: (min(n, N), ...)."""
    out = []
    for start in range(0, min(n, len(data)), chunk):
        rows = slice(start, min(start + chunk, n))
        feats = normalized_images(model, data, rows)
        mask = torch.ones((len(data.labels[rows]), len(model.names)), dtype=torch.bool, device=model.device)
        out.append(code(model, feats, mask).cpu().numpy())
    return np.concatenate(out)


def latent_probe(model: MultimodalVAE, train: PolyDigits, test: PolyDigits, n_probe: int,
                 code: Callable[..., torch.Tensor] = shared_code) -> float:
    """Test accuracy of a logistic regression of the label on ``code`` (default: the shared latent)."""
    from sklearn.linear_model import LogisticRegression
    z_train, z_test = latent_means(model, train, n_probe, code=code), latent_means(model, test, len(test), code=code)
    probe = LogisticRegression(max_iter=2000).fit(z_train, train.labels[:len(z_train)])
    return float(probe.score(z_test, test.labels))
