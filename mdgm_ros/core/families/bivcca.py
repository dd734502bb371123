r"""bi-VCCA, Wang et al. 2016 (the survey's eq. 8): each modality's posterior reconstructs both
modalities, the two directions mixed by mu.

.. math::
    \\mathcal{L}(x_1, x_2) = \\mu\\Big(\\mathbb{E}_{q(z|x_1)}[\\lambda_1\\log p(x_1|z) + \\lambda_2\\log p(x_2|z)]
            - \\beta\\,\\mathrm{KL}(q(z|x_1)\\,\\|\\,p(z))\\Big)
        + (1-\\mu)\\Big(\\mathbb{E}_{q(z|x_2)}[\\lambda_1\\log p(x_1|z) + \\lambda_2\\log p(x_2|z)]
            - \\beta\\,\\mathrm{KL}(q(z|x_2)\\,\\|\\,p(z))\\Big)

that is, the unimodal ELBOs plus the cross-modal generation terms E_{q(z|x_1)}[log p(x_2|z)] and
E_{q(z|x_2)}[log p(x_1|z)], each direction weighted by its mu. M > 2: the sum over every observed
pair (i, j), i before j in model order, with ``mu`` on i (pairwise); a row observing one modality
trains its ELBO alone. ``mu``: option, default 0.5. Inference: one modality -> q(z|x_m); several ->
the PoE of the unimodal posteriors (no prior expert).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .coordinated import INFERENCE, CoordinatedFamily, pairwise_sum, unimodal_terms, weighted_loglik


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, mu: float = 0.5) -> ObjectiveOutput:
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"bi-VCCA's mu must be in [0, 1], got {mu}")
    q_mu, q_lv = model.experts(feats, mask)
    uni = unimodal_terms(model, feats, q_mu, q_lv, mask, generator)
    names = model.names
    terms: dict[str, torch.Tensor] = {}

    def direction(src: str, dst: str) -> torch.Tensor:
        """E_{q(z|x_src)}[both log-likelihoods] - beta KL(q(z|x_src) || p)."""
        return uni[src].elbo(beta) + weighted_loglik(model, dst, feats[dst], uni[src].z)

    def pair(i: int, j: int) -> torch.Tensor:
        return mu * direction(names[i], names[j]) + (1.0 - mu) * direction(names[j], names[i])

    value = pairwise_sum(model, mask, pair, lambda m: uni[names[m]].elbo(beta), terms)
    return ObjectiveOutput(-value, terms)


FAMILY = CoordinatedFamily(
    name="bivcca", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference=INFERENCE, missing_modalities=True, modality_specific_latents=False,
        end_to_end=True, scalability="pairwise (parameters linear in M; M(M-1) cross-modal terms)",
        reference="Wang et al. 2016, deep variational CCA (bi-VCCA)", equations="eq. 8",
        notes="M > 2: the two-modality objective summed over every observed pair"))
