r"""SCAN, Higgins et al. 2018 (the survey's eq. 7): first the VAE of the pivot x_1 (SCAN's image
β-VAE), then, with it frozen, the VAE of x_2 (SCAN's symbols) whose posterior is made to cover the
pivot's.

.. math::
    \\text{stage 1:}\\quad \\mathcal{L}_1(x_1) = \\mathbb{E}_{q(z|x_1)}[\\lambda_1\\log p(x_1|z)]
        - \\beta\\,\\mathrm{KL}(q(z|x_1)\\,\\|\\,p(z))

    \\text{stage 2:}\\quad \\mathcal{L}_2(x_1, x_2) = \\mathbb{E}_{q(z|x_2)}[\\lambda_2\\log p(x_2|z)]
        - \\beta\\,\\mathrm{KL}(q(z|x_2)\\,\\|\\,p(z)) - \\lambda\\,\\mathrm{KL}(q(z|x_1)\\,\\|\\,q(z|x_2))

M > 2: every other modality against the pivot (option ``pivot``, default the first modality): stage 2
sums L_2(x_pivot, x_m) over the observed m ≠ pivot; a row without the pivot trains m's ELBO alone.
``lam`` (option, default 1.0) weighs the KL to the pivot, whose posterior is a fixed target (detached,
also in the whole objective, ``stage=None`` = stage 1 + stage 2).

Networks: the pivot's encoder is ``extra.pivot``, the others' ``extra.coordinated.<name>``, so the
stages can name them; the decoders are the model's. Stage ``pivot`` trains ``extra.pivot`` with the
decoders and scales (only the pivot's receive gradients: no other term is in the stage); stage
``coordinated`` trains ``extra.coordinated`` with the decoders and scales (the pivot's get none).
Inference: one modality -> its posterior in the pivot's space; several -> the PoE of the unimodal
posteriors (no prior expert).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch
from torch import nn

from ..model import posterior as post
from ..model.family import FamilyError, ObjectiveOutput, Properties, Stage
from ..model.networks import build_network
from .coordinated import INFERENCE, CoordinatedFamily, masked, unimodal_terms

if TYPE_CHECKING:
    from ..model.vae import ModelConfig, MultimodalVAE


def pivot_name(config: "ModelConfig") -> str:
    pivot = config.family_options.get("pivot", config.names[0])
    if pivot not in config.names:
        raise FamilyError(f"objective option 'pivot' {pivot!r} is not a modality {list(config.names)}")
    return pivot


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, stage: str | None = None,
              lam: float = 1.0, pivot: str | None = None) -> ObjectiveOutput:
    if stage not in (None, "pivot", "coordinated"):
        raise ValueError(f"SCAN has the stages 'pivot' and 'coordinated', got {stage!r}")
    pivot = pivot_name(model.config)
    p = model.names.index(pivot)
    mu, logvar = model.experts(feats, mask)
    wanted = {"pivot": (pivot,), "coordinated": tuple(n for n in model.names if n != pivot)}.get(stage)
    uni = unimodal_terms(model, feats, mu, logvar, mask, generator, wanted)
    terms: dict[str, torch.Tensor] = {}
    value = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    if stage in (None, "pivot") and pivot in uni:
        elbo = masked(uni[pivot].elbo(beta), mask[:, p])
        terms[f"elbo_{pivot}"] = elbo.detach()
        value = value + elbo
    if stage in (None, "coordinated"):
        target_mu, target_lv = mu[p].detach(), logvar[p].detach()
        for m, name in enumerate(model.names):
            if name == pivot or name not in uni:
                continue
            kl = post.kl_gaussians(target_mu, target_lv, uni[name].mu, uni[name].logvar)
            part = masked(uni[name].elbo(beta), mask[:, m]) - lam * masked(kl, mask[:, m] & mask[:, p])
            terms[f"scan_{name}"] = part.detach()
            value = value + part
    return ObjectiveOutput(-value, terms)


@dataclass(frozen=True)
class ScanFamily(CoordinatedFamily):
    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        pivot = pivot_name(model.config)
        nets = model.config.networks

        def encoder(name: str) -> nn.Module:
            return build_network("encoder", nets.get(name, {}).get("encoder"), model.specs[name],
                                 model.latent_dim)

        return {"pivot": encoder(pivot),
                "coordinated": nn.ModuleDict({n: encoder(n) for n in model.names if n != pivot})}

    def unimodal_encoder(self, model: "MultimodalVAE", name: str
                         ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        return model.extra["pivot"] if name == pivot_name(model.config) else model.extra["coordinated"][name]


FAMILY = ScanFamily(
    name="scan", objective_fn=objective, fusions=("poe",), default_fusion="poe", unimodal_encoders=False,
    stages=(Stage("pivot", ("extra.pivot", "decoders", "log_scales"), 0.5, "the pivot's VAE (x_1)"),
            Stage("coordinated", ("extra.coordinated", "decoders", "log_scales"), 0.5,
                  "the other VAEs with KL(q(z|x_pivot) || q(z|x_m)), the pivot frozen")),
    properties=Properties(
        aggregated_inference=INFERENCE, missing_modalities=True, modality_specific_latents=False,
        end_to_end=False, scalability="pairwise (every modality against the pivot; parameters linear in M)",
        reference="Higgins et al. 2018, SCAN", equations="eq. 7",
        notes="two stages: the pivot's VAE, then the others against it with the pivot frozen"))
