r"""MoPoE-VAE (Sutter et al., 2021): a mixture over subsets of products of experts.

.. math::
    q(z|X_O) = \\sum_{S\\subseteq O, S\\neq\\emptyset} w_S\\, \\tilde q(z|X_S),\\quad
    w_S = \\frac{1}{2^{|O|}-1},\\quad \\tilde q(z|X_S) = \\mathrm{PoE}(\\{q(z|x_m)\\}_{m\\in S})

    \\mathcal{L}(X_O) = \\sum_S w_S\\,\\mathbb{E}_{\\tilde q(z|X_S)}\\Big[\\sum_{m\\in O}\\lambda_m\\log p(x_m|z)\\Big]
                     - \\beta \\sum_S w_S\\, \\mathrm{KL}(\\tilde q(z|X_S)\\,\\|\\,p(z))

The KL term is the convexity upper bound of KL(q || p). The reconstruction expectation is estimated
without bias with one subset S sampled per row among that row's *observed* modalities (never the
reference's deterministic batch split, which trains only the last subset when B < 2^M - 1); every
observed modality is reconstructed from that one z, as in the reference.

The KL bound (option ``kl_estimator``):

* ``"exact"``: every subset in closed form (one batched matrix product over the precisions);
* ``"sampled"``: KL(q~_S || p) of the row's sampled subset S -- an unbiased estimate of the bound, so
  the step costs O(M) instead of O(2^M);
* ``"auto"`` (default): exact up to :data:`EXACT_KL_MAX_MODALITIES` modalities, sampled above.

Prior expert: only the product of the subset of *all* modalities includes p(z) (the reference code
and MultiVae add it iff the subset holds every modality), so conditional generation from a subset
decodes the same prior-free product the mixture was trained with (``proper_subsets_include_prior``,
default False). Option ``fast`` (default True) decodes only the observed rows; ``fast=False`` runs
the previous code path (a Python loop over the subsets, every row decoded), which ``bench train``
times beside the new one.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model import posterior as post
from ..model.family import Family, ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .common import weighted_reconstruction

EXACT_KL_MAX_MODALITIES = 5        # "auto": 31 subsets enumerated at most; above, one sampled subset
KL_ESTIMATORS = ("auto", "exact", "sampled")


def _subset_weights(model: MultimodalVAE, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All non-empty subsets (S, M) and, per row, which lie inside the observed set: (S, B) bool."""
    subsets = post.enumerate_subsets(len(model.names), mask.device)
    return subsets, ~(subsets[:, None, :] & ~mask[None]).any(-1)


def kl_upper_bound(model: MultimodalVAE, mu: torch.Tensor, logvar: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """sum_S w_S KL(q_S || p) over the non-empty subsets of each row's observed set: (B,)."""
    n = len(model.names)
    subsets, valid = _subset_weights(model, mask)
    include = subsets.all(1) | bool(model.config.proper_subsets_include_prior)
    q_mu, q_lv = post.all_subset_products(mu[:n], logvar[:n], subsets, include)
    kl = post.kl_to_standard_normal(q_mu, q_lv)                                  # (S, B)
    kl = torch.where(valid, kl, torch.zeros_like(kl))
    return kl.sum(0) / valid.sum(0).clamp_min(1).to(kl.dtype)


def kl_upper_bound_loop(model: MultimodalVAE, mu: torch.Tensor, logvar: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """The same bound subset by subset (the previous code path; ``fast=False``)."""
    subsets = post.enumerate_subsets(len(model.names), mask.device)
    total = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    count = torch.zeros_like(total)
    for subset in subsets:
        valid = (mask | ~subset).all(1)
        if not bool(valid.any()):
            continue
        q_mu, q_lv = model.subset_posterior(mu, logvar, subset.expand_as(mask) & mask, mask)
        kl = post.kl_to_standard_normal(q_mu, q_lv)
        total = total + torch.where(valid, kl, torch.zeros_like(kl))
        count = count + valid.to(total.dtype)
    return total / count.clamp_min(1)


def resolve_kl_estimator(name: str, n_modalities: int) -> str:
    if name not in KL_ESTIMATORS:
        raise ValueError(f"MoPoE kl_estimator must be one of {KL_ESTIMATORS}, got {name!r}")
    if name == "auto":
        return "exact" if n_modalities <= EXACT_KL_MAX_MODALITIES else "sampled"
    return name


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, kl_estimator: str = "auto",
              fast: bool = True) -> ObjectiveOutput:
    estimator = resolve_kl_estimator(kl_estimator, len(model.names))
    mu, logvar = model.experts(feats, mask)
    subset = post.sample_present_subsets(mask, generator)
    q_mu, q_lv = model.subset_posterior(mu, logvar, subset, mask)
    z = post.reparameterize(q_mu, q_lv, generator=generator)
    recon = weighted_reconstruction(model, feats, z, mask, skip_missing=fast)
    if estimator == "sampled":
        kl = post.kl_to_standard_normal(q_mu, q_lv)
    elif fast:
        kl = kl_upper_bound(model, mu, logvar, mask)
    else:
        kl = kl_upper_bound_loop(model, mu, logvar, mask)
    elbo = recon - beta * kl
    return ObjectiveOutput(-elbo, {"elbo": elbo.detach(), "recon": recon.detach(), "kl_bound": kl.detach()})


FAMILY = Family(
    name="mopoe", objective_fn=objective, fusions=("mopoe",), default_fusion="mopoe",
    properties=Properties(
        aggregated_inference="mixture of the subsets' PoEs (generation: the observed set's PoE)",
        missing_modalities=True, modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Sutter et al. 2021, MoPoE-VAE",
        notes=f"parameters linear in M; the KL bound is exact (2^M - 1 subsets, closed form) up to "
              f"M = {EXACT_KL_MAX_MODALITIES}, one sampled subset per row above (unbiased, O(M))"))
