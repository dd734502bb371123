r"""mmJSD (Sutter et al., 2020): multimodal Jensen-Shannon divergence with a dynamic prior.

.. math::
    \\mathcal{L}(X_O) = \\frac{1}{|O|}\\sum_{m\\in O}\\mathbb{E}_{q(z|x_m)}
        \\Big[\\sum_{n\\in O}\\lambda_n\\log p(x_n|z)\\Big]
        - \\beta \\sum_{j\\in O\\cup\\{0\\}} \\pi_j\\, \\mathrm{KL}\\big(q_j \\,\\|\\, f\\big)

    q_0 = p(z),\\quad \\pi_j = \\frac{1}{|O|+1},\\quad
    f(z) \\propto \\prod_{j\\in O\\cup\\{0\\}} q_j(z)^{\\pi_j}\\ \\text{(the dynamic prior, a weighted PoE)}

Reconstruction goes through the unimodal mixture (every modality decoded from each unimodal sample).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model import posterior as post
from ..model.family import Family, ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .common import masked_mean_over_experts, weighted_reconstruction


def dynamic_prior(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f = PoE of the observed unimodal posteriors and the prior, each weighted pi = 1/(|O|+1).
    Returns (f_mu, f_logvar, pi) with pi of shape (B,)."""
    pi = 1.0 / (mask.sum(1).to(mu.dtype) + 1.0)
    weights = pi[None, :].expand(mask.shape[1], -1)
    f_mu, f_lv = post.product_of_experts(mu, logvar, mask, include_prior=True, weights=weights,
                                         prior_weight=pi[:, None])
    return f_mu, f_lv, pi


def jensen_shannon(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_j pi_j KL(q_j || f) over observed experts and the prior: (B,)."""
    f_mu, f_lv, pi = dynamic_prior(mu, logvar, mask)
    kl_experts = post.kl_gaussians(mu, logvar, f_mu.unsqueeze(0), f_lv.unsqueeze(0))      # (M, B)
    kl_experts = torch.where(mask.t(), kl_experts, torch.zeros_like(kl_experts)).sum(0)
    kl_prior = post.kl_gaussians(torch.zeros_like(f_mu), torch.zeros_like(f_lv), f_mu, f_lv)
    return pi * (kl_experts + kl_prior)


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    z = post.reparameterize(mu, logvar, generator=generator)                                 # (M, B, D)
    recon_each = weighted_reconstruction(model, feats, z, mask)                               # (M, B)
    recon = masked_mean_over_experts(recon_each, mask)
    jsd = jensen_shannon(mu, logvar, mask)
    elbo = recon - beta * jsd
    return ObjectiveOutput(-elbo, {"elbo": elbo.detach(), "recon": recon.detach(), "jsd": jsd.detach()})


FAMILY = Family(
    name="mmjsd", objective_fn=objective, fusions=("moe",), default_fusion="moe",
    properties=Properties(
        aggregated_inference="MoE of the unimodal experts (dynamic PoE prior in training)",
        missing_modalities=True, modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Sutter et al. 2020, mmJSD"))
