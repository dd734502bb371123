r"""JVAE (the survey's eq. 12): one joint encoder over all modalities and one decoder per modality.

.. math::
    \\mathcal{L}_{JVAE}(X) = \\mathbb{E}_{q(z|X)}\\Big[\\sum_{m=1}^{M}\\lambda_m\\log p(x_m|z)\\Big]
                          - \\beta\\,\\mathrm{KL}\\big(q(z|X)\\,\\|\\,p(z)\\big)

q(z|X) is a single network over the concatenated modality features, so the model cannot condition on
a subset: inference with a missing modality raises a :class:`~.base.FamilyError` (Table 1: missing
modalities ×), and training rows with a missing modality carry no loss.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .surrogate import SurrogateFamily, joint_terms


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    _, recon, kl = joint_terms(model, feats, mu, logvar, mask, generator)
    elbo = recon - beta * kl
    return ObjectiveOutput(-elbo, {"elbo_joint": elbo.detach(), "recon": recon.detach(), "kl": kl.detach()})


FAMILY = SurrogateFamily(
    name="jvae", objective_fn=objective, unimodal_encoders=False, surrogates=False,
    properties=Properties(
        aggregated_inference="joint encoder q(z|X) only", missing_modalities=False,
        modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Suzuki et al. 2016 (JVAE, the baseline of JMVAE)", equations="eq. 12",
        notes="refuses inference from any proper subset (FamilyError)"))
