"""The filter of the temporal family (:mod:`mdgm_ros.core.families.temporal`).

Filtering keeps a diagonal Gaussian belief over z_t. One step: predict with the transition, then
multiply the prediction with the experts of the observed modalities (PoE, any subset, the empty one
included). The prediction of a nonlinear transition from a Gaussian belief is moment-matched with the
spherical-radial cubature rule (2D points at m ± sqrt(D)·σ_i e_i; Arasaratnam & Haykin 2009):
mean = avg f_μ(points), var = avg exp(f_σ(points)) + avg (f_μ(points) − mean)², cross-covariances kept
on the diagonal only. It is exact for a linear transition with diagonal matrices (a Kalman filter, a
test checks it), and costs one transition call on 2D rows per step: O(1) per sample, no window re-run.

API, in normalised feature units (``model.features``/``model.normalize`` give them):

- live: :class:`TemporalFilter` (raw arrays in, like :class:`~mdgm_ros.core.inference.Fuser`; holds
  the state, :meth:`TemporalFilter.reset`), or the functions :func:`initial_state`, :func:`predict`,
  :func:`filter_step` on explicit states;
- offline on (B, T, ...) sequences: :func:`filter_sequence`, :func:`smooth_fixed_lag`,
  :func:`impute_sequence` (imputation with memory), :func:`predictive_nll_sequence` (one-step
  predictive anomaly NLL per modality), :func:`calibrate_predictive_anomaly`;
- k-step prediction: :func:`predict_ahead` (latents), :func:`decode_latents` (modalities);
- training on windows: :mod:`.sequence`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..families.temporal import (
    TRANSITION,
    check_actions,
    decode_state,
    flatten_steps,
    is_temporal,
    modality_state_expert,
    poe_with_prior,
    private_block,
    sequence_experts,
    state_coverage,
    state_dim,
    state_experts,
)
from ..model import posterior as post
from ..model.family import FamilyError
from ..model.vae import MultimodalVAE
from . import uncertainty
from .anomaly import empty_surprise, stream_surprise
from .inference import (
    AnomalyCalibration,
    FusionResult,
    Imputation,
    as_float32,
    calibration_from_nll,
    mixed_precision_call,
    predictive_scale,
    standardize_scores,
    within_range,
)
from .uncertainty import predictive_std, signed_identity
from .windows import gather_rows, windows_per_batch


def require_temporal(model: MultimodalVAE) -> None:
    if not is_temporal(model):
        raise FamilyError(f"model family {model.config.family!r} has no transition (not a temporal model)")


# --------------------------------------------------------------------------- state and one step
@dataclass
class FilterState:
    """Belief over the state after the last step: mean/logvar (B, S) (S = D, or D + M·P with private
    states: :func:`~mdgm_ros.core.families.temporal.state_dim`); rows with ``started`` False have seen no
    step yet (their next prediction is the initial prior N(0, I))."""

    mean: torch.Tensor
    logvar: torch.Tensor
    started: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.mean.shape[0])


def initial_state(model: MultimodalVAE, batch: int = 1) -> FilterState:
    zeros = torch.zeros((batch, state_dim(model)), device=model.device,
                        dtype=next(model.parameters()).dtype)
    return FilterState(zeros, zeros.clone(), torch.zeros(batch, dtype=torch.bool, device=model.device))


def reset_state(state: FilterState, rows: torch.Tensor | None = None) -> FilterState:
    """Forget the past of ``rows`` (bool (B,); None: every row)."""
    keep = torch.zeros_like(state.started) if rows is None else state.started & ~rows
    return replace(state, started=keep)


@dataclass
class Prediction:
    """p(z_t | past): mean/logvar (B, D); ``cross`` = diag Cov(z_{t-1}, z_t) (B, D), for smoothing."""

    mean: torch.Tensor
    logvar: torch.Tensor
    cross: torch.Tensor


def propagate(model: MultimodalVAE, mean: torch.Tensor, logvar: torch.Tensor,
              action: torch.Tensor | None = None, cross: bool = True) -> Prediction:
    """Moment-matched p(z_t) = ∫ p(z_t | z_{t-1}, u_t) N(z_{t-1}; mean, var) dz_{t-1} (cubature: the 2D
    points mean ± sqrt(D) std_i e_i). ``cross=False``: without the cross-covariance (a prediction
    ahead does not smooth), ``Prediction.cross`` is then None."""
    batch, dim = mean.shape
    spread = signed_identity(dim, mean.dtype, mean.device) * torch.exp(0.5 * logvar).unsqueeze(1)   # (B, 2D, D)
    points = mean.unsqueeze(1) + spread
    act = None if action is None else action.unsqueeze(1).expand(batch, 2 * dim, action.shape[-1])
    flat = (points.reshape(-1, dim),) + (() if act is None else (act.reshape(batch * 2 * dim, -1),))
    f_mean, f_logvar = (x.reshape(batch, 2 * dim, -1) for x in model.extra[TRANSITION](*flat))  # rank 2, as exported
    pred_mean = f_mean.mean(1)
    deviation = f_mean - pred_mean.unsqueeze(1)
    variance = (torch.exp(post.clamp_logvar(f_logvar)) + deviation.square()).mean(1)
    return Prediction(pred_mean, post.clamp_logvar(torch.log(variance)),
                      (spread * deviation).mean(1) if cross else None)


def predict(model: MultimodalVAE, state: FilterState, action: torch.Tensor | None = None) -> Prediction:
    """The next step's prediction; N(0, I) for rows that have not started."""
    check_actions(model, action, (state.batch,))
    moved = propagate(model, state.mean, state.logvar, action)
    started = state.started.unsqueeze(1)
    zero = torch.zeros_like(moved.mean)
    return Prediction(torch.where(started, moved.mean, zero), torch.where(started, moved.logvar, zero),
                      torch.where(started, moved.cross, zero))


