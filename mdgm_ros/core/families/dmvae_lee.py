r"""DMVAE of Lee & Pavlovic 2021 (the survey's ref. [48], "private-shared disentangled multimodal VAE"): a
PoE over the shared experts, every modality reconstructed from every expert's c (cross-modal and
self reconstruction) with its own s_m, and the KL terms split as in β-TCVAE with a weighted
total-correlation penalty.

.. math::
    q(c|X_O) = \\mathrm{PoE}\\big(p(c), \\{q(c|x_m)\\}_{m\\in O}\\big),\\qquad q(s_m|x_m)\\ \\text{per modality}

    \\mathcal{L}(X_O) = \\sum_{e\\in\\{O\\}\\cup O}\\mathbb{E}_{q_e(c)\\prod_n q(s_n|x_n)}
        \\Big[\\sum_{n\\in O}\\lambda_n\\log p(x_n|c, s_n)\\Big]
        - \\beta\\sum_{e\\in\\{O\\}\\cup O}\\Big[R(q_e(c)) + \\sum_{n\\in O} R(q(s_n|x_n))\\Big]

    R(q) = \\alpha\\,\\underbrace{\\big[\\log q(z|x) - \\log q(z)\\big]}_{\\text{index-code MI}}
         + \\beta_{tc}\\,\\underbrace{\\big[\\log q(z)
             - \\textstyle\\sum_d\\log q(z_d)\\big]}_{\\text{total correlation}}
         + \\gamma\\,\\underbrace{\\big[\\textstyle\\sum_d\\log q(z_d) - \\log p(z)\\big]}_{\\text{dimension-wise KL}}

(q_e: the PoE of the observed set, e = {O}, or the unimodal expert q(c|x_e)). Each expert's term is an
ELBO of the observed modalities, so the private regularisers count once per expert, |O| + 1 times (the
reference code's and MultiVae's objective; one sample of each s_n serves every expert). With α = β_tc = γ = 1,
R is the one-sample estimate of KL(q||p) and L is an ELBO per expert; β_tc > 1 penalises the total
correlation (Chen et al. 2018). The aggregate q(z) and its marginals q(z_d) are estimated by
minibatch-weighted sampling over the batch rows j that have the expert:
log q(z_i) ≈ logsumexp_j log q(z_i|x_j) - log(N·B'), with N the data-set size (option
``dataset_size``; None: the batch is taken as the data set, normaliser log B'). A batch term: each
row's value depends on the other rows of its batch.

Options: ``tc_weight`` (β_tc, 1.0: the reference code's default, ``--beta1 1``, where the split is the
ELBO's; measured on PolyDigits' seed 0 at 12 epochs, 768-256-256 perceptrons, β_tc = 2 was 0.012-0.023
below it at every k), ``mi_weight`` (α, 1.0), ``dim_kl_weight`` (γ, 1.0),
``dataset_size`` (None), and the shared latent's kind, ``shared``:

* ``"gaussian"`` (default): c ~ N, the unimodal experts and the PoE are Gaussian.
* ``"concrete"``: c is discrete, relaxed by the concrete (Gumbel-softmax) distribution
  (:mod:`..concrete`): ``latent_dim`` = G groups of ``categories`` K (default: one group of
  ``latent_dim``), at ``temperature`` τ (0.66, as the reference code). Each expert gives logits; the
  PoE of categorical experts with the uniform prior adds their log-probabilities; c_e is a relaxed
  one-hot sample that the decoders take, and the decomposition R above runs over the groups (a group
  is one "dimension" d) with the categorical log-pmf at the relaxed sample,
  log q(c|x) = sum_g sum_k c_gk log q_gk (at τ -> 0 the pmf of the exact Gumbel-max sample), the
  prior's being -G log K. (The concrete log-densities themselves, which the reference's probtorch
  objective would use, grow without bound as q sharpens and drove c to the uniform prior in our
  tests.) Inference gives the category probabilities as the mean (std sqrt(p(1 - p))); posterior
  samples are the categorical's own, one-hot (Gumbel-max), scored by the pmf, so IWAE likelihoods are
  those of the discrete model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..model import concrete
from ..model import posterior as post
from ..model.family import ObjectiveOutput, Properties
from ..model.modalities import SpecError
from ..model.vae import MultimodalVAE
from .private import PrivateFamily, private_reconstruction
from .surrogate import masked


@dataclass(frozen=True)
class SharedLatent:
    """The kind of the shared c (option ``shared``) and, for ``"concrete"``, its groups and temperature."""

    kind: str = "gaussian"
    categories: int = 0
    temperature: float = 0.66

    @classmethod
    def from_options(cls, options: Mapping[str, Any], latent_dim: int) -> "SharedLatent":
        kind = options.get("shared", "gaussian")
        if kind not in ("gaussian", "concrete"):
            raise SpecError(f"dmvae_lee option shared must be 'gaussian' or 'concrete', got {kind!r}")
        if kind == "gaussian":
            return cls()
        categories = options.get("categories") or latent_dim
        temperature = options.get("temperature", 0.66)
        if not isinstance(categories, int) or categories < 2 or latent_dim % categories:
            raise SpecError(f"dmvae_lee option categories must be an integer >= 2 dividing latent_dim "
                            f"{latent_dim}, got {categories!r}")
        if not isinstance(temperature, (int, float)) or not 0.05 <= float(temperature) <= 10.0:
            raise SpecError(f"dmvae_lee option temperature must be in [0.05, 10], got {temperature!r}")
        return cls("concrete", int(categories), float(temperature))

    @property
    def discrete(self) -> bool:
        return self.kind == "concrete"

    # q(c | X_O) for the concrete c, from the experts' logits (M, B, D) and the mask (B, M)
    def product(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return concrete.product_logits(logits, mask, self.categories)

    def sample(self, logits: torch.Tensor, n_samples: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return concrete.sample(logits, self.temperature, self.categories, n_samples, generator)

    def hard_sample(self, logits: torch.Tensor, n_samples: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        return concrete.hard_sample(logits, self.categories, n_samples, generator)

    def log_pmf(self, c: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per group: (..., G)."""
        return concrete.soft_log_pmf(c, logits, self.categories)

    def prior_log_pmf(self, c: torch.Tensor) -> torch.Tensor:
        return concrete.prior_log_pmf(c, self.categories)


