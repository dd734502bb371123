"""Inference from any subset of modalities: posterior, imputation, likelihoods, anomaly scores.

All functions work on normalised features (see :meth:`MultimodalVAE.features`) and a presence mask
(B, M), and are batched: no Python loop runs over samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..families.private import private_codes
from ..model import posterior as post
from ..model.estimators import (
    log_likelihood_sum,
    posterior_samples,
)
from ..model.vae import MultimodalVAE
from . import ranges, uncertainty
from .anomaly import AnomalyCalibration, calibration_from_nll, empty_surprise, standardize_scores, stream_surprise


def conditional_log_likelihood(model: MultimodalVAE, feats: Mapping[str, torch.Tensor],
                               cond_mask: torch.Tensor, target_mask: torch.Tensor, n_samples: int = 64,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(X_T | X_S) per sample (B,), estimated as log (1/K) sum_k p(X_T | z_k), z_k ~ q(z | X_S).

    (The estimator MoPoE and MultiVae report; it is a lower bound in expectation.)"""
    feats = model.complete(feats, cond_mask | target_mask)
    mu, logvar = model.experts(feats, cond_mask)
    z = posterior_samples(model, mu, logvar, cond_mask, n_samples, generator)
    private = private_codes(model, feats, cond_mask, n_samples, generator) if model.private_dim else None
    return torch.logsumexp(log_likelihood_sum(model, feats, z, target_mask, private), 0) - math.log(n_samples)


# --------------------------------------------------------------------------- imputation
@dataclass
class Imputation:
    """Imputed modality in normalised feature units: per-element mean and spread (B, *fshape)."""

    mean: torch.Tensor
    std: torch.Tensor


def impute_from_experts(model: MultimodalVAE, mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor,
                        targets: Sequence[str], n_samples: int = 0,
                        generator: torch.Generator | None = None,
                        private: torch.Tensor | None = None) -> dict[str, Imputation]:
    """Decode ``targets`` from q(z | X_mask). ``n_samples=0`` decodes the posterior mean (fast, the
    decoder's own spread); K > 0 averages K posterior samples and adds their spread (total variance).
    ``private``: each modality's s_m for families with private latents (:func:`private_codes`; None:
    the generation prior's mean)."""
    if n_samples == 0:
        z = model.posterior_summary(mu, logvar, mask)[0]
    else:
        z = posterior_samples(model, mu, logvar, mask, n_samples, generator)
    out = {}
    for name in targets:
        s = None if private is None else private[model.names.index(name)]
        mean, std = model.output_moments(name, model.decode(name, z, s))
        if n_samples:
            variance = (std ** 2).mean(0) + mean.var(0, unbiased=False)
            mean, std = mean.mean(0), variance.sqrt()
        out[name] = Imputation(mean, std)
    return out


def impute(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
           targets: Sequence[str], n_samples: int = 0,
           generator: torch.Generator | None = None) -> dict[str, Imputation]:
    """Impute any target modalities from the observed subset ``mask`` (normalised feature units)."""
    feats = model.complete(feats, mask)
    mu, logvar = model.experts(feats, mask)
    private = private_codes(model, feats, mask, n_samples, generator) if model.private_dim else None
    return impute_from_experts(model, mu, logvar, mask, targets, n_samples, generator, private)


