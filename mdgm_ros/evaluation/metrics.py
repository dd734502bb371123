"""Measures shared by ``mdgm-ros evaluate`` (:mod:`.evaluate`) and the temporal model's comparison
(:mod:`.temporal_vs_frame`): the squared error of imputations, per-row anomaly scores as the fusion node
computes them (with the absence of a stream silent for long enough), and the anomaly metrics (AUROC / AP
pooled and per fault kind, detection at the calibrated threshold, per-event delay)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.engine.inference import anomaly_scores
from ..core.engine.metrics import auroc, average_precision
from ..data.dataset import AlignedDataset
from ..streams.params import FusionParams
from .eval_model import EvalModel, batched

NS = 1_000_000_000
NOT_POOLED = ("stream_dropout",)
ABSENCE_AFTER_S = FusionParams.absence_after     # the fusion node's default


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all but the first dimension."""
    diff = (a - b) ** 2
    return diff.reshape(diff.shape[0], -1).mean(1) if diff.dim() > 1 else diff


def offline_scores(em: EvalModel, data: AlignedDataset, absence_after_s: float = ABSENCE_AFTER_S
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(total (N,), per-modality (N, M)) anomaly scores of each row: its observed modalities, and the
    absence of a stream silent for ``absence_after_s`` (:func:`absent_long_enough`), as the node scores them."""
    absent = torch.from_numpy(absent_long_enough(data, absence_after_s))

    def step(feats, mask, rows):
        return anomaly_scores(em.model, feats, mask, em.bundle.calibration, expected=absent[rows].to(mask.device))
    scores, total = batched(em, data, step, with_rows=True)
    return total, scores


def absent_long_enough(data: AlignedDataset, after_s: float) -> np.ndarray:
    """(N, M) bool: the stream is missing, was observed earlier in the same bag, and its last observed
    row is at least ``after_s`` seconds back (the fusion node's ``absence_after``)."""
    out = np.zeros(data.mask.shape, bool)
    stamps = data.stamps.astype(np.float64)
    starts = np.flatnonzero(np.r_[True, data.bag[1:] != data.bag[:-1]])
    for first, end in zip(starts, np.r_[starts[1:], data.mask.shape[0]]):
        seen = np.where(data.mask[first:end], stamps[first:end, None], -np.inf)
        last = np.maximum.accumulate(seen, axis=0)          # stamp of the last observed row so far
        out[first:end] = ~data.mask[first:end] & np.isfinite(last) & (stamps[first:end, None] - last >= after_s * 1e9)
    return out


def anomaly_metrics(total: np.ndarray, fault: np.ndarray, valid: np.ndarray, threshold: float | None = None,
                    stamps: np.ndarray | None = None, bag: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC / AP of the total score: pooled over content faults, and per fault kind vs normal rows.
    With a threshold: detection and false-alarm rates there; with stamps, each fault event's detection
    delay (from its first sample to its first flagged sample)."""
    total = np.asarray(total, np.float64)
    valid = valid & np.isfinite(total)
    normal = valid & (fault == "")
    pooled = valid & ~np.isin(fault, NOT_POOLED)
    labels = fault != ""
    out: dict[str, Any] = {"samples": int(pooled.sum()), "fault_samples": int((pooled & labels).sum())}
    if (pooled & labels).any() and normal.any():
        out["auroc"] = auroc(labels[pooled], total[pooled])
        out["average_precision"] = average_precision(labels[pooled], total[pooled])
    else:
        out["auroc"] = out["average_precision"] = float("nan")
    flagged = total > threshold if threshold is not None else None
    if flagged is not None:
        out["threshold"] = threshold
        out["detected_at_threshold"] = _rate(flagged, pooled & labels)
        out["false_alarms_at_threshold"] = _rate(flagged, normal)
    events = fault_events(fault, valid, stamps, bag) if stamps is not None else []
    out["per_fault"] = {}
    for kind in sorted(set(fault[valid]) - {""}):
        rows = normal | (valid & (fault == kind))
        entry = {"auroc": auroc(fault[rows] == kind, total[rows]),
                 "average_precision": average_precision(fault[rows] == kind, total[rows]),
                 "samples": int((valid & (fault == kind)).sum()), "pooled": kind not in NOT_POOLED}
        if flagged is not None:
            entry["detected_at_threshold"] = _rate(flagged, valid & (fault == kind))
            if stamps is not None:
                entry.update(_event_detection([e for e in events if e[0] == kind], flagged, stamps))
        out["per_fault"][kind] = entry
    return out


def _rate(flagged: np.ndarray, rows: np.ndarray) -> float:
    return float(np.mean(flagged[rows])) if rows.any() else float("nan")


def fault_events(fault: np.ndarray, valid: np.ndarray, stamps: np.ndarray,
                 bag: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """(kind, row indices in time order) of each contiguous fault span, per bag."""
    bag = np.zeros(len(fault), int) if bag is None else bag
    events = []
    for b in np.unique(bag):
        rows = np.flatnonzero((bag == b) & valid)
        rows = rows[np.argsort(stamps[rows], kind="stable")]
        kinds = fault[rows]
        breaks = np.flatnonzero(kinds[1:] != kinds[:-1]) + 1
        for run in np.split(rows, breaks):
            if len(run) and fault[run[0]] != "":
                events.append((str(fault[run[0]]), run))
    return events


def _event_detection(events: list[tuple[str, np.ndarray]], flagged: np.ndarray,
                     stamps: np.ndarray) -> dict[str, Any]:
    delays = []
    for _, run in events:
        hits = run[flagged[run]]
        if len(hits):
            delays.append((int(stamps[hits[0]]) - int(stamps[run[0]])) / NS)
    return {"events": len(events), "events_detected": len(delays),
            "median_delay_s": float(np.median(delays)) if delays else float("nan")}
