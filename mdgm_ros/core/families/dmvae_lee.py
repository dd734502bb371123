"""DMVAE of Lee & Pavlovic 2021 (the survey's ref. [48], "private-shared disentangled multimodal VAE"): a
PoE over the shared experts, every modality reconstructed from every expert's c (cross-modal and
self reconstruction) with its own s_m, and the KL terms split as in β-TCVAE with a weighted
total-correlation penalty.

.. math::
    q(c|X_O) = \\mathrm{PoE}\\big(p(c), \\{q(c|x_m)\\}_{m\\in O}\\big),\\qquad q(s_m|x_m)\\ \\text{per modality}

    \\mathcal{L}(X_O) = \\sum_{e\\in\\{O\\}\\cup O}\\mathbb{E}_{q_e(c)\\prod_n q(s_n|x_n)}
        \\Big[\\sum_{n\\in O}\\lambda_n\\log p(x_n|c, s_n)\\Big]
        - \\beta\\sum_{e\\in\\{O\\}\\cup O} R(q_e(c)) - \\beta\\sum_{n\\in O} R(q(s_n|x_n))

    R(q) = \\alpha\\,\\underbrace{\\big[\\log q(z|x) - \\log q(z)\\big]}_{\\text{index-code MI}}
         + \\beta_{tc}\\,\\underbrace{\\big[\\log q(z) - \\textstyle\\sum_d\\log q(z_d)\\big]}_{\\text{total correlation}}
         + \\gamma\\,\\underbrace{\\big[\\textstyle\\sum_d\\log q(z_d) - \\log p(z)\\big]}_{\\text{dimension-wise KL}}

(q_e: the PoE of the observed set, e = {O}, or the unimodal expert q(c|x_e)). With α = β_tc = γ = 1,
R is the one-sample estimate of KL(q||p) and L is an ELBO per expert; β_tc > 1 penalises the total
correlation (Chen et al. 2018). The aggregate q(z) and its marginals q(z_d) are estimated by
minibatch-weighted sampling over the batch rows j that have the expert:
log q(z_i) ≈ logsumexp_j log q(z_i|x_j) - log(N·B'), with N the data-set size (option
``dataset_size``; None: the batch is taken as the data set, normaliser log B'). A batch term: each
row's value depends on the other rows of its batch.

Options: ``tc_weight`` (β_tc, 2.0), ``mi_weight`` (α, 1.0), ``dim_kl_weight`` (γ, 1.0),
``dataset_size`` (None). The concrete (Gumbel-softmax) discrete shared latent of the paper is not
implemented: c is Gaussian.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from .. import posterior as post
from ..model import MultimodalVAE
from .base import Properties
from .common import ObjectiveOutput
from .private import PrivateFamily, private_reconstruction
from .surrogate import masked


def per_dim_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z_i,d; mu_j,d, var_j,d) for every pair of rows: (B, B, D)."""
    z, mu, logvar = z[:, None], mu[None], logvar[None]
    return -0.5 * (post._LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, rows: torch.Tensor,
                     dataset_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index-code MI, total correlation, dimension-wise KL) of q at its samples z (B, D), estimated over
    the batch rows ``rows`` (B,); 0 on the other rows."""
    pairs = per_dim_log_prob(z, mu, logvar)
    pairs = torch.where(rows[None, :, None], pairs, torch.full((), -math.inf, dtype=z.dtype, device=z.device))
    count = rows.sum().clamp_min(1).to(z.dtype)
    norm = torch.log(count * dataset_size) if dataset_size else torch.log(count)
    log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - norm
    log_marginals = (torch.logsumexp(pairs, dim=1) - norm).sum(-1)
    log_q_given_x = post.gaussian_log_prob(z, mu, logvar)
    log_p = post.standard_normal_log_prob(z)
    parts = (log_q_given_x - log_qz, log_qz - log_marginals, log_marginals - log_p)
    return tuple(masked(p, rows) for p in parts)


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, tc_weight: float = 2.0,
              mi_weight: float = 1.0, dim_kl_weight: float = 1.0, dataset_size: int | None = None
              ) -> ObjectiveOutput:
    weights = (mi_weight, tc_weight, dim_kl_weight)
    mu, logvar = model.experts(feats, mask)
    s_mu, s_lv = model.private_experts(feats, mask)
    s = post.reparameterize(s_mu, s_lv, generator=generator)                         # (M, B, P)
    poe_mu, poe_lv = model.subset_posterior(mu, logvar, mask)
    experts = [("poe", poe_mu, poe_lv, mask.any(1))]
    experts += [(name, mu[j], logvar[j], mask[:, j]) for j, name in enumerate(model.names)]
    recon = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    reg = torch.zeros_like(recon)
    terms: dict[str, torch.Tensor] = {}
    for label, e_mu, e_lv, rows in experts:
        c = post.reparameterize(e_mu, e_lv, generator=generator)
        recon_e = masked(private_reconstruction(model, feats, c, s, mask), rows)
        mi, tc, dim_kl = tc_decomposition(c, e_mu, e_lv, rows, dataset_size)
        terms[f"recon_from_{label}"], terms[f"tc_c_{label}"] = recon_e.detach(), tc.detach()
        recon = recon + recon_e
        reg = reg + weights[0] * mi + weights[1] * tc + weights[2] * dim_kl
    for j, name in enumerate(model.names):
        mi, tc, dim_kl = tc_decomposition(s[j], s_mu[j], s_lv[j], mask[:, j], dataset_size)
        terms[f"tc_s_{name}"] = tc.detach()
        reg = reg + weights[0] * mi + weights[1] * tc + weights[2] * dim_kl
    value = recon - beta * reg
    terms.update(recon=recon.detach(), regulariser=reg.detach(), objective=value.detach())
    return ObjectiveOutput(-value, terms)


FAMILY = PrivateFamily(
    name="dmvae_lee", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference="c: PoE of the unimodal experts with the prior", missing_modalities=True,
        modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Lee & Pavlovic 2021, private-shared disentangled multimodal VAE (DMVAE)",
        equations="ref. [48] (no number); eq. 28 generative model",
        notes="reconstruction of every modality from every expert (PoE and each unimodal c) with the own "
              "s_m; β-TCVAE KL split with a total-correlation weight (minibatch-weighted sampling); "
              "Gaussian c only (the concrete/Gumbel-softmax c is left out)"))
