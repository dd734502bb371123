"""Decoder likelihoods: element-wise log-densities, per-sample sums, and output moments.

Every function takes the decoder's location ``loc`` (mean for Gaussian/Laplace, logits for Bernoulli)
and a log-scale that broadcasts against it. Per-sample values sum over the feature dimensions
(the trailing ``n_feature_dims`` dimensions) and keep every leading (sample, batch) dimension.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def elementwise_log_prob(family: str, x: torch.Tensor, loc: torch.Tensor,
                         log_scale: torch.Tensor) -> torch.Tensor:
    if family == "gaussian":
        return -0.5 * ((x - loc) * torch.exp(-log_scale)) ** 2 - log_scale - _HALF_LOG_2PI
    if family == "laplace":
        return -(x - loc).abs() * torch.exp(-log_scale) - log_scale - math.log(2.0)
    if family == "bernoulli":
        return -F.binary_cross_entropy_with_logits(loc, x.expand_as(loc), reduction="none")
    raise ValueError(f"unknown likelihood {family!r}")


def per_sample_log_prob(family: str, x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                        n_feature_dims: int) -> torch.Tensor:
    """log p(x | loc) summed over the trailing feature dimensions."""
    lp = elementwise_log_prob(family, x, loc, log_scale)
    return lp.flatten(start_dim=lp.dim() - n_feature_dims).sum(-1)


def output_mean(family: str, loc: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(loc) if family == "bernoulli" else loc


def output_std(family: str, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    if family == "gaussian":
        return torch.exp(log_scale).expand_as(loc)
    if family == "laplace":
        return (math.sqrt(2.0) * torch.exp(log_scale)).expand_as(loc)
    if family == "bernoulli":
        p = torch.sigmoid(loc)
        return torch.sqrt(p * (1 - p))
    raise ValueError(f"unknown likelihood {family!r}")
