r"""Temporal multimodal VAE: a latent state-space model over sequences of aligned samples, filtered by a
product of experts (the multimodal deep Markov model of Tan, Soh & Ong, AAAI 2020, with the
RSSM/PlaNet-style learned Gaussian transition of Hafner et al. 2019; the survey's sec. 6-7 and Park et
al.'s LSTM-based VAE motivate the temporal state for anomaly detection).

Generative model, for a sequence of T aligned samples with presence masks O_t and optional actions u_t:

.. math::
    p(z_1) = \\mathcal{N}(0, I),\\quad p(z_t | z_{t-1}, u_t) = \\mathcal{N}\\big(z_{t-1} + f_\\mu(z_{t-1}, u_t),\\
    \\mathrm{diag}\\, e^{f_\\sigma(z_{t-1}, u_t)}\\big),\\quad p(x_{m,t} | z_t) \\text{ as the per-frame model}

Inference (filtering): the transition prior is one more Gaussian expert in the product, so any observed
subset S (the empty one included: pure prediction) conditions the state,

.. math::
    q(z_t | x_t^{S}, z_{t-1}) \\propto p(z_t | z_{t-1}, u_t) \\prod_{m\\in S} q(z_t | x_{m,t})

Objective (per sequence, then the caller's mean over sequences): with z_{t-1} sampled from the previous
step's q (ancestral sampling through the filter, as the DMM),

.. math::
    \\mathcal{L} = \\sum_{t=1}^{T} \\mathbb{E}_{q}\\Big[\\sum_{m\\in O_t}\\lambda_m \\log p(x_{m,t} | z_t)\\Big]
                 - \\beta\\, \\mathrm{KL}\\big(q(z_t | x_t^{S_t}, z_{t-1}) \\,\\|\\, p(z_t | z_{t-1}, u_t)\\big)

The filter at step t uses a sub-sampled S_t ⊆ O_t while the reconstruction covers all of O_t. Any
choice of q gives a lower bound of log p(x^{O}_{1:T}), so the sub-sampling keeps this an ELBO of all the
observed data; it trains every subset to filter (and to predict the unobserved streams), as MVAE's and
MoPoE's subset sampling do per frame: with probability ``p_full`` S_t = O_t, with ``p_empty`` S_t = ∅
(the transition alone must predict), otherwise S_t is uniform over the non-empty subsets of O_t.

A single frame is a sequence of length one: the per-frame objective and inference rule (what the
per-frame code paths call) are the first filter step, a PoE with the N(0, I) prior, so a temporal model
also runs memoryless. :mod:`mdgm_ros.core.temporal` has the filter, prediction, smoothing and scores.

Outage augmentation: with probability ``p_outage`` per sequence and modality, that modality is also
left out of S_t over one random contiguous span of steps (it is still reconstructed there), so the state
learns to carry a stream through the multi-second outages the node meets (still any q: still an ELBO).

Transitions (``transition``): ``mlp``, a residual MLP, mean = z + f(z, u); or ``gru``, the gated update
of a GRU cell with the state z as its hidden vector (the deterministic, gated path of RSSM/PlaNet and the
DMM's gated transition): r, g = σ(W[z, u]), c = MLP(r ⊙ z, u), mean = (1 − g) ⊙ z + g ⊙ c; unlike
RSSM there is no separate deterministic vector h, so the filter's Gaussian belief over z stays the
whole state. Both have log-variance = MLP(z, u).

Options (``ModelConfig.family_options``): ``action_dim`` (size of u_t, 0 = no action input, default
0), ``transition`` (``mlp`` or ``gru``, default ``mlp``), ``transition_hidden`` (width, default 128),
``p_full`` (0.5), ``p_empty`` (0.1), ``p_outage`` (0.0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..model import posterior as post
from ..model.family import ExportPart, Family, ObjectiveOutput, Properties
from ..model.modalities import SpecError
from .common import weighted_reconstruction
from .private import PrivateFamily

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE

TRANSITION = "transition"
INITIAL_TRANSITION_LOGVAR = -3.0


class Transition(nn.Module):
    """p(z_t | z_{t-1}, u_t): a residual MLP, (mean, logvar) of shape (..., D). The last layer starts at
    zero, so an untrained transition is a random walk with variance exp(INITIAL_TRANSITION_LOGVAR)."""

    def __init__(self, latent_dim: int, action_dim: int = 0, hidden: int = 128):
        super().__init__()
        self.latent_dim, self.action_dim = latent_dim, action_dim
        self.net = nn.Sequential(nn.Linear(latent_dim + action_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_dim))
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.zero_()
            last.bias[latent_dim:] = INITIAL_TRANSITION_LOGVAR

    def forward(self, z: torch.Tensor, action: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = z if action is None else torch.cat([z, action.to(z.dtype)], dim=-1)
        first, _, second, _, last = self.net              # self.net's layers, called without module dispatch
        hidden = F.silu(F.linear(F.silu(F.linear(inputs, first.weight, first.bias)), second.weight, second.bias))
        delta, logvar = F.linear(hidden, last.weight, last.bias).chunk(2, dim=-1)
        return z + delta, logvar


class GRUTransition(nn.Module):
    """p(z_t | z_{t-1}, u_t) with a GRU-cell update of the state z (see the module docstring). The gate
    starts nearly closed and the candidate at zero, so an untrained transition is close to a random walk
    with variance exp(INITIAL_TRANSITION_LOGVAR)."""

    def __init__(self, latent_dim: int, action_dim: int = 0, hidden: int = 128):
        super().__init__()
        self.latent_dim, self.action_dim = latent_dim, action_dim
        inputs = latent_dim + action_dim
        self.gates = nn.Linear(inputs, 2 * latent_dim)
        self.candidate = nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, latent_dim))
        self.logvar = nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, latent_dim))
        with torch.no_grad():
            self.gates.bias[latent_dim:] = -4.0
            for last in (self.candidate[-1], self.logvar[-1]):
                last.weight.zero_()
                last.bias.zero_()
            self.logvar[-1].bias.fill_(INITIAL_TRANSITION_LOGVAR)

    def forward(self, z: torch.Tensor, action: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = z if action is None else torch.cat([z, action.to(z.dtype)], dim=-1)
        reset, update = torch.sigmoid(self.gates(inputs)).chunk(2, dim=-1)
        gated = reset * z if action is None else torch.cat([reset * z, action.to(z.dtype)], dim=-1)
        mean = (1.0 - update) * z + update * self.candidate(gated)
        return mean, self.logvar(inputs)


TRANSITIONS = {"mlp": Transition, "gru": GRUTransition}


@dataclass(frozen=True)
class TemporalOptions:
    action_dim: int = 0
    transition: str = "mlp"
    transition_hidden: int = 128
    p_full: float = 0.5
    p_empty: float = 0.1
    p_outage: float = 0.0

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "TemporalOptions":
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpecError(f"temporal family_options: unknown {sorted(unknown)} "
                            f"(known: {sorted(cls.__dataclass_fields__)})")
        out = cls(**options)
        if not (isinstance(out.action_dim, int) and 0 <= out.action_dim <= 4096):
            raise SpecError(f"action_dim must be an integer in [0, 4096], got {out.action_dim!r}")
        if not (isinstance(out.transition_hidden, int) and 1 <= out.transition_hidden <= 8192):
            raise SpecError(f"transition_hidden must be an integer in [1, 8192], got {out.transition_hidden!r}")
        if not (0 <= out.p_full and 0 <= out.p_empty and out.p_full + out.p_empty <= 1):
            raise SpecError(f"p_full and p_empty must be >= 0 with a sum <= 1, got {out.p_full}, {out.p_empty}")
        if out.transition not in TRANSITIONS:
            raise SpecError(f"transition must be one of {sorted(TRANSITIONS)}, got {out.transition!r}")
        if not (isinstance(out.p_outage, (int, float)) and 0 <= out.p_outage <= 1):
            raise SpecError(f"p_outage must be in [0, 1], got {out.p_outage!r}")
        return out


def options_of(model: "MultimodalVAE") -> TemporalOptions:
    return TemporalOptions.from_config(model.config.family_options)


def state_dim(model: "MultimodalVAE") -> int:
    """Size of the filter's state: the shared z, then each modality's private state s_m if the family
    has them (:mod:`.temporal_ms`): D + M * P."""
    return model.latent_dim + len(model.names) * model.private_dim


def private_block(model: "MultimodalVAE", name: str) -> slice:
    """Where modality ``name``'s private state s_m sits in the filter's state."""
    dim, size, j = model.latent_dim, model.private_dim, model.names.index(name)
    return slice(dim + j * size, dim + (j + 1) * size)


def state_coverage(model: "MultimodalVAE", device: torch.device | None = None) -> torch.Tensor | None:
    """(M, S) which state dimensions expert m informs: the shared z and its own s_m block; None when
    the state is the shared z alone (every expert informs every dimension)."""
    if not model.private_dim:
        return None
    n_mod, dim, size = len(model.names), model.latent_dim, model.private_dim
    blocks = torch.eye(n_mod, dtype=torch.bool, device=device).repeat_interleave(size, dim=1)
    return torch.cat([torch.ones((n_mod, dim), dtype=torch.bool, device=device), blocks], 1)


def state_experts(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each modality's expert over the state (M, B, S): its shared expert q(z | x_m), then, with private
    states, its private encoder q(s_m | x_m) in its own block (the other blocks are never read:
    :func:`state_coverage`)."""
    mu, logvar = model.experts(feats, mask)
    n_mod = len(model.names)
    mu, logvar = mu[:n_mod], logvar[:n_mod]
    if not model.private_dim:
        return mu, logvar
    s_mu, s_lv = PrivateFamily.private_posteriors(model.family, model, feats, mask)     # (M, B, P), raw
    place = torch.eye(n_mod, dtype=s_mu.dtype, device=s_mu.device)[:, None, :, None]
    batch = mu.shape[1]
    s_mu = (place * s_mu[:, :, None, :]).reshape(n_mod, batch, -1)
    s_lv = (place * s_lv[:, :, None, :]).reshape(n_mod, batch, -1)
    return torch.cat([mu, s_mu], -1), torch.cat([logvar, s_lv], -1)


