"""Modality-specific (private) latents (the survey's sec. 5.2): what every family with private factors
shares.

Generative model (eq. 28): p(X) = ∫ p(c) Π_m p(s_m) p(x_m | c, s_m) dc ds, with p(c) = N(0, I) and
p(s_m) = N(0, I). Each decoder takes the concatenation [c, s_m] (``model.decode(name, c, s_m)``); the
model has one private encoder q(s_m | x_m) per modality (``model.private_encoders``, built from the
network registry, config key ``networks[<modality>]["private"]``), and the shared c keeps the family's
aggregation of the unimodal experts.

Generation: self-reconstruction decodes x_m with its own s_m ~ q(s_m | x_m); cross-modal generation of
a missing modality draws s_m from the family's *generation prior* (:meth:`PrivateFamily.private_prior`:
p(s_m), or MMVAE+'s auxiliary prior r_m) -- its mean when decoding the posterior mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Mapping

import torch

from ..model import posterior as post
from ..model.family import Family

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE


@dataclass(frozen=True)
class PrivateFamily(Family):
    """A family with a private latent s_m per modality beside the shared c."""

    private_latent_dims: ClassVar[int] = 4          # default size of each s_m (``ModelConfig.private_dim``)

    def closed_form_poe(self, model: "MultimodalVAE") -> bool:
        return False                      # self-reconstruction needs s_m: the Fuser's general path

    def inference_rule(self, config=None) -> str:
        return (f"c: {self.properties.aggregated_inference}; s_m: q(s_m|x_m) if m is observed, "
                "else its generation prior")

    def private_posteriors(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor],
                           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(s_m | x_m) from each modality's private encoder: (M, B, P) each."""
        mus, logvars = [], []
        for j, name in enumerate(model.names):
            mu, logvar = model._encode_rows(model.private_encoders[name], [feats[name]], mask[:, j],
                                            model.private_dim)
            mus.append(mu)
            logvars.append(logvar)
        return torch.stack(mus), torch.stack(logvars)

    def private_prior(self, model: "MultimodalVAE", name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (P,) that s_name is drawn from when ``name`` is generated, not observed."""
        zeros = torch.zeros(model.private_dim, device=model.device)
        return zeros, zeros


# ----------------------------------------------------------------------------- objective pieces
def private_kl(s_mu: torch.Tensor, s_logvar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum over observed m of KL(q(s_m|x_m) || N(0, I)): (B,)."""
    kl = post.kl_to_standard_normal(s_mu, s_logvar)                       # (M, B)
    return torch.where(mask.t(), kl, torch.zeros_like(kl)).sum(0)


def private_reconstruction(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], c: torch.Tensor,
                           s: torch.Tensor, recon_mask: torch.Tensor) -> torch.Tensor:
    """sum_m [recon_mask[:, m]] lambda_m log p(x_m | c, s_m) for c (..., B, D) and s (M, ..., B, P)
    (s[m] broadcast against c's leading dimensions): (..., B)."""
    total = torch.zeros(c.shape[:-1], dtype=c.dtype, device=c.device)
    for j, name in enumerate(model.names):
        column = recon_mask[:, j]
        if not bool(column.any()):
            continue
        loglik = model.log_likelihood(name, feats[name], model.decode(name, c, s[j])) * model.specs[name].weight
        total = total + torch.where(column, loglik, torch.zeros((), dtype=c.dtype, device=c.device))
    return total


def generation_prior(model: "MultimodalVAE") -> tuple[torch.Tensor, torch.Tensor]:
    """The family's generation prior of every s_m, stacked: (M, P) each."""
    pairs = [model.family.private_prior(model, name) for name in model.names]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def private_codes(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                  n_samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """s_m to decode every modality with: its own q(s_m | x_m) where m is observed, else the family's
    generation prior; the means (M, B, P) for ``n_samples=0``, else samples (M, K, B, P)."""
    mu, logvar = model.private_experts(feats, mask)
    p_mu, p_lv = generation_prior(model)
    seen = mask.t().unsqueeze(-1)
    mu = torch.where(seen, mu, p_mu[:, None, :].to(mu.dtype))
    logvar = torch.where(seen, logvar, p_lv[:, None, :].to(mu.dtype))
    if n_samples == 0:
        return mu
    return model.latent_dist.sample(mu, logvar, n_samples, generator).transpose(0, 1)
