r"""TELBO, triple ELBO (Vedantam et al. 2018; the survey's eq. 17): the joint ELBO plus one ELBO per
unimodal surrogate, each reconstructing only its own modality, trained in two stages.

.. math::
    \\mathcal{L}_{TELBO}(X) = \\mathrm{ELBO}(X) + \\sum_{m=1}^{M}\\mathrm{ELBO}_{\\lambda_m}(x_m),\\qquad
    \\mathrm{ELBO}_{\\lambda_m}(x_m) = \\mathbb{E}_{q(z|x_m)}[\\lambda_m\\log p(x_m|z)]
        - \\beta\\,\\mathrm{KL}(q(z|x_m)\\,\\|\\,p(z))

Stages: ``joint`` trains the joint encoder, the decoders and the likelihood scales on ELBO(X);
``unimodal`` then trains only the unimodal encoders on the unimodal ELBOs, the decoders frozen (so
the surrogates learn to land where the joint model put the data). ``stage=None`` is eq. 17 whole.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model.family import ObjectiveOutput, Properties, Stage
from ..model.vae import MultimodalVAE
from .surrogate import SurrogateFamily, joint_terms, unit_elbos


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, stage: str | None = None
              ) -> ObjectiveOutput:
    if stage not in (None, "joint", "unimodal"):
        raise ValueError(f"TELBO has the stages 'joint' and 'unimodal', got {stage!r}")
    mu, logvar = model.experts(feats, mask)
    terms: dict[str, torch.Tensor] = {}
    value = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    if stage in (None, "joint"):
        _, recon, kl = joint_terms(model, feats, mu, logvar, mask, generator)
        joint = recon - beta * kl
        terms["elbo_joint"] = joint.detach()
        value = value + joint
    if stage in (None, "unimodal"):
        value = value + unit_elbos(model, feats, mu, logvar, mask, beta, generator, terms)
    return ObjectiveOutput(-value, terms)


FAMILY = SurrogateFamily(
    name="telbo", objective_fn=objective,
    reference_training={"grad_clip": 0.0},          # MultiVae and the paper's code do not clip
    stages=(Stage("joint", ("subset_encoders", "decoders", "log_scales"), 0.5,
                  "joint encoder + decoders on ELBO(X)"),
            Stage("unimodal", ("encoders",), 0.5, "unimodal encoders on their ELBOs, decoders frozen")),
    properties=Properties(
        aggregated_inference="joint encoder; unimodal surrogates; other subsets: PoE of the surrogates",
        missing_modalities=True, modality_specific_latents=False, end_to_end=False,
        scalability="linear (full set + singles; exponential if every subset is listed)",
        reference="Vedantam et al. 2018, TELBO", equations="eq. 17",
        notes="two stages; subsets without their own encoder fall back to the PoE of the surrogates"))
