"""Posterior aggregation as pure tensor functions.

Conventions: experts are stacked as ``mu, logvar`` of shape ``(M, B, D)``; ``mask`` is a boolean
presence mask ``(B, M)`` (True = modality observed in that row). A missing modality contributes zero
precision (PoE) or zero mixture weight (MoE); its expert's numbers are never read, so whatever
placeholder sits there cannot leak into the result (``torch.where``, not multiplication).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import torch

LOGVAR_MIN = -10.0
LOGVAR_MAX = 10.0
_LOG_2PI = math.log(2.0 * math.pi)


def clamp_logvar(logvar: torch.Tensor) -> torch.Tensor:
    return logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps; with ``n_samples`` a leading sample dimension is added."""
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension (broadcasting)."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z ** 2 + _LOG_2PI).sum(-1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, var) || N(0, I)), summed over the last dimension."""
    return 0.5 * (torch.exp(logvar) + mu ** 2 - 1.0 - logvar).sum(-1)


def kl_gaussians(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                 logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)), summed over the last dimension."""
    return 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p)
                  - 1.0).sum(-1)


def product_of_experts(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor,
                       include_prior: bool | torch.Tensor = True,
                       weights: torch.Tensor | None = None,
                       prior_weight: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of Gaussian experts (optionally with the N(0, I) prior expert), in log space.

    Precision T = w_0 [prior] + sum_m w_m / sigma_m^2 over present m; mean = (sum_m w_m mu_m / sigma_m^2) / T.
    ``weights`` (M, B) or (M,) scale each expert's precision (a weighted geometric mean, as in the mmJSD
    dynamic prior); ``include_prior`` is a bool or a per-row bool tensor (B,). A row with no present
    expert and no prior falls back to the prior, so the empty subset always gives N(0, I).
    Returns ``(mu, logvar)`` of shape (B, D).
    """
    n_mod, batch, dim = mu.shape
    logvar = clamp_logvar(logvar)
    present = mask.t().unsqueeze(-1)                                   # (M, B, 1)
    log_w = torch.zeros((n_mod, batch, 1), dtype=mu.dtype, device=mu.device)
    if weights is not None:
        w = weights if weights.dim() == 2 else weights[:, None].expand(n_mod, batch)
        log_w = torch.log(w.to(mu.dtype)).unsqueeze(-1)
    neg_inf = torch.tensor(float("-inf"), dtype=mu.dtype, device=mu.device)
    log_prec = torch.where(present, log_w - logvar, neg_inf)          # (M, B, D)

    with_prior = torch.as_tensor(include_prior, device=mu.device).expand(batch)
    with_prior = with_prior | ~mask.any(dim=1)                          # empty subset -> prior
    log_prior_w = torch.log(torch.as_tensor(prior_weight, dtype=mu.dtype, device=mu.device))
    prior_term = torch.where(with_prior[:, None], log_prior_w.expand(batch, 1), neg_inf).expand(batch, dim)
    all_log_prec = torch.cat([log_prec, prior_term.unsqueeze(0)], dim=0)  # (M+1, B, D)
    log_total = torch.logsumexp(all_log_prec, dim=0)
    share = torch.exp(all_log_prec[:-1] - log_total)                  # each expert's share of precision
    safe_mu = torch.where(present, mu, torch.zeros_like(mu))
    joint_mu = (share * safe_mu).sum(0)                                 # prior mean is 0
    return joint_mu, clamp_logvar(-log_total)


