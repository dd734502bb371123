"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NS = 1_000_000_000


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def anomaly_timeline(path: Path, stamps: np.ndarray, total: np.ndarray, labels: list[Any],
                     threshold: float | None, t0: int, shade: list[tuple[float, float]] = ()) -> Path:
    """Total anomaly score over time, fault spans shaded and named; optional grey spans (outages)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 3.5))
    t = (stamps - t0) / NS
    colours = plt.get_cmap("tab10")
    kinds = sorted({label.kind for label in labels})
    for label in labels:
        c = colours(kinds.index(label.kind) % 10)
        ax.axvspan((label.start_ns - t0) / NS, (label.end_ns - t0) / NS, color=c, alpha=0.3,
                   label=label.kind)
    for start, end in shade:
        ax.axvspan(start, end, color="0.85", alpha=0.5, lw=0)
    ax.plot(t, total, lw=0.8, color="k")
    if threshold is not None:
        ax.axhline(threshold, color="r", ls="--", lw=0.8, label="calibrated threshold")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=5, loc="upper right")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("total anomaly score")
    ax.set_yscale("symlog", linthresh=5.0)          # faults range from subtle to hundreds of sigmas
    ax.set_ylim(bottom=-5.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def camera_grid(path: Path, real: np.ndarray, imputed: np.ndarray, title: str) -> Path:
    """Rows: real frames, frames imputed from the other modalities. Arrays (K, 3, H, W) in [0, 1]."""
    plt = _pyplot()
    k = len(real)
    fig, axes = plt.subplots(2, k, figsize=(1.4 * k, 3.2), squeeze=False)
    for i in range(k):
        for row, frames in enumerate((real, imputed)):
            axes[row, i].imshow(np.clip(np.transpose(frames[i], (1, 2, 0)), 0, 1))
            axes[row, i].axis("off")
    axes[0, 0].set_title("real", fontsize=8, loc="left")
    axes[1, 0].set_title("imputed", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latent_2d(path: Path, means: np.ndarray, phase: np.ndarray, normal: np.ndarray | None = None) -> Path:
    """The latent means of normal samples projected on their first two principal components, coloured by
    task phase (faults are left out: a blackout's latent is far off and would squash the rest)."""
    plt = _pyplot()
    keep = np.ones(len(means), bool) if normal is None else normal
    means, phase = means[keep], phase[keep]
    centred = means - means.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(sorted(set(phase))):
        rows = phase == name
        ax.scatter(xy[rows, 0], xy[rows, 1], s=4, alpha=0.6, color=plt.get_cmap("tab20")(i % 20),
                   label=name or "unknown")
    lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
    pad = 0.1 * (hi - lo)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.legend(fontsize=7, markerscale=3)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("posterior mean of normal samples, PCA, by task phase", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_frames(count: int, candidates: np.ndarray) -> np.ndarray:
    """``count`` rows spread evenly over the candidate rows."""
    if len(candidates) <= count:
        return candidates
    return candidates[np.linspace(0, len(candidates) - 1, count).round().astype(int)]


def write_all(out_dir: Path, em, data, total: np.ndarray, threshold: float | None, means: np.ndarray) -> dict[str, str]:
    """The three figures of an offline evaluation."""
    import torch

    from ..core.inference import impute

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = int(data.stamps.min()) if len(data) else 0
    first_bag = data.bag == data.bag.min() if len(data) else np.zeros(0, bool)
    files = {"anomaly_timeline": anomaly_timeline(out_dir / "anomaly_timeline.png", data.stamps[first_bag],
                                                  total[first_bag], data.labels, threshold, t0)}
    model = em.model
    names = list(model.names)
    if "camera" in names:
        j = names.index("camera")
        rows = pick_frames(8, np.flatnonzero(data.mask.all(1) & (data.fault == "")))
        raw = data.float_raw()
        feats = {n: em.features(n, raw[n][rows]) for n in names}
        mask = torch.ones(len(rows), len(names), dtype=torch.bool, device=model.device)
        mask[:, j] = False
        with torch.no_grad():
            pred = model.denormalize("camera", impute(model, feats, mask, ["camera"])["camera"].mean)
        files["camera_imputation"] = camera_grid(out_dir / "camera_imputation.png", raw["camera"][rows],
                                                 pred.cpu().numpy(), "camera imputed from joints, audio and tactile")
    files["latent_2d"] = latent_2d(out_dir / "latent_2d.png", means, data.phase, (data.fault == "") & ~data.near_fault)
    return {k: str(v) for k, v in files.items()}