@dataclass
class StepResult:
    """One filter step: the prediction, the experts (M, B, D), the filtered posterior, the new state."""

    prediction: Prediction
    expert_mean: torch.Tensor
    expert_logvar: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor
    state: FilterState


def filter_step(model: MultimodalVAE, state: FilterState, feats: Mapping[str, torch.Tensor],
                mask: torch.Tensor, action: torch.Tensor | None = None) -> StepResult:
    """q(z_t | x_t^S, past) ∝ p(z_t | past) Π_{m∈S} q(z_t | x_{m,t}) for normalised features (B, ...)
    of any observed set ``mask`` (B, M)."""
    prediction = predict(model, state, action)
    full = model.complete(feats, mask)
    mu, logvar = state_experts(model, full, mask)
    coverage = state_coverage(model, mask.device)
    q_mu, q_lv = poe_with_prior(mu, logvar, mask, prediction.mean, prediction.logvar, coverage)
    started = torch.ones_like(state.started)
    return StepResult(prediction, mu, logvar, q_mu, q_lv, FilterState(q_mu, q_lv, started))


def predictive_surprise(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], expert_mean: torch.Tensor,
                        expert_logvar: torch.Tensor, mask: torch.Tensor, prior_mean: torch.Tensor,
                        prior_logvar: torch.Tensor) -> torch.Tensor:
    """The surprise (:mod:`.anomaly`) of every observed m decoded at the mean of q(z | past, X_{O minus m}):
    (B, M, 2) with -log p(x_m | z) and the squared error in sensor units, NaN where m is missing. Each
    stream given the past and the other streams now (the M leave-one-out products are stacked along
    the batch; plug-in mean as the per-frame scores)."""
    n_mod, batch = mask.shape[1], mask.shape[0]
    eye = torch.eye(n_mod, dtype=torch.bool, device=mask.device)
    loo_mask = (mask.unsqueeze(0) & ~eye.unsqueeze(1)).reshape(n_mod * batch, n_mod)
    z, _ = poe_with_prior(expert_mean.repeat(1, n_mod, 1), expert_logvar.repeat(1, n_mod, 1), loo_mask,
                          prior_mean.repeat(n_mod, 1), prior_logvar.repeat(n_mod, 1),
                          state_coverage(model, mask.device))
    z = z.reshape(n_mod, batch, -1)
    out = empty_surprise(batch, n_mod, z)
    for j, name in enumerate(model.names):
        if bool(mask[:, j].any()):
            value = stream_surprise(model, name, feats[name], decode_state(model, name, z[j]))
            out[:, j] = torch.where(mask[:, j, None], value, out[:, j])
    return out


def predictive_nll(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], expert_mean: torch.Tensor,
                   expert_logvar: torch.Tensor, mask: torch.Tensor, prior_mean: torch.Tensor,
                   prior_logvar: torch.Tensor) -> torch.Tensor:
    """-log p(x_m | z) of :func:`predictive_surprise`: (B, M), NaN where m is missing."""
    return predictive_surprise(model, feats, expert_mean, expert_logvar, mask, prior_mean, prior_logvar)[..., 0]


