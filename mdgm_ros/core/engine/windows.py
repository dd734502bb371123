"""Windows of T consecutive aligned samples, for training and evaluating the temporal family.

A run is a maximal stretch of rows of one bag, in row order, with strictly increasing stamps, gaps of
at most ``max_gap_s`` and the same selection (e.g. all training rows or all rows of one held-out block):
a window never crosses a bag, a recording gap, a backwards clock jump or a hold-out boundary. Windows
start every ``stride`` rows of a run; a run shorter than T gives one window padded with index -1
(padded steps have nothing observed: they add nothing to the sequence ELBO).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch


def runs(stamps: np.ndarray, bag: np.ndarray, group: np.ndarray, max_gap_s: float) -> list[np.ndarray]:
    """Row indices of every run (rows of a group < 0 belong to none), in row order within a bag."""
    stamps, bag, group = np.asarray(stamps, np.int64), np.asarray(bag), np.asarray(group)
    order = np.lexsort((np.arange(len(stamps)), bag))           # by bag, rows keep their order
    order = order[group[order] >= 0]
    if order.size == 0:
        return []
    gap = np.diff(stamps[order])
    breaks = ((bag[order][1:] != bag[order][:-1]) | (group[order][1:] != group[order][:-1])
              | (gap <= 0) | (gap > int(max_gap_s * 1e9)))
    return np.split(order, np.nonzero(breaks)[0] + 1)


def window_index(stamps: np.ndarray, bag: np.ndarray, group: np.ndarray, length: int, stride: int = 1,
                 max_gap_s: float = 0.5) -> np.ndarray:
    """(W, T) row indices of the windows, -1 for padding. ``group``: the selection each row belongs to
    (-1: excluded), e.g. 0 for training rows and the held-out block number for validation rows."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1, got {length}, {stride}")
    windows = []
    for run in runs(stamps, bag, group, max_gap_s):
        if run.size < length:
            windows.append(np.concatenate([run, np.full(length - run.size, -1)]))
            continue
        starts = list(range(0, run.size - length + 1, stride))
        if starts[-1] != run.size - length:
            starts.append(run.size - length)                      # the run's tail is covered too
        windows.extend(run[s:s + length] for s in starts)
    return np.stack(windows).astype(np.int64) if windows else np.zeros((0, length), np.int64)


def gather_windows(feats: Mapping[str, torch.Tensor], mask: torch.Tensor, index: np.ndarray
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-row features (N, ...) and mask (N, M) -> windows (W, T, ...) and (W, T, M); padded steps are
    zeros with nothing observed."""
    idx = torch.as_tensor(index, dtype=torch.long)
    pad = idx < 0
    safe = idx.clamp_min(0)
    out = {}
    for name, x in feats.items():
        values = x[safe]
        out[name] = torch.where(pad.view(*pad.shape, *([1] * (values.dim() - 2))),
                                torch.zeros((), dtype=values.dtype), values)
    return out, mask[safe] & ~pad.unsqueeze(-1)


def gather_rows(values: Mapping[str, torch.Tensor], mask: torch.Tensor, windows: torch.Tensor,
                actions: torch.Tensor | None, device: torch.device
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Rows -> (B, T, ...) windows on ``device`` (padded steps: zeros, nothing observed)."""
    feats, seq_mask = gather_windows(values, mask, windows)
    act = None
    if actions is not None:
        act = gather_windows({"u": actions}, mask, windows)[0]["u"].to(device)
    return {k: v.to(device) for k, v in feats.items()}, seq_mask.to(device), act


CALIBRATION_ROWS = 1024     # rows a calibration pass over windows takes at once (bounds its memory)


def windows_per_batch(windows: torch.Tensor, rows: int = CALIBRATION_ROWS) -> int:
    """How many windows (W, T) of rows a pass over them takes at once: about ``rows`` rows, at least one
    window (a 20 s held-out window at 30 Hz holds 600 rows, its camera frames 300 MB of features)."""
    return max(1, rows // max(1, int(windows.shape[1]) if windows.dim() > 1 else 1))
