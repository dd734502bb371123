r"""VAEVAE (the survey's variant of eq. 18 without the joint KL to the prior): the joint
reconstruction, the unimodal ELBOs and the KLs from the joint posterior to each surrogate.

.. math::
    \\mathcal{L}_{VAEVAE}(X) = \\mathbb{E}_{q(z|X)}\\Big[\\sum_m\\lambda_m\\log p(x_m|z)\\Big]
        + \\sum_{m=1}^{M}\\mathrm{ELBO}(x_m)
        - \\beta\\,\\alpha\\sum_{m=1}^{M}\\mathrm{KL}\\big(q(z|X)\\,\\|\\,q(z|x_m)\\big)

The joint posterior is regularised only through the surrogates (which are regularised to the prior by
their own ELBOs). Options: ``alpha`` (default 1.0), ``subsets``.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .m2vae import surrogate_objective
from .surrogate import SurrogateFamily


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, alpha: float = 1.0
              ) -> ObjectiveOutput:
    return surrogate_objective(model, feats, mask, beta, generator, alpha, joint_kl=False)


FAMILY = SurrogateFamily(
    name="vaevae", objective_fn=objective,
    properties=Properties(
        aggregated_inference="joint encoder; unimodal surrogates; other subsets: PoE of the surrogates",
        missing_modalities=True, modality_specific_latents=False, end_to_end=True,
        scalability="linear (full set + singles; exponential if every subset is listed)",
        reference="Wu & Goodman 2019 (VAEVAE), as cited by the survey", equations="eq. 18 without KL(q(z|X)||p(z))",
        notes="subsets without their own encoder fall back to the PoE of the surrogates"))
