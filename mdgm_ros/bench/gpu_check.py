"""``mdgm-ros bench gpu`` (``make gpu-check``): one prepared check of the GPU path, for a machine that is
lent for minutes. One call runs every part and writes one JSON report:

* ``environment``: the device, its driver, torch / CUDA / cuDNN versions, onnxruntime's providers,
  TensorRT if installed;
* ``fusion``: the live step at batch 1 (p50 / p99) in fp32, fp16 and bf16 (fp32 and bf16 on a CPU),
  the per-frame step against the bare forward pass of its networks, the shipped default's family
  (``temporal_ms``) with and without its 10-step prediction, and batch 64 (many robots at once) in
  samples/s;
* ``train``: samples/s of MoPoE, MMVAE and ``temporal_ms`` in fp32 and under automatic mixed precision
  (bf16 where the device has it, else fp16 with a gradient scaler), through the trainer's own step;
* ``onnxruntime``: the temporal step with its networks in onnxruntime, per execution provider that is
  there (CUDA, TensorRT, CPU), its time and its largest difference from torch fp32;
* ``ddp``: data-parallel training steps in two processes through the training's own distributed path
  (NCCL with one GPU per rank where there are two, else gloo on the CPU), the step time and whether
  both ranks hold the same weights after it;
* ``node``: the fusion node end to end over DDS with the shipped default, per precision (``bench ros``),
  where rclpy is installed.

A part that cannot run here says why (``skipped``); a part that fails records its error and the others
still run. The exit status is 0 when no part failed. ``quick`` (CI, ``--device cpu``): fewer iterations
and a shorter node run, the same code path.
"""
from __future__ import annotations

import importlib
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core import Fuser, MultimodalVAE, calibrate_anomaly, select_device
from ..core.engine import loop as training
from .models import percentiles, prepared_model, synchronize

PARTS = ("environment", "fusion", "train", "onnxruntime", "ddp", "node")
AMP = {"fp16": torch.float16, "bf16": torch.bfloat16}


def precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions the device runs: fp16 and bf16 on a GPU (bf16 where it has it), bf16 on a CPU."""
    if device.type == "cuda":
        return ("fp32", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32", "bf16")


# ----------------------------------------------------------------------------- environment
def environment(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                           "host": socket.gethostname(), "cpu_count": os.cpu_count(),
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported(),
                   gpus=torch.cuda.device_count(), driver=_driver())
    try:
        import onnxruntime
        out["onnxruntime"] = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        out["onnxruntime"] = None
    out["tensorrt"] = _version_of("tensorrt")
    out["rclpy"] = _version_of("rclpy") is not None
    return out


def _driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _version_of(module: str) -> str | None:
    """The module's version, "installed" if it has none, None if it does not import here."""
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return None


