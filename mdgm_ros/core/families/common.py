"""Pieces shared by the objective families: the result type and masked reconstruction sums."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..model import MultimodalVAE


@dataclass
class ObjectiveOutput:
    """``loss`` is per sample (B,) and is minimised; ``terms`` holds per-sample diagnostics (B,).

    Reduction is explicit and the same everywhere: per-sample values, then the caller takes the mean.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def weighted_reconstruction(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], z: torch.Tensor,
                            recon_mask: torch.Tensor, weighted: bool = True) -> torch.Tensor:
    """sum_m [recon_mask[:, m]] * lambda_m * log p(x_m | z) for z of shape (..., B, D); returns (..., B).

    Only modalities that some row reconstructs are decoded."""
    total = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for j, name in enumerate(model.names):
        column = recon_mask[:, j]
        if not bool(column.any()):
            continue
        loglik = model.log_likelihood(name, feats[name], model.decode(name, z))
        if weighted:
            loglik = loglik * model.specs[name].weight
        total = total + torch.where(column, loglik, torch.zeros((), dtype=z.dtype, device=z.device))
    return total


def masked_mean_over_experts(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the present experts: values (M, B), mask (B, M) -> (B,)."""
    present = mask.t()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(present, values, zero).sum(0) / present.sum(0).clamp_min(1).to(values.dtype)