# --------------------------------------------------------------------------- k-step prediction
def predict_ahead(model: MultimodalVAE, state: FilterState, steps: int,
                  actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """p(z_{t+1..t+k} | past) from the state after step t: mean/logvar (B, k, D). ``actions`` (B, k, U)
    are u_{t+1..t+k} (required exactly when the model has an action input)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_actions(model, actions, (state.batch, steps))
    means, logvars = [], []
    for k in range(steps):
        prediction = predict(model, state, None if actions is None else actions[:, k])
        means.append(prediction.mean)
        logvars.append(prediction.logvar)
        state = FilterState(prediction.mean, prediction.logvar, torch.ones_like(state.started))
    return torch.stack(means, 1), torch.stack(logvars, 1)


def state_dims(model: MultimodalVAE, name: str) -> list[int] | None:
    """The filter state's dimensions that ``name``'s decoder reads: the shared z and its own private
    state (None: the whole state, when it is the shared z alone)."""
    if not model.private_dim:
        return None
    block = private_block(model, name)
    return [*range(model.latent_dim), *range(block.start, block.stop)]


def _decoded_moments(model: MultimodalVAE, name: str, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.output_moments(name, decode_state(model, name, states))


def imputation_std(model: MultimodalVAE, name: str, mean: torch.Tensor, logvar: torch.Tensor, imputed: torch.Tensor,
                   calibration: AnomalyCalibration | None = None) -> torch.Tensor:
    """The predictive std (:mod:`.uncertainty`) of ``name`` imputed as ``imputed`` (its decoder at the
    belief's ``mean``) under the belief N(mean, exp(logvar)) over filter states (B, S), times the
    calibrated scale; normalised units."""
    std = predictive_std(functools.partial(_decoded_moments, model, name), mean, logvar, imputed,
                         state_dims(model, name))
    return std * predictive_scale(calibration, name)


def decode_latents(model: MultimodalVAE, latents: torch.Tensor, names: Sequence[str]) -> dict[str, Imputation]:
    """Decode filter states (..., S) into modality means and spreads (normalised units, (..., *fshape))."""
    out = {}
    for name in names:
        mean, std = model.output_moments(name, decode_state(model, name, latents))
        out[name] = Imputation(mean, std)
    return out


# --------------------------------------------------------------------------- sequences (offline)
@dataclass
class FilteredSequence:
    """Filtering over (B, T) steps: predictions, posteriors (B, T, D), experts (M, B, T, D), end state."""

    prior_mean: torch.Tensor
    prior_logvar: torch.Tensor
    cross: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor
    expert_mean: torch.Tensor
    expert_logvar: torch.Tensor
    state: FilterState


def filter_sequence(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                    actions: torch.Tensor | None = None, state: FilterState | None = None) -> FilteredSequence:
    """Filter normalised features (B, T, ...) with a mask (B, T, M) from ``state`` (default: fresh).
    The encoders run once over all steps; only the transition and the PoE are sequential."""
    require_temporal(model)
    batch, steps, _ = mask.shape
    check_actions(model, actions, (batch, steps))
    flat_feats, flat_mask = flatten_steps(model, feats, mask)
    mu, logvar = sequence_experts(model, flat_feats, flat_mask, batch, steps)
    state = initial_state(model, batch) if state is None else state
    coverage = state_coverage(model, mask.device)
    keys = ("prior_mean", "prior_logvar", "cross", "mean", "logvar")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for t in range(steps):
        prediction = predict(model, state, None if actions is None else actions[:, t])
        q_mu, q_lv = poe_with_prior(mu[:, :, t], logvar[:, :, t], mask[:, t], prediction.mean, prediction.logvar,
                                    coverage)
        state = FilterState(q_mu, q_lv, torch.ones_like(state.started))
        for key, value in zip(keys, (prediction.mean, prediction.logvar, prediction.cross, q_mu, q_lv)):
            out[key].append(value)
    stacked = {k: torch.stack(v, 1) for k, v in out.items()}
    return FilteredSequence(**stacked, expert_mean=mu, expert_logvar=logvar, state=state)


def smooth_fixed_lag(filtered: FilteredSequence, lag: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-lag smoothing: the belief over z_t given the observations up to t + ``lag`` (Rauch-Tung-
    Striebel backward pass with diagonal gains G_t = Cov(z_t, z_{t+1}) / Var(z_{t+1} | past); exact
    for a linear-Gaussian model with diagonal matrices). ``lag`` >= T - 1 gives the full smoother.
    Returns mean/logvar (B, T, D)."""
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    steps = filtered.mean.shape[1]
    f_var, p_var = torch.exp(filtered.logvar), torch.exp(filtered.prior_logvar)
    # gain[t] links z_t to z_{t+1}; the last step has no successor
    gain = torch.zeros_like(f_var)
    gain[:, :-1] = filtered.cross[:, 1:] / p_var[:, 1:]
    index = torch.arange(steps, device=f_var.device)
    end = (index + lag).clamp(max=steps - 1)
    mean, var = filtered.mean[:, end], f_var[:, end]
    for j in range(min(lag, steps - 1) - 1, -1, -1):
        at = (index + j).clamp(max=steps - 1)
        nxt = (at + 1).clamp(max=steps - 1)
        active = (index + j < end).view(1, -1, 1)
        g = gain[:, at]
        new_mean = filtered.mean[:, at] + g * (mean - filtered.prior_mean[:, nxt])
        new_var = f_var[:, at] + g ** 2 * (var - p_var[:, nxt])
        mean, var = torch.where(active, new_mean, mean), torch.where(active, new_var, var)
    return mean, post.clamp_logvar(torch.log(var.clamp_min(1e-30)))


def impute_sequence(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                    targets: Sequence[str], actions: torch.Tensor | None = None,
                    lag: int = 0) -> dict[str, Imputation]:
    """Imputation with memory: decode the filtered (``lag`` > 0: fixed-lag smoothed) posterior mean of
    every step for ``targets``: (B, T, *fshape) each, normalised units."""
    filtered = filter_sequence(model, feats, mask, actions)
    latents = filtered.mean if lag == 0 else smooth_fixed_lag(filtered, lag)[0]
    return decode_latents(model, latents, targets)


def predictive_surprise_sequence(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                                 actions: torch.Tensor | None = None) -> torch.Tensor:
    """One-step predictive surprise of every observed modality at every step (B, T, M, 2), NaN where
    missing."""
    filtered = filter_sequence(model, feats, mask, actions)
    batch, steps, n_mod = mask.shape
    flat_feats, flat_mask = flatten_steps(model, feats, mask)
    dim = state_dim(model)
    out = predictive_surprise(model, flat_feats, filtered.expert_mean.reshape(n_mod, batch * steps, dim),
                              filtered.expert_logvar.reshape(n_mod, batch * steps, dim), flat_mask,
                              filtered.prior_mean.reshape(batch * steps, dim),
                              filtered.prior_logvar.reshape(batch * steps, dim))
    return out.reshape(batch, steps, n_mod, -1)


def predictive_nll_sequence(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                            actions: torch.Tensor | None = None) -> torch.Tensor:
    """One-step predictive NLL of every observed modality at every step (B, T, M), NaN where missing."""
    return predictive_surprise_sequence(model, feats, mask, actions)[..., 0]


@torch.no_grad()
def calibrate_predictive_anomaly(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                                 actions: torch.Tensor | None = None, quantile: float = 0.99,
                                 windows: torch.Tensor | None = None,
                                 batch_size: int | None = None) -> AnomalyCalibration:
    """Calibrate the one-step predictive scores on normal sequences (B, T, ...); with ``windows``
    (W, T), ``feats``/``mask``/``actions`` are rows and each window is filtered from a fresh state
    (padded steps are left out)."""
    if windows is None:
        surprise = predictive_surprise_sequence(model, feats, mask, actions)
        return calibration_from_nll(model, surprise.reshape(-1, *surprise.shape[2:]), quantile)
    parts = []
    batch_size = batch_size or windows_per_batch(windows)
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start:start + batch_size]
        part, m, act = gather_rows(feats, mask, chunk, actions, model.device)
        surprise = predictive_surprise_sequence(model, part, m, act)
        parts.append(surprise[chunk.to(surprise.device) >= 0])
    return calibration_from_nll(model, torch.cat(parts), quantile)


@torch.no_grad()
def calibrate_predictive_scale_sequences(model: MultimodalVAE, feats: Mapping[str, torch.Tensor],
                                         mask: torch.Tensor, windows: torch.Tensor,
                                         actions: torch.Tensor | None = None,
                                         batch_size: int | None = None) -> dict[str, float]:
    """Per modality, the factor on its predictive std (:mod:`.uncertainty`) that makes the central 90 %
    interval cover 90 % of held-out truth when it is imputed with memory: each window (W, T) of rows is
    filtered from a fresh state with the modality missing throughout (outages of 1 to T steps, the other
    streams as observed), and the truth it had compared with the imputation at every step; at most
    :func:`~.uncertainty.calibration_rows` elements' rows per modality."""
    require_temporal(model)
    scales = {}
    for j, name in enumerate(model.names):
        limit, errors, stds, seen = uncertainty.calibration_rows(model.specs[name].kind), [], [], 0
        batch_size = batch_size or windows_per_batch(windows)
        for start in range(0, windows.shape[0], batch_size):
            if seen >= limit:
                break
            chunk = windows[start:start + batch_size]
            part, m, act = gather_rows(feats, mask, chunk, actions, model.device)
            truth_rows = m[:, :, j].clone()
            m[:, :, j] = False
            filtered = filter_sequence(model, part, m, act)
            where = truth_rows.reshape(-1)
            if not bool(where.any()):
                continue
            mean = filtered.mean.reshape(-1, filtered.mean.shape[-1])[where]
            logvar = filtered.logvar.reshape(-1, filtered.logvar.shape[-1])[where]
            decoded = decode_latents(model, mean, [name])[name]
            std = imputation_std(model, name, mean, logvar, decoded.mean)
            truth = part[name].reshape(-1, *part[name].shape[2:])[where]
            errors.append((decoded.mean - truth).cpu().numpy().reshape(len(mean), -1))
            stds.append(std.expand_as(decoded.mean).cpu().numpy().reshape(len(mean), -1))
            seen += len(mean)
        if errors:
            scales[name] = uncertainty.predictive_scale(np.concatenate(errors), np.concatenate(stds))
    return scales


@torch.no_grad()
def calibrate_prediction_horizon(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                                 windows: torch.Tensor, horizon: int = 10, every: int = 4,
                                 batch_size: int | None = None) -> dict[str, object]:
    """How far ahead the predicted shared latent beats "nothing changes" on held-out windows (W, T) of
    rows: each window is filtered from a fresh state; from every ``every``-th step, the k-step prediction
    (k = 1..``horizon``) and the filtered latent now are compared with the filtered latent k steps later
    (what ~/latent will say then). ``useful``: the largest k such that the prediction has the lower mean
    squared error at every step up to k (0: not even one step)."""
    require_temporal(model)
    dim = model.latent_dim
    sums = torch.zeros(2, horizon, dtype=torch.float64)
    counts = torch.zeros(horizon, dtype=torch.float64)
    batch_size = batch_size or windows_per_batch(windows)
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start:start + batch_size]
        part, m, _ = gather_rows(feats, mask, chunk, None, model.device)
        filtered = filter_sequence(model, part, m)
        valid = (chunk >= 0).to(model.device)
        steps = filtered.mean.shape[1]
        for t in range(0, steps - 1, every):
            state = FilterState(filtered.mean[:, t], filtered.logvar[:, t],
                                torch.ones(filtered.mean.shape[0], dtype=torch.bool, device=model.device))
            ahead, _ = predict_ahead(model, state, min(horizon, steps - 1 - t))
            for k in range(ahead.shape[1]):
                rows = valid[:, t] & valid[:, t + k + 1]
                if not bool(rows.any()):
                    continue
                target = filtered.mean[rows, t + k + 1, :dim]
                sums[0, k] += float((ahead[rows, k, :dim] - target).square().mean(1).sum())
                sums[1, k] += float((filtered.mean[rows, t, :dim] - target).square().mean(1).sum())
                counts[k] += float(rows.sum())
    model_mse, still_mse = (sums / counts.clamp_min(1)).tolist()
    useful = 0
    while useful < horizon and counts[useful] > 0 and model_mse[useful] < still_mse[useful]:
        useful += 1
    return {"useful": useful, "model_mse": model_mse, "nothing_changes_mse": still_mse,
            "samples": counts.tolist()}


