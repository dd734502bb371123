r"""MMVAE+ (Palumbo, Daunhawer & Vogt 2023; not in the survey): MMVAE's mixture of experts for the shared
c, a private w_m per modality, and an *auxiliary prior* r_m(w_m) that supplies w_n whenever x_n is
reconstructed from another modality's c, so c alone must carry what the modalities share.

.. math::
    q(c|X_O) = \\frac{1}{|O|}\\sum_{m\\in O} q(c|x_m)

    \\mathcal{L}(X_O) = \\frac{1}{|O|}\\sum_{m\\in O}\\mathbb{E}_{(c, w_m)^{1:K}\\sim q(c|x_m)q(w_m|x_m),\\
        w_{n\\neq m}^{1:K}\\sim r_n}\\Big[\\log\\frac{1}{K}\\sum_{k=1}^{K}
        \\frac{\\big(p(c^k)\\,p(w_m^k)\\big)^{\\beta}\\,\\prod_{n\\in O}p(x_n|c^k, w_n^k)^{\\lambda_n}}
             {\\big(q(c^k|X_O)\\,q(w_m^k|x_m)\\big)^{\\beta}}\\Big]

(the survey's eq. 28 generative model, with MMVAE's stratified "looser" IWAE bound, DReG gradients:
:mod:`.mmvae`). Gaussian option: p(c) = p(w_m) = N(0, I); r_n = N(0, diag exp(rho_n)) with a learned log-variance rho_n
per modality (``model.extra["aux_prior"]``, initialised at 0). Cross-modal generation draws the missing
modalities' w from r_n (its mean when decoding the posterior mean); self-reconstruction uses the own w_m.
Option ``generation_prior``: ``"aux"`` (default, r_n) or ``"joint"`` (p's w part, as the reference code's
test-time cross-modal generation and MultiVae's ``reconstruction_option="joint_prior"``); training always
draws r_n.

Options: ``K`` (samples per expert, 8), ``estimator`` (``"dreg"`` for training, ``"iwae"`` for
evaluation), ``posterior`` (``"gaussian"``, default, or ``"laplace"``: c, w_m, their priors and r_m as
Laplace distributions with softmax-normalised scales, as in the reference code and MultiVae; r_m's
scales are then softmax(rho_m) * P, so they cannot all shrink; :mod:`..latent_distributions`).
``learn_prior`` (default False, as MultiVae's ``learn_shared_prior``): p(c, w_m) keeps mean 0 and learns
its scales over the D + P dimensions (``model.extra["prior"]``; for Laplace the softmax runs over all
D + P, as MultiVae's); c's prior is then its first D dimensions (the joint NLL, generation from the empty
set). ``ModelConfig.private_dim``: size of each w_m (default 4). As in :mod:`.mmvae`, DReG
takes the weights from a pass without graph over all M*K*B samples and builds the decoders' graph only
for the samples of non-negligible weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from ..model.family import FamilyError, ObjectiveOutput, Properties
from ..model.latent_distributions import GAUSSIAN, GaussianLatent, LearnedScalePrior
from .common import dreg_surrogate, dreg_weights, masked_mean_over_experts
from .mmvae import PRIOR, check_learn_prior, learns_prior, model_distribution
from .private import PrivateFamily, private_reconstruction

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE


GENERATION_PRIORS = ("aux", "joint")


def generation_prior_name(options: Mapping[str, object]) -> str:
    """The objective option ``generation_prior``: where a missing modality's w is drawn from."""
    value = options.get("generation_prior", GENERATION_PRIORS[0])
    if value not in GENERATION_PRIORS:
        raise FamilyError(f"mmvae_plus: objective option 'generation_prior' must be one of "
                          f"{list(GENERATION_PRIORS)}, got {value!r}")
    return value


