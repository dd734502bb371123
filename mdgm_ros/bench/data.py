"""``mdgm-ros bench data``: the simulator's real-time factor, bag writing, bag -> aligned samples, and
(``--bags N``) aligning + sharding N bags with every core and the peak memory of streaming training
from 1 and from N of them."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

from ..config_files import config_path
from ..core import default_robot_modalities


def _params():
    from ..streams.params import fusion_params_from_file

    return fusion_params_from_file(str(config_path("fusion.yaml")), overrides={"anchor": "", "output_rate": 30.0})


def bench_data(seconds: float = 20.0) -> dict[str, Any]:
    """Simulate ``seconds`` of robot time into an MCAP bag, then align it as training does (no cache)."""
    from ..data.dataset import align_bag
    from ..sim.record import simulate_to_bag

    folder = Path(tempfile.mkdtemp(prefix="mdgm-bench-"))
    try:
        started = time.perf_counter()
        result = simulate_to_bag(folder / "bag", seconds, seed=0)
        simulated = time.perf_counter() - started
        size = sum(p.stat().st_size for p in (folder / "bag").iterdir())
        started = time.perf_counter()
        data = align_bag(folder / "bag", _params(), default_robot_modalities())
        aligned = time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"robot_seconds": seconds, "simulate_and_record_s": round(simulated, 2),
            "real_time_factor": round(seconds / simulated, 2), "messages": sum(result["messages"].values()),
            "bag_mb_per_robot_minute": round(size / 1e6 * 60.0 / seconds, 1),
            "align_s": round(aligned, 3), "aligned_samples": len(data),
            "aligned_samples_per_s": round(len(data) / aligned, 1)}


def _simulate(args: tuple[str, float, int]) -> str:
    from ..sim.record import simulate_to_bag

    simulate_to_bag(args[0], args[1], seed=args[2], faults="all")
    return args[0]


def record_bags(folder: Path, count: int, seconds: float, workers: int) -> list[str]:
    """``count`` simulated bags of ``seconds`` each in ``folder`` (kept: bags already there are reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"sim{seconds:g}s_{i}") for i in range(count)]
    missing = [(p, seconds, 100 + i) for i, p in enumerate(paths) if not Path(p).exists()]
    if missing:
        with ProcessPoolExecutor(min(len(missing), workers), mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_simulate, missing))
    return paths


def bench_shards(bags: list[str], root: Path, workers: int = 0) -> dict[str, Any]:
    """Align and shard ``bags`` into a fresh ``root`` with ``workers`` processes (0: every core)."""
    from ..data.shards import ensure_shards

    started = time.perf_counter()
    opened = ensure_shards(bags, _params(), default_robot_modalities(), workers=workers, root=root, log=lambda m: None)
    seconds = time.perf_counter() - started
    samples = sum(len(b) for b in opened)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"bags": len(bags), "workers": min(len(bags), workers or os.cpu_count() or 1), "samples": samples,
            "seconds": round(seconds, 2), "samples_per_s": round(samples / seconds, 1),
            "shard_gb": round(size / 1e9, 3)}


_TRAIN_AND_REPORT = """
import json, sys
from mdgm_ros.bench.memory import PeakMemory
from mdgm_ros.config_files import config_path
from mdgm_ros.training.trainer import run_training
with PeakMemory() as peak:
    result = run_training(sys.argv[2:], config_path('train.yaml'), sys.argv[1] + '/model', device='{device}',
                          log=lambda m: None, show_bar=False, overrides={overrides})
print(json.dumps({{"train_samples": result.train_samples, "seconds": result.seconds,
                  "peak_rss_mb": peak.own_mb(), "loader_worker_peak_rss_mb": peak.children_mb}}))
"""


def streaming_rss(bags: list[str], cache: Path, device: str, epochs: int = 1) -> dict[str, Any]:
    """Peak RSS of ``mdgm-ros train`` streaming from the (already built) shards of ``bags``, in a fresh process."""
    overrides = {"data.shards": True, "training.epochs": epochs, "export.onnx": False, "data.block_s": 10.0}
    code = _TRAIN_AND_REPORT.format(device=device, overrides=repr(overrides))
    with tempfile.TemporaryDirectory(prefix="mdgm-bench-train-") as out:
        env = {**os.environ, "MDGM_ROS_CACHE": str(cache)}
        done = subprocess.run([sys.executable, "-c", code, out, *bags], env=env, capture_output=True, text=True,
                              check=False)
    if done.returncode:
        raise RuntimeError(f"streaming training failed: {done.stderr[-2000:]}")
    return {"bags": len(bags), **json.loads(done.stdout.strip().splitlines()[-1])}


def bench_fleet(count: int, seconds: float, bag_dir: str = "", workers: int = 0, device: str = "cpu",
                log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Record (or reuse) ``count`` bags, shard them with every core, then train one epoch streaming from
    1 and from ``count`` bags and report both peak RSS figures."""
    folder = Path(bag_dir) if bag_dir else Path(tempfile.mkdtemp(prefix="mdgm-bench-bags-"))
    cache = Path(tempfile.mkdtemp(prefix="mdgm-bench-cache-"))
    try:
        started = time.perf_counter()
        bags = record_bags(folder, count, seconds, workers or os.cpu_count() or 1)
        recorded = time.perf_counter() - started
        log(f"{count} bags of {seconds:g} s ready in {recorded:.0f} s")
        sharding = bench_shards(bags, cache / "shards", workers)
        log(f"sharded: {sharding}")
        one = streaming_rss(bags[:1], cache, device)
        log(f"streaming from 1 bag: {one}")
        many = streaming_rss(bags, cache, device)
        log(f"streaming from {count} bags: {many}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not bag_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return {"robot_seconds_per_bag": seconds, "record_s": round(recorded, 1), "sharding": sharding,
            "streaming_train": {"1_bag": one, f"{count}_bags": many},
            "target": {"peak_rss_mb": 1500}}
