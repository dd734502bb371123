"""Coordinated models (the survey's sec. 4): one VAE per modality, q(z|x_m) and p(x_m|z), made to agree
by a term between the modalities. The shared machinery of Yin et al., bi-VCCA, CADA-VAE, SCAN, AVAE
and Tian et al.

The survey states each objective for two modalities. With M > 2 a family applies its two-modality
objective L(x_i, x_j) over **every pair** of the modalities a row observes (or every modality against
the pivot, where the paper has one: SCAN); a row that observes a single modality m trains m's own ELBO
(no pair term can be formed). So weakly paired data -- rows where a modality was recorded alone --
still trains that modality's VAE.

Inference (Table 1: no aggregated inference, ×): from one modality, its own posterior q(z|x_m) in the
shared space; from several, the family's documented rule -- here the product of the observed
unimodal posteriors, without a prior expert, so that one modality gives exactly its own posterior (no
term of the objective trains the product itself).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch

from ..model import posterior as post
from ..model.family import Family

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE

INFERENCE = "× (one modality: its own q(z|x_m); several: PoE of the unimodal posteriors, no prior)"


@dataclass(frozen=True)
class CoordinatedFamily(Family):
    """A coordinated family (PoE of the unimodal posteriors, no prior expert, for several modalities)."""

    def inference_rule(self, config=None) -> str:
        return ("one modality: its own encoder q(z|x_m); several: the product of their unimodal posteriors, "
                "no prior expert (not trained as such: Table 1's aggregated inference is ×)")

    def closed_form_poe(self, model: "MultimodalVAE") -> bool:
        return False                   # the Fuser's fast path includes the prior expert

    def posterior_summary(self, model: "MultimodalVAE", mu: torch.Tensor, logvar: torch.Tensor,
                          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(model.names)
        return post.product_of_experts(mu[:n], logvar[:n], mask, include_prior=False)


@dataclass
class Unimodal:
    """Per-modality pieces, computed once per batch: a sample z_m ~ q(z|x_m) (B, D), the weighted
    log-likelihood of x_m under its own sample (B,), KL(q(z|x_m) || p(z)) (B,)."""

    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    loglik: torch.Tensor
    kl: torch.Tensor

    def elbo(self, beta: float) -> torch.Tensor:
        return self.loglik - beta * self.kl


def weighted_loglik(model: "MultimodalVAE", name: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """lambda_m log p(x_m | z) per row (..., B)."""
    return model.log_likelihood(name, x, model.decode(name, z)) * model.specs[name].weight


def unimodal_terms(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
                   logvar: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None,
                   names: tuple[str, ...] | None = None) -> dict[str, Unimodal]:
    """:class:`Unimodal` of every modality in ``names`` (default: all) that some row observes."""
    out = {}
    for j, name in enumerate(model.names):
        if (names is not None and name not in names) or not bool(mask[:, j].any()):
            continue
        z = post.reparameterize(mu[j], logvar[j], generator=generator)
        out[name] = Unimodal(mu[j], logvar[j], z, weighted_loglik(model, name, feats[name], z),
                             post.kl_to_standard_normal(mu[j], logvar[j]))
    return out


def masked(value: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.where(rows, value, torch.zeros_like(value))


def pairs(model: "MultimodalVAE") -> list[tuple[int, int]]:
    """Every unordered pair (i, j), i < j in model order."""
    return list(itertools.combinations(range(len(model.names)), 2))


def pairwise_sum(model: "MultimodalVAE", mask: torch.Tensor,
                 pair_value: Callable[[int, int], torch.Tensor],
                 single_value: Callable[[int], torch.Tensor],
                 terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over the observed pairs (i, j) of pair_value(i, j), plus single_value(m) on the rows that
    observe only m: (B,). ``terms`` gets each pair's and each lone modality's share."""
    total = torch.zeros(mask.shape[0], device=mask.device)
    lone = mask.sum(1) == 1
    for i, j in pairs(model):
        rows = mask[:, i] & mask[:, j]
        if bool(rows.any()):
            value = masked(pair_value(i, j), rows)
            terms[f"pair_{model.names[i]}_{model.names[j]}"] = value.detach()
            total = total + value
    for m, name in enumerate(model.names):
        rows = lone & mask[:, m]
        if bool(rows.any()):
            value = masked(single_value(m), rows)
            terms[f"alone_{name}"] = value.detach()
            total = total + value
    return total


def symmetric_kl(a: Unimodal, b: Unimodal) -> torch.Tensor:
    """KL(q_a || q_b) + KL(q_b || q_a): (B,)."""
    return (post.kl_gaussians(a.mu, a.logvar, b.mu, b.logvar)
            + post.kl_gaussians(b.mu, b.logvar, a.mu, a.logvar))


def wasserstein2(a: Unimodal, b: Unimodal) -> torch.Tensor:
    """2-Wasserstein distance between two diagonal Gaussians (not squared, as CADA-VAE):
    sqrt(||mu_a - mu_b||^2 + ||sigma_a - sigma_b||^2): (B,)."""
    sq = ((a.mu - b.mu) ** 2).sum(-1) + ((torch.exp(0.5 * a.logvar) - torch.exp(0.5 * b.logvar)) ** 2).sum(-1)
    return torch.sqrt(sq + 1e-12)
