r"""MoPoE-VAE with modality-specific latents (Sutter et al. 2021, the "MS" variant; MultiVae's MoPoE with
``modalities_specific_dim``): the shared c by the mixture of subsets' products of experts, and a private
s_m per modality (the survey's eq. 28 generative model).

.. math::
    q(c, S|X_O) = \\Big[\\sum_{A\\subseteq O, A\\neq\\emptyset} w_A\\, \\tilde q(c|X_A)\\Big]
                  \\prod_{m\\in O} q(s_m|x_m),\\qquad \\tilde q(c|X_A) = \\mathrm{PoE}(\\{q(c|x_m)\\}_{m\\in A})

    \\mathcal{L}(X_O) = \\sum_A w_A\\,\\mathbb{E}_{\\tilde q(c|X_A)\\prod_m q(s_m|x_m)}
            \\Big[\\sum_{m\\in O}\\lambda_m\\log p(x_m|c, s_m)\\Big]
        - \\beta \\sum_A w_A\\, \\mathrm{KL}(\\tilde q(c|X_A)\\,\\|\\,p(c))
        - \\beta\\,\\beta_s \\sum_{m\\in O}\\mathrm{KL}(q(s_m|x_m)\\,\\|\\,p(s_m))

Every modality is reconstructed with its *own* s_m whichever subset A gave c, so s_m can only carry
what x_m alone holds, and c must carry what the subsets share. The c terms are MoPoE's (one subset
sampled per row for the reconstruction, the exact KL bound over all subsets; :mod:`.mopoe`).
Options: ``beta_private`` (beta_s, default 1.0). ``ModelConfig.private_dim``: size of each s_m
(default 4).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model import posterior as post
from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .mopoe import kl_upper_bound
from .private import PrivateFamily, private_kl, private_reconstruction


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None,
              beta_private: float = 1.0) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    s_mu, s_logvar = model.private_experts(feats, mask)
    subset = post.sample_present_subsets(mask, generator)
    q_mu, q_lv = model.subset_posterior(mu, logvar, subset, mask)
    c = post.reparameterize(q_mu, q_lv, generator=generator)
    s = post.reparameterize(s_mu, s_logvar, generator=generator)                    # (M, B, P)
    recon = private_reconstruction(model, feats, c, s, mask)
    kl_c = kl_upper_bound(model, mu, logvar, mask)
    kl_s = private_kl(s_mu, s_logvar, mask)
    elbo = recon - beta * kl_c - beta * beta_private * kl_s
    return ObjectiveOutput(-elbo, {"elbo": elbo.detach(), "recon": recon.detach(), "kl_bound": kl_c.detach(),
                                   "kl_private": kl_s.detach()})


FAMILY = PrivateFamily(
    name="mopoe_ms", objective_fn=objective, fusions=("mopoe",), default_fusion="mopoe",
    properties=Properties(
        aggregated_inference="c: mixture of the subsets' PoEs (generation: the observed set's PoE)",
        missing_modalities=True, modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Sutter et al. 2021, MoPoE-VAE with modality-specific subspaces",
        equations="eq. 28 (generative model)",
        notes="private s_m per modality (default 4 dims): own s_m for self-reconstruction, "
              "its prior N(0, I) for cross-modal generation"))
