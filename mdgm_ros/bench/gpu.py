"""``mdgm-ros bench train --device cuda`` and ``bench gpu``: training steps in fp32 against automatic
mixed precision (bf16 where the device has it, else fp16 with a gradient scaler; bf16 on a CPU) through
the trainer's own step, and on a GPU the batch copy host -> GPU from pageable against pinned memory
(non-blocking)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..core import ModelConfig, MultimodalVAE, TrainConfig, Trainer, default_robot_modalities, select_device
from ..core.engine import loop as training
from ..core.engine import synthetic
from .models import synchronize


def _step_ms(trainer: Trainer, feats, mask, steps: int) -> float:
    times = []
    device = mask.device
    for step in range(steps + 3):
        synchronize(device)
        started = time.perf_counter()
        trainer.train_step(feats, mask, None)
        synchronize(device)
        if step >= 3:
            times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def _copy_ms(raw: dict[str, torch.Tensor], device: torch.device, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        for x in raw.values():
            x.to(device, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def bench_train_gpu(device: str = "cuda", families: tuple[str, ...] = ("mopoe", "mvae", "mmvae"),
                    batch_size: int = 64, steps: int = 20) -> dict[str, Any]:
    dev = select_device(device)
    cuda = dev.type == "cuda"
    amp = torch.float16 if cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16
    specs = default_robot_modalities()
    data = synthetic.make_dataset(specs, batch_size, seed=1, missing_rate=0.2)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu",
                           "amp_dtype": str(amp).removeprefix("torch."), "batch": batch_size, "families": {}}
    for family in families:
        torch.manual_seed(0)
        model = MultimodalVAE(ModelConfig(tuple(specs), latent_dim=16, family=family)).to(dev)
        feats = training.raw_to_features(model, data.raw)
        mask = torch.from_numpy(data.mask)
        training.fit_normalization(model, feats, mask)
        feats = {k: v.to(dev) for k, v in training.normalize_features(model, feats).items()}
        trainer = Trainer(model.train(), TrainConfig(batch_size=batch_size))
        row = {"fp32_step_ms": round(_step_ms(trainer, feats, mask.to(dev), steps), 2)}
        trainer.amp = amp
        row["amp_step_ms"] = round(_step_ms(trainer, feats, mask.to(dev), steps), 2)
        row["amp_speedup"] = round(row["fp32_step_ms"] / row["amp_step_ms"], 2)
        row["fp32_samples_per_s"] = round(1e3 * batch_size / row["fp32_step_ms"], 1)
        row["amp_samples_per_s"] = round(1e3 * batch_size / row["amp_step_ms"], 1)
        out["families"][family] = row
    if not cuda:
        return out
    raw = {k: torch.from_numpy(np.nan_to_num(v)) for k, v in data.raw.items()}
    pinned = {k: v.pin_memory() for k, v in raw.items()}
    out["batch_copy_ms"] = {"pageable": round(_copy_ms(raw, dev), 3), "pinned": round(_copy_ms(pinned, dev), 3)}
    return out