# --------------------------------------------------------------------------- anomaly scores
def leave_one_out_surprise(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
                           logvar: torch.Tensor, mask: torch.Tensor, n_samples: int = 0,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """The surprise of every observed m given X_{O minus m} (:mod:`.anomaly`): (B, M, 2) with
    -log p(x_m | X_{O minus m}) and the squared error in sensor units, NaN where m is missing.

    All M conditionals are computed in one batched posterior call (the M leave-one-out masks are
    stacked along the batch). ``n_samples=0`` uses the conditional posterior mean; with samples the
    likelihood is their average and the error is the mean over samples."""
    n_mod, (_, batch, dim) = len(model.names), mu.shape
    eye = torch.eye(n_mod, dtype=torch.bool, device=mask.device)
    loo_mask = (mask.unsqueeze(0) & ~eye.unsqueeze(1)).reshape(n_mod * batch, n_mod)   # (M*B, M)
    mu_rep = mu.repeat(1, n_mod, 1)
    lv_rep = logvar.repeat(1, n_mod, 1)
    if n_samples == 0:
        z = model.posterior_summary(mu_rep, lv_rep, loo_mask)[0].reshape(n_mod, batch, dim)
    else:
        z = posterior_samples(model, mu_rep, lv_rep, loo_mask, n_samples, generator)
        z = z.reshape(n_samples, n_mod, batch, dim)
    out = empty_surprise(batch, n_mod, mu)
    private = _left_out_private(model, feats, mask, n_samples, generator)
    for j, name in enumerate(model.names):
        if not bool(mask[:, j].any()):
            continue
        z_j = z[j] if n_samples == 0 else z[:, j]
        decoded = model.decode(name, z_j, None if private is None else private[j])
        value = stream_surprise(model, name, feats[name], decoded)
        if n_samples:
            ll = torch.logsumexp(-value[..., 0], 0) - math.log(n_samples)
            value = torch.stack([-ll, value[..., 1].mean(0)], -1)
        out[:, j] = torch.where(mask[:, j, None], value, out[:, j])
    return out


def leave_one_out_nll(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
                      logvar: torch.Tensor, mask: torch.Tensor, n_samples: int = 0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """-log p(x_m | X_{O minus m}) for every observed m: (B, M), NaN where m is missing."""
    return leave_one_out_surprise(model, feats, mu, logvar, mask, n_samples, generator)[..., 0]


def _left_out_private(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                      n_samples: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """s_m for decoding x_m with m left out: the generation prior's samples (None: its mean)."""
    if not model.private_dim or n_samples == 0:
        return None
    return private_codes(model, feats, torch.zeros_like(mask), n_samples, generator)


def anomaly_scores(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                   calibration: AnomalyCalibration | None, n_samples: int = 0,
                   generator: torch.Generator | None = None, expected: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-modality scores and total (:func:`.anomaly.standardize_scores`); ``expected`` (B, M): the
    streams whose absence counts as evidence. A stream outside its training range is left out and
    scored as :class:`Fuser` does (:mod:`.ranges`)."""
    outside, over = ranges.outside_rows(model, feats, mask)
    mask = mask & ~outside
    feats = model.complete(feats, mask)
    mu, logvar = model.experts(feats, mask)
    surprise = leave_one_out_surprise(model, feats, mu, logvar, mask, n_samples, generator)
    scores, total = standardize_scores(model, surprise, calibration, expected)
    if bool(outside.any()):
        scores, total = ranges.score_out_of_range(model.names, calibration, scores, total, over)
    return scores, total


def calibrate_anomaly(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                      quantile: float = 0.99, n_samples: int = 0, batch_size: int = 256,
                      generator: torch.Generator | None = None) -> AnomalyCalibration:
    """Calibrate on normal (fault-free, held-out) data: per-modality NLL mean/std and thresholds."""
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    chunks = []
    with torch.no_grad():
        for start in range(0, mask.shape[0], batch_size):
            part = {k: v[start:start + batch_size] for k, v in feats.items()}
            m = mask[start:start + batch_size]
            full = model.complete(part, m)
            mu, logvar = model.experts(full, m)
            chunks.append(leave_one_out_surprise(model, full, mu, logvar, m, n_samples, generator))
    return calibration_from_nll(model, torch.cat(chunks), quantile, n_samples)


def predictive_imputation(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                          targets: Sequence[str], calibration: AnomalyCalibration | None = None
                          ) -> dict[str, Imputation]:
    """:func:`impute` with each target's predictive std (:mod:`.uncertainty`, times ``calibration``'s
    scale where it has one), normalised feature units."""
    feats = model.complete(feats, mask)
    mu, logvar = model.experts(feats, mask)
    z_mean, z_logvar = model.posterior_summary(mu, logvar, mask)
    private = private_codes(model, feats, mask) if model.private_dim else None
    imputed = impute_from_experts(model, mu, logvar, mask, targets, private=private)
    moments = {n: (i.mean, i.std) for n, i in imputed.items()}
    predictive_moments(model, calibration, moments, z_mean, z_logvar, private, targets)
    return {n: Imputation(mean, std) for n, (mean, std) in moments.items()}


def predictive_moments(model: MultimodalVAE, calibration: AnomalyCalibration | None,
                       moments: dict[str, tuple[torch.Tensor, torch.Tensor]], z_mean: torch.Tensor,
                       z_logvar: torch.Tensor, private: torch.Tensor | None, names) -> None:
    """Replace the std of ``names`` in ``moments`` (decoded at the posterior mean) by their predictive
    std under q(z | .) = N(z_mean, exp(z_logvar)), times the calibrated scale (private codes held at
    theirs)."""
    for name in set(names).intersection(moments):
        code = None if private is None else private[model.names.index(name)]

        def decode(z: torch.Tensor, name: str = name, code: torch.Tensor | None = code):
            tiled = None if code is None else code.repeat(z.shape[0] // code.shape[0], 1)
            return model.output_moments(name, model.decode(name, z, tiled))
        mean, _ = moments[name]
        std = uncertainty.predictive_std(decode, z_mean, z_logvar, mean)
        moments[name] = (mean, std * predictive_scale(calibration, name))


@torch.no_grad()
def calibrate_predictive_scale(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                               batch_size: int = 256) -> dict[str, float]:
    """Per modality, the factor on its predictive std (:mod:`.uncertainty`) that makes the central 90 %
    interval cover 90 % of held-out truth when it is imputed from the other streams of a row (normalised
    features (N, ...), presence mask (N, M)); rows where it and another stream are observed, at most
    :func:`~.uncertainty.calibration_rows` of them."""
    scales = {}
    for j, name in enumerate(model.names):
        others = mask.clone()
        others[:, j] = False
        limit = uncertainty.calibration_rows(model.specs[name].kind)
        rows = torch.nonzero(mask[:, j] & others.any(1)).flatten()[:limit]
        errors, stds = [], []
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            m = others[part].to(model.device)
            imputed = predictive_imputation(model, {n: v[part].to(model.device) for n, v in feats.items()}, m,
                                            [name])[name]
            mean, std = imputed.mean, imputed.std
            truth = feats[name][part].to(model.device)
            errors.append((mean - truth).cpu().numpy().reshape(len(part), -1))
            stds.append(std.expand_as(mean).cpu().numpy().reshape(len(part), -1))
        if errors:
            scales[name] = uncertainty.predictive_scale(np.concatenate(errors), np.concatenate(stds))
    return scales


def frame_imputer(model: MultimodalVAE, calibration: AnomalyCalibration | None = None,
                  with_std: Sequence[str] = ()):
    """A per-frame model's imputation of a modality at given steps of windows (B, T), from each step's other
    streams, with the calibrated predictive std for the modalities in ``with_std`` (what
    :func:`~.fallback.calibrate_fallback` compares)."""
    def impute_steps(feats: Mapping[str, torch.Tensor], mask: torch.Tensor, name: str, rows):
        index = tuple(torch.as_tensor(r, device=mask.device) for r in rows)
        part, part_mask = {n: v[index] for n, v in feats.items()}, mask[index]
        mean, std = torch.zeros_like(part[name]), torch.ones_like(part[name])   # nothing observed: the prior's
        seen = torch.nonzero(part_mask.any(1)).flatten()
        for start in range(0, len(seen), 256):
            at = seen[start:start + 256]
            chunk = {n: v[at] for n, v in part.items()}
            imputed = (predictive_imputation(model, chunk, part_mask[at], [name], calibration) if name in with_std
                       else impute(model, chunk, part_mask[at], [name]))[name]
            mean[at], std[at] = imputed.mean, imputed.std.expand_as(imputed.mean)
        return mean, (std if name in with_std else None)
    return impute_steps


# --------------------------------------------------------------------------- the fusion step
@dataclass
class FusionResult:
    """One fusion step's outputs. Imputations are in the modality's un-normalised feature units
    (for audio: the log-mel spectrogram). Scores: standardised, NaN for missing modalities."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    imputed: dict[str, Imputation] = field(default_factory=dict)
    scores: torch.Tensor | None = None
    total_score: torch.Tensor | None = None
    # families with private latents: q(s_m | .) of each observed modality, mean and std (B, P)
    private_mean: dict[str, torch.Tensor] = field(default_factory=dict)
    private_std: dict[str, torch.Tensor] = field(default_factory=dict)
    # (B, M) bool on the host: observed streams outside their training range (:mod:`.ranges`), left out
    # of the posterior, imputed and scored as out of range; None when every stream was within range
    out_of_range: torch.Tensor | None = None


LatentHook = Callable[[FusionResult], "bool | None"]


def predictive_scale(calibration: AnomalyCalibration | None, name: str) -> float:
    """The calibrated factor on ``name``'s predictive std (1 where none was calibrated)."""
    return 1.0 if calibration is None else calibration.predictive_scale.get(name, 1.0)


@dataclass
class Ranged:
    """The observed streams of a step after the range check (:mod:`.ranges`): the presence mask and the
    observed names the posterior takes, and where streams were out of range (None: nowhere)."""

    mask: torch.Tensor
    observed: list[str]
    outside: torch.Tensor | None = None
    over: dict[str, torch.Tensor] = field(default_factory=dict)

    def scored(self, model: MultimodalVAE, calibration: AnomalyCalibration | None, result: Any) -> Any:
        """``result`` with the out-of-range streams' bounded scores (as it is where none was)."""
        if result is None or self.outside is None:
            return result
        result.scores, result.total_score = ranges.score_out_of_range(
            model.names, calibration, result.scores, result.total_score, self.over)
        return result


def within_range(model: MultimodalVAE, raw: Mapping[str, torch.Tensor], feats: Mapping[str, torch.Tensor],
                 host: torch.Tensor, checked: torch.Tensor | None = None) -> Ranged:
    """Check the observed streams (``raw`` arrays and their normalised ``feats``) against their bounds;
    ``host``: the (B, M) presence mask on the CPU. ``checked`` (B, M) bool on the CPU: where the caller
    already found streams outside their bounds (the fusion node does it while it converts each message),
    so that only those are measured here. A family that infers only from every stream (Table 1: no
    missing modalities) keeps them all, as it has no score to give either."""
    observed = list(feats)
    if not model.family.properties.missing_modalities:   # it infers from all streams only: none can be left out
        return Ranged(host, observed)
    if checked is not None:
        outside = checked.cpu().bool() & host
        if not bool(outside.any()):
            return Ranged(host, observed)
        names = [n for j, n in enumerate(model.names) if bool(outside[:, j].any()) and n in feats]
    else:
        names = _bounded(model, observed)
        if not names or not _leave_bounds(model, raw, feats, names):
            return Ranged(host, observed)
    over = ranges.excess(model, {n: feats[n] for n in names})
    outside = ranges.outside_mask(model.names, over, host.shape[0], torch.device("cpu")) & host
    if not bool(outside.any()):                          # only rows where the stream is missing were outside
        return Ranged(host, observed)
    mask = host & ~outside
    kept = [n for n, seen in zip(model.names, mask.any(0).tolist()) if seen]
    return Ranged(mask, kept, outside, {n: v.masked_fill(~outside[:, model.names.index(n)].to(v.device), 0.0)
                                        for n, v in over.items()})


def _bounded(model: MultimodalVAE, names: Sequence[str]) -> list[str]:
    return [n for n in names if model.feature_bounds(n) is not None]


def _leave_bounds(model: MultimodalVAE, raw: Mapping[str, torch.Tensor], feats: Mapping[str, torch.Tensor],
                  names: list[str]) -> bool:
    """Whether any value of the ``names`` streams lies outside its bounds: float32 arrays on the CPU are
    compared in their raw units as numpy views, anything else by its normalised features (one device read)."""
    for name in names:
        x, norm = raw[name], model.specs[name].normalization
        if x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad \
                and name not in model.front_ends and norm is not None and norm.low is not None:
            values = x.numpy()
            if np.count_nonzero(values < norm.low) or np.count_nonzero(values > norm.high):
                return True
        elif bool(ranges.excess(model, {name: feats[name]})[name].gt(0).any()):
            return True
    return False

def _float32(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Imputation):
        return Imputation(value.mean.float(), value.std.float())
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    return value


def as_float32(result: Any) -> Any:
    """Every floating tensor of a dataclass result (a fusion result, a filter state) in float32, in place:
    what a mixed-precision step hands to numpy, messages and the next step."""
    for f in fields(result):
        setattr(result, f.name, _float32(getattr(result, f.name)))
    return result


def mixed_precision_call(step: Callable[..., Any], amp: torch.dtype | None, model: MultimodalVAE,
                         *args: Any, on_latent: LatentHook | None = None, **kw: Any) -> Any:
    """``step(*args, on_latent=, **kw)`` under ``torch.autocast(amp)`` on the model's device (networks in
    half precision, the Gaussian algebra where autocast keeps it in fp32); the latent hook and the
    caller get float32. Without ``amp`` the step runs as it is (nothing looked up: the live path)."""
    if amp is None:
        return step(*args, on_latent=on_latent, **kw)
    hook = None if on_latent is None else (lambda result: on_latent(as_float32(result)))
    with torch.autocast(model.device.type, dtype=amp):
        result = step(*args, on_latent=hook, **kw)
    return None if result is None else as_float32(result)


class Fuser:
    """What a live node calls per sample: raw arrays of the observed modalities in, the posterior,
    imputations of the missing (optionally also of the present) modalities and anomaly scores out."""

    def __init__(self, model: MultimodalVAE, calibration: AnomalyCalibration | None = None,
                 impute_present: bool = False, anomaly: bool = True, n_samples: int = 0,
                 amp: torch.dtype | None = None, predictive_std: Sequence[str] = ()):
        self.model = model.eval()
        self.calibration = calibration
        self.impute_present = impute_present
        self.anomaly = anomaly
        self.n_samples = n_samples
        self.amp = amp                                   # autocast dtype of the step (None: fp32)
        # modalities whose imputation std is the predictive std (:mod:`.uncertainty`, times the calibrated
        # scale); the others carry the decoder's own spread at the posterior mean
        self.predictive_std = frozenset(predictive_std)

    def __call__(self, raw: Mapping[str, torch.Tensor], mask: torch.Tensor,
                 on_latent: LatentHook | None = None, expected: torch.Tensor | None = None,
                 out_of_range: torch.Tensor | None = None) -> FusionResult | None:
        """``on_latent(result)`` runs as soon as the posterior exists, before any decoder (a live node
        publishes the latent there); if it returns False the step stops and None is returned. ``mask``
        may stay on the CPU (a live node's does): which modalities are observed is then read without a
        device round trip. ``expected`` (B, M): streams whose absence is scored (:mod:`.anomaly`).
        ``out_of_range`` (B, M) bool on the CPU: the streams the caller found outside their bounds (None:
        the step checks them itself, :mod:`.ranges`)."""
        return mixed_precision_call(self._step, self.amp, self.model, raw, mask, on_latent=on_latent,
                                    expected=expected, out_of_range=out_of_range)

    @torch.inference_mode()
    def _step(self, raw: Mapping[str, torch.Tensor], mask: torch.Tensor,
              on_latent: LatentHook | None = None, expected: torch.Tensor | None = None,
              out_of_range: torch.Tensor | None = None) -> FusionResult | None:
        host = mask.cpu()
        observed = [n for n, seen in zip(self.model.names, host.any(0).tolist()) if seen]
        feats = self.model.features({n: raw[n] for n in observed})
        ranged = within_range(self.model, raw, feats, host, out_of_range)
        if ranged.outside is not None:
            host, observed = ranged.mask, ranged.observed
            feats = {n: feats[n] for n in observed}
        uniform = host.shape[0] == 1 or bool((host == host[:1]).all())
        if uniform and observed and self.model.family.closed_form_poe(self.model) and self.n_samples == 0:
            result = self._fused_closed_form(feats, observed, on_latent, expected, ranged.outside)
        else:
            result = self._fused_general(feats, host.to(self.model.device), observed, on_latent, expected,
                                         ranged.outside)
        return ranged.scored(self.model, self.calibration, result)

    def _fused_general(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor, observed: list[str],
                       on_latent: LatentHook | None = None, expected: torch.Tensor | None = None,
                       outside: torch.Tensor | None = None) -> FusionResult | None:
        model = self.model
        feats = model.complete(feats, mask)
        mu, logvar = model.experts(feats, mask)
        z_mean, z_logvar = model.posterior_summary(mu, logvar, mask)
        result = FusionResult(z_mean, torch.exp(0.5 * z_logvar), out_of_range=outside)
        if on_latent is not None and on_latent(result) is False:
            return None
        targets = [n for j, n in enumerate(model.names) if self.impute_present or not bool(mask[:, j].all())]
        private = self._private_latents(result, feats, mask, observed) if model.private_dim else None
        imputed = impute_from_experts(model, mu, logvar, mask, targets, self.n_samples, private=private)
        moments = {n: (i.mean, i.std) for n, i in imputed.items()}
        if self.n_samples == 0:                          # with samples, their spread is in the std already
            self._predictive_moments(moments, z_mean, z_logvar, private)
        self._store_imputations(result, moments)
        if self.anomaly and self.model.family.properties.missing_modalities:
            surprise = leave_one_out_surprise(model, feats, mu, logvar, mask, self.n_samples)
            result.scores, result.total_score = standardize_scores(model, surprise, self.calibration, expected)
        return result

    def _private_latents(self, result: FusionResult, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                         observed: list[str]) -> torch.Tensor:
        """Store q(s_m | .) of the observed modalities in ``result``; return the codes to decode with."""
        s_mu, s_lv = self.model.private_experts(feats, mask)
        for name in observed:
            j = self.model.names.index(name)
            result.private_mean[name], result.private_std[name] = s_mu[j], torch.exp(0.5 * s_lv[j])
        return private_codes(self.model, feats, mask, self.n_samples)

    def _fused_closed_form(self, feats: Mapping[str, torch.Tensor], observed: list[str],
                           on_latent: LatentHook | None = None, expected: torch.Tensor | None = None,
                           outside: torch.Tensor | None = None) -> FusionResult | None:
        """Every row observes the same modalities (always so at batch 1) and the posterior is a PoE:
        the joint and all leave-one-out posteriors over the observed experts only, in closed form
        (:func:`posterior.dense_product_with_leave_one_out`; a test checks it equals the masked path)."""
        model = self.model
        experts = [model.encoders[n](feats[n]) for n in observed]
        every_prior = bool(model.config.proper_subsets_include_prior)     # else only the product of all
        z_mean, z_std, z_loo = post.dense_product_with_leave_one_out(
            torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts]),
            joint_prior=every_prior or len(observed) == len(model.names), loo_prior=every_prior)
        result = FusionResult(z_mean, z_std, out_of_range=outside)
        if on_latent is not None and on_latent(result) is False:
            return None
        targets = [n for n in model.names if self.impute_present or n not in observed]
        moments = {n: model.output_moments(n, model.decode(n, z_mean)) for n in targets}
        if self.predictive_std:
            self._predictive_moments(moments, z_mean, 2.0 * torch.log(z_std))
        self._store_imputations(result, moments)
        if self.anomaly:
            surprise = empty_surprise(z_mean.shape[0], len(model.names), z_mean)
            for i, name in enumerate(observed):
                surprise[:, model.names.index(name)] = stream_surprise(model, name, feats[name],
                                                                       model.decode(name, z_loo[i]))
            result.scores, result.total_score = standardize_scores(model, surprise, self.calibration, expected)
        return result

    def _predictive_moments(self, moments: dict[str, tuple[torch.Tensor, torch.Tensor]], z_mean: torch.Tensor,
                            z_logvar: torch.Tensor, private: torch.Tensor | None = None) -> None:
        if self.predictive_std:
            predictive_moments(self.model, self.calibration, moments, z_mean, z_logvar, private, self.predictive_std)

    def _store_imputations(self, result: FusionResult,
                           moments: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (mean, std) in moments.items():
            _, std_scale = self.model.normalization_stats(name)
            result.imputed[name] = Imputation(self.model.denormalize(name, mean), std * std_scale)
