r"""M²VAE (Korthals et al. 2019; the survey's eq. 18): the joint ELBO, the unimodal ELBOs and the KLs
from the joint posterior to each surrogate, trained together.

.. math::
    \\mathcal{L}_{M^2VAE}(X) = \\mathrm{ELBO}(X) + \\sum_{m=1}^{M}\\mathrm{ELBO}(x_m)
        - \\beta\\,\\alpha\\sum_{m=1}^{M}\\mathrm{KL}\\big(q(z|X)\\,\\|\\,q(z|x_m)\\big)

ELBO(x_m) reconstructs x_m only. For M > 2 the sums run over every unit (see :mod:`.surrogate`).
Options: ``alpha`` (default 1.0), ``subsets``.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .surrogate import SurrogateFamily, joint_terms, joint_to_unit_kls, unit_elbos


def surrogate_objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                        beta: float, generator: torch.Generator | None, alpha: float,
                        joint_kl: bool) -> ObjectiveOutput:
    """M²VAE (``joint_kl``) or VAEVAE (without the joint KL to the prior)."""
    mu, logvar = model.experts(feats, mask)
    full, recon, kl = joint_terms(model, feats, mu, logvar, mask, generator)
    terms: dict[str, torch.Tensor] = {}
    unimodal = unit_elbos(model, feats, mu, logvar, mask, beta, generator, terms)
    surrogate_kl = joint_to_unit_kls(model, mu, logvar, full, terms)
    value = recon + unimodal - beta * alpha * surrogate_kl
    if joint_kl:
        value = value - beta * kl
    terms.update(objective=value.detach(), recon=recon.detach(), kl=kl.detach())
    return ObjectiveOutput(-value, terms)


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, alpha: float = 1.0
              ) -> ObjectiveOutput:
    return surrogate_objective(model, feats, mask, beta, generator, alpha, joint_kl=True)


FAMILY = SurrogateFamily(
    name="m2vae", objective_fn=objective,
    properties=Properties(
        aggregated_inference="joint encoder; unimodal surrogates; other subsets: PoE of the surrogates",
        missing_modalities=True, modality_specific_latents=False, end_to_end=True,
        scalability="linear (full set + singles; exponential if every subset is listed)",
        reference="Korthals et al. 2019, M²VAE", equations="eq. 18",
        notes="subsets without their own encoder fall back to the PoE of the surrogates"))
