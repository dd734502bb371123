r"""Temporal multimodal VAE with private states: the temporal family (:mod:`.temporal`) whose state holds,
beside the shared z_t, one private state s_{m,t} per modality (the survey's sec. 5.2, eq. 28, carried
through time; the static/dynamic split of sequential VAEs).

Why: a stream that keeps one pattern for seconds which the other streams cannot see (a grasp's taxel
pattern) must be remembered through an outage. In a shared-only state the other streams' sharp experts
overwrite that memory within a few frames; a private block is informed only by its own modality and the
transition, so during an outage it is carried by the transition alone.

Generative model, state x_t = [z_t, s_{1,t}, ..., s_{M,t}] (size D + M·P):

.. math::
    p(x_1) = \\mathcal{N}(0, I),\\quad p(x_t | x_{t-1}, u_t) = \\mathcal{N}\\big(x_{t-1} + f_\\mu(x_{t-1}, u_t),\\
    \\mathrm{diag}\\, e^{f_\\sigma(x_{t-1}, u_t)}\\big),\\quad p(x_{m,t} | z_t, s_{m,t})

(the transition sees the whole state, so a private state may follow the shared one: contact ends when
the gripper opens). Inference (filtering): expert m informs z_t through q(z_t | x_{m,t}) and its own
block through q(s_{m,t} | x_{m,t}), and nothing else (a per-dimension product):

.. math::
    q(x_t | x_t^{S}, x_{t-1}) \\propto p(x_t | x_{t-1}, u_t) \\prod_{m\\in S}
        q(z_t | x_{m,t})\\, q(s_{m,t} | x_{m,t})

Objective: the temporal family's sequence ELBO over the whole state,

.. math::
    \\mathcal{L} = \\sum_{t=1}^{T} \\mathbb{E}_{q}\\Big[\\sum_{m\\in O_t}\\lambda_m
        \\log p(x_{m,t} | z_t, s_{m,t})\\Big] - \\beta\\, \\mathrm{KL}\\big(q(x_t | \\cdot) \\,\\|\\,
        p(x_t | x_{t-1}, u_t)\\big)

with the same sub-sampled filter subsets and outage augmentation (any q: still an ELBO). One frame is
the first filter step: z from the PoE with N(0, I), s_m from q(s_m | x_m)·N(0, I) where m is observed,
else N(0, I) (the generation prior). The node publishes z on ``~/latent`` and each filtered s_m on
``~/latent_private/<m>`` (every step, observed or not: during an outage it is the remembered state).
Options: those of the temporal family; ``ModelConfig.private_dim`` sizes each s_m (default 4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch

from ..model import posterior as post
from ..model.family import Properties
from .private import PrivateFamily
from .temporal import TemporalFamily, frame_objective

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE


@dataclass(frozen=True)
class TemporalPrivateFamily(PrivateFamily, TemporalFamily):
    """The temporal family with a private state per modality (the state layout: :func:`.temporal.state_dim`)."""

    def inference_rule(self, config=None) -> str:
        return ("filtering: the transition prior times, per dimension, q(z|x_m) on the shared z and "
                "q(s_m|x_m) on m's own block, for the observed m; one frame: the first filter step")

    def private_posteriors(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor],
                           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame's s_m: the first filter step, q(s_m | x_m) times the initial prior N(0, I)."""
        mu, logvar = super().private_posteriors(model, feats, mask)
        expert_precision = torch.exp(-post.clamp_logvar(logvar))
        precision = 1.0 + expert_precision
        return expert_precision * mu / precision, -torch.log(precision)


FAMILY = TemporalPrivateFamily(
    name="temporal_ms", objective_fn=frame_objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference="PoE of the transition prior and, per dimension, each observed modality's "
                             "experts on the shared z and on its own private state (filtering)",
        missing_modalities=True, modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Tan, Soh & Ong 2020 (multimodal DMM) with the private latents of Sutter et al. 2020 / "
                  "Palumbo et al. 2023; Li & Mandt 2018 (static and dynamic factors)",
        notes="the temporal family with one private state per modality, remembered through that "
              "modality's outages (the transition alone carries it)"))
