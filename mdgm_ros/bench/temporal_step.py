"""Benchmark of the temporal fusion step (a command's building block, not a timed test): one live
:class:`~mdgm_ros.core.engine.filter.TemporalFilter` step at batch 1 on the robot modalities, one missing.
Reached from the CLI as part of ``mdgm-ros bench fusion`` (key ``temporal_step``)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..core import Fuser, select_device
from ..core.engine.anomaly import calibration_from_nll
from ..core.engine.filter import TemporalFilter, predictive_surprise_sequence
from .models import percentiles, prepared_model, synchronize


def bench_temporal_step(iterations: int = 2000, warmup: int = 100, device: str = "auto",
                        horizon: int = 10, family: str = "temporal", onnxruntime: bool = False) -> dict[str, Any]:
    """As ``bench_fusion``: 64x64 camera, joints, 0.5 s of audio, tactile; audio missing -> prediction
    from the state, PoE with the three observed experts, imputation of the audio, one-step predictive
    anomaly scores of the observed three. The state carries over between iterations, as on a live node.
    Timed in the same loop, alternating (ratios compare like with like on a loaded machine): the
    closed-form batch-1 step (what the node runs; the target), the generic masked filter step, and the
    closed-form step that also predicts ``horizon`` latents (the node's ~/latent_prediction, after the
    latent is out), and the per-frame :class:`~mdgm_ros.core.inference.Fuser` step of the same networks.
    ``family``: ``temporal``, or ``temporal_ms`` (a private state per modality: one more encoder each).
    ``onnxruntime``: also the same closed-form step with the networks in onnxruntime (the fusion node's
    ``engine: onnxruntime``; one intra-op thread per session, as the node's default ``threads: 1``)."""
    dev = select_device(device)
    model, (data, feats, mask) = prepared_model(family, dev)
    with torch.no_grad():
        normalised = {n: model.normalize(n, x.to(dev)).unsqueeze(0) for n, x in feats.items()}
        surprise = predictive_surprise_sequence(model, normalised, mask.to(dev).unsqueeze(0))
    calibration = calibration_from_nll(model, surprise[0])
    fast = TemporalFilter(model, calibration)
    generic = TemporalFilter(model, calibration)
    generic.closed_form = False
    ahead = TemporalFilter(model, calibration, horizon=horizon)
    step_mask = torch.tensor([[True, True, False, True]], device=dev)
    raw = {k: torch.from_numpy(v[:1]).to(dev) for k, v in data.raw.items() if k != "audio"}
    per_frame = Fuser(model, calibration)               # the same networks, one frame, no state
    steps = {"fast": fast, "generic": generic, "per_frame": per_frame, **({"ahead": ahead} if horizon else {})}
    with tempfile.TemporaryDirectory() as folder:
        if onnxruntime:
            steps["onnxruntime"] = TemporalFilter(_in_onnxruntime(model, calibration, Path(folder)), calibration)
        times = _timed(steps, raw, step_mask, dev, iterations, warmup)
    stats, generic_stats = percentiles(times["fast"]), percentiles(times["generic"])
    return {"benchmark": "temporal_step", "batch": 1, "family": family,
            "observed": ["camera", "joints", "tactile"], "imputed": ["audio"], "iterations": iterations,
            **stats, "generic_filter_step": generic_stats,
            "ratio_to_generic_p50": round(stats["p50_ms"] / generic_stats["p50_ms"], 3),
            "per_frame_step": percentiles(times["per_frame"]),
            "ratio_to_per_frame_p50": round(stats["p50_ms"] / percentiles(times["per_frame"])["p50_ms"], 3),
            **({"with_prediction": _with_prediction(horizon, times["ahead"], stats)} if horizon else {}),
            **(_engine_stats(times, stats) if onnxruntime else {}),
            "target": {"p50_ms": 2.5, "p99_ms": 5.0},
            "parameters": sum(p.numel() for p in model.parameters())}


def _with_prediction(horizon: int, times: list[float], step: dict[str, float]) -> dict[str, Any]:
    """The step that also predicts ``horizon`` latents, and its p50 over the plain step's."""
    stats = percentiles(times)
    return {"horizon": horizon, **stats, "ratio_to_step_p50": round(stats["p50_ms"] / step["p50_ms"], 3),
            "target_ratio_to_step_p50": 1.3}


def _in_onnxruntime(model, calibration, folder: Path):
    """The model saved with its ONNX files and loaded back with onnxruntime running its networks."""
    from ..core import save_bundle
    from ..onnx_engine import load_ort_bundle
    from ..training.bundle_files import export_onnx

    save_bundle(folder / "bench", model, calibration, attach=lambda target: export_onnx(model, target))
    return load_ort_bundle(folder / "bench", ["CPUExecutionProvider"], threads=1, device=model.device).model


def _engine_stats(times: dict[str, list[float]], torch_stats: dict[str, float]) -> dict[str, Any]:
    ort = percentiles(times["onnxruntime"])
    return {"onnxruntime_step": {**ort, "ratio_to_torch_p50": round(ort["p50_ms"] / torch_stats["p50_ms"], 3)}}


def _timed(steps: dict[str, Any], raw, step_mask, dev, iterations: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each step, alternating steps within each iteration."""
    for _ in range(warmup):
        for step in steps.values():
            step(raw, step_mask)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iterations):
        for name, step in steps.items():
            started = time.perf_counter()
            result = step(raw, step_mask)
            synchronize(dev)
            times[name].append(time.perf_counter() - started)
            assert set(result.imputed) == {"audio"} and bool(torch.isfinite(result.total_score).all())
    return times
