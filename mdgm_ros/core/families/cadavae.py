r"""CADA-VAE, Schönfeld et al. 2019 (the survey's eq. 9): unimodal VAEs aligned by the L1 cross-
reconstruction error and the 2-Wasserstein distance between their Gaussian posteriors.

.. math::
    \\mathcal{L}(x_1, x_2) = \\sum_{m=1}^{2}\\mathrm{ELBO}(x_m)
        - \\gamma\\Big(\\big\\|x_2 - \\bar{x}_2(z_1)\\big\\|_1 + \\big\\|x_1 - \\bar{x}_1(z_2)\\big\\|_1\\Big)
        - \\delta\\, W_2\\big(q(z|x_1), q(z|x_2)\\big)

    W_2 = \\Big(\\|\\mu_1 - \\mu_2\\|_2^2 + \\|\\sigma_1 - \\sigma_2\\|_2^2\\Big)^{1/2},\\qquad
    z_m \\sim q(z|x_m),\\quad \\bar{x}_n(z) = \\text{the mean of } p(x_n|z)

ELBO(x_m) = E_{q(z|x_m)}[λ_m log p(x_m|z)] − β KL(q(z|x_m) ‖ p(z)). The L1 errors are summed over the
(normalised) features. M > 2: the sum over every observed pair (pairwise); a row observing one
modality trains its ELBO alone. Options ``gamma`` (cross-reconstruction, default 1.0) and ``delta``
(distribution alignment, default 1.0). Inference: one modality -> q(z|x_m); several -> the PoE of the
unimodal posteriors (no prior expert).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .coordinated import INFERENCE, CoordinatedFamily, pairwise_sum, unimodal_terms, wasserstein2


def l1_cross_reconstruction(model: MultimodalVAE, name: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """||x_name - mean of p(x_name | z)||_1 per row: (B,)."""
    mean, _ = model.output_moments(name, model.decode(name, z))
    return (x - mean).abs().flatten(1).sum(-1)


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, gamma: float = 1.0,
              delta: float = 1.0) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    uni = unimodal_terms(model, feats, mu, logvar, mask, generator)
    names = model.names
    terms: dict[str, torch.Tensor] = {}

    def pair(i: int, j: int) -> torch.Tensor:
        a, b = uni[names[i]], uni[names[j]]
        cross = (l1_cross_reconstruction(model, names[j], feats[names[j]], a.z)
                 + l1_cross_reconstruction(model, names[i], feats[names[i]], b.z))
        return a.elbo(beta) + b.elbo(beta) - gamma * cross - delta * wasserstein2(a, b)

    value = pairwise_sum(model, mask, pair, lambda m: uni[names[m]].elbo(beta), terms)
    return ObjectiveOutput(-value, terms)


FAMILY = CoordinatedFamily(
    name="cadavae", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference=INFERENCE, missing_modalities=True, modality_specific_latents=False,
        end_to_end=True, scalability="pairwise (parameters linear in M; M(M-1)/2 pair terms)",
        reference="Schönfeld et al. 2019, CADA-VAE", equations="eq. 9",
        notes="M > 2: the two-modality objective summed over every observed pair"))
