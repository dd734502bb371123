r"""MVAE (Wu & Goodman, 2018) with sub-sampled training: a PoE posterior that always includes the prior.

.. math::
    \\mathcal{L} = \\mathrm{ELBO}(X_O) + \\sum_{m\\in O}\\mathrm{ELBO}(x_m)
                 + \\sum_{j=1}^{k}\\mathrm{ELBO}(X_{S_j}),
                 \\qquad S_j \\sim \\mathcal{U}\\{S\\subseteq O, S\\neq\\emptyset\\}

    \\mathrm{ELBO}(X_S) = \\mathbb{E}_{q(z|X_S)}\\Big[\\sum_{m\\in S}\\lambda_m\\log p(x_m|z)\\Big]
                        - \\beta\\,\\mathrm{KL}(q(z|X_S)\\,\\|\\,p(z)),\\quad q(z|X_S)=p(z)\\prod_{m\\in S}q(z|x_m)

Each term reconstructs only its own modalities. With missing data only the computable terms are used:
the unimodal term of a missing modality is skipped for that row, and subsets are drawn among the
observed modalities. The joint ELBO alone would leave the unimodal encoders untrained (pixyz#80).
Options: ``k`` (number of random subset terms, default 1).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model import posterior as post
from ..model.family import Family, ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .common import weighted_reconstruction


def subset_elbo(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
                logvar: torch.Tensor, subset: torch.Tensor, beta: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """ELBO(X_S) per row for a per-row subset (B, M); rows with an empty subset give 0."""
    q_mu, q_lv = post.product_of_experts(mu, logvar, subset, include_prior=True)
    z = post.reparameterize(q_mu, q_lv, generator=generator)
    value = weighted_reconstruction(model, feats, z, subset) - beta * post.kl_to_standard_normal(q_mu, q_lv)
    return torch.where(subset.any(1), value, torch.zeros_like(value))


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, k: int = 1) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    joint = subset_elbo(model, feats, mu, logvar, mask, beta, generator)
    total, terms = joint, {"elbo_joint": joint.detach()}
    eye = torch.eye(len(model.names), dtype=torch.bool, device=mask.device)
    for j, name in enumerate(model.names):
        unimodal = subset_elbo(model, feats, mu, logvar, mask & eye[j], beta, generator)
        terms[f"elbo_{name}"] = unimodal.detach()
        total = total + unimodal
    for i in range(k):
        subset = post.sample_present_subsets(mask, generator)
        sampled = subset_elbo(model, feats, mu, logvar, subset, beta, generator)
        terms[f"elbo_subset{i}"] = sampled.detach()
        total = total + sampled
    return ObjectiveOutput(-total, terms)


FAMILY = Family(
    name="mvae", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    # MultiVae's MVAE: no clip, its 10-epoch KL annealing
    reference_training={"grad_clip": 0.0, "warmup_epochs": 10},
    properties=Properties(
        aggregated_inference="PoE of the unimodal experts and the prior", missing_modalities=True,
        modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Wu & Goodman 2018, MVAE (sub-sampled training)"))
