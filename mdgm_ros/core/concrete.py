"""The concrete (Gumbel-softmax) relaxation of categorical latents (Maddison et al. 2017; Jang et al.
2017): a latent vector of D entries is G = D / K groups of K categories, each group a point on the
(K-1)-simplex.

Experts give unnormalised logits (B, D). A product of categorical experts adds their log-probabilities
(the uniform prior adds a constant), so the PoE of any subset, the empty one included, is closed form.
Sampling is c = softmax((logits + g) / tau), g ~ Gumbel(0, 1); its density on the simplex is

    log p(c) = log (K-1)! + (K-1) log tau + sum_k (l_k - (tau + 1) log c_k) - K logsumexp_k (l_k - tau log c_k)

per group; the prior is the same with l = 0 (uniform). Relaxed densities are unbounded as q sharpens
(their KL grows with the logit gap, where the categorical's is at most log K), so objectives penalise
the categorical log-pmf at the relaxed sample (:func:`soft_log_pmf`) and keep the densities for
importance weights.
"""
from __future__ import annotations

import math

import torch


def grouped(x: torch.Tensor, categories: int) -> torch.Tensor:
    """(..., D) -> (..., G, K)."""
    return x.unflatten(-1, (x.shape[-1] // categories, categories))


def product_logits(logits: torch.Tensor, mask: torch.Tensor, categories: int) -> torch.Tensor:
    """Logits of the product of the observed categorical experts (and the uniform prior): sum over the
    observed m of log softmax(logits[m]) per group. ``logits`` (M, B, D), ``mask`` (B, M) -> (B, D); a row
    with nothing observed gets zeros (the uniform prior)."""
    log_probs = torch.log_softmax(grouped(logits, categories), dim=-1).flatten(-2)
    observed = mask.t().unsqueeze(-1)
    return torch.where(observed, log_probs, torch.zeros((), dtype=logits.dtype, device=logits.device)).sum(0)


def probabilities(logits: torch.Tensor, categories: int) -> torch.Tensor:
    """Category probabilities per group, flattened back to (..., D)."""
    return torch.softmax(grouped(logits, categories), dim=-1).flatten(-2)


def summary(logits: torch.Tensor, categories: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log-variance) of the one-hot categorical: p and log p(1 - p)."""
    p = probabilities(logits, categories)
    return p, torch.log((p * (1.0 - p)).clamp_min(1e-12))


def sample(logits: torch.Tensor, temperature: float, categories: int, n_samples: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot samples (reparameterised): (B, D), or (n, B, D) with ``n_samples``."""
    shape = logits.shape if n_samples is None else (n_samples, *logits.shape)
    u = torch.rand(shape, dtype=logits.dtype, device=logits.device, generator=generator)
    tiny = torch.finfo(logits.dtype).tiny
    gumbel = -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))
    return probabilities((logits + gumbel) / temperature, categories)


def log_prob(c: torch.Tensor, logits: torch.Tensor, temperature: float, categories: int) -> torch.Tensor:
    """Concrete log-density of relaxed one-hot ``c`` per group (broadcasting c and logits): (..., G)."""
    log_c = torch.log(grouped(c, categories).clamp_min(torch.finfo(c.dtype).tiny))
    l = grouped(logits, categories)
    k = categories
    const = math.lgamma(k) + (k - 1) * math.log(temperature)
    return (const + (l - (temperature + 1.0) * log_c).sum(-1)
            - k * torch.logsumexp(l - temperature * log_c, dim=-1))


def prior_log_prob(c: torch.Tensor, temperature: float, categories: int) -> torch.Tensor:
    """log p(c) under the uniform concrete prior, summed over groups: (...)."""
    return log_prob(c, torch.zeros_like(c), temperature, categories).sum(-1)


def soft_log_pmf(c: torch.Tensor, logits: torch.Tensor, categories: int) -> torch.Tensor:
    """The categorical log-pmf at a relaxed one-hot c, sum_k c_k log softmax(l)_k per group (broadcasting
    c and logits): (..., G). Bounded (<= 0); at tau -> 0, c is one-hot and this is log q(k) of the exact
    categorical sample k = argmax(l + g) (the Gumbel-max trick)."""
    log_p = torch.log_softmax(grouped(logits, categories), dim=-1)
    return (grouped(c, categories) * log_p).sum(-1)


def kl_to_uniform(logits: torch.Tensor, categories: int) -> torch.Tensor:
    """KL(Cat(softmax(logits)) || uniform), summed over groups: (...). (A diagnostic term.)"""
    log_p = torch.log_softmax(grouped(logits, categories), dim=-1)
    return (log_p.exp() * (log_p + math.log(categories))).sum((-1, -2))
