r"""MMVAE (Shi et al., 2019): a mixture-of-experts posterior trained with the stratified "looser"
importance-weighted bound, with DReG gradients.

.. math::
    q(z|X_O) = \\frac{1}{|O|}\\sum_{m\\in O} q(z|x_m)

    \\mathcal{L}(X_O) = \\frac{1}{|O|}\\sum_{m\\in O}\\mathbb{E}_{z^{1:K}\\sim q(z|x_m)}
        \\Big[\\log\\frac{1}{K}\\sum_{k=1}^{K}
        \\frac{p(z^k)^{\\beta}\\prod_{n\\in O}p(x_n|z^k)^{\\lambda_n}}{q(z^k|X_O)^{\\beta}}\\Big]

K samples are drawn from *each* expert (stratified); the average over experts sits outside the log
("looser"); every importance weight's denominator is the full mixture density q(z|X_O).

Estimators (option ``estimator``):

* ``"dreg"`` (training): doubly-reparameterised gradients. The mixture density is evaluated with
  detached parameters and a gradient hook on z rescales its gradient by the normalised weights, so the
  encoder gets sum_k w~_k^2 dlw_k/dz dz/dphi. It needs autograd: under ``no_grad`` it raises.
* ``"iwae"``: the plain bound, for evaluation (runs under ``no_grad``).

The returned ``terms["iwae"]`` is always the bound's value; for DReG ``loss`` is a surrogate whose
gradients are right but whose value is not the bound. Options: ``K`` (samples per expert, default 8);
``fast`` (default True): the M*K*B samples are decoded in one decoder call per modality, on the
(expert, row) pairs whose expert is observed and, per modality, the rows that observe it; for DReG
that pass runs without graph, and the decoders' graph is built again only for the samples whose
normalised weight is not negligible (below 1e-12), the only ones with a gradient. ``fast=False`` is
the previous code path (every expert's samples on every row decoded with graph, then masked), which
``bench train`` times beside the new one. Both give the same bound and gradients. ``posterior``
(``"gaussian"``, default, or ``"laplace"``): the experts, the prior and the mixture as Gaussians, or as
Laplace distributions with softmax-normalised scales and a Laplace(0, 1) prior, as in the reference code
and MultiVae (:mod:`..latent_distributions`). ``learn_prior`` (default True, as MultiVae's MMVAE; False in
bundles of format version 1): p(z) keeps mean 0 and learns its scales (``model.extra["prior"]``,
:class:`..latent_distributions.LearnedScalePrior`); the bound, the joint NLL, generation from the empty
set and its density all use it. False: the fixed N(0, I) (or Laplace(0, 1)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..model.family import Family, FamilyError, ObjectiveOutput, Properties
from ..model.latent_distributions import GAUSSIAN, GaussianLatent, LearnedScalePrior, distribution_named
from ..model.vae import MultimodalVAE
from .common import dreg_surrogate, dreg_weights, masked_mean_over_experts, weighted_reconstruction

PRIOR = "prior"


def learns_prior(options: Mapping[str, object], family: str = "mmvae") -> bool:
    """The objective option ``learn_prior`` (a bool; the config holds it, :attr:`FAMILY.option_defaults`)."""
    value = options.get("learn_prior", False)
    if not isinstance(value, bool):
        raise FamilyError(f"{family}: objective option 'learn_prior' must be true or false, got {value!r}")
    return value


def check_learn_prior(model: MultimodalVAE, learn_prior: bool | None) -> None:
    """The objective option, where given, must be what the model was built with (None: the model's)."""
    if learn_prior is not None and learn_prior != (PRIOR in model.extra):
        raise ValueError(f"objective option learn_prior={learn_prior!r} differs from the model's "
                         f"({PRIOR in model.extra})")


def prior_log_prob(model: MultimodalVAE, z: torch.Tensor, dist: GaussianLatent) -> torch.Tensor:
    """log p(z) for z (..., D): the learned prior where the model has one, else the fixed one."""
    if PRIOR in model.extra:
        mean, logvar = model.extra[PRIOR]()
        return dist.log_prob(z, mean[0], logvar[0])
    return dist.prior_log_prob(z)


def observed_expert_reconstruction(model: MultimodalVAE, feats: Mapping[str, torch.Tensor],
                                   z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_n lambda_n log p(x_n | z) for z (M, K, B, D) on the (expert m, row b) pairs with m observed in
    b (0 elsewhere): one decoder call per modality over the K samples of all such pairs. (M, K, B)."""
    n_mod, k, batch, dim = z.shape
    pair_expert, pair_row = mask.t().nonzero(as_tuple=True)                  # (P,) expert-major
    z_pairs = z[pair_expert, :, pair_row].transpose(0, 1)                    # (K, P, D)
    recon = weighted_reconstruction(model, {n: x.index_select(0, pair_row) for n, x in feats.items()},
                                    z_pairs, mask.index_select(0, pair_row))  # (K, P)
    out = torch.zeros((n_mod * batch, k), dtype=z.dtype, device=z.device)
    out = out.index_copy(0, pair_expert * batch + pair_row, recon.t())
    return out.reshape(n_mod, batch, k).transpose(1, 2)


def log_weights_at(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], z: torch.Tensor, q_mu: torch.Tensor,
                   q_lv: torch.Tensor, mask: torch.Tensor, beta: float, fast: bool = True,
                   dist: GaussianLatent = GAUSSIAN) -> torch.Tensor:
    """log importance weights (M, K, B) of the samples z (M, K, B, D)."""
    log_q = dist.mixture_log_prob(z, q_mu, q_lv, mask)
    log_prior = prior_log_prob(model, z, dist)
    if fast:
        recon = observed_expert_reconstruction(model, feats, z, mask)
    else:
        recon = weighted_reconstruction(model, feats, z, mask, skip_missing=False)
    return recon + beta * (log_prior - log_q)


def log_weights(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
                logvar: torch.Tensor, mask: torch.Tensor, K: int, beta: float, detach_q: bool,
                generator: torch.Generator | None = None, fast: bool = True, dist: GaussianLatent = GAUSSIAN
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified samples z (M, K, B, D) and log importance weights (M, K, B)."""
    z = dist.stratified(mu, logvar, K, generator)
    q_mu, q_lv = (mu.detach(), logvar.detach()) if detach_q else (mu, logvar)
    return z, log_weights_at(model, feats, z, q_mu, q_lv, mask, beta, fast, dist)


def dreg_on_weighted_samples(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
                             logvar: torch.Tensor, mask: torch.Tensor, K: int, beta: float,
                             generator: torch.Generator | None, dist: GaussianLatent = GAUSSIAN
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(surrogate, bound) per row, DReG. The weights come from a pass without graph over all M*K*B
    samples; the graph (decoders forward and backward) is built only for the samples whose normalised
    weight is not negligible (:func:`.common.dreg_weights`), the only ones with a gradient: on a
    trained model one in K or so, since image likelihoods put the log-weights tens of nats apart."""
    z = dist.stratified(mu, logvar, K, generator)                                   # graph to the encoders
    present = mask.t().unsqueeze(1)
    q_mu, q_lv = mu.detach(), logvar.detach()
    with torch.no_grad():
        lw = log_weights_at(model, feats, z.detach(), q_mu, q_lv, mask, beta, dist=dist)
        lw = torch.where(present, lw, torch.zeros_like(lw))
    weights = dreg_weights(lw, present)
    bound = masked_mean_over_experts(torch.logsumexp(lw, dim=1) - math.log(K), mask)
    expert, sample, row = weights.nonzero(as_tuple=True)
    z_kept, w_kept = z[expert, sample, row], weights[expert, sample, row]                 # (N, D), (N,)
    recon = weighted_reconstruction(model, {n: x.index_select(0, row) for n, x in feats.items()},
                                    z_kept, mask.index_select(0, row))
    log_q = dist.mixture_log_prob(z_kept, q_mu[:, row], q_lv[:, row], mask.index_select(0, row))
    lw_kept = recon + beta * (prior_log_prob(model, z_kept, dist) - log_q)
    if z_kept.requires_grad:
        z_kept.register_hook(lambda grad: (w_kept.unsqueeze(-1) * grad).to(grad.dtype))
    return dreg_surrogate(lw_kept, w_kept, expert, row, mask), bound


def model_distribution(model: MultimodalVAE, posterior: str) -> GaussianLatent:
    """The latent distribution the option ``posterior`` names; it must be the one the model's experts
    were read with (its config's)."""
    dist = distribution_named(posterior)
    if dist is not model.latent_dist:
        raise ValueError(f"objective option posterior={posterior!r} differs from the model's "
                         f"{model.latent_dist.name!r}")
    return dist


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, K: int = 8,
              estimator: str = "dreg", fast: bool = True, posterior: str = "gaussian",
              learn_prior: bool | None = None) -> ObjectiveOutput:
    if estimator not in ("dreg", "iwae"):
        raise ValueError(f"MMVAE estimator must be 'dreg' or 'iwae', got {estimator!r}")
    dist = model_distribution(model, posterior)
    check_learn_prior(model, learn_prior)
    if estimator == "dreg" and not torch.is_grad_enabled():
        raise RuntimeError("the DReG estimator registers a gradient hook and cannot run under no_grad; "
                           "evaluate with estimator='iwae'")
    mu, logvar = model.experts(feats, mask)
    if estimator == "dreg" and fast:
        surrogate, iwae = dreg_on_weighted_samples(model, feats, mu, logvar, mask, K, beta, generator, dist)
        return ObjectiveOutput(-surrogate, {"iwae": iwae.detach()})
    z, lw = log_weights(model, feats, mu, logvar, mask, K, beta, detach_q=(estimator == "dreg"),
                        generator=generator, fast=fast, dist=dist)
    present = mask.t().unsqueeze(1)                                           # (M, 1, B)
    lw = torch.where(present, lw, torch.zeros_like(lw))
    iwae_each = torch.logsumexp(lw, dim=1) - math.log(K)                       # (M, B)
    iwae = masked_mean_over_experts(iwae_each, mask)
    if estimator == "iwae":
        return ObjectiveOutput(-iwae, {"iwae": iwae.detach()})
    grad_wt = dreg_weights(lw, present)
    if z.requires_grad:
        z.register_hook(lambda grad: (grad_wt.unsqueeze(-1) * grad).to(grad.dtype))
    surrogate = masked_mean_over_experts((grad_wt * lw).sum(1), mask)
    return ObjectiveOutput(-surrogate, {"iwae": iwae.detach()})


@dataclass(frozen=True)
class MMVAEFamily(Family):
    """MMVAE: a MoE family whose prior may learn its scales (option ``learn_prior``)."""

    def build_networks(self, model: MultimodalVAE) -> dict[str, nn.Module]:
        if not learns_prior(model.config.family_options):
            return {}
        return {PRIOR: LearnedScalePrior(1, model.latent_dim, model.latent_dist)}

    def prior_moments(self, model, like):
        if PRIOR not in model.extra:
            return super().prior_moments(model, like)
        mean, logvar = model.extra[PRIOR]()
        return mean[0].to(like.dtype).expand_as(like), logvar[0].to(like.dtype).expand_as(like)

    def prior_log_prob(self, model, z):
        return prior_log_prob(model, z, model.latent_dist)


FAMILY = MMVAEFamily(
    name="mmvae", objective_fn=objective, fusions=("moe",), default_fusion="moe",
    eval_options={"estimator": "iwae"}, posterior_options=("gaussian", "laplace"),
    option_defaults={"learn_prior": True}, format1_option_defaults={"learn_prior": False},
    reference_training={"warmup_epochs": 0},         # MultiVae and the reference code: no KL warm-up
    properties=Properties(
        aggregated_inference="MoE (uniform mixture of the unimodal experts)", missing_modalities=True,
        modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Shi et al. 2019, MMVAE (stratified looser IWAE, DReG)",
        notes="option posterior: gaussian (default) or laplace (softmax-normalised scales, as the reference); "
              "option learn_prior (default true, as MultiVae): the prior learns its scales"))
