"""Pieces shared by the objective families: masked reconstruction sums and DReG weights."""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..model.vae import MultimodalVAE


def weighted_reconstruction(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], z: torch.Tensor,
                            recon_mask: torch.Tensor, weighted: bool = True,
                            skip_missing: bool = True,
                            decode: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """sum_m [recon_mask[:, m]] * lambda_m * log p(x_m | z) for z of shape (..., B, D); returns (..., B).

    Only modalities that some row reconstructs are decoded, and (``skip_missing``) only on the rows
    that reconstruct them; the other rows add exactly 0 either way. ``decode(name, z)`` (default
    ``model.decode``) maps z to the likelihood location (the temporal family decodes its state)."""
    decode = model.decode if decode is None else decode
    dtype = torch.promote_types(z.dtype, torch.float32)          # bf16 samples under autocast: sum in fp32
    total = torch.zeros(z.shape[:-1], dtype=dtype, device=z.device)
    for j, name in enumerate(model.names):
        column = recon_mask[:, j]
        if not bool(column.any()):
            continue
        weight = model.specs[name].weight if weighted else 1.0
        if skip_missing and not bool(column.all()):
            rows = column.nonzero(as_tuple=True)[0]
            loc = decode(name, z.index_select(-2, rows))
            loglik = model.log_likelihood(name, feats[name].index_select(0, rows), loc) * weight
            total = total.index_add(-1, rows, loglik.to(dtype))
            continue
        loglik = model.log_likelihood(name, feats[name], decode(name, z)) * weight
        total = total + torch.where(column, loglik, torch.zeros((), dtype=dtype, device=z.device))
    return total


def masked_mean_over_experts(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the present experts: values (M, B), mask (B, M) -> (B,)."""
    present = mask.t()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(present, values, zero).sum(0) / present.sum(0).clamp_min(1).to(values.dtype)


NEGLIGIBLE_WEIGHT = 1e-12


def dreg_weights(log_weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The normalised importance weights over the K samples (dim 1) that DReG scales gradients by,
    without graph; weights below 1e-12 are set to 0: they change no gradient in fp32, but scaling by
    them filled the decoders' backward with subnormal floats, which CPUs compute up to ~10x slower."""
    with torch.no_grad():
        weights = torch.softmax(log_weights, dim=1) * present
        return torch.where(weights < NEGLIGIBLE_WEIGHT, torch.zeros_like(weights), weights)


def dreg_surrogate(log_weights: torch.Tensor, weights: torch.Tensor, expert: torch.Tensor, row: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """DReG's surrogate from the kept samples (N,) of experts ``expert`` on rows ``row``: per (expert, row)
    the weighted sum of their log weights, then the mean over the present experts: (B,)."""
    n_rows, n_mod = mask.shape
    per_expert = torch.zeros(n_mod * n_rows, dtype=log_weights.dtype, device=log_weights.device)
    per_expert = per_expert.index_add(0, expert * n_rows + row, weights.to(log_weights.dtype) * log_weights)
    return masked_mean_over_experts(per_expert.reshape(n_mod, n_rows), mask)
