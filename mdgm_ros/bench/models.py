"""Benchmarks (commands, not timed tests): ``mdgm-ros bench fusion|train|all --json``."""
from __future__ import annotations

import os
import platform
import resource
import time
from typing import Any

import numpy as np
import torch

from ..core import (Fuser, ModelConfig, MultimodalVAE, calibrate_anomaly, compute_objective,
                   default_robot_modalities, select_device)
from ..core import synthetic, training
from ..core.model import DEFAULT_FUSION


def _prepared_model(objective: str, device: torch.device, n: int = 256) -> tuple[MultimodalVAE, Any]:
    specs = default_robot_modalities()
    model = MultimodalVAE(ModelConfig(tuple(specs), latent_dim=16, objective=objective)).to(device)
    data = synthetic.make_dataset(specs, n, seed=0)
    feats = training.raw_to_features(model, data.raw)
    mask = torch.from_numpy(data.mask)
    training.fit_normalization(model, feats, mask)
    return model.eval(), (data, feats, mask)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            "samples_per_s": round(float(1e3 / ms.mean()), 1)}


def _sync(device: torch.device) -> None:
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
                 objective: str = "mvae") -> dict[str, Any]:
    """One live fusion step at batch 1: 64x64 camera, 9 joints x (pos, vel, effort), 0.5 s of 16 kHz
    audio, two 4x4 taxel grids; audio missing -> PoE posterior of the other three, imputation of the
    audio, leave-one-out anomaly scores of the three observed modalities. The bare forward pass of the
    same networks is timed in the same loop (alternating), so ``ratio_to_bare`` compares like with like."""
    dev = select_device(device)
    model, (data, feats, mask) = _prepared_model(objective, dev)
    calibration = calibrate_anomaly(model, training.normalize_features(model, feats), mask)
    fuser = Fuser(model, calibration)
    raw = {k: torch.from_numpy(v[:1]).to(dev) for k, v in data.raw.items()}
    step_mask = torch.tensor([[True, True, False, True]], device=dev)
    observed, targets = ["camera", "joints", "tactile"], ["audio"]

    def bare():
        with torch.inference_mode():
            return _bare_forward(model, raw, observed, targets)

    for _ in range(warmup):
        fuser(raw, step_mask)
        bare()
    times, bare_times = [], []
    for _ in range(iterations):
        started = time.perf_counter()
        result = fuser(raw, step_mask)
        _sync(dev)
        middle = time.perf_counter()
        bare()
        _sync(dev)
        times.append(middle - started)
        bare_times.append(time.perf_counter() - middle)
    assert set(result.imputed) == {"audio"}
    stats, bare_stats = _percentiles(times), _percentiles(bare_times)
    ratio = stats["p50_ms"] / bare_stats["p50_ms"]
    return {"benchmark": "fusion", "batch": 1, "objective": objective, "fusion": model.fusion,
            "observed": observed, "imputed": targets, "iterations": iterations,
            **stats, "bare_forward": bare_stats, "ratio_to_bare_p50": round(ratio, 3),
            "target": {"p50_ms": 2.0, "p99_ms": 4.0, "ratio_to_bare_p50": 1.2},
            "parameters": sum(p.numel() for p in model.parameters())}


def bench_train(steps: int = 20, batch_size: int = 64, device: str = "auto",
                objectives: tuple[str, ...] = tuple(DEFAULT_FUSION)) -> dict[str, Any]:
    """Training throughput (samples/s) of each objective at batch 64 on the four robot modalities,
    20 % of modalities missing at random."""
    dev = select_device(device)
    out: dict[str, Any] = {"benchmark": "train", "batch": batch_size, "steps": steps, "objectives": {}}
    for objective in objectives:
        model, _ = _prepared_model(objective, dev, n=8)
        data = synthetic.make_dataset(model.config.modalities, batch_size, seed=1, missing_rate=0.2)
        feats = {k: v.to(dev) for k, v in training.normalize_features(
            model, training.raw_to_features(model, data.raw)).items()}
        mask = torch.from_numpy(data.mask).to(dev)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        for step in range(steps + 3):
            started = time.perf_counter()
            loss = compute_objective(model, feats, mask).loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(dev)
            if step >= 3:
                times.append(time.perf_counter() - started)
        out["objectives"][objective] = {"fusion": model.fusion,
                                        "samples_per_s": round(batch_size * len(times) / sum(times), 1),
                                        "step_ms": round(1e3 * float(np.median(times)), 1)}
    return out


def environment(device: str = "auto") -> dict[str, Any]:
    return {"device": str(select_device(device)), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