def modality_state_expert(model: "MultimodalVAE", name: str, x: torch.Tensor,
                          shared: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One modality's expert over the state for its features ``x`` (B, ...): mean and precision (B, S),
    the precision zero outside the dimensions it informs (:func:`state_coverage`). ``shared``: its
    shared expert's (mu, logvar) when already computed."""
    mu, logvar = model.family.unimodal_encoder(model, name)(x) if shared is None else shared
    precision = torch.exp(-post.clamp_logvar(logvar))
    if not model.private_dim:
        return mu, precision
    s_mu, s_lv = model.private_encoders[name](x)
    mean = mu.new_zeros((mu.shape[0], state_dim(model)))
    prec = torch.zeros_like(mean)
    mean[:, :model.latent_dim], prec[:, :model.latent_dim] = mu, precision
    block = private_block(model, name)
    mean[:, block], prec[:, block] = s_mu, torch.exp(-post.clamp_logvar(s_lv))
    return mean, prec


def decode_state(model: "MultimodalVAE", name: str, state: torch.Tensor) -> torch.Tensor:
    """The decoder of ``name`` from filter states (..., S): from z, or [z, s_name] with private states."""
    if not model.private_dim:
        return model.decode(name, state)
    return model.decode(name, state[..., :model.latent_dim], state[..., private_block(model, name)])


def poe_with_prior(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor, prior_mu: torch.Tensor,
                   prior_logvar: torch.Tensor, coverage: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """PoE of the present experts (M, B, S) and a Gaussian prior expert (B, S), which is always present
    (so the empty subset gives the prior itself): (mu, logvar) of shape (B, S). ``coverage`` (M, S):
    expert m multiplies in only on its dimensions (:func:`state_coverage`); None: on all of them."""
    if coverage is None:
        stacked_mu = torch.cat([mu, prior_mu.unsqueeze(0)])
        stacked_lv = torch.cat([logvar, prior_logvar.unsqueeze(0)])
        always = torch.ones((mask.shape[0], 1), dtype=torch.bool, device=mask.device)
        return post.product_of_experts(stacked_mu, stacked_lv, torch.cat([mask, always], 1), include_prior=False)
    present = mask.t().unsqueeze(-1) & coverage.unsqueeze(1)                       # (M, B, S)
    neg_inf = torch.tensor(float("-inf"), dtype=mu.dtype, device=mu.device)
    log_prec = torch.cat([torch.where(present, -post.clamp_logvar(logvar), neg_inf),
                          -post.clamp_logvar(prior_logvar).unsqueeze(0)])
    log_total = torch.logsumexp(log_prec, 0)
    share = torch.exp(log_prec - log_total)
    mean = (share[:-1] * torch.where(present, mu, torch.zeros_like(mu))).sum(0) + share[-1] * prior_mu
    return mean, post.clamp_logvar(-log_total)


def check_actions(model: "MultimodalVAE", actions: torch.Tensor | None, lead: tuple[int, ...]) -> None:
    """Actions must be given exactly when the model has an action input, shaped (*lead, action_dim)."""
    dim = options_of(model).action_dim
    if dim == 0 and actions is not None:
        raise ValueError("this temporal model has no action input (action_dim 0); pass actions=None")
    if dim > 0 and (actions is None or tuple(actions.shape) != (*lead, dim)):
        shown = None if actions is None else tuple(actions.shape)
        raise ValueError(f"this temporal model needs actions of shape {(*lead, dim)}, got {shown}")


def flatten_steps(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(B, T, ...) features and a (B, T, M) mask -> completed (B*T, ...) features and (B*T, M) mask."""
    batch, steps, n_mod = mask.shape
    flat_mask = mask.reshape(batch * steps, n_mod)
    flat = {n: x.reshape(batch * steps, *x.shape[2:]) for n, x in feats.items()}
    return model.complete(flat, flat_mask), flat_mask


def sequence_experts(model: "MultimodalVAE", flat_feats: Mapping[str, torch.Tensor], flat_mask: torch.Tensor,
                     batch: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step's experts over the state in one encoder call per modality: (M, B, T, S) each."""
    mu, logvar = state_experts(model, flat_feats, flat_mask)
    n_mod = len(model.names)
    return mu.reshape(n_mod, batch, steps, -1), logvar.reshape(n_mod, batch, steps, -1)


def sample_filter_subsets(mask: torch.Tensor, p_full: float, p_empty: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """S ⊆ O per row of ``mask`` (B, M): O with p_full, ∅ with p_empty, else uniform non-empty."""
    draw = torch.rand(mask.shape[0], device=mask.device, generator=generator)
    random_subset = post.sample_present_subsets(mask, generator)
    subset = torch.where((draw < p_full)[:, None], mask, random_subset)
    return torch.where((draw >= 1.0 - p_empty)[:, None], torch.zeros_like(mask), subset)


def sample_outages(mask: torch.Tensor, p_outage: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T, M) steps to leave out of the filter: per row and modality, with probability ``p_outage``,
    one contiguous span with a uniform start and a uniform length in [1, T]."""
    batch, steps, n_mod = mask.shape
    if p_outage <= 0 or steps < 2:
        return torch.zeros_like(mask)
    draws = torch.rand((3, batch, 1, n_mod), device=mask.device, generator=generator)
    start = (draws[1] * steps).floor()
    length = 1 + (draws[2] * steps).floor()
    t = torch.arange(steps, device=mask.device, dtype=start.dtype).view(1, steps, 1)
    return (draws[0] < p_outage) & (t >= start) & (t < start + length)


def sequence_objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                       actions: torch.Tensor | None = None, beta: float = 1.0,
                       generator: torch.Generator | None = None, p_full: float | None = None,
                       p_empty: float | None = None, p_outage: float | None = None) -> ObjectiveOutput:
    """The sequence ELBO above for normalised features (B, T, *fshape) and a mask (B, T, M); actions
    (B, T, U) (u_1 is unused: z_1 has the fixed prior). Per-sequence loss (B,), summed over steps."""
    batch, steps, _ = mask.shape
    options = options_of(model)
    p_full = options.p_full if p_full is None else p_full
    p_empty = options.p_empty if p_empty is None else p_empty
    check_actions(model, actions, (batch, steps))
    flat_feats, flat_mask = flatten_steps(model, feats, mask)
    mu, logvar = sequence_experts(model, flat_feats, flat_mask, batch, steps)
    transition = model.extra[TRANSITION]
    p_outage = options.p_outage if p_outage is None else p_outage
    seen = mask & ~sample_outages(mask, p_outage, generator)
    zs, kls = [], []
    coverage = state_coverage(model, mu.device)
    prior_mu = torch.zeros((batch, state_dim(model)), dtype=mu.dtype, device=mu.device)
    prior_lv = torch.zeros_like(prior_mu)
    for t in range(steps):
        if t > 0:
            prior_mu, prior_lv = transition(zs[-1], None if actions is None else actions[:, t])
            prior_lv = post.clamp_logvar(prior_lv)
        subset = sample_filter_subsets(seen[:, t], p_full, p_empty, generator)
        q_mu, q_lv = poe_with_prior(mu[:, :, t], logvar[:, :, t], subset, prior_mu, prior_lv, coverage)
        zs.append(post.reparameterize(q_mu, q_lv, generator=generator))
        kls.append(post.kl_gaussians(q_mu, q_lv, prior_mu, prior_lv))
    z = torch.stack(zs, 1).reshape(batch * steps, -1)
    recon = weighted_reconstruction(model, flat_feats, z, flat_mask,
                                    decode=lambda name, state: decode_state(model, name, state))
    recon = recon.reshape(batch, steps).sum(1)
    kl = torch.stack(kls, 1).sum(1)
    elbo = recon - beta * kl
    return ObjectiveOutput(-elbo, {"elbo": elbo.detach(), "recon": recon.detach(), "kl": kl.detach()})


def frame_objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                    beta: float = 1.0, generator: torch.Generator | None = None,
                    p_full: float | None = None, p_empty: float | None = None,
                    **network_options: Any) -> ObjectiveOutput:
    """Per-frame objective: each sample is a sequence of length one (the first filter step)."""
    steps = {n: x.unsqueeze(1) for n, x in feats.items()}
    actions = None
    if options_of(model).action_dim:
        actions = torch.zeros((mask.shape[0], 1, options_of(model).action_dim), device=mask.device)
    return sequence_objective(model, steps, mask.unsqueeze(1), actions, beta, generator, p_full, p_empty)


@dataclass(frozen=True)
class TemporalFamily(Family):
    """The per-frame rule is the PoE with N(0, I) (the first filter step); the transition is the
    family's extra network. ``temporal`` tells the rest of the code to run the filter of
    :mod:`mdgm_ros.core.engine.filter` when it has consecutive samples."""

    temporal: ClassVar[bool] = True

    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        options = TemporalOptions.from_config(model.config.family_options)
        cls = TRANSITIONS[options.transition]
        return {TRANSITION: cls(state_dim(model), options.action_dim, options.transition_hidden)}

    def extra_export_parts(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor]) -> list[ExportPart]:
        """The transition p(z_t | z_{t-1}, u_t): z (and u) -> mean, logvar."""
        batch = next(iter(feats.values())).shape[0]
        z = torch.zeros(batch, state_dim(model), device=model.device)     # the filter's state
        action_dim = options_of(model).action_dim
        if action_dim:
            args, inputs = (z, torch.zeros(batch, action_dim, device=model.device)), ["z", "u"]
        else:
            args, inputs = (z,), ["z"]
        return [ExportPart("onnx_transition", model.extra[TRANSITION], args, inputs, ["mean", "logvar"])]


def is_temporal(model: "MultimodalVAE") -> bool:
    return bool(model.family.temporal)


FAMILY = TemporalFamily(
    name="temporal", objective_fn=frame_objective, fusions=("poe",), default_fusion="poe",
    properties=Properties(
        aggregated_inference="PoE of the unimodal experts and the transition prior p(z_t|z_{t-1}, u_t) "
                             "(filtering); one frame: PoE with N(0, I)",
        missing_modalities=True, modality_specific_latents=False, end_to_end=True, scalability="linear",
        reference="Tan, Soh & Ong 2020 (multimodal DMM); Hafner et al. 2019 (PlaNet/RSSM); "
                  "Park et al. 2018 (LSTM-VAE anomaly detection)",
        notes="sequence ELBO with sub-sampled filter subsets (the empty one included); a state that "
              "remembers across frames: filtering, k-step prediction, fixed-lag smoothing"))