def shared_latent(model: MultimodalVAE) -> SharedLatent:
    return SharedLatent.from_options(model.config.family_options, model.latent_dim)


def per_dim_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z_i,d; mu_j,d, var_j,d) for every pair of rows: (B, B, D)."""
    z, mu, logvar = z[:, None], mu[None], logvar[None]
    return -0.5 * (post._LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def batch_decomposition(pairs: torch.Tensor, log_q_given_x: torch.Tensor, log_p: torch.Tensor,
                        rows: torch.Tensor, dataset_size: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index-code MI, total correlation, dimension-wise KL) from the per-dimension log-densities of
    every sample i under every row j's q, ``pairs`` (B, B, D'), estimated over the batch rows ``rows``
    (B,) by minibatch-weighted sampling; 0 on the other rows."""
    pairs = torch.where(rows[None, :, None], pairs,
                        torch.full((), -math.inf, dtype=pairs.dtype, device=pairs.device))
    count = rows.sum().clamp_min(1).to(pairs.dtype)
    norm = torch.log(count * dataset_size) if dataset_size else torch.log(count)
    log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - norm
    log_marginals = (torch.logsumexp(pairs, dim=1) - norm).sum(-1)
    parts = (log_q_given_x - log_qz, log_qz - log_marginals, log_marginals - log_p)
    return tuple(masked(p, rows) for p in parts)


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, rows: torch.Tensor,
                     dataset_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decomposition of a Gaussian q at its samples z (B, D)."""
    return batch_decomposition(per_dim_log_prob(z, mu, logvar), post.gaussian_log_prob(z, mu, logvar),
                               post.standard_normal_log_prob(z), rows, dataset_size)


def concrete_tc_decomposition(c: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, latent: SharedLatent,
                              dataset_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decomposition of a categorical q at its relaxed samples c (B, D), one group per dimension,
    with the categorical log-pmf at c (:func:`concrete.soft_log_pmf`; the prior's is -log K a group)."""
    pairs = latent.log_pmf(c[:, None], logits[None])                                # (B, B, G)
    return batch_decomposition(pairs, latent.log_pmf(c, logits).sum(-1), latent.prior_log_pmf(c), rows,
                               dataset_size)


