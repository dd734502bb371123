"""Predictive uncertainty of imputations: moment matching through the decoder, and its calibration.

An imputed modality x_m given the observed streams (and, in a temporal model, the past) has the
predictive distribution p(x_m | .) = ∫ p(x_m | z) q(z | .) dz. With a diagonal Gaussian belief q and a
location-scale decoder, its mean and variance per element are moment-matched with the spherical-radial
cubature rule (the 2D points m ± sqrt(D)·σ_i e_i, as the temporal filter's prediction):
var = avg_k std(z_k)² + avg_k (μ(z_k) − x̂)², around the published value x̂ (the decoder at the belief's
mean), so that the spread describes the published imputation's error. It is exact for a linear decoder
(a test checks the closed form); any family whose belief is a diagonal Gaussian over what its decoder
takes (the shared z, or [z, s_m] with private latents) gets it without code of its own.

Calibration (:func:`predictive_scale`) rescales each modality's spread by one factor found on
held-out data so that the central 90 % interval x̂ ± 1.645·σ covers 90 % of the true elements; the
factors travel with the bundle's calibration (``predictive_scale``).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch

Z90 = 1.6448536269514722          # the central 90 % interval of a normal: ± Z90 standard deviations
# the kinds whose imputations carry a predictive std (images do not: a decode per cubature point is too dear)
STD_KINDS = ("vector", "tactile", "audio")


@functools.lru_cache(maxsize=32)
def signed_identity(dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """sqrt(D) [I; -I] (2D, D): the cubature points' directions (made outside inference mode, so the
    tensor serves training too)."""
    with torch.inference_mode(False), torch.no_grad():
        eye = math.sqrt(dim) * torch.eye(dim, dtype=dtype, device=device)
        return torch.cat([eye, -eye], 0)


def cubature_points(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(2D, B, D) points of a diagonal Gaussian belief (B, D)."""
    spread = signed_identity(mean.shape[-1], mean.dtype, mean.device).unsqueeze(1) \
        * torch.exp(0.5 * logvar).unsqueeze(0)
    return mean.unsqueeze(0) + spread


def predictive_std(decode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], mean: torch.Tensor,
                   logvar: torch.Tensor, center: torch.Tensor, dims: slice | list[int] | None = None) -> torch.Tensor:
    """Per-element predictive std (B, *shape) of ``decode`` (beliefs (N, S) -> output mean and std
    (N, *shape)) under N(mean, exp(logvar)) (B, S), around ``center`` (B, *shape), the published value.
    ``dims``: the belief's dimensions the decoder reads (the others stay at their mean: no points spent
    on them); None: all."""
    if dims is None:
        points = cubature_points(mean, logvar)
    else:
        inner = cubature_points(mean[:, dims], logvar[:, dims])
        points = mean.unsqueeze(0).expand(inner.shape[0], *mean.shape).clone()
        points[..., dims] = inner
    count, batch = points.shape[:2]
    out_mean, out_std = decode(points.reshape(count * batch, -1))
    out_mean = out_mean.reshape(count, batch, *out_mean.shape[1:])
    out_std = out_std.reshape(count, batch, *out_std.shape[1:])
    variance = out_std.square().mean(0) + (out_mean - center.unsqueeze(0)).square().mean(0)
    return variance.sqrt()


# held-out elements a modality's scale is fitted on: at most this many rows (an image's rows are costly:
# each decodes 2 x its belief's size of cubature points)
CALIBRATION_ROWS = {"image": 256}
DEFAULT_CALIBRATION_ROWS = 4096


def calibration_rows(kind: str) -> int:
    return CALIBRATION_ROWS.get(kind, DEFAULT_CALIBRATION_ROWS)


def predictive_scale(errors: np.ndarray, stds: np.ndarray) -> float:
    """The factor s that makes |error| <= Z90 · s · std hold for 90 % of the elements (flattened arrays
    of the held-out errors and the predicted stds, in the same units); 1 without usable elements."""
    errors, stds = np.abs(np.asarray(errors, np.float64)).ravel(), np.asarray(stds, np.float64).ravel()
    keep = np.isfinite(errors) & np.isfinite(stds) & (stds > 0)
    if keep.sum() < 10:
        return 1.0
    ratio = errors[keep] / stds[keep]
    return float(max(np.quantile(ratio, 0.9) / Z90, 1e-3))


def interval_coverage(errors: np.ndarray, stds: np.ndarray) -> float:
    """The share of elements with |error| <= Z90 · std (the central 90 % interval's coverage)."""
    errors, stds = np.abs(np.asarray(errors, np.float64)).ravel(), np.asarray(stds, np.float64).ravel()
    keep = np.isfinite(errors) & np.isfinite(stds)
    return float(np.mean(errors[keep] <= Z90 * stds[keep])) if keep.any() else float("nan")


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D samples (ties by average rank); NaN below 3 values."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    ra, rb = _ranks(a[keep]), _ranks(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def uncertainty_summary(errors: np.ndarray, stds: np.ndarray) -> dict[str, float]:
    """``coverage_90``: the share of elements inside imputation ± Z90·std; ``std_error_spearman``: the
    rank correlation over samples of the predicted spread (root mean square of the stds) with the error
    (root mean square of the errors). ``errors``/``stds``: (N, elements), the same units."""
    errors, stds = np.asarray(errors, np.float64), np.broadcast_to(np.asarray(stds, np.float64), np.shape(errors))
    per_sample_error = np.sqrt(np.mean(np.square(errors.reshape(len(errors), -1)), 1))
    per_sample_std = np.sqrt(np.mean(np.square(stds.reshape(len(stds), -1)), 1))
    return {"coverage_90": interval_coverage(errors, stds),
            "std_error_spearman": rank_correlation(per_sample_std, per_sample_error)}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing the average of theirs."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2.0)[inverse]


__all__ = ["Z90", "cubature_points", "interval_coverage", "predictive_scale", "predictive_std",
           "rank_correlation", "signed_identity", "uncertainty_summary"]
