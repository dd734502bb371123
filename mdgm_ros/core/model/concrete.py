"""The concrete (Gumbel-softmax) relaxation of categorical latents (Maddison et al. 2017; Jang et al.
2017): a latent vector of D entries is G = D / K groups of K categories, each group a point on the
(K-1)-simplex.

Experts give unnormalised logits (B, D). A product of categorical experts adds their log-probabilities
(the uniform prior adds a constant), so the PoE of any subset, the empty one included, is closed form.
Training samples are relaxed, c = softmax((logits + g) / tau), g ~ Gumbel(0, 1), so gradients pass;
inference draws the categorical itself, one_hot(argmax(logits + g)) (the Gumbel-max trick), and
scores it with the pmf. The relaxed densities are not used: as q sharpens they grow without bound
(their KL grows with the logit gap, the categorical's is at most log K) and their small entries
underflow, so objectives penalise the categorical log-pmf at the relaxed sample (:func:`soft_log_pmf`),
which at a one-hot c is the pmf of that category.
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


def gumbel_noise(logits: torch.Tensor, n_samples: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like ``logits``, with a leading sample dimension for ``n_samples``."""
    shape = logits.shape if n_samples is None else (n_samples, *logits.shape)
    u = torch.rand(shape, dtype=logits.dtype, device=logits.device, generator=generator)
    return -torch.log(-torch.log(u.clamp(torch.finfo(logits.dtype).tiny, 1.0 - 1e-7)))


def sample(logits: torch.Tensor, temperature: float, categories: int, n_samples: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot samples (reparameterised): (B, D), or (n, B, D) with ``n_samples``."""
    return probabilities((logits + gumbel_noise(logits, n_samples, generator)) / temperature, categories)


def hard_sample(logits: torch.Tensor, categories: int, n_samples: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact categorical samples as one-hot vectors (Gumbel-max): (B, D), or (n, B, D)."""
    noisy = grouped(logits + gumbel_noise(logits, n_samples, generator), categories)
    return torch.nn.functional.one_hot(noisy.argmax(-1), categories).to(logits.dtype).flatten(-2)


def prior_log_pmf(c: torch.Tensor, categories: int) -> torch.Tensor:
    """log p(c) of the uniform categorical prior, summed over groups: (...)."""
    return torch.full(c.shape[:-1], -(c.shape[-1] // categories) * math.log(categories), dtype=c.dtype,
                      device=c.device)


def soft_log_pmf(c: torch.Tensor, logits: torch.Tensor, categories: int) -> torch.Tensor:
    """The categorical log-pmf at a relaxed one-hot c, sum_k c_k log softmax(l)_k per group (broadcasting
    c and logits): (..., G). Bounded (<= 0); at a one-hot c (tau -> 0, or :func:`hard_sample`) it is
    log q(k) of that category."""
    log_p = torch.log_softmax(grouped(logits, categories), dim=-1)
    return (grouped(c, categories) * log_p).sum(-1)


def kl_to_uniform(logits: torch.Tensor, categories: int) -> torch.Tensor:
    """KL(Cat(softmax(logits)) || uniform), summed over groups: (...). (A diagnostic term.)"""
    log_p = torch.log_softmax(grouped(logits, categories), dim=-1)
    return (log_p.exp() * (log_p + math.log(categories))).sum((-1, -2))