def joint_prior_of_w(model: "MultimodalVAE") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance (P,) of p's w part: the learned p(c, w)'s last P dimensions, else the fixed prior."""
    if PRIOR in model.extra:
        mean, logvar = model.extra[PRIOR]()
        return mean[0, model.latent_dim:], logvar[0, model.latent_dim:]
    zeros = torch.zeros(model.private_dim, device=model.device)
    return zeros, model.latent_dist.prior_logvar(zeros)


@dataclass
class Draws:
    """The experts' parameters and the stratified samples: c (M, K, B, D), own w (M, K, B, P), and
    w_aux (M, K, B, P) with w_aux[n] ~ r_n (one per target modality n, shared by the experts)."""

    mu: torch.Tensor
    logvar: torch.Tensor
    w_mu: torch.Tensor
    w_logvar: torch.Tensor
    c: torch.Tensor
    w: torch.Tensor
    w_aux: torch.Tensor


def draw(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor, K: int,
         generator: torch.Generator | None, dist: GaussianLatent = GAUSSIAN) -> Draws:
    mu, logvar = model.experts(feats, mask)
    w_mu, w_logvar = model.private_experts(feats, mask)
    c = dist.stratified(mu, logvar, K, generator)
    w = dist.stratified(w_mu, w_logvar, K, generator)
    r_mu, r_logvar = model.extra["aux_prior"]()
    w_aux = dist.sample(r_mu[:, None, None, :].expand_as(w), r_logvar[:, None, None, :].expand_as(w),
                        generator=generator)
    return Draws(mu, logvar, w_mu, w_logvar, c, w, w_aux)


def log_weights_at(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor, d: Draws,
                   expert: torch.Tensor, sample: torch.Tensor, row: torch.Tensor, beta: float,
                   detach_q: bool, dist: GaussianLatent = GAUSSIAN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c, w, log weight) of the samples (expert, sample, row) (N,) each: (N, D), (N, P), (N,). Source m's
    c decodes x_n with w_n = its own w if n == m, else r_n's sample."""
    c, w = d.c[expert, sample, row], d.w[expert, sample, row]
    targets = torch.arange(len(model.names), device=mask.device)[:, None]
    codes = torch.where((targets == expert[None])[..., None], w[None], d.w_aux[:, sample, row])   # (M, N, P)
    rows_mask = mask.index_select(0, row)
    recon = private_reconstruction(model, {n: x.index_select(0, row) for n, x in feats.items()}, c, codes, rows_mask)
    q = (d.mu, d.logvar, d.w_mu, d.w_logvar)
    mu, logvar, w_mu, w_logvar = (t.detach() for t in q) if detach_q else q
    log_q = (dist.mixture_log_prob(c, mu[:, row], logvar[:, row], rows_mask)
             + dist.log_prob(w, w_mu[expert, row], w_logvar[expert, row]))
    log_p = shared_prior_log_prob(model, c, w, dist)
    return c, w, recon + beta * (log_p - log_q)


def shared_prior_log_prob(model: "MultimodalVAE", c: torch.Tensor, w: torch.Tensor, dist: GaussianLatent
                          ) -> torch.Tensor:
    """log p(c) + log p(w_m): the learned prior over [c, w] where the model has one, else the fixed one."""
    if PRIOR in model.extra:
        mean, logvar = model.extra[PRIOR]()
        return dist.log_prob(torch.cat([c, w], -1), mean[0], logvar[0])
    return dist.prior_log_prob(c) + dist.prior_log_prob(w)


