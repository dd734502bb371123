"""Estimators as small pure functions of (model, features, mask): posterior samples and densities by
the family's inference rule, and the importance-weighted log-likelihood. The engine's inference and the
families' own terms (e.g. the contrastive term) both use them.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from . import posterior as post
from .vae import MultimodalVAE


# --------------------------------------------------------------------------- posterior
def posterior_samples(model: MultimodalVAE, mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor,
                      n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ q(z | X_mask): (K, B, D), by the family's inference rule."""
    return model.family.posterior_samples(model, mu, logvar, mask, n_samples, generator)


def posterior_log_prob(model: MultimodalVAE, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """log q(z | X_mask) for z (K, B, D), matching :func:`posterior_samples`: (K, B)."""
    return model.family.posterior_log_prob(model, z, mu, logvar, mask)


def targets_mask(model: MultimodalVAE, targets: Sequence[str], batch: int, device) -> torch.Tensor:
    out = torch.zeros((batch, len(model.names)), dtype=torch.bool, device=device)
    for name in targets:
        out[:, model.names.index(name)] = True
    return out


def log_likelihood_sum(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], z: torch.Tensor,
                        target_mask: torch.Tensor, private: torch.Tensor | None = None) -> torch.Tensor:
    """sum over targets of log p(x_m | z [, s_m = private[m]]), unweighted, for z (..., B, D): (..., B)."""
    total = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for j, name in enumerate(model.names):
        if bool(target_mask[:, j].any()):
            s = None if private is None else private[j]
            ll = model.log_likelihood(name, feats[name], model.decode(name, z, s))
            total = total + torch.where(target_mask[:, j], ll, torch.zeros((), dtype=z.dtype, device=z.device))
    return total


# --------------------------------------------------------------------------- likelihoods
def iwae_log_likelihood(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                        n_samples: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(X_O) per sample (B,), proposal q(z | X_O):

    log (1/K) sum_k p(X_O | z_k) p(z_k) / q(z_k | X_O)."""
    feats = model.complete(feats, mask)
    mu, logvar = model.experts(feats, mask)
    z = posterior_samples(model, mu, logvar, mask, n_samples, generator)
    log_w = model.family.prior_log_prob(model, z) - posterior_log_prob(model, z, mu, logvar, mask)
    if model.private_dim:
        log_w = log_w + private_log_weights(model, feats, mask, z, generator)
    else:
        log_w = log_w + log_likelihood_sum(model, feats, z, mask)
    return torch.logsumexp(log_w, 0) - math.log(n_samples)


def private_log_weights(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                         z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The private part of log w with the proposal q(s_m | x_m) for the observed m: sum over m in O of
    log p(x_m | z, s_m) + log p(s_m) - log q(s_m | x_m), s_m ~ q(s_m | x_m): (K, B)."""
    s_mu, s_lv = model.private_experts(feats, mask)
    s = post.reparameterize(s_mu, s_lv, z.shape[0], generator).transpose(0, 1)        # (M, K, B, P)
    log_ratio = post.standard_normal_log_prob(s) - post.gaussian_log_prob(s, s_mu[:, None], s_lv[:, None])
    log_ratio = torch.where(mask.t()[:, None, :], log_ratio, torch.zeros_like(log_ratio)).sum(0)
    return log_likelihood_sum(model, feats, z, mask, s) + log_ratio