# ----------------------------------------------------------------------------- fusion steps
def _timed(call: Callable[[], Any], device: torch.device, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    synchronize(device)
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def fusion(device: torch.device, quick: bool) -> dict[str, Any]:
    from .models import bench_fusion
    from .temporal_step import bench_temporal_step

    iterations, warmup = (100, 10) if quick else (1000, 100)
    out: dict[str, Any] = {}
    model, (data, feats, mask) = prepared_model("mvae", device)
    calibration = calibrate_anomaly(model, training.normalize_features(model, feats), mask)
    step_mask = torch.tensor([[True, True, False, True]], device=device)
    for batch in (1, 64):
        raw = {k: torch.from_numpy(np.repeat(v[:1], batch, 0)).to(device) for k, v in data.raw.items()}
        rows = step_mask.expand(batch, -1)
        for precision in precisions(device):
            fuser = Fuser(model, calibration, amp=AMP.get(precision))
            stats = percentiles(_timed(lambda: fuser(raw, rows), device, iterations, warmup))
            if batch > 1:
                stats["samples_per_s"] = round(batch * 1e3 / stats["mean_ms"], 1)
            out[f"batch{batch}_{precision}"] = stats
        if device.type == "cuda":
            out[f"batch{batch}_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    bare = bench_fusion(iterations=iterations, warmup=warmup, device=str(device))
    out["per_frame_vs_bare"] = {"p50_ms": bare["p50_ms"], "bare_p50_ms": bare["bare_forward"]["p50_ms"],
                                "ratio_to_bare_p50": bare["ratio_to_bare_p50"]}
    temporal = bench_temporal_step(iterations=iterations, warmup=warmup, device=str(device), family="temporal_ms")
    out["temporal_ms"] = {"p50_ms": temporal["p50_ms"], "p99_ms": temporal["p99_ms"],
                          "with_prediction": temporal["with_prediction"],
                          "prediction_ratio_p50": temporal["with_prediction"]["ratio_to_step_p50"]}
    return out


# ----------------------------------------------------------------------------- training
def train(device: torch.device, quick: bool) -> dict[str, Any]:
    from .gpu import bench_train_gpu

    return bench_train_gpu(str(device), families=("mopoe", "mmvae", "temporal_ms"), steps=3 if quick else 20)


# ----------------------------------------------------------------------------- onnxruntime
def onnx_providers(device: torch.device, quick: bool) -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    from ..core import save_bundle
    from ..core.engine.anomaly import calibration_from_nll
    from ..core.engine.filter import TemporalFilter, predictive_surprise_sequence
    from ..onnx_engine import load_ort_bundle
    from ..training.bundle_files import export_onnx

    cpu = torch.device("cpu")
    model, (data, feats, mask) = prepared_model("temporal_ms", cpu)
    with torch.no_grad():
        normalised = {n: model.normalize(n, x).unsqueeze(0) for n, x in feats.items()}
        calibration = calibration_from_nll(model, predictive_surprise_sequence(model, normalised, mask.unsqueeze(0))[0])
    raw = {k: torch.from_numpy(v[:1]) for k, v in data.raw.items() if k != "audio"}
    step_mask = torch.tensor([[True, True, False, True]])
    reference = TemporalFilter(model, calibration)(raw, step_mask)
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
              if p in onnxruntime.get_available_providers() and (device.type == "cuda" or p == "CPUExecutionProvider")]
    iterations = 50 if quick else 500
    out: dict[str, Any] = {"available": onnxruntime.get_available_providers()}
    with tempfile.TemporaryDirectory() as folder:
        save_bundle(Path(folder) / "bundle", model, calibration, attach=lambda target: export_onnx(model, target))
        for provider in wanted:
            try:
                ort_model = load_ort_bundle(Path(folder) / "bundle", [provider], threads=1, device=cpu).model
                step = TemporalFilter(ort_model, calibration)
                first = step(raw, step_mask)
                difference = float((first.latent_mean - reference.latent_mean).abs().max())
                out[provider] = {**percentiles(_timed(lambda: step(raw, step_mask), cpu, iterations, 5)),
                                 "max_abs_difference_to_torch_fp32": difference}
            except Exception as err:  # noqa: BLE001 - one provider failing is a finding, not the end
                out[provider] = {"error": f"{type(err).__name__}: {err}"}
    return out


# ----------------------------------------------------------------------------- data parallel
def _ddp_rank(rank: int, world: int, backend: str, port: str, results) -> None:
    """One rank (a spawned process): its outcome or its error goes to ``results``. The process then ends
    without interpreter teardown (torch's and gloo's threads can abort it there, after the work is done)."""
    code = 0
    try:
        _ddp_steps(rank, world, backend, port, results)
    except Exception:  # noqa: BLE001 - reported by the parent
        results.put({"rank": rank, "error": traceback.format_exc()[-2000:]})
        code = 1
    results.close()
    results.join_thread()                        # what this rank put is in the pipe
    os._exit(code)


def _ddp_steps(rank: int, world: int, backend: str, port: str, results) -> None:
    """The training's own distributed path as under ``torchrun``: :func:`..training.distributed.start`
    joins the group from the environment, :func:`~..training.distributed.wrap` builds the
    DistributedDataParallel objective and the trainer steps through it on this rank's own synthetic
    rows; rank 0 reports the step time and whether both ranks hold the same weights."""
    import torch.distributed as dist

    from ..core import ModelConfig, TrainConfig, Trainer, default_robot_modalities
    from ..core.engine import synthetic
    from ..training import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    ranks, device = distributed.start("cuda" if backend == "nccl" else "cpu")
    torch.manual_seed(0)
    specs = default_robot_modalities()
    model = MultimodalVAE(ModelConfig(tuple(specs), latent_dim=16, family="mopoe")).to(device)
    data = synthetic.make_dataset(specs, 32, seed=rank, missing_rate=0.2)
    feats = training.raw_to_features(model, data.raw)
    mask = torch.from_numpy(data.mask)
    training.fit_normalization(model, feats, mask)
    feats = {k: v.to(device) for k, v in training.normalize_features(model, feats).items()}
    objective = distributed.wrap(model, ranks)
    trainer = Trainer(model.train(), TrainConfig(batch_size=32))
    times = []
    for _ in range(4):
        synchronize(device)
        started = time.perf_counter()
        trainer.train_step(feats, mask.to(device), None, objective=objective)
        synchronize(device)
        times.append(time.perf_counter() - started)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        results.put({"step_ms": round(1e3 * float(np.median(times[1:])), 2),
                     "ranks_equal": all(torch.equal(g, gathered[0]) for g in gathered)})
    dist.destroy_process_group()


def ddp(device: torch.device, quick: bool) -> dict[str, Any]:
    import torch.multiprocessing as mp

    # NCCL, one GPU per rank, where there are two; else gloo with both ranks on the CPU
    backend = "nccl" if device.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_ddp_rank, args=(rank, 2, backend, port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    codes = [process.exitcode for process in processes]
    reports = []
    while not results.empty():
        reports.append(results.get(timeout=10))
    errors = [r for r in reports if "error" in r]
    if errors or any(code != 0 for code in codes) or not reports:
        detail = errors[0]["error"] if errors else "no rank reported an error" if reports else "no report"
        raise RuntimeError(f"a DDP rank failed (exit codes {codes}): {detail}")
    return {"backend": backend, "processes": 2, **reports[0]}


# ----------------------------------------------------------------------------- the node over DDS
def node(device: torch.device, quick: bool) -> dict[str, Any]:
    if _version_of("rclpy") is None:
        return {"skipped": "rclpy does not import here (the node needs ROS 2)"}
    from .ros import bench_ros

    chosen = ("fp32",) if quick else precisions(device)
    return {precision: bench_ros(duration=5.0 if quick else 15.0, warmup=2.0 if quick else 5.0,
                                 device=str(device), precision=precision) for precision in chosen}


RUNNERS: dict[str, Callable[[torch.device, bool], dict[str, Any]]] = {
    "fusion": fusion, "train": train, "onnxruntime": onnx_providers, "ddp": ddp, "node": node}


def gpu_check(device: str = "auto", quick: bool = False, parts: tuple[str, ...] = PARTS,
              log: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Every part of the check on ``device``; see the module docstring. ``report["failed"]``: the parts
    that raised."""
    dev = select_device(device)
    report: dict[str, Any] = {"benchmark": "gpu", "quick": quick, "environment": environment(dev)}
    started = time.perf_counter()
    failed = []
    for part in parts:
        if part == "environment":
            continue
        log(f"gpu check: {part} ...")
        begun = time.perf_counter()
        try:
            report[part] = RUNNERS[part](dev, quick)
        except Exception as err:  # noqa: BLE001 - the other parts still run; the report names the failure
            report[part] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
            failed.append(part)
        report[part]["seconds"] = round(time.perf_counter() - begun, 1)
        log(f"gpu check: {part} {'FAILED' if part in failed else 'done'} in {report[part]['seconds']} s")
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["failed"] = failed
    return report
