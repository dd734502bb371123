"""Benchmarks (commands, not timed tests): ``mdgm-ros bench fusion|train|all --json``."""
from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np
import torch

from ..core import (
    Fuser,
    ModelConfig,
    MultimodalVAE,
    calibrate_anomaly,
    compute_objective,
    default_robot_modalities,
    select_device,
)
from ..core.engine import loop as training
from ..core.engine import synthetic
from ..core.model.vae import DEFAULT_FUSION
from .memory import status_mb


def prepared_model(family: str, device: torch.device, n: int = 256) -> tuple[MultimodalVAE, Any]:
    """The benchmarks' model: the four robot streams at the design card's sizes, normalised on ``n``
    synthetic samples (untrained weights time the same as trained ones); returns it and (data, raw
    features, presence mask) of those samples."""
    specs = default_robot_modalities()
    model = MultimodalVAE(ModelConfig(tuple(specs), latent_dim=16, family=family)).to(device)
    data = synthetic.make_dataset(specs, n, seed=0)
    feats = training.raw_to_features(model, data.raw)
    mask = torch.from_numpy(data.mask)
    training.fit_normalization(model, feats, mask)
    return model.eval(), (data, feats, mask)


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean of per-call seconds, in ms, and calls per second."""
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            "samples_per_s": round(float(1e3 / ms.mean()), 1)}


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on CPU), so a timer stops after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_forward(model: MultimodalVAE, raw: dict[str, torch.Tensor], observed: list[str],
                  targets: list[str]) -> torch.Tensor:
    """The same network calls as one fusion step, and nothing else: features and encoders of the observed
    modalities, one decoder call per imputed modality and one per leave-one-out reconstruction."""
    feats = model.features({n: raw[n] for n in observed})
    z = model.encoders[observed[0]](feats[observed[0]])[0]
    for name in observed:
        model.encoders[name](feats[name])
    for name in [*targets, *observed]:
        model.decode(name, z)
    return z


def bench_fusion(iterations: int = 2000, warmup: int = 100, device: str = "auto",
                 family: str = "mvae") -> dict[str, Any]:
    """One live fusion step at batch 1: 64x64 camera, 9 joints x (pos, vel, effort), 0.5 s of 16 kHz
    audio, two 4x4 taxel grids; audio missing -> PoE posterior of the other three, imputation of the
    audio, leave-one-out anomaly scores of the three observed modalities. The bare forward pass of the
    same networks is timed in the same loop (alternating), so ``ratio_to_bare`` compares like with like.
    The step gets the streams' range flags as the fusion node hands them over (found while it converts
    each message, :class:`~mdgm_ros.streams.kinds.RangeCheck`); ``without_range_flags`` times the step
    that checks the arrays itself, as a library caller's does."""
    dev = select_device(device)
    model, (data, feats, mask) = prepared_model(family, dev)
    calibration = calibrate_anomaly(model, training.normalize_features(model, feats), mask)
    fuser = Fuser(model, calibration)
    raw = {k: torch.from_numpy(v[:1]).to(dev) for k, v in data.raw.items()}
    step_mask = torch.tensor([[True, True, False, True]], device=dev)
    observed, targets = ["camera", "joints", "tactile"], ["audio"]

    def bare():
        with torch.inference_mode():
            return _bare_forward(model, raw, observed, targets)

    flags = torch.zeros(1, len(model.names), dtype=torch.bool)          # every stream within its bounds
    assert fuser(raw, step_mask).out_of_range is None
    for _ in range(warmup):
        fuser(raw, step_mask, out_of_range=flags)
        bare()
    times, bare_times, unflagged = [], [], []
    for _ in range(iterations):
        started = time.perf_counter()
        result = fuser(raw, step_mask, out_of_range=flags)
        synchronize(dev)
        middle = time.perf_counter()
        bare()
        synchronize(dev)
        times.append(middle - started)
        bare_times.append(time.perf_counter() - middle)
        started = time.perf_counter()
        fuser(raw, step_mask)
        synchronize(dev)
        unflagged.append(time.perf_counter() - started)
    assert set(result.imputed) == {"audio"}
    stats, bare_stats = percentiles(times), percentiles(bare_times)
    ratio = stats["p50_ms"] / bare_stats["p50_ms"]
    checking = percentiles(unflagged)
    return {"benchmark": "fusion", "batch": 1, "family": family, "fusion": model.fusion,
            "observed": observed, "imputed": targets, "iterations": iterations,
            **stats, "bare_forward": bare_stats, "ratio_to_bare_p50": round(ratio, 3),
            "without_range_flags": {**checking,
                                    "ratio_to_bare_p50": round(checking["p50_ms"] / bare_stats["p50_ms"], 3)},
            "target": {"p50_ms": 2.0, "p99_ms": 4.0, "ratio_to_bare_p50": 1.2},
            "parameters": sum(p.numel() for p in model.parameters())}


