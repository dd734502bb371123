r"""Yin et al. 2017 (the survey's eq. 6): one VAE per modality, their posteriors pulled together by the
KL divergence in both directions.

.. math::
    \\mathcal{L}(x_1, x_2) = \\sum_{m=1}^{2}\\Big(\\mathbb{E}_{q(z|x_m)}[\\lambda_m\\log p(x_m|z)]
        - \\beta\\,\\mathrm{KL}(q(z|x_m)\\,\\|\\,p(z))\\Big)
        - \\alpha\\Big(\\mathrm{KL}(q(z|x_1)\\,\\|\\,q(z|x_2)) + \\mathrm{KL}(q(z|x_2)\\,\\|\\,q(z|x_1))\\Big)

M > 2: the sum of L(x_i, x_j) over every pair of observed modalities (pairwise); a row observing one
modality trains its ELBO alone (:mod:`.coordinated`). ``alpha`` (option, default 1.0) weighs the
symmetric KL and is not scaled by the β warm-up. Inference: one modality -> q(z|x_m); several -> the
PoE of the unimodal posteriors (no prior expert).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .coordinated import INFERENCE, CoordinatedFamily, pairwise_sum, symmetric_kl, unimodal_terms


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, alpha: float = 1.0) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    uni = unimodal_terms(model, feats, mu, logvar, mask, generator)
    names = model.names
    terms: dict[str, torch.Tensor] = {}

    def pair(i: int, j: int) -> torch.Tensor:
        a, b = uni[names[i]], uni[names[j]]
        return a.elbo(beta) + b.elbo(beta) - alpha * symmetric_kl(a, b)

    value = pairwise_sum(model, mask, pair, lambda m: uni[names[m]].elbo(beta), terms)
    return ObjectiveOutput(-value, terms)


FAMILY = CoordinatedFamily(
    name="yin", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference=INFERENCE, missing_modalities=True, modality_specific_latents=False,
        end_to_end=True, scalability="pairwise (parameters linear in M; M(M-1)/2 pair terms)",
        reference="Yin et al. 2017, associate latent encodings", equations="eq. 6",
        notes="M > 2: the two-modality objective summed over every observed pair"))