def every_sample(mask: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expert, sample, row) indices of all M * K * B samples, expert-major."""
    grid = torch.meshgrid(*(torch.arange(n, device=mask.device) for n in (mask.shape[1], K, mask.shape[0])),
                          indexing="ij")
    return tuple(g.reshape(-1) for g in grid)


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, K: int = 8,
              estimator: str = "dreg", posterior: str = "gaussian",
              learn_prior: bool | None = None,
              generation_prior: str = "aux") -> ObjectiveOutput:        # generation_prior: generation only
    if estimator not in ("dreg", "iwae"):
        raise ValueError(f"MMVAE+ estimator must be 'dreg' or 'iwae', got {estimator!r}")
    if estimator == "dreg" and not torch.is_grad_enabled():
        raise RuntimeError("the DReG estimator registers gradient hooks and cannot run under no_grad; "
                           "evaluate with estimator='iwae'")
    dist = model_distribution(model, posterior)
    check_learn_prior(model, learn_prior)
    d = draw(model, feats, mask, K, generator, dist)
    present = mask.t().unsqueeze(1)                                                   # (M, 1, B)
    shape = (mask.shape[1], K, mask.shape[0])
    with torch.set_grad_enabled(estimator == "iwae" and torch.is_grad_enabled()):
        lw = log_weights_at(model, feats, mask, d, *every_sample(mask, K), beta, estimator == "dreg", dist)[2]
    lw = torch.where(present, lw.reshape(shape), torch.zeros((), dtype=lw.dtype, device=lw.device))
    iwae = masked_mean_over_experts(torch.logsumexp(lw, dim=1) - math.log(K), mask)
    if estimator == "iwae":
        return ObjectiveOutput(-iwae, {"iwae": iwae.detach()})
    weights = dreg_weights(lw, present)                   # DReG: the graph only where a weight is not negligible
    expert, sample, row = weights.nonzero(as_tuple=True)
    c, w, lw_kept = log_weights_at(model, feats, mask, d, expert, sample, row, beta, detach_q=True, dist=dist)
    w_kept = weights[expert, sample, row]
    for value in (c, w):
        if value.requires_grad:
            value.register_hook(lambda grad: (w_kept.unsqueeze(-1) * grad).to(grad.dtype))
    return ObjectiveOutput(-dreg_surrogate(lw_kept, w_kept, expert, row, mask), {"iwae": iwae.detach()})


@dataclass(frozen=True)
class MMVAEPlusFamily(PrivateFamily):
    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        generation_prior_name(model.config.family_options)          # a bad value fails at construction
        networks = {"aux_prior": LearnedScalePrior(len(model.names), model.private_dim, model.latent_dist)}
        if learns_prior(model.config.family_options, self.name):
            networks[PRIOR] = LearnedScalePrior(1, model.latent_dim + model.private_dim, model.latent_dist)
        return networks

    @staticmethod
    def shared_prior(model: "MultimodalVAE") -> tuple[torch.Tensor, torch.Tensor]:
        """p(c) of a learned prior: the first D dimensions of p(c, w_m). (D,) each."""
        mean, logvar = model.extra[PRIOR]()
        return mean[0, :model.latent_dim], logvar[0, :model.latent_dim]

    def prior_moments(self, model, like):
        if PRIOR not in model.extra:
            return super().prior_moments(model, like)
        return tuple(t.to(like.dtype).expand_as(like) for t in self.shared_prior(model))

    def prior_log_prob(self, model, z):
        if PRIOR not in model.extra:
            return super().prior_log_prob(model, z)
        return model.latent_dist.log_prob(z, *self.shared_prior(model))

    def private_posteriors(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor],
                           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, second = super().private_posteriors(model, feats, mask)
        return mu, model.latent_dist.from_encoder(second)

    def private_prior(self, model: "MultimodalVAE", name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if generation_prior_name(model.config.family_options) == "joint":
            return joint_prior_of_w(model)
        r_mu, r_logvar = model.extra["aux_prior"]()
        j = model.names.index(name)
        return r_mu[j], r_logvar[j]


FAMILY = MMVAEPlusFamily(
    name="mmvae_plus", objective_fn=objective, fusions=("moe",), default_fusion="moe",
    eval_options={"estimator": "iwae"}, posterior_options=("gaussian", "laplace"),
    reference_training={"warmup_epochs": 0},         # the authors' code and MultiVae: no KL warm-up
    properties=Properties(
        aggregated_inference="c: MoE (uniform mixture of the unimodal experts)", missing_modalities=True,
        modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Palumbo et al. 2023, MMVAE+ (stratified looser IWAE, DReG)", equations="eq. 28 (not in the survey)",
        notes="private w_m per modality (default 4 dims); cross-modal generation draws w from the learned "
              "auxiliary prior r_m (option generation_prior=joint: from p, as the reference's test-time "
              "generation); option posterior: gaussian (default) or laplace (as the reference); "
              "option learn_prior: p(c, w_m) learns its scales (MultiVae's learn_shared_prior)"))
