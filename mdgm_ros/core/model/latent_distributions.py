"""The distribution of the shared (and private) latents of the mixture families (MMVAE, MMVAE+): their
posteriors, priors and, for MMVAE+, the auxiliary prior.

A distribution is carried as its mean and the log of its variance (``mu``, ``logvar``), as the Gaussian
experts are everywhere else, so moment matching, the published standard deviations, the Fuser and the
bundles need no change; only sampling and densities differ.

* ``gaussian`` (default): N(mu, diag exp(logvar)), prior N(0, I) (the :mod:`.posterior` functions).
* ``laplace``: independent Laplace(mu_d, b_d) with variance 2 b_d^2, prior Laplace(0, 1). The encoder's
  second output r gives the scales b = softmax(r) * D + 1e-6, so a posterior's scales sum to D over its D
  dimensions: the parameterisation of the MMVAE and MMVAE+ reference code and MultiVae's default
  (``prior_and_posterior_dist="laplace_with_softmax"``).

A family chooses with its objective option ``posterior`` (:func:`distribution_named`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import posterior as post

_LOG_2 = math.log(2.0)


class GaussianLatent:
    """N(mu, diag exp(logvar)); the encoder's second output is the log-variance itself."""

    name = "gaussian"

    def from_encoder(self, second: torch.Tensor) -> torch.Tensor:
        """The encoder's second output (already clamped) -> log-variance."""
        return second

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor, n_samples: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return post.reparameterize(mu, logvar, n_samples, generator)

    def log_prob(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return post.gaussian_log_prob(z, mu, logvar)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return post.standard_normal_log_prob(z)

    def prior_logvar(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like)

    def stratified(self, mu: torch.Tensor, logvar: torch.Tensor, n_samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """K samples from every expert (M, B, D) -> (M, K, B, D)."""
        return post.stratified_mixture_samples(mu, logvar, n_samples, generator)

    def mixture_log_prob(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
        return post.mixture_log_prob(z, mu, logvar, mask)


class LaplaceLatent(GaussianLatent):
    """Laplace(mu, b) per dimension, b = sqrt(exp(logvar) / 2); scales from the encoder by softmax."""

    name = "laplace"

    def from_encoder(self, second: torch.Tensor) -> torch.Tensor:
        scale = torch.softmax(second, dim=-1) * second.shape[-1] + 1e-6
        return _LOG_2 + 2.0 * torch.log(scale)

    @staticmethod
    def scale(logvar: torch.Tensor) -> torch.Tensor:
        return torch.exp(0.5 * (logvar - _LOG_2))

    def sample(self, mu, logvar, n_samples=None, generator=None):
        shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
        u = torch.rand(shape, dtype=mu.dtype, device=mu.device, generator=generator) * 2.0 - 1.0
        u = u.clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        return mu - self.scale(logvar) * torch.sign(u) * torch.log1p(-u.abs())   # inverse CDF, reparameterised

    def log_prob(self, z, mu, logvar):
        scale = self.scale(logvar)
        return -((z - mu).abs() / scale + torch.log(2.0 * scale)).sum(-1)

    def prior_log_prob(self, z):
        return -(z.abs() + _LOG_2).sum(-1)

    def prior_logvar(self, like):
        return torch.full_like(like, _LOG_2)

    def stratified(self, mu, logvar, n_samples, generator=None):
        expand = (-1, n_samples, -1, -1)
        return self.sample(mu.unsqueeze(1).expand(*expand), logvar.unsqueeze(1).expand(*expand), None, generator)

    def mixture_log_prob(self, z, mu, logvar, mask):
        return post.mixture_log_prob(z, mu, logvar, mask, component_log_prob=self.log_prob)


class LearnedScalePrior(nn.Module):
    """R zero-mean priors with learned scales, parameters ``logvar`` (R, D) initialised at 0: N(0, diag
    exp(rho)), or a Laplace whose scales are softmax(rho) * D (``dist``.from_encoder), as MultiVae's learned
    priors. Returns (mean, log-variance), (R, D) each."""

    def __init__(self, rows: int, dim: int, dist: GaussianLatent):
        super().__init__()
        self.logvar = nn.Parameter(torch.zeros(rows, dim))
        self.dist = dist

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        logvar = self.dist.from_encoder(post.clamp_logvar(self.logvar))
        return torch.zeros_like(logvar), logvar


DISTRIBUTIONS = {d.name: d for d in (GaussianLatent(), LaplaceLatent())}
GAUSSIAN = DISTRIBUTIONS["gaussian"]


def distribution_named(name: str) -> GaussianLatent:
    try:
        return DISTRIBUTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"objective option 'posterior' must be one of {sorted(DISTRIBUTIONS)}, "
                         f"got {name!r}") from None
