r"""DMVAE of Daunhawer et al. 2020 (the survey's ref. [15], "self-supervised disentanglement of
modality-specific and shared factors"): the joint VAE objective with private latents, an InfoNCE lower
bound that keeps what the modalities share in the shared experts, and a total-correlation penalty
between c and the s_m estimated by a discriminator (density-ratio trick), trained adversarially.

.. math::
    q(c|X_O) = \\mathrm{PoE}\\big(p(c), \\{q(c|x_m)\\}_{m\\in O}\\big),\\qquad q(s_m|x_m)

    \\mathcal{L}(X_O) = \\underbrace{\\mathbb{E}_{q(c|X_O)\\prod_m q(s_m|x_m)}\\Big[\\sum_{m\\in O}\\lambda_m
            \\log p(x_m|c, s_m)\\Big] - \\beta\\,\\mathrm{KL}(q(c|X_O)\\|p(c))
            - \\beta\\sum_{m\\in O}\\mathrm{KL}(q(s_m|x_m)\\|p(s_m))}_{\\text{JVAE ELBO (eq. 12) with } (c, S)}
        + \\omega\\sum_{m\\neq n\\in O} I_{NCE}(x_m; x_n) - \\kappa\\,\\widehat{TC}(c, s_1, \\dots, s_M)

    I_{NCE}(x_m; x_n)^i = f(x_m^i, x_n^i) - \\log\\frac{1}{B'}\\sum_{j} e^{f(x_m^i, x_n^j)},\\qquad
        f(x_m, x_n) = \\cos\\big(\\mu_m(x_m), \\mu_n(x_n)\\big)/\\tau

    \\widehat{TC}^i = \\log\\frac{D(c^i, S^i)}{1 - D(c^i, S^i)}
        \\approx \\log\\frac{q(c, S)}{q(c)\\prod_m q(s_m)}

μ_m(x_m) is the mean of the unimodal shared expert q(c|x_m); j runs over the batch rows observing m
and n. The InfoNCE term is a lower bound on I(μ_m(x_m); μ_n(x_n)), the information the paired
modalities share, which the shared experts (and so c = their PoE) must carry: our reading of the
survey's "InfoNCE bound on I(X; c)" -- contrasting c with a modality's own features would also reward
c for carrying that modality's private factors.
D is a discriminator (an MLP on [c, s_1, ..., s_M], ``extra["tc_discriminator"]``) trained to tell
samples of q(c, S) (label 1) from samples of q(c) Π_m q(s_m) (label 0; each s_m permuted over the
batch): after each optimiser step of the VAE the family runs *its own* optimiser step on D
(:meth:`DaunhawerFamily.own_step`), minimising the binary cross-entropy on detached samples. The TC
term and D's training use the complete rows only (the joint over every s_m).

Options: ``omega`` (InfoNCE weight, 1.0), ``temperature`` (τ, 0.5), ``kappa`` (TC weight, 1.0),
``disc_width`` (64), ``disc_lr`` (1e-3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from ..model import posterior as post
from ..model.family import ExportPart, ObjectiveOutput, Properties
from .private import PrivateFamily, private_kl, private_reconstruction
from .surrogate import masked

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE

DISCRIMINATOR = "tc_discriminator"


class Discriminator(nn.Module):
    """[c, s_1, ..., s_M] -> logit of 'drawn from the joint q(c, S)'."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes).squeeze(-1)