def shared_experts(model: MultimodalVAE, mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor,
                   latent: SharedLatent) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(label, mean or logits, log-variance, rows) of the PoE of the observed set and of each unimodal
    expert."""
    if latent.discrete:
        poe = (latent.product(mu, mask), torch.zeros_like(mu[0]))
    else:
        poe = model.subset_posterior(mu, logvar, mask)
    experts = [("poe", *poe, mask.any(1))]
    return experts + [(name, mu[j], logvar[j], mask[:, j]) for j, name in enumerate(model.names)]


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, tc_weight: float = 1.0,
              mi_weight: float = 1.0, dim_kl_weight: float = 1.0, dataset_size: int | None = None,
              shared: str = "gaussian", categories: int | None = None, temperature: float = 0.66
              ) -> ObjectiveOutput:
    weights = (mi_weight, tc_weight, dim_kl_weight)
    latent = SharedLatent.from_options({"shared": shared, "categories": categories, "temperature": temperature},
                                       model.latent_dim)
    mu, logvar = model.experts(feats, mask)
    s_mu, s_lv = model.private_experts(feats, mask)
    s = post.reparameterize(s_mu, s_lv, generator=generator)                         # (M, B, P)
    recon = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    reg = torch.zeros_like(recon)
    terms: dict[str, torch.Tensor] = {}
    for label, e_mu, e_lv, rows in shared_experts(model, mu, logvar, mask, latent):
        if latent.discrete:
            c = latent.sample(e_mu, generator=generator)
            mi, tc, dim_kl = concrete_tc_decomposition(c, e_mu, rows, latent, dataset_size)
            terms[f"kl_c_{label}"] = masked(concrete.kl_to_uniform(e_mu, latent.categories), rows).detach()
        else:
            c = post.reparameterize(e_mu, e_lv, generator=generator)
            mi, tc, dim_kl = tc_decomposition(c, e_mu, e_lv, rows, dataset_size)
        recon_e = masked(private_reconstruction(model, feats, c, s, mask), rows)
        terms[f"recon_from_{label}"], terms[f"tc_c_{label}"] = recon_e.detach(), tc.detach()
        recon = recon + recon_e
        reg = reg + weights[0] * mi + weights[1] * tc + weights[2] * dim_kl
    # every expert's ELBO holds the private terms of the modalities it reconstructs (the observed ones):
    # sum_e sum_n R(q(s_n|x_n)) = (|O| + 1) sum_n R(q(s_n|x_n)), as in the reference code and MultiVae
    experts_per_row = (mask.sum(1) + mask.any(1)).to(recon.dtype)
    for j, name in enumerate(model.names):
        mi, tc, dim_kl = tc_decomposition(s[j], s_mu[j], s_lv[j], mask[:, j], dataset_size)
        terms[f"tc_s_{name}"] = tc.detach()
        reg = reg + experts_per_row * (weights[0] * mi + weights[1] * tc + weights[2] * dim_kl)
    value = recon - beta * reg
    terms.update(recon=recon.detach(), regulariser=reg.detach(), objective=value.detach())
    return ObjectiveOutput(-value, terms)


def poe_logits(model: MultimodalVAE, latent: SharedLatent, mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of q(c | X_mask) for the concrete c, from the unimodal experts' rows of ``mu``."""
    return latent.product(mu[:len(model.names)], mask)


@dataclass(frozen=True)
class DMVAELeeFamily(PrivateFamily):
    """Asks the option ``shared`` how q(c | X_O) is formed: the Gaussian PoE, or the categorical PoE of
    the concrete c."""

    def build_networks(self, model: MultimodalVAE) -> dict:
        shared_latent(model)                             # refuse bad options when the model is built
        return super().build_networks(model)

    def inference_rule(self, config=None) -> str:
        rule = super().inference_rule(config)
        if config is not None and SharedLatent.from_options(config.family_options, config.latent_dim).discrete:
            return rule.replace("c: PoE", "c (concrete): PoE of categorical experts")
        return rule

    def latent_description(self, config) -> dict[str, Any]:
        latent = SharedLatent.from_options(config.family_options, config.latent_dim)
        if not latent.discrete:
            return super().latent_description(config)
        return {"distribution": "concrete (Gumbel-softmax relaxed categorical)",
                "groups": config.latent_dim // latent.categories, "categories": latent.categories,
                "temperature": latent.temperature,
                "mean": "category probabilities of q(c | observed), group after group",
                "std": "sqrt(p (1 - p)) of each category"}

    def posterior_summary(self, model, mu, logvar, mask):
        latent = shared_latent(model)
        if not latent.discrete:
            return super().posterior_summary(model, mu, logvar, mask)
        return concrete.summary(poe_logits(model, latent, mu, mask), latent.categories)

    def posterior_samples(self, model, mu, logvar, mask, n_samples, generator=None):
        latent = shared_latent(model)
        if not latent.discrete:
            return super().posterior_samples(model, mu, logvar, mask, n_samples, generator)
        return latent.hard_sample(poe_logits(model, latent, mu, mask), n_samples, generator)

    def posterior_log_prob(self, model, z, mu, logvar, mask):
        latent = shared_latent(model)
        if not latent.discrete:
            return super().posterior_log_prob(model, z, mu, logvar, mask)
        return latent.log_pmf(z, poe_logits(model, latent, mu, mask)).sum(-1)

    def prior_log_prob(self, model, z):
        latent = shared_latent(model)
        return latent.prior_log_pmf(z) if latent.discrete else super().prior_log_prob(model, z)


FAMILY = DMVAELeeFamily(
    name="dmvae_lee", objective_fn=objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference="c: PoE of the unimodal experts with the prior", missing_modalities=True,
        modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Lee & Pavlovic 2021, private-shared disentangled multimodal VAE (DMVAE)",
        equations="ref. [48] (no number); eq. 28 generative model",
        notes="reconstruction of every modality from every expert (PoE and each unimodal c) with the own "
              "s_m; β-TCVAE KL split with a total-correlation weight (minibatch-weighted sampling); "
              "c Gaussian, or discrete by the concrete/Gumbel-softmax relaxation "
              "(family_options shared: concrete)"))
