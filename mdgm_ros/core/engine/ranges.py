"""Inputs outside the training range: scored as anomalies, kept out of the posterior.

A vector or taxel grid trained with bounds (:class:`~mdgm_ros.core.model.modalities.Normalization`:
the element-wise range of the training features, widened by a margin) that leaves them is beyond what
the model has seen: its expert would extrapolate, and one wild joint would drag the shared latent and
every imputation with it. So the fusion steps (:class:`~mdgm_ros.core.engine.inference.Fuser`,
:class:`~mdgm_ros.core.engine.filter.TemporalFilter`) treat such a stream as missing for the posterior
(it is imputed from the others like any missing stream) and score it with a bounded score that always
trips its flag: its calibrated threshold plus :data:`SCORE_FLOOR`, rising with how far the input lies
beyond its bounds towards :data:`SCORE_FLOOR` + :data:`SCORE_RISE` (finite for any finite input). The
total is raised to at least the same amount over its own threshold.

A family that infers only from all streams (JVAE) cannot leave one out and gives no scores: its steps
take every stream as it comes.

The excess of a stream is the largest distance of one of its features beyond its bounds, in units of
that feature's bounded width (0 inside).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .anomaly import TOTAL, AnomalyCalibration

SCORE_FLOOR = 1.0      # an out-of-range stream scores at least this much over its threshold
SCORE_RISE = 4.0       # and at most SCORE_FLOOR + SCORE_RISE over it


def excess(model, feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(B,) excess of each bounded modality in ``feats`` (normalised features (B, *shape)); 0 inside
    the bounds. Modalities without bounds are left out."""
    out = {}
    for name, x in feats.items():
        bounds = model.feature_bounds(name)
        if bounds is not None:
            # |x - middle| / width is 1/2 at either bound, for every feature
            out[name] = ((x - bounds[0]).abs() * bounds[1]).flatten(1).amax(1).sub(0.5).clamp_min(0.0)
    return out


def outside_mask(names: Sequence[str], over: Mapping[str, torch.Tensor], batch: int,
                 device: torch.device) -> torch.Tensor:
    """(B, M) bool: where each modality's excess is > 0."""
    out = torch.zeros((batch, len(names)), dtype=torch.bool, device=device)
    for j, name in enumerate(names):
        if name in over:
            out[:, j] = over[name].to(device) > 0
    return out


def outside_rows(model, feats: Mapping[str, torch.Tensor], mask: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(N, M) bool: the observed streams outside their bounds, row by row, and each bounded modality's
    excess (N,) where it is (0 elsewhere) -- what the live steps do, for offline batches (normalised
    features (N, ...), presence mask (N, M))."""
    over = excess(model, {n: x for n, x in feats.items() if n in model.names})
    outside = outside_mask(model.names, over, mask.shape[0], mask.device) & mask.bool()
    kept = {n: v.masked_fill(~outside[:, model.names.index(n)].to(v.device), 0.0) for n, v in over.items()}
    return outside, kept


def bounded_score(over: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """threshold + SCORE_FLOOR + SCORE_RISE (1 - exp(-excess)): above the threshold for any excess > 0,
    below threshold + SCORE_FLOOR + SCORE_RISE for any finite one."""
    return threshold + SCORE_FLOOR + SCORE_RISE * -torch.expm1(-over)


def score_out_of_range(names: Sequence[str], calibration: AnomalyCalibration | None,
                       scores: torch.Tensor | None, total: torch.Tensor | None,
                       over: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The scores (B, M) and total (B,) with every out-of-range stream's bounded score (only where it is
    out of range; the others as scored). Without a calibration there is no threshold to exceed: the
    streams stay unscored (NaN, as missing ones)."""
    if scores is None or total is None or calibration is None:
        return scores, total
    scores, worst = scores.clone(), torch.zeros_like(total)
    for j, name in enumerate(names):
        if name in over:
            amount = over[name].to(scores.device, scores.dtype)
            threshold = calibration.threshold.get(name, math.nan)
            scores[:, j] = torch.where(amount > 0, bounded_score(amount, threshold), scores[:, j])
            worst = torch.maximum(worst, amount)
    raised = bounded_score(worst, calibration.threshold.get(TOTAL, math.nan))
    return scores, torch.where(worst > 0, torch.fmax(total, raised), total)


__all__ = ["SCORE_FLOOR", "SCORE_RISE", "bounded_score", "excess", "outside_mask", "outside_rows",
           "score_out_of_range"]
