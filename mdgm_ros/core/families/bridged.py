r"""Bridged encoders (Yadav et al. 2020; the survey's sec. 5.1.2, eqs. 26-27): a JVAE trained first, then
frozen, then one bridge per modality that maps that modality's encoding to the encodings of the
others, so the frozen joint encoder can run from one modality.

Networks: the joint encoder q(z|X) = g(h_1(x_1), ..., h_M(x_M)) (per-modality bodies h_m and a head g,
the default subset encoder) and bridges b_m: h_m -> (ĥ_n)_{n≠m}. The bridged unimodal posterior is

.. math::
    q_b(z|x_m) = g\\big(h_m(x_m),\\ b_m(h_m(x_m))\\big)

Objective, stage ``joint`` (eq. 12, the JVAE ELBO):

.. math::
    \\mathcal{L}_{joint}(X) = \\mathbb{E}_{q(z|X)}\\Big[\\sum_m\\lambda_m\\log p(x_m|z)\\Big]
        - \\beta\\,\\mathrm{KL}(q(z|X)\\,\\|\\,p(z))

stage ``bridge`` (only the bridges train; h, g and the decoders are frozen), per observed modality m:
the unimodal ELBO through the bridge and, on complete rows, the latent "hallucination" error of the
bridged encodings against the frozen true encodings:

.. math::
    \\mathcal{L}_{bridge}(x_m) = \\mathbb{E}_{q_b(z|x_m)}[\\lambda_m\\log p(x_m|z)]
        - \\beta\\,\\mathrm{KL}(q_b(z|x_m)\\,\\|\\,p(z))
        - \\gamma \\sum_{n\\neq m}\\big\\|b_{m\\to n}(h_m(x_m)) - h_n(x_n)\\big\\|^2

Inference: full set -> q(z|X); one modality -> q_b(z|x_m); other subsets -> the product of the bridged
posteriors of the subset (no prior expert). Options: ``gamma`` (default 1.0), ``bridge_width`` (64).
The joint encoder must expose ``features``/``from_features`` (the default subset encoder does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch
from torch import nn

from ..model.family import FamilyError, ObjectiveOutput, Properties, Stage
from .surrogate import SurrogateFamily, joint_terms, masked, unit_elbos

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE


class Bridge(nn.Module):
    """h_m -> the other modalities' encodings, split per modality (model order without m)."""

    def __init__(self, width_in: int, widths_out: list[int], hidden: int):
        super().__init__()
        self.splits = list(widths_out)
        self.net = nn.Sequential(nn.Linear(width_in, hidden), nn.SiLU(), nn.Linear(hidden, sum(widths_out)))

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(h).split(self.splits, dim=-1))


def joint_encoder(model: "MultimodalVAE") -> nn.Module:
    return model.subset_encoders["__".join(model.names)]


def bridged_posterior(model: "MultimodalVAE", name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    j = model.names.index(name)
    encoder = joint_encoder(model)
    own = encoder.bodies[j](x)
    others = model.extra[f"bridge_{name}"](own)
    return encoder.from_features(others[:j] + [own] + others[j:])


def hallucination_error(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                        terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_m sum_{n != m} ||b_{m->n}(h_m) - h_n||^2 on complete rows (targets detached): (B,)."""
    full = mask.all(1)
    total = torch.zeros(mask.shape[0], device=mask.device)
    if not bool(full.any()):
        return total
    encodings = [h.detach() for h in joint_encoder(model).features(*(feats[n] for n in model.names))]
    for j, name in enumerate(model.names):
        targets = encodings[:j] + encodings[j + 1:]
        predicted = model.extra[f"bridge_{name}"](encodings[j])
        error = sum(((p - t) ** 2).sum(-1) for p, t in zip(predicted, targets))
        terms[f"hallucination_{name}"] = masked(error, full).detach()
        total = total + masked(error, full)
    return total


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, stage: str | None = None,
              gamma: float = 1.0, bridge_width: int = 64) -> ObjectiveOutput:
    if stage not in (None, "joint", "bridge"):
        raise ValueError(f"the bridged family has the stages 'joint' and 'bridge', got {stage!r}")
    mu, logvar = model.experts(feats, mask)
    terms: dict[str, torch.Tensor] = {}
    value = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    if stage in (None, "joint"):
        _, recon, kl = joint_terms(model, feats, mu, logvar, mask, generator)
        terms["elbo_joint"] = (recon - beta * kl).detach()
        value = value + recon - beta * kl
    if stage in (None, "bridge"):
        value = value + unit_elbos(model, feats, mu, logvar, mask, beta, generator, terms)
        value = value - gamma * hallucination_error(model, feats, mask, terms)
    return ObjectiveOutput(-value, terms)


@dataclass(frozen=True)
class BridgedFamily(SurrogateFamily):
    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        encoder = joint_encoder(model)
        if not (hasattr(encoder, "features") and hasattr(encoder, "from_features")):
            raise FamilyError(f"family {self.name!r} needs a joint encoder with features()/from_features() "
                              "(the default subset encoder has them)")
        with torch.no_grad():
            probes = [torch.zeros(1, *model.specs[n].feature_shape) for n in model.names]
            widths = [int(h.shape[-1]) for h in encoder.features(*probes)]
        hidden = int(model.config.family_options.get("bridge_width", 64))
        return {f"bridge_{name}": Bridge(widths[j], widths[:j] + widths[j + 1:], hidden)
                for j, name in enumerate(model.names)}

    def unimodal_encoder(self, model: "MultimodalVAE", name: str
                         ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        return lambda x: bridged_posterior(model, name, x)

    def inference_rule(self, config=None) -> str:
        return ("full set: the joint encoder; one modality: the joint encoder fed the bridged encodings; "
                "other subsets: product of the bridged posteriors (no prior expert)")


FAMILY = BridgedFamily(
    name="bridged", objective_fn=objective, unimodal_encoders=False,
    stages=(Stage("joint", ("subset_encoders", "decoders", "log_scales"), 0.5, "JVAE on ELBO(X)"),
            Stage("bridge", ("extra",), 0.5, "bridges on the unimodal objective, the JVAE frozen")),
    properties=Properties(
        aggregated_inference="joint encoder; one modality: bridged encodings into the joint encoder; "
                             "other subsets: product of the bridged posteriors",
        missing_modalities=True, modality_specific_latents=False, end_to_end=False,
        scalability="quadratic (each of the M bridges predicts the other M-1 encodings)",
        reference="Yadav et al. 2020, bridged VAE", equations="eqs. 26-27 (with eq. 12 for stage 1)",
        notes="two stages: JVAE, then the bridges with the JVAE frozen"))
