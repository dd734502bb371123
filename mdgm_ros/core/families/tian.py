r"""Tian & Engel 2019, latent translation (the survey's ref. [96]): one VAE per modality trained first,
then a shared space bridging their latent spaces: a modality-conditioned encoder q(u | z_m, m) and
decoder p(z_m | u, m) trained as a VAE on the frozen per-modality codes, with the sliced Wasserstein
distance between the modalities' shared codes and a label-prediction loss.

.. math::
    \\text{stage 1:}\\quad \\mathcal{L}_m(x_m) = \\mathbb{E}_{q(z_m|x_m)}[\\lambda_m\\log p(x_m|z_m)]
        - \\beta\\,\\mathrm{KL}(q(z_m|x_m)\\,\\|\\,p(z_m))

    \\text{stage 2:}\\quad \\mathcal{L}_{shared} = \\sum_m\\Big(
        \\mathbb{E}_{q(u|\\bar z_m, m)}[\\log\\mathcal{N}(\\bar z_m;\\,
        g(u, m), I)] - \\beta\\,\\mathrm{KL}(q(u|\\bar z_m, m)\\,\\|\\,p(u))
        + \\kappa \\log p(y \\mid u)\\Big)
        - \\omega \\sum_{i<j} \\mathrm{SW}_2^2\\big(\\{u_i\\}, \\{u_j\\}\\big)

z̄_m is the mean of the frozen q(z_m|x_m); log p(y|u) is a linear softmax head on the shared code u
(rows with a label y >= 0 only: the digit on PolyDigits, the task phase in bags); SW_2^2 is the squared
sliced 2-Wasserstein distance between the batch's shared codes of modality i and of modality j (not
paired: the rows that observe i against those that observe j), averaged over ``projections`` random
directions; being a batch quantity it is added to every row's loss. M > 2: SW over every pair of
modalities (pairwise); the ELBOs and label terms per observed modality. ``stage=None`` is stage 1 +
stage 2.

Options: ``omega`` (SW weight, default 1.0), ``kappa`` (label weight, 5.0), ``n_labels`` (classes of
the head, 16), ``projections`` (50), ``bridge_width`` (64). Labels reach the objective as the batch
entry ``labels`` (key :data:`LABELS`; -1 = none), added by the trainers when the family asks
(``uses_labels``).

The model's latent space is the shared space u. Inference: q(u|x_m) = q(u | z̄_m(x_m), m); several
modalities: the PoE of these (no prior expert). Generation of m decodes g(u, m) with m's VAE decoder.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping

import torch
from torch import nn

from ..model import posterior as post
from ..model.family import LABELS, ObjectiveOutput, Properties, Stage
from .coordinated import INFERENCE, CoordinatedFamily, masked

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE

class Bridge(nn.Module):
    """The shared VAE's modality-conditioned encoder (z_m, m) -> q(u) and decoder (u, m) -> z_m."""

    def __init__(self, latent_dim: int, n_mod: int, hidden: int):
        super().__init__()
        self.n_mod = n_mod
        self.encoder = nn.Sequential(nn.Linear(latent_dim + n_mod, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim + n_mod, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, latent_dim))

    def _with(self, x: torch.Tensor, m: int) -> torch.Tensor:
        onehot = torch.zeros((*x.shape[:-1], self.n_mod), dtype=x.dtype, device=x.device)
        onehot[..., m] = 1.0
        return torch.cat([x, onehot], -1)

    def encode(self, z_m: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(self._with(z_m, m)).chunk(2, dim=-1)
        return mu, post.clamp_logvar(logvar)

    def decode(self, u: torch.Tensor, m: int) -> torch.Tensor:
        return self.decoder(self._with(u, m))


def random_directions(dim: int, count: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``count`` unit vectors (count, dim), uniform on the sphere."""
    v = torch.randn((count, dim), generator=generator, device=device)
    return v / v.norm(dim=-1, keepdim=True)


def sliced_wasserstein2(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Squared sliced 2-Wasserstein distance between the samples a (Na, D) and b (Nb, D): the mean over
    directions of the squared W2 of the projections, compared at min(Na, Nb) common quantiles."""
    pa, pb = (a @ directions.t()).sort(0).values, (b @ directions.t()).sort(0).values     # (N, L)
    n = min(pa.shape[0], pb.shape[0])
    levels = torch.linspace(0, 1, n, dtype=a.dtype, device=a.device)
    qa = pa if pa.shape[0] == n else torch.quantile(pa, levels, dim=0)
    qb = pb if pb.shape[0] == n else torch.quantile(pb, levels, dim=0)
    return ((qa - qb) ** 2).mean()


def own_loglik(model: "MultimodalVAE", name: str, x: torch.Tensor, z_own: torch.Tensor) -> torch.Tensor:
    return model.log_likelihood(name, x, model.decoders[name](z_own)) * model.specs[name].weight


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, stage: str | None = None,
              omega: float = 1.0, kappa: float = 5.0, n_labels: int = 16, projections: int = 50,
              bridge_width: int = 64) -> ObjectiveOutput:
    if stage not in (None, "unimodal", "shared"):
        raise ValueError(f"Tian et al. has the stages 'unimodal' and 'shared', got {stage!r}")
    terms: dict[str, torch.Tensor] = {}
    value = torch.zeros(mask.shape[0], device=mask.device)
    observed = [(m, n) for m, n in enumerate(model.names) if bool(mask[:, m].any())]
    own = {n: model.encoders[n](feats[n]) for _, n in observed}
    if stage in (None, "unimodal"):
        for m, name in observed:
            mu, logvar = own[name][0], post.clamp_logvar(own[name][1])
            z = post.reparameterize(mu, logvar, generator=generator)
            elbo = own_loglik(model, name, feats[name], z) - beta * post.kl_to_standard_normal(mu, logvar)
            terms[f"elbo_{name}"] = masked(elbo, mask[:, m]).detach()
            value = value + masked(elbo, mask[:, m])
    if stage in (None, "shared"):
        value = value + shared_terms(model, feats, mask, own, observed, beta, generator, omega, kappa,
                                     projections, terms)
    return ObjectiveOutput(-value, terms)


def shared_terms(model, feats, mask, own, observed, beta, generator, omega, kappa, projections, terms):
    bridge, head = model.extra["bridge"], model.extra["label_head"]
    labels = feats.get(LABELS)
    value = torch.zeros(mask.shape[0], device=mask.device)
    codes = {}
    for m, name in observed:
        target = own[name][0].detach()
        u_mu, u_lv = bridge.encode(target, m)
        u = post.reparameterize(u_mu, u_lv, generator=generator)
        codes[m] = u
        recon = -0.5 * ((target - bridge.decode(u, m)) ** 2).sum(-1) - 0.5 * target.shape[-1] * post._LOG_2PI
        part = recon - beta * post.kl_to_standard_normal(u_mu, u_lv)
        if labels is not None:
            known = labels >= 0
            logp = torch.log_softmax(head(u), -1).gather(-1, labels.clamp_min(0)[:, None])[:, 0]
            part = part + kappa * masked(logp, known)
        terms[f"shared_{name}"] = masked(part, mask[:, m]).detach()
        value = value + masked(part, mask[:, m])
    if omega and len(codes) > 1:
        directions = random_directions(model.latent_dim, projections, generator, mask.device)
        swd = sum(sliced_wasserstein2(codes[i][mask[:, i]], codes[j][mask[:, j]], directions)
                  for i, j in itertools.combinations(sorted(codes), 2)
                  if int(mask[:, i].sum()) and int(mask[:, j].sum()))
        terms["sliced_wasserstein"] = torch.as_tensor(swd).detach().expand(mask.shape[0])
        value = value - omega * swd
    return value


@dataclass(frozen=True)
class TianFamily(CoordinatedFamily):
    uses_labels: ClassVar[bool] = True

    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        options = model.config.family_options
        hidden, n_labels = int(options.get("bridge_width", 64)), int(options.get("n_labels", 16))
        return {"bridge": Bridge(model.latent_dim, len(model.names), hidden),
                "label_head": nn.Linear(model.latent_dim, n_labels)}

    def unimodal_encoder(self, model: "MultimodalVAE", name: str
                         ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        m = model.names.index(name)
        return lambda x: model.extra["bridge"].encode(model.encoders[name](x)[0], m)

    def modality_latent(self, model: "MultimodalVAE", name: str, z: torch.Tensor) -> torch.Tensor:
        """A shared code u -> modality ``name``'s own latent space (the shared decoder g(u, m))."""
        return model.extra["bridge"].decode(z, model.names.index(name))


FAMILY = TianFamily(
    name="tian", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    stages=(Stage("unimodal", ("encoders", "decoders", "log_scales"), 0.5, "one VAE per modality"),
            Stage("shared", ("extra",), 0.5, "the shared bridging VAE, sliced Wasserstein and labels; VAEs frozen")),
    properties=Properties(
        aggregated_inference=INFERENCE, missing_modalities=True, modality_specific_latents=False,
        end_to_end=False, scalability="pairwise (SW over every pair of modalities; parameters linear in M)",
        reference="Tian & Engel 2019, latent translation (survey ref. [96])", equations="ref. [96] (no number)",
        notes="two stages: per-modality VAEs, then a shared space with sliced Wasserstein alignment and labels"))
