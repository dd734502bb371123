r"""Joint VAE (JVAE) ELBO over the observed modalities O of each sample:

.. math::
    \\mathcal{L}(X_O) = \\mathbb{E}_{q(z|X_O)}\\Big[\\sum_{m\\in O} \\lambda_m \\log p(x_m|z)\\Big]
                     - \\beta\\, \\mathrm{KL}\\big(q(z|X_O) \\,\\|\\, p(z)\\big)

``q(z|X_O)`` is the model's fused posterior: for PoE/MoPoE fusion the Gaussian PoE of the observed
experts (closed-form KL); for MoE fusion the uniform mixture of observed experts (single-sample
Monte-Carlo KL, ``log q(z) - log p(z)``).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model import posterior as post
from ..model.family import Family, ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .common import weighted_reconstruction


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    if model.fusion == "moe":
        experts = post.stratified_mixture_samples(mu, logvar, 1, generator)[:, 0]       # (M, B, D)
        pick = torch.multinomial(mask.float(), 1, generator=generator).squeeze(1)       # one present expert
        z = experts[pick, torch.arange(mask.shape[0], device=mask.device)]
        kl = post.mixture_log_prob(z, mu, logvar, mask) - post.standard_normal_log_prob(z)
    else:
        q_mu, q_lv = model.subset_posterior(mu, logvar, mask)
        z = post.reparameterize(q_mu, q_lv, generator=generator)
        kl = post.kl_to_standard_normal(q_mu, q_lv)
    recon = weighted_reconstruction(model, feats, z, mask)
    elbo = recon - beta * kl
    return ObjectiveOutput(-elbo, {"elbo": elbo.detach(), "recon": recon.detach(), "kl": kl.detach()})


FAMILY = Family(
    name="elbo", objective_fn=objective, fusions=("poe", "moe", "mopoe"), default_fusion="poe",
    properties=Properties(
        aggregated_inference="PoE, MoE or MoPoE of the unimodal experts (by fusion)",
        missing_modalities=True, modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Kingma & Welling 2014 (VAE ELBO) over an aggregated posterior",
        notes="the joint ELBO alone; unimodal encoders learn only through the fused posterior"))
