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
                     threshold: float | None, t0: int, shade: list[tuple[float, float]] = (),
                     per_modality: dict[str, np.ndarray] | None = None, title: str = "",
                     modality_thresholds: dict[str, float] | None = None) -> Path:
    """The total anomaly score over time (top) and one thin row per modality's score below it; fault
    spans coloured and named, the calibrated threshold, flagged spans (total above it) as a red band,
    and optional hatched spans (scripted stream outages, not faults)."""
    plt = _pyplot()
    rows = list((per_modality or {}).items())
    fig, axes = plt.subplots(1 + len(rows), 1, figsize=(14, 3.2 + 0.9 * len(rows)), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3.2] + [0.9] * len(rows)})
    axes = axes[:, 0]
    t = (stamps - t0) / NS
    kinds = sorted({label.kind for label in labels})
    colours = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    for ax in axes:
        for label in labels:
            ax.axvspan((label.start_ns - t0) / NS, (label.end_ns - t0) / NS, color=colours[label.kind], alpha=0.25,
                       lw=0, label=f"fault: {label.kind}")
        for start, end in shade:
            ax.axvspan(start, end, facecolor="none", edgecolor="0.55", hatch="////", lw=0,
                       label="scripted stream outage (not a fault)")
    top = axes[0]
    top.plot(t, total, lw=0.8, color="k", label="total score")
    if threshold is not None:
        top.axhline(threshold, color="r", ls="--", lw=0.8, label=f"calibrated threshold ({threshold:.3g})")
        _flag_band(top, t, np.nan_to_num(total, nan=-np.inf) > threshold)
    top.set_ylabel("total anomaly score")
    _score_axis(top, total)
    handles, names = top.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    top.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0),
               frameon=False)
    for ax, (name, values) in zip(axes[1:], rows):
        ax.plot(t, values, lw=0.6, color="C0")
        if modality_thresholds and name in modality_thresholds:
            ax.axhline(modality_thresholds[name], color="r", ls="--", lw=0.6)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        _score_axis(ax, values)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time (s)")
    if title:
        top.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _score_axis(ax, values: np.ndarray) -> None:
    """Linear for ordinary scores; symmetric-log when faults reach tens of sigmas (so both show)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, SymmetricalLogLocator

    finite = np.asarray(values, float)[np.isfinite(values)]
    if finite.size and np.abs(finite).max() > 30.0:
        ax.set_yscale("symlog", linthresh=5.0)
        ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=10.0, subs=[1.0]))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _flag_band(ax, t: np.ndarray, flagged: np.ndarray) -> None:
    """A thin red band at the bottom of ``ax`` where ``flagged``."""
    ax.fill_between(t, 0.0, 0.04, where=flagged, transform=ax.get_xaxis_transform(), color="r", lw=0,
                    step="mid", label="flagged (total above threshold)")


def camera_grid(path: Path, real: np.ndarray, imputed: np.ndarray, title: str) -> Path:
    """Rows: real frames, frames imputed from the other modalities. Arrays (K, C, H, W) in [0, 1] (C = 3 or 1)."""
    plt = _pyplot()
    k = len(real)
    fig, axes = plt.subplots(2, k, figsize=(1.4 * k, 3.2), squeeze=False)
    for i in range(k):
        for row, frames in enumerate((real, imputed)):
            frame = np.clip(np.transpose(frames[i], (1, 2, 0)), 0, 1)
            axes[row, i].imshow(frame[:, :, 0] if frame.shape[2] == 1 else frame, cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("real", fontsize=8, loc="left")
    axes[1, 0].set_title("imputed", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latent_2d(path: Path, means: np.ndarray, phase: np.ndarray, normal: np.ndarray | None = None,
              fault: np.ndarray | None = None, title: str = "") -> Path:
    """Posterior means projected on the first two principal components of the normal samples: the
    normal cloud coloured by task phase, fault samples overlaid as black-edged markers by kind."""
    plt = _pyplot()
    normal = np.ones(len(means), bool) if normal is None else normal
    centre = means[normal].mean(0)
    _, singular, vt = np.linalg.svd(means[normal] - centre, full_matrices=False)
    explained = singular ** 2 / max(float((singular ** 2).sum()), 1e-12)
    xy = (means - centre) @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 5.5))
    phases = sorted(set(phase[normal]))
    phase_colours = plt.get_cmap("tab10" if len(phases) <= 10 else "tab20")
    for i, name in enumerate(phases):
        rows = normal & (phase == name)
        ax.scatter(xy[rows, 0], xy[rows, 1], s=5, alpha=0.6, color=phase_colours(i % 20),
                   label=name or "unknown phase", rasterized=True)
    markers = "XPD^vs*"
    kinds = sorted(set(fault[fault != ""])) if fault is not None else []
    for i, kind in enumerate(kinds):
        rows = fault == kind
        ax.scatter(xy[rows, 0], xy[rows, 1], s=30, marker=markers[i % len(markers)], facecolor="none",
                   edgecolor=plt.get_cmap("Dark2")(i % 8), lw=1.0, label=f"fault: {kind}", zorder=3)
    lo, hi = np.percentile(xy[normal], 0.5, axis=0), np.percentile(xy[normal], 99.5, axis=0)
    pad = 0.25 * (hi - lo)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])      # faults far outside sit at the edge, not squash the cloud
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.legend(fontsize=6.5, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of the variance)" if len(explained) > 1 else "PC 2")
    ax.set_title(title or "posterior means: normal samples by task phase, faults overlaid", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_frames(count: int, candidates: np.ndarray) -> np.ndarray:
    """``count`` rows spread evenly over the candidate rows."""
    if len(candidates) <= count:
        return candidates
    return candidates[np.linspace(0, len(candidates) - 1, count).round().astype(int)]


def write_all(out_dir: Path, em, data, total: np.ndarray, scores: np.ndarray, threshold: float | None,
              means: np.ndarray, title: str = "", bag_names: list[str] | None = None) -> dict[str, str]:
    """The three figures of an offline evaluation (the timeline shows the first bag)."""
    import torch

    from ..core.engine.inference import impute

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = em.model
    names = list(model.names)
    first_bag = data.bag == data.bag.min() if len(data) else np.zeros(0, bool)
    t0 = int(data.stamps[first_bag].min()) if first_bag.any() else 0
    calibration = em.bundle.calibration
    files = {"anomaly_timeline": anomaly_timeline(
        out_dir / "anomaly_timeline.png", data.stamps[first_bag], total[first_bag],
        [lb for lb in data.labels if first_bag.any() and _within(lb, data.stamps[first_bag])], threshold, t0,
        per_modality={n: scores[first_bag, j] for j, n in enumerate(names)},
        title=f"{em.bundle.model_id} on {bag_names[0]}" if bag_names else title,
        modality_thresholds=calibration.threshold if calibration else None)}
    cameras = [m.name for m in model.config.modalities if m.kind == "image"]
    if cameras and model.family.properties.missing_modalities:       # the first camera, whatever its name
        camera = cameras[0]
        j = names.index(camera)
        rows = pick_frames(8, np.flatnonzero(data.mask.all(1) & (data.fault == "")))
        raw = data.float_raw()
        feats = {n: em.features(n, raw[n][rows]) for n in names}
        mask = torch.ones(len(rows), len(names), dtype=torch.bool, device=model.device)
        mask[:, j] = False
        with torch.no_grad():
            pred = model.denormalize(camera, impute(model, feats, mask, [camera])[camera].mean)
        files["camera_imputation"] = camera_grid(out_dir / "camera_imputation.png", raw[camera][rows],
                                                 pred.cpu().numpy(), f"{camera} imputed from the other streams")
    files["latent_2d"] = latent_2d(out_dir / "latent_2d.png", means, data.phase, (data.fault == "") & ~data.near_fault,
                                   data.fault, title=f"posterior means, PCA of normal samples: {title}")
    return {k: str(v) for k, v in files.items()}


def _within(label, stamps: np.ndarray) -> bool:
    return bool(len(stamps)) and label.end_ns >= stamps.min() and label.start_ns <= stamps.max()


def compare_timeline(path: Path, stamps: np.ndarray, totals: dict[str, np.ndarray], thresholds: dict[str, Any],
                     labels: list[Any], t0: int, title: str = "") -> Path:
    """One row per model: its total anomaly score over time, fault spans coloured and named, its
    calibrated threshold and the flagged band (the temporal and the per-frame model on one bag)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(totals), 1, figsize=(14, 2.8 * len(totals) + 0.6), sharex=True, squeeze=False)
    t = (np.asarray(stamps) - t0) / NS
    kinds = sorted({label.kind for label in labels})
    colours = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    for ax, (name, total) in zip(axes[:, 0], totals.items()):
        for label in labels:
            ax.axvspan((label.start_ns - t0) / NS, (label.end_ns - t0) / NS, color=colours[label.kind], alpha=0.25,
                       lw=0, label=f"fault: {label.kind}")
        ax.plot(t, total, lw=0.7, color="k", label=f"{name} total score")
        threshold = thresholds.get(name)
        if threshold is not None:
            ax.axhline(threshold, color="r", ls="--", lw=0.8, label=f"threshold ({threshold:.3g})")
            _flag_band(ax, t, np.nan_to_num(total, nan=-np.inf) > threshold)
        ax.set_ylabel(f"{name}\nscore")
        _score_axis(ax, total)
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", ncol=4)
    axes[-1, 0].set_xlabel("time in the bag (s)")
    fig.suptitle(title or "anomaly scores of both models", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