def dense_product_with_leave_one_out(mu: torch.Tensor, logvar: torch.Tensor, joint_prior: bool = True,
                                     loo_prior: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PoE of M experts that are *all* present, and the M leave-one-out products.

    Closed form over precisions P_m = exp(-logvar_m): T = [1] + sum_m P_m, mean = sum_m P_m mu_m / T,
    leave-one-out T_-m = T - P_m; ``joint_prior`` / ``loo_prior`` say whether the joint / the
    leave-one-out products have the N(0, I) expert (a leave-one-out set that is empty always gets it, as
    in :func:`product_of_experts`). The same maths as the masked path without the masking: the fast
    path of a live fusion step. Returns the joint mean (B, D), the joint std (B, D) and the
    leave-one-out means (M, B, D)."""
    precision = torch.exp(-clamp_logvar(logvar))
    weighted = precision * mu
    sum_precision = precision.sum(0)
    total_weighted = weighted.sum(0)
    total_precision = sum_precision + float(joint_prior)
    loo_prior_precision = 1.0 if loo_prior or mu.shape[0] == 1 else 0.0
    loo_mean = exclusive_sums(weighted) / (exclusive_sums(precision) + loo_prior_precision)
    return total_weighted / total_precision, total_precision.rsqrt(), loo_mean


def exclusive_sums(x: torch.Tensor) -> torch.Tensor:
    """``out[m] = sum of x[j] for j != m`` along dim 0, from prefix and suffix sums: never the total minus
    ``x[m]``, which in float32 loses everything but ``x[m]`` when one term dominates (an expert far more
    precise than the rest: its leave-one-out product would come out 0 / 0)."""
    zero = torch.zeros_like(x[:1])
    before = torch.cat([zero, x[:-1].cumsum(0)])
    after = torch.cat([x[1:].flip(0).cumsum(0).flip(0), zero])
    return before + after


def subset_product_of_experts(mu: torch.Tensor, logvar: torch.Tensor, subset: torch.Tensor,
                              present: torch.Tensor, proper_subsets_include_prior: bool
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """PoE of ``subset`` (B, M). With ``proper_subsets_include_prior`` (MVAE) every subset's product has
    the prior expert; without it (MoPoE) only the subset of *all* the model's modalities has it, as in
    the reference code (thomassutter/MoPoE and MultiVae's ``poe_fusion`` add the prior iff the subset
    holds every modality): a row that observes only some modalities, in training or at inference, gets
    the same prior-free product as that subset inside the mixture. ``present`` is the observed set; it
    is kept for the callers' symmetry and does not change the rule."""
    include = subset.all(dim=1) | torch.as_tensor(proper_subsets_include_prior, device=mu.device)
    return product_of_experts(mu, logvar, subset, include_prior=include)


def all_subset_products(mu: torch.Tensor, logvar: torch.Tensor, subsets: torch.Tensor,
                        include_prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PoE of every subset at once: ``subsets`` (S, M) bool, ``include_prior`` (S,) bool; experts
    (M, B, D) as everywhere (all read: callers drop the subsets a row does not observe). Returns
    ``(mu, logvar)`` of shape (S, B, D), the same numbers as :func:`product_of_experts` per subset
    (clamped log-variances), by two matrix products over the precisions instead of a loop."""
    n_mod, batch, dim = mu.shape
    precision = torch.exp(-clamp_logvar(logvar)).reshape(n_mod, batch * dim)
    weights = subsets.to(mu.dtype)
    total = weights @ precision + include_prior.to(mu.dtype)[:, None]          # (S, B*D)
    mean = (weights @ (precision * mu.reshape(n_mod, batch * dim))) / total
    shape = (subsets.shape[0], batch, dim)
    return mean.reshape(shape), clamp_logvar(-torch.log(total)).reshape(shape)


def _clamped_gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return gaussian_log_prob(z, mu, clamp_logvar(logvar))


def mixture_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor,
                     component_log_prob: Callable[..., torch.Tensor] = _clamped_gaussian_log_prob
                     ) -> torch.Tensor:
    """log q(z) of the uniform mixture of the present experts, each ``component_log_prob(z, mu, logvar)``
    (default: Gaussian, log-variance clamped).

    ``z`` (..., B, D); ``mu``/``logvar`` (M, B, D). Returns (..., B). Rows with no expert give -inf.
    """
    lead = z.dim() - 2
    mu_e = mu.reshape(mu.shape[0], *([1] * lead), *mu.shape[1:])
    comp = component_log_prob(z.unsqueeze(0), mu_e, logvar.reshape(mu_e.shape))   # (M, ..., B)
    present = mask.t().reshape(mask.shape[1], *([1] * lead), mask.shape[0])
    comp = torch.where(present, comp, torch.tensor(float("-inf"), dtype=z.dtype, device=z.device))
    n_present = mask.sum(1).to(z.dtype)
    return torch.logsumexp(comp, dim=0) - torch.log(n_present)


def stratified_mixture_samples(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """K reparameterised samples from every expert: (M, K, B, D). Callers mask out missing experts."""
    return reparameterize(mu.unsqueeze(1).expand(-1, n_samples, -1, -1),
                          clamp_logvar(logvar).unsqueeze(1).expand(-1, n_samples, -1, -1),
                          None, generator)


def mixture_moments(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of the uniform mixture of present experts (moment matching).
    Rows with no present expert give the prior."""
    w = mask.t().unsqueeze(-1).to(mu.dtype)                            # (M, B, 1)
    n = w.sum(0).clamp_min(1.0)
    safe_mu = torch.where(w > 0, mu, torch.zeros_like(mu))
    var = torch.where(w > 0, torch.exp(clamp_logvar(logvar)), torch.zeros_like(mu))
    mean = (w * safe_mu).sum(0) / n
    second = (w * (var + safe_mu ** 2)).sum(0) / n
    empty = ~mask.any(1, keepdim=True)
    mean = torch.where(empty, torch.zeros_like(mean), mean)
    variance = torch.where(empty, torch.ones_like(mean), (second - mean ** 2).clamp_min(1e-8))
    return mean, clamp_logvar(torch.log(variance))


def enumerate_subsets(n_modalities: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All non-empty subsets of M modalities as a bool tensor (2^M - 1, M), smallest first."""
    rows = [c for k in range(1, n_modalities + 1) for c in itertools.combinations(range(n_modalities), k)]
    out = torch.zeros((len(rows), n_modalities), dtype=torch.bool, device=device)
    for i, idx in enumerate(rows):
        out[i, list(idx)] = True
    return out


def sample_present_subsets(mask: torch.Tensor, generator: torch.Generator | None = None,
                           max_rounds: int = 64) -> torch.Tensor:
    """One subset per row, uniform over the non-empty subsets of that row's present modalities.

    Each present modality is kept with probability 1/2 and empty draws are redrawn (rejection), which
    is exactly uniform over the 2^n - 1 non-empty subsets. Rows with nothing present stay empty.
    """
    subset = torch.zeros_like(mask)
    todo = mask.any(1)
    for _ in range(max_rounds):
        if not bool(todo.any()):
            return subset
        coin = torch.rand(mask.shape, device=mask.device, generator=generator) < 0.5
        draw = coin & mask
        accept = todo & draw.any(1)
        subset = torch.where(accept[:, None], draw, subset)
        todo = todo & ~accept
    # Astronomically unlikely; fall back to the full present set for what is left.
    return torch.where(todo[:, None], mask, subset)