# --------------------------------------------------------------------------- live use
@dataclass
class TemporalFusionResult(FusionResult):
    """A :class:`FusionResult` plus the k-step predicted latents (B, k, D) (empty when k = 0)."""

    predicted_mean: torch.Tensor | None = None
    predicted_std: torch.Tensor | None = None


class TemporalFilter:
    """The live temporal fusion step, stateful: raw arrays of the observed modalities in (B rows, one
    sample each), the filtered posterior, imputations of the missing modalities (from the memory and
    the present streams), one-step predictive anomaly scores and ``horizon``-step predicted latents out.
    :meth:`reset` forgets the past (on a clock jump, a stream reset, a lifecycle deactivate).

    At batch 1 (a live node) the step runs in closed form (:meth:`_closed_form_step`): the transition's
    prediction, then the product of the Gaussian experts of the observed modalities with it over
    precisions, and the leave-one-out products for the scores, with none of the masked subset machinery
    of :func:`filter_step` (a test checks both agree)."""

    def __init__(self, model: MultimodalVAE, calibration: AnomalyCalibration | None = None,
                 impute_present: bool = False, anomaly: bool = True, horizon: int = 0, batch: int = 1,
                 amp: torch.dtype | None = None, predictive_std: Sequence[str] = ()):
        require_temporal(model)
        self.model = model.eval()
        self.calibration, self.impute_present, self.anomaly = calibration, impute_present, anomaly
        self.horizon = horizon
        self.amp = amp                                   # autocast dtype of the step (None: fp32)
        self.state = initial_state(model, batch)
        self.steps = 0                                   # filter steps since the last reset
        self.closed_form = True                          # batch 1: the closed form (tests: equal to the generic)
        self._next_prior: tuple | None = None            # (state, mean, logvar): the horizon's first step
        self.predictive_std = frozenset(predictive_std)   # as the per-frame Fuser's

    def reset(self, rows: torch.Tensor | None = None) -> None:
        self.state = reset_state(self.state, rows)
        if rows is None:
            self.steps = 0

    def __call__(self, raw: Mapping[str, torch.Tensor], mask: torch.Tensor, action: torch.Tensor | None = None,
                 future_actions: torch.Tensor | None = None,
                 on_latent: Callable[[FusionResult], "bool | None"] | None = None,
                 expected: torch.Tensor | None = None,
                 out_of_range: torch.Tensor | None = None) -> TemporalFusionResult | None:
        """One step. ``on_latent(result)`` runs as soon as the filtered posterior exists (before any
        decoder); if it returns False, the state still advances but the step returns None. ``mask`` may
        stay on the CPU (as :class:`~mdgm_ros.core.inference.Fuser`'s). ``expected`` (B, M): streams
        whose absence is scored (:mod:`.anomaly`). ``out_of_range``: as the Fuser's."""
        try:
            return mixed_precision_call(self._step, self.amp, self.model, raw, mask, action,
                                        future_actions, on_latent=on_latent, expected=expected,
                                        out_of_range=out_of_range)
        finally:
            if self.amp is not None:                     # the memory stays in fp32 between steps
                self.state = as_float32(self.state)

    @torch.inference_mode()
    def _step(self, raw: Mapping[str, torch.Tensor], mask: torch.Tensor, action: torch.Tensor | None = None,
              future_actions: torch.Tensor | None = None,
              on_latent: Callable[[FusionResult], "bool | None"] | None = None,
              expected: torch.Tensor | None = None,
              out_of_range: torch.Tensor | None = None) -> TemporalFusionResult | None:
        model = self.model
        host = mask.cpu()
        observed = [n for j, n in enumerate(model.names) if bool(host[:, j].any())]
        self.steps += 1
        feats = model.features({n: raw[n] for n in observed})
        ranged = within_range(model, raw, feats, host, out_of_range)
        if ranged.outside is not None:
            host, observed = ranged.mask, ranged.observed
            feats = {n: feats[n] for n in observed}
        if self.closed_form and host.shape[0] == 1:
            result = self._closed_form_step(feats, observed, action, future_actions, on_latent, expected,
                                            ranged.outside)
            return ranged.scored(model, self.calibration, result)
        mask = host.to(model.device)
        feats = model.complete(feats, mask)
        step = filter_step(model, self.state, feats, mask, action)
        self.state = step.state
        result = self._result(step.mean, step.logvar)
        result.out_of_range = ranged.outside
        if on_latent is not None and on_latent(result) is False:
            return None
        targets = [n for j, n in enumerate(model.names) if self.impute_present or not bool(mask[:, j].all())]
        self._store_imputations(result, step.mean, targets, step.logvar)
        if self.anomaly:
            surprise = predictive_surprise(model, feats, step.expert_mean, step.expert_logvar, mask,
                                           step.prediction.mean, step.prediction.logvar)
            result.scores, result.total_score = standardize_scores(model, surprise, self.calibration, expected)
        if self.horizon > 0:
            mean, logvar = predict_ahead(model, self.state, self.horizon, future_actions)
            dim = model.latent_dim                       # the shared latent's prediction (as ~/latent)
            result.predicted_mean, result.predicted_std = mean[..., :dim], torch.exp(0.5 * logvar[..., :dim])
        return ranged.scored(model, self.calibration, result)

    def _result(self, mean: torch.Tensor, logvar: torch.Tensor,
                result: TemporalFusionResult | None = None) -> TemporalFusionResult:
        """The filtered belief as a result: the shared z, and with private states every modality's s_m
        (the remembered one where the modality is missing). ``result``: one that already holds the
        shared z (:meth:`_shared_latent`, the same numbers), to complete."""
        model, dim = self.model, self.model.latent_dim
        std = torch.exp(0.5 * logvar)
        if result is None:
            result = TemporalFusionResult(mean[:, :dim], std[:, :dim])
        for name in model.names if model.private_dim else ():
            block = private_block(model, name)
            result.private_mean[name], result.private_std[name] = mean[:, block], std[:, block]
        return result

    def _shared_latent(self, prior_precision: torch.Tensor, prior_weighted: torch.Tensor, shared
                       ) -> TemporalFusionResult:
        """The filtered shared z from the prediction and the observed shared experts alone: the state's
        first D dimensions, which no private expert informs, by the same operations as the whole state
        (so the same numbers), before any private encoder runs (a live node publishes it at once)."""
        dim = self.model.latent_dim
        total, total_weighted = prior_precision[:, :dim], prior_weighted[:, :dim]
        for mu, logvar in shared:
            precision = torch.exp(-post.clamp_logvar(logvar))
            total, total_weighted = total + precision, total_weighted + precision * mu
        return TemporalFusionResult(total_weighted / total, torch.exp(0.5 * post.clamp_logvar(-torch.log(total))))

    def _closed_form_step(self, feats: Mapping[str, torch.Tensor], observed: list[str], action: torch.Tensor | None,
                          future_actions: torch.Tensor | None, on_latent, expected: torch.Tensor | None = None,
                          outside: torch.Tensor | None = None) -> TemporalFusionResult | None:
        """Batch 1: precisions P = exp(-logvar) of the prediction and the observed experts over the state
        (zero where an expert does not inform it); the filtered posterior is T = P_prior + sum_m P_m,
        mean = (P_prior mu_prior + sum_m P_m mu_m) / T, and the leave-one-out posterior of m drops P_m
        and P_m mu_m from both sums."""
        model, state = self.model, self.state
        check_actions(model, action, (1,))
        ahead = self._next_prior
        self._next_prior = None
        if ahead is not None and ahead[0] is state and action is None:       # the last horizon's first step
            prior_mean, prior_logvar = ahead[1], ahead[2]
        elif bool(state.started[0]):
            moved = propagate(model, state.mean, state.logvar, action, cross=False)
            prior_mean, prior_logvar = moved.mean, moved.logvar
        else:                                            # no past: N(0, I)
            prior_mean, prior_logvar = torch.zeros_like(state.mean), torch.zeros_like(state.logvar)
        prior_precision = torch.exp(-post.clamp_logvar(prior_logvar))
        prior_weighted = prior_precision * prior_mean
        total, total_weighted = prior_precision, prior_weighted
        shared = {n: model.family.unimodal_encoder(model, n)(feats[n]) for n in observed} if model.private_dim else {}
        early, stop = None, False
        if shared and on_latent is not None:             # the shared latent first: the private encoders after it
            early = self._shared_latent(prior_precision, prior_weighted, shared.values())
            early.out_of_range = outside
            stop = on_latent(early) is False
        precisions, weighted = [], []
        for name in observed:
            mu, precision = modality_state_expert(model, name, feats[name], shared.get(name))
            precisions.append(precision)
            weighted.append(precision * mu)
            total, total_weighted = total + precision, total_weighted + precision * mu
        mean, logvar = total_weighted / total, post.clamp_logvar(-torch.log(total))
        self.state = FilterState(mean, logvar, torch.ones_like(state.started))
        result = self._result(mean, logvar, early)
        result.out_of_range = outside
        if early is None and on_latent is not None:
            stop = on_latent(result) is False
        if stop:
            return None
        targets = [n for n in model.names if self.impute_present or n not in observed]
        self._store_imputations(result, mean, targets, logvar)
        if self.anomaly:
            surprise = empty_surprise(1, len(model.names), mean)
            # leave-one-out products without subtracting an expert from the total (exclusive_sums): an
            # expert far more precise than the prediction would leave 0 / 0 behind
            loo_means = ((prior_weighted + post.exclusive_sums(torch.stack(weighted)))
                         / (prior_precision + post.exclusive_sums(torch.stack(precisions)))) if observed else []
            for name, loo_mean in zip(observed, loo_means):
                surprise[:, model.names.index(name)] = stream_surprise(model, name, feats[name],
                                                                       decode_state(model, name, loo_mean))
            result.scores, result.total_score = standardize_scores(model, surprise, self.calibration, expected)
        if self.horizon > 0:
            result.predicted_mean, result.predicted_std = self._predicted(mean, logvar, future_actions)
        return result

    def _predicted(self, mean: torch.Tensor, logvar: torch.Tensor, future_actions: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``horizon`` steps of the transition from the just-filtered belief: the shared latent's
        mean/std (1, k, D) (the state's first D dimensions, as ~/latent)."""
        check_actions(self.model, future_actions, (1, self.horizon))
        means, logvars = [], []
        for k in range(self.horizon):
            moved = propagate(self.model, mean, logvar, None if future_actions is None else future_actions[:, k],
                              cross=False)
            mean, logvar = moved.mean, moved.logvar
            means.append(mean)
            logvars.append(logvar)
        if future_actions is None:       # the next step's prediction, if it brings no action: reused there
            self._next_prior = (self.state, means[0], logvars[0])
        dim = self.model.latent_dim
        return torch.stack(means, 1)[..., :dim], torch.exp(0.5 * torch.stack(logvars, 1))[..., :dim]

    def _store_imputations(self, result: FusionResult, latent: torch.Tensor, targets: Sequence[str],
                           logvar: torch.Tensor | None = None) -> None:
        """Decode the belief's mean; the :attr:`predictive_std` modalities' std is their calibrated
        predictive std under the whole belief (:mod:`.uncertainty`: over the shared z and their own
        private state), the others' the decoder's spread."""
        model = self.model
        for name, imputed in decode_latents(model, latent, targets).items():
            std = imputed.std
            if logvar is not None and name in self.predictive_std:
                std = imputation_std(model, name, latent, logvar, imputed.mean, self.calibration)
            _, std_scale = model.normalization_stats(name)
            result.imputed[name] = Imputation(model.denormalize(name, imputed.mean), std * std_scale)


__all__ = [
    "FilterState", "FilteredSequence", "Prediction", "StepResult", "TemporalFilter", "TemporalFusionResult",
    "calibrate_prediction_horizon", "calibrate_predictive_anomaly", "calibrate_predictive_scale_sequences",
    "calibration_from_nll",
    "decode_latents", "filter_sequence", "filter_step", "imputation_std", "impute_sequence", "initial_state",
    "predict", "predict_ahead", "predictive_nll", "predictive_nll_sequence", "predictive_surprise",
    "predictive_surprise_sequence", "propagate", "require_temporal", "reset_state", "smooth_fixed_lag",
    "state_dims",
]



def sequence_imputer(model: MultimodalVAE, calibration: AnomalyCalibration | None = None,
                     with_std: Sequence[str] = ()):
    """A temporal model's imputation of a modality at given steps of windows (B, T): the filter through each
    window with its mask, decoded at ``rows`` (batch indices, step indices), with the calibrated predictive
    std for the modalities in ``with_std`` (what :func:`~.fallback.calibrate_fallback` compares)."""
    def impute(feats: Mapping[str, torch.Tensor], mask: torch.Tensor, name: str, rows):
        filtered = filter_sequence(model, feats, mask)
        index = tuple(torch.as_tensor(r, device=filtered.mean.device) for r in rows)
        mean, logvar = filtered.mean[index], filtered.logvar[index]
        decoded = decode_latents(model, mean, [name])[name].mean
        if name not in with_std:
            return decoded, None
        return decoded, imputation_std(model, name, mean, logvar, decoded, calibration)
    return impute