# family options that select a family's previous, slower training path (every row decoded, observed
# or not, then masked), timed beside the default path
PREVIOUS_PATH = {"mopoe": {"fast": False}, "mmvae": {"fast": False}}


def _train_setup(model: MultimodalVAE, batch_size: int, dev: torch.device) -> tuple[dict, torch.Tensor, Any]:
    data = synthetic.make_dataset(model.config.modalities, batch_size, seed=1, missing_rate=0.2)
    feats = {k: v.to(dev) for k, v in training.normalize_features(
        model, training.raw_to_features(model, data.raw)).items()}
    model.train()
    return feats, torch.from_numpy(data.mask).to(dev), training.make_optimizer(model.parameters(), lr=1e-3)


def _timed_steps(model: MultimodalVAE, feats: dict, mask: torch.Tensor, optimizer: Any, steps: int,
                 dev: torch.device, options: dict[str, Any]) -> list[float]:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = compute_objective(model, feats, mask, **options).loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(dev)
        times.append(time.perf_counter() - started)
    return times


def _throughput(times: list[float], batch_size: int) -> dict[str, float]:
    return {"samples_per_s": round(batch_size / float(np.median(times)), 1),
            "step_ms": round(1e3 * float(np.median(times)), 1)}


def bench_train(steps: int = 20, batch_size: int = 64, device: str = "auto",
                families: tuple[str, ...] = tuple(DEFAULT_FUSION),
                modality_counts: tuple[int, ...] = tuple(range(2, 9))) -> dict[str, Any]:
    """Training throughput (samples/s, from the median step) of each family at batch 64 on the four
    robot modalities, 20 % of modalities missing at random. Where the code path changed (MoPoE, MMVAE;
    :data:`PREVIOUS_PATH`) the previous path is timed in the same loop, alternating rounds, so
    ``speedup`` compares like with like on a loaded machine. ``mopoe_step_vs_modalities``: MoPoE step
    time from M = 2 to 8 vector modalities (default KL estimator, and the exact bound for contrast)."""
    dev = select_device(device)
    out: dict[str, Any] = {"benchmark": "train", "batch": batch_size, "steps": steps, "families": {}}
    for family in families:
        model, _ = prepared_model(family, dev, n=8)
        feats, mask, optimizer = _train_setup(model, batch_size, dev)
        paths = {"new": {}, **({"previous": PREVIOUS_PATH[family]} if family in PREVIOUS_PATH else {})}
        times: dict[str, list[float]] = {name: [] for name in paths}
        for name, options in paths.items():
            _timed_steps(model, feats, mask, optimizer, 2, dev, options)               # warm-up
        rounds = 4
        for _ in range(rounds):
            for name, options in paths.items():
                times[name] += _timed_steps(model, feats, mask, optimizer, max(1, steps // rounds), dev, options)
        row = {"fusion": model.fusion, **_throughput(times["new"], batch_size)}
        if "previous" in times:
            row["previous_path"] = _throughput(times["previous"], batch_size)
            row["speedup"] = round(row["samples_per_s"] / row["previous_path"]["samples_per_s"], 2)
        out["families"][family] = row
    if "mopoe" in families and modality_counts:
        out["mopoe_step_vs_modalities"] = mopoe_step_curve(modality_counts, batch_size, dev, steps)
    return out


def mopoe_step_curve(counts: tuple[int, ...], batch_size: int, dev: torch.device, steps: int
                     ) -> list[dict[str, Any]]:
    """MoPoE step time for M vector modalities (27-d, the joints' size), default vs exact KL bound."""
    from ..core.families.mopoe import resolve_kl_estimator
    from ..core.model.modalities import ModalitySpec

    rows = []
    for count in counts:
        specs = tuple(ModalitySpec(f"v{j}", "vector", (27,), scale=0.5) for j in range(count))
        torch.manual_seed(0)
        model = MultimodalVAE(ModelConfig(specs, latent_dim=16, family="mopoe")).to(dev)
        feats, mask, optimizer = _train_setup(model, batch_size, dev)
        default, exact = [], []
        _timed_steps(model, feats, mask, optimizer, 2, dev, {})
        for _ in range(4):
            default += _timed_steps(model, feats, mask, optimizer, max(1, steps // 4), dev, {})
            exact += _timed_steps(model, feats, mask, optimizer, max(1, steps // 4), dev, {"kl_estimator": "exact"})
        default_ms = 1e3 * float(np.median(default))
        rows.append({"modalities": count, "kl_estimator": resolve_kl_estimator("auto", count),
                     "step_ms": round(default_ms, 2), "step_ms_per_modality": round(default_ms / count, 2),
                     "exact_kl_step_ms": round(1e3 * float(np.median(exact)), 2)})
    return rows


def environment(device: str = "auto") -> dict[str, Any]:
    return {"device": str(select_device(device)), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "peak_rss_mb": round(status_mb("self", "VmHWM"), 1)}