def info_nce(c: torch.Tensor, anchors: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE bound per row (B,) with the critic cos(c^i, anchors^j) / τ over the batch rows ``rows``
    (row i of ``c`` is scored against every row j of ``anchors``; the positive is j = i)."""
    scores = nn.functional.cosine_similarity(c[:, None], anchors[None], dim=-1) / temperature   # (i, j)
    scores = torch.where(rows[None, :], scores, torch.full((), -math.inf, dtype=c.dtype, device=c.device))
    count = rows.sum().clamp_min(1).to(c.dtype)
    bound = scores.diagonal() - (torch.logsumexp(scores, dim=1) - torch.log(count))
    return masked(bound, rows)


def pairwise_info_nce(mu: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum over ordered pairs m != n of the InfoNCE bound between the unimodal shared means mu_m, mu_n
    (rows observing both): (B,)."""
    total = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    for m in range(mask.shape[1]):
        for n in range(mask.shape[1]):
            if m != n:
                total = total + info_nce(mu[m], mu[n], mask[:, m] & mask[:, n], temperature)
    return total


def joint_codes(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[c, s_1, ..., s_M]: (B, D + M·P) from c (B, D) and s (M, B, P)."""
    return torch.cat([c, *s], dim=-1)


def marginal_codes(c: torch.Tensor, s: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Samples of q(c) Π_m q(s_m): each s_m permuted over the rows independently."""
    perms = [torch.randperm(c.shape[0], generator=generator, device=generator.device if generator else None)
             .to(c.device) for _ in range(s.shape[0])]
    return torch.cat([c, *(s[m][p] for m, p in enumerate(perms))], dim=-1)


def sample_codes(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                 generator: torch.Generator | None):
    mu, logvar = model.experts(feats, mask)
    s_mu, s_lv = model.private_experts(feats, mask)
    q_mu, q_lv = model.subset_posterior(mu, logvar, mask)
    c = post.reparameterize(q_mu, q_lv, generator=generator)
    s = post.reparameterize(s_mu, s_lv, generator=generator)
    return mu, logvar, s_mu, s_lv, q_mu, q_lv, c, s


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, omega: float = 1.0,
              temperature: float = 0.5, kappa: float = 1.0, disc_width: int = 64,
              disc_lr: float = 1e-3) -> ObjectiveOutput:
    mu, _, s_mu, s_lv, q_mu, q_lv, c, s = sample_codes(model, feats, mask, generator)
    recon = private_reconstruction(model, feats, c, s, mask)
    kl_c, kl_s = post.kl_to_standard_normal(q_mu, q_lv), private_kl(s_mu, s_lv, mask)
    elbo = recon - beta * kl_c - beta * kl_s
    nce = pairwise_info_nce(mu[:len(model.names)], mask, temperature)
    full = mask.all(1)
    tc = masked(model.extra[DISCRIMINATOR](joint_codes(c, s)), full)
    value = elbo + omega * nce - kappa * tc
    return ObjectiveOutput(-value, {"elbo": elbo.detach(), "recon": recon.detach(), "info_nce": nce.detach(),
                                    "tc_estimate": tc.detach(), "objective": value.detach()})


def discriminator_loss(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                       generator: torch.Generator | None) -> torch.Tensor | None:
    """Binary cross-entropy of D on detached joint vs. permuted samples of the complete rows (None:
    fewer than two complete rows)."""
    full = mask.all(1)
    if int(full.sum()) < 2:
        return None
    idx = full.nonzero(as_tuple=True)[0]
    feats = {k: v.index_select(0, idx) for k, v in feats.items()}
    with torch.no_grad():
        *_, c, s = sample_codes(model, feats, mask.index_select(0, idx), generator)
    disc = model.extra[DISCRIMINATOR]
    joint, product = disc(joint_codes(c, s)), disc(marginal_codes(c, s, generator))
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(joint, torch.ones_like(joint)) + bce(product, torch.zeros_like(product))


@dataclass(frozen=True)
class DaunhawerFamily(PrivateFamily):
    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        width = int(model.config.family_options.get("disc_width", 64))
        return {DISCRIMINATOR: Discriminator(model.latent_dim + len(model.names) * model.private_dim, width)}

    # the trainer's hook: parameters with an optimiser of their own, stepped after each VAE step on own_loss
    def own_step_parameters(self, model: "MultimodalVAE") -> list[nn.Parameter]:
        return list(model.extra[DISCRIMINATOR].parameters())

    def own_optimizer(self, model: "MultimodalVAE") -> torch.optim.Optimizer:
        lr = float(model.config.family_options.get("disc_lr", 1e-3))
        return torch.optim.Adam(self.own_step_parameters(model), lr=lr, betas=(0.5, 0.9))

    def own_loss(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                 generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The discriminator's loss, named (empty without two complete rows); the trainer steps it."""
        loss = discriminator_loss(model, model.complete(feats, mask), mask, generator)
        return {} if loss is None else {"discriminator_bce": loss}

    def extra_export_parts(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor]):
        batch = next(iter(feats.values())).shape[0]
        codes = torch.zeros(batch, model.latent_dim + len(model.names) * model.private_dim, device=model.device)
        return [ExportPart("onnx_tc_discriminator", model.extra[DISCRIMINATOR], (codes,), ["codes"], ["logit"])]


FAMILY = DaunhawerFamily(
    name="dmvae_daunhawer", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference="c: PoE of the unimodal experts with the prior", missing_modalities=True,
        modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Daunhawer et al. 2020, self-supervised disentanglement of modality-specific and shared factors",
        equations="ref. [15] (no number); eq. 12 (JVAE), eq. 28 generative model",
        notes="InfoNCE bound between the paired modalities' shared codes; "
              "total correlation of (c, s_1..s_M) by a discriminator, trained "
              "adversarially with its own optimiser step after each VAE step (complete rows)"))
