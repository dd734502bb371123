r"""mmJSD with modality-specific latents (Sutter et al. 2020, "mmJSD-MS"; the survey's eq. 31): the shared
c by mmJSD's aggregation of the unimodal experts, a private s_m per modality from x_m alone.

.. math::
    q(S, c|X) = q(c|X)\\prod_m q(s_m|x_m)\\qquad\\text{(eq. 31)}

    \\mathcal{L}(X_O) = \\frac{1}{|O|}\\sum_{m\\in O}\\mathbb{E}_{q(c|x_m)\\prod_n q(s_n|x_n)}
            \\Big[\\sum_{n\\in O}\\lambda_n\\log p(x_n|c, s_n)\\Big]
        - \\beta\\,\\mathrm{JS}_\\pi\\big(\\{q(c|x_m)\\}_{m\\in O}, p(c)\\big)
        - \\beta\\,\\beta_s\\sum_{m\\in O}\\mathrm{KL}(q(s_m|x_m)\\,\\|\\,p(s_m))

with the Jensen-Shannon term of :mod:`.mmjsd` (the dynamic prior f, a weighted PoE of the observed
experts and p(c), pi = 1/(|O|+1)): JS = sum_j pi_j KL(q_j || f). Every x_n is decoded from each unimodal
c sample with its own s_n. Options: ``beta_private`` (beta_s, default 1.0); ``ModelConfig.private_dim``
(default 4).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..model import posterior as post
from ..model.family import ObjectiveOutput, Properties
from ..model.vae import MultimodalVAE
from .common import masked_mean_over_experts
from .mmjsd import jensen_shannon
from .private import PrivateFamily, private_kl, private_reconstruction


def objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None,
              beta_private: float = 1.0) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    s_mu, s_logvar = model.private_experts(feats, mask)
    c = post.reparameterize(mu, logvar, generator=generator)                         # (M, B, D)
    s = post.reparameterize(s_mu, s_logvar, generator=generator)                     # (M, B, P)
    recon = masked_mean_over_experts(private_reconstruction(model, feats, c, s, mask), mask)
    jsd = jensen_shannon(mu, logvar, mask)
    kl_s = private_kl(s_mu, s_logvar, mask)
    elbo = recon - beta * jsd - beta * beta_private * kl_s
    return ObjectiveOutput(-elbo, {"elbo": elbo.detach(), "recon": recon.detach(), "jsd": jsd.detach(),
                                   "kl_private": kl_s.detach()})


FAMILY = PrivateFamily(
    name="mmjsd_ms", objective_fn=objective, fusions=("moe",), default_fusion="moe",
    properties=Properties(
        aggregated_inference="c: MoE of the unimodal experts (dynamic PoE prior in training)",
        missing_modalities=True, modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Sutter et al. 2020, mmJSD with modality-specific subspaces", equations="eqs. 28, 31",
        notes="private s_m per modality (default 4 dims), q(s_m|x_m); prior N(0, I) for cross-modal generation"))
