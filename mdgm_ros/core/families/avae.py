r"""AVAE, Jo et al. 2019 (the survey's eqs. 10-11): one VAE per modality, each with its own latent
space, trained first; then associators a(z_j | z_i), Gaussian maps between the latent spaces, trained
with the cross-modal loss and a KL regulariser while the VAEs stay frozen.

.. math::
    \\text{stage 1 (eq. 10):}\\quad \\mathcal{L}_m(x_m) = \\mathbb{E}_{q(z_m|x_m)}[\\lambda_m\\log p(x_m|z_m)]
        - \\beta\\,\\mathrm{KL}(q(z_m|x_m)\\,\\|\\,p(z_m))

    \\text{stage 2 (eq. 11):}\\quad \\mathcal{L}_{i\\to j}(x_i, x_j) =
        \\mathbb{E}_{q(z_i|x_i)}\\,\\mathbb{E}_{a(z_j|z_i)}[\\lambda_j\\log p(x_j|z_j)]
        - \\beta\\,\\mathrm{KL}(a(z_j|z_i)\\,\\|\\,p(z_j)),\\qquad \\text{both directions}

(the KL regulariser read as the associator's KL to the target space's prior; z_i is a sample of the
frozen encoder.) M > 2: every modality against a pivot (option ``pivot``, default the first
modality): the associators pivot -> m and m -> pivot, 2(M - 1) of them; the stage-1 ELBOs count on
every row observing m. ``stage=None`` is stage 1 + stage 2.

The model's latent space is the pivot's. Inference: q(z|x_pivot) is the pivot's encoder; q(z|x_m) is
the associator m -> pivot applied to the mean of q(z_m|x_m); several modalities: the PoE of these
(no prior expert). Generation of m ≠ pivot decodes the mean of the associator pivot -> m (the model's
``decode`` asks :meth:`AvaeFamily.modality_latent`); so m -> n crosses through the pivot's space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch
from torch import nn

from ..model import posterior as post
from ..model.family import ObjectiveOutput, Properties, Stage
from .coordinated import INFERENCE, CoordinatedFamily, masked
from .scan import pivot_name

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE


class Associator(nn.Module):
    """z_i (..., D) -> Gaussian a(z_j | z_i): (mu, logvar)."""

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * latent_dim))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(z).chunk(2, dim=-1)
        return mu, post.clamp_logvar(logvar)


def key(source: str, target: str) -> str:
    return f"{source}_to_{target}"


def own_loglik(model: "MultimodalVAE", name: str, x: torch.Tensor, z_own: torch.Tensor) -> torch.Tensor:
    """lambda_m log p(x_m | z_m) with z_m in m's own space (the decoder itself, no association)."""
    return model.log_likelihood(name, x, model.decoders[name](z_own)) * model.specs[name].weight


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, stage: str | None = None,
              pivot: str | None = None, associator_width: int = 64) -> ObjectiveOutput:
    if stage not in (None, "unimodal", "associators"):
        raise ValueError(f"AVAE has the stages 'unimodal' and 'associators', got {stage!r}")
    pivot = pivot_name(model.config)
    terms: dict[str, torch.Tensor] = {}
    value = torch.zeros(mask.shape[0], device=mask.device)
    own = {}
    for m, name in enumerate(model.names):
        if bool(mask[:, m].any()):
            mu, logvar = model.encoders[name](feats[name])
            logvar = post.clamp_logvar(logvar)
            own[name] = (mu, logvar, post.reparameterize(mu, logvar, generator=generator))
    if stage in (None, "unimodal"):
        for m, name in enumerate(model.names):
            if name in own:
                mu, logvar, z = own[name]
                elbo = own_loglik(model, name, feats[name], z) - beta * post.kl_to_standard_normal(mu, logvar)
                terms[f"elbo_{name}"] = masked(elbo, mask[:, m]).detach()
                value = value + masked(elbo, mask[:, m])
    if stage in (None, "associators"):
        p = model.names.index(pivot)
        for m, name in enumerate(model.names):
            rows = mask[:, m] & mask[:, p]
            if name == pivot or not bool(rows.any()):
                continue
            for source, target in ((pivot, name), (name, pivot)):
                a_mu, a_lv = model.extra["associators"][key(source, target)](own[source][2])
                z_target = post.reparameterize(a_mu, a_lv, generator=generator)
                cross = (own_loglik(model, target, feats[target], z_target)
                         - beta * post.kl_to_standard_normal(a_mu, a_lv))
                terms[f"assoc_{key(source, target)}"] = masked(cross, rows).detach()
                value = value + masked(cross, rows)
    return ObjectiveOutput(-value, terms)


@dataclass(frozen=True)
class AvaeFamily(CoordinatedFamily):
    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        pivot = pivot_name(model.config)
        hidden = int(model.config.family_options.get("associator_width", 64))
        pairs = [(s, t) for n in model.names if n != pivot for s, t in ((pivot, n), (n, pivot))]
        return {"associators": nn.ModuleDict({key(s, t): Associator(model.latent_dim, hidden) for s, t in pairs})}

    def unimodal_encoder(self, model: "MultimodalVAE", name: str
                         ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        pivot = pivot_name(model.config)
        if name == pivot:
            return model.encoders[name]
        return lambda x: model.extra["associators"][key(name, pivot)](model.encoders[name](x)[0])

    def modality_latent(self, model: "MultimodalVAE", name: str, z: torch.Tensor) -> torch.Tensor:
        """A point of the pivot's space -> modality ``name``'s own space (the associator's mean)."""
        pivot = pivot_name(model.config)
        return z if name == pivot else model.extra["associators"][key(pivot, name)](z)[0]


FAMILY = AvaeFamily(
    name="avae", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    stages=(Stage("unimodal", ("encoders", "decoders", "log_scales"), 0.5, "one VAE per modality (eq. 10)"),
            Stage("associators", ("extra",), 0.5, "associators between the latent spaces, VAEs frozen (eq. 11)")),
    properties=Properties(
        aggregated_inference=INFERENCE, missing_modalities=True, modality_specific_latents=False,
        end_to_end=False, scalability="pairwise (every modality against the pivot; parameters linear in M)",
        reference="Jo et al. 2019, AVAE (distributed latent spaces and associators)", equations="eqs. 10-11",
        notes="two stages: per-modality VAEs, then associators to and from the pivot's latent space"))
