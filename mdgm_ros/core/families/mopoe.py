"""MoPoE-VAE (Sutter et al., 2021): a mixture over subsets of products of experts.

.. math::
    q(z|X_O) = \\sum_{S\\subseteq O, S\\neq\\emptyset} w_S\\, \\tilde q(z|X_S),\\quad
    w_S = \\frac{1}{2^{|O|}-1},\\quad \\tilde q(z|X_S) = \\mathrm{PoE}(\\{q(z|x_m)\\}_{m\\in S})

    \\mathcal{L}(X_O) = \\sum_S w_S\\,\\mathbb{E}_{\\tilde q(z|X_S)}\\Big[\\sum_{m\\in O}\\lambda_m\\log p(x_m|z)\\Big]
                     - \\beta \\sum_S w_S\\, \\mathrm{KL}(\\tilde q(z|X_S)\\,\\|\\,p(z))

The KL term is the convexity upper bound of KL(q || p), computed exactly over all subsets (closed
form, no decoder). The reconstruction expectation is estimated without bias with one subset sampled
per row among that row's *observed* modalities (never the reference's deterministic batch split,
which trains only the last subset when B < 2^M - 1). Proper subsets include the prior expert only if
``proper_subsets_include_prior`` (default False, as the reference and MultiVae).
"""
from __future__ import annotations

from typing import Mapping

import torch

from .. import posterior as post
from ..model import MultimodalVAE
from .base import Family, Properties
from .common import ObjectiveOutput, weighted_reconstruction


def kl_upper_bound(model: MultimodalVAE, mu: torch.Tensor, logvar: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """sum_S w_S KL(q_S || p) over the non-empty subsets of each row's observed set: (B,)."""
    subsets = post.enumerate_subsets(len(model.names), mask.device)       # (S, M)
    total = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    count = torch.zeros_like(total)
    for subset in subsets:
        valid = (mask | ~subset).all(1)                                   # subset within observed set
        if not bool(valid.any()):
            continue
        rows_subset = subset.expand_as(mask) & mask
        q_mu, q_lv = model.subset_posterior(mu, logvar, rows_subset, mask)
        kl = post.kl_to_standard_normal(q_mu, q_lv)
        total = total + torch.where(valid, kl, torch.zeros_like(kl))
        count = count + valid.to(total.dtype)
    return total / count.clamp_min(1)


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    subset = post.sample_present_subsets(mask, generator)
    q_mu, q_lv = model.subset_posterior(mu, logvar, subset, mask)
    z = post.reparameterize(q_mu, q_lv, generator=generator)
    recon = weighted_reconstruction(model, feats, z, mask)
    kl = kl_upper_bound(model, mu, logvar, mask)
    elbo = recon - beta * kl
    return ObjectiveOutput(-elbo, {"elbo": elbo.detach(), "recon": recon.detach(), "kl_bound": kl.detach()})


FAMILY = Family(
    name="mopoe", objective_fn=objective, fusions=("mopoe",), default_fusion="mopoe",
    properties=Properties(
        aggregated_inference="mixture of the subsets' PoEs (generation: the observed set's PoE)",
        missing_modalities=True, modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Sutter et al. 2021, MoPoE-VAE",
        notes="parameters linear in M; the KL bound visits 2^M - 1 subsets per step (closed form)"))
