"""``mdgm-ros demo`` (``make demo``): the whole loop on the simulated robot, over real ROS topics.

1. simulate a fault-free training bag and a test bag with every fault kind (two processes at once);
2. train a model from the training bag (``mdgm-ros train``, config/train.yaml);
3. start ``fusion_node`` with that bundle (use_sim_time) and replay the test bag with ``mdgm-ros play
   --clock``, withholding each stream in turn for scripted outages between the faults; record what
   the node publishes;
4. evaluate the recording against the bag (imputation vs the training mean and the last value seen;
   anomaly AUROC / AP per fault kind; latent statistics), write ``report.json`` and three PNGs.

Exit status 1 if a modality's imputation fails to beat both baselines or the anomaly AUROC < 0.85.
ROS traffic stays on a private domain id, on this host only.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config_files import config_path
from .ros.processes import private_ros_env, stop_process
NS = 1_000_000_000
MIN_AUROC = 0.85


@dataclass(frozen=True)
class DemoSize:
    train_s: float
    test_s: float
    epochs: int
    outage_s: float


FULL = DemoSize(train_s=300.0, test_s=180.0, epochs=30, outage_s=3.0)
QUICK = DemoSize(train_s=45.0, test_s=60.0, epochs=3, outage_s=1.0)


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


# ----------------------------------------------------------------------------- 1. bags
def simulate_bags(out: Path, size: DemoSize, keep: bool) -> tuple[Path, Path]:
    jobs = {"train_bag": ["--duration", str(size.train_s), "--seed", "0"],
            "test_bag": ["--duration", str(size.test_s), "--seed", "1", "--faults", "all", "--per-kind", "1"]}
    running = []
    for name, args in jobs.items():
        path = out / name
        if keep and path.exists():
            _log(f"reusing {path}")
            continue
        if path.exists():
            shutil.rmtree(path)
        log = open(out / f"{name}.log", "w")
        running.append((name, subprocess.Popen(_module("mdgm_ros", "simulate", "--out", str(path), *args),
                                               stdout=log, stderr=subprocess.STDOUT), log))
        _log(f"simulating {name} ({args[1]} s of robot time)")
    for name, proc, log in running:
        if proc.wait() != 0:
            raise RuntimeError(f"simulating {name} failed; see {out / (name + '.log')}")
        log.close()
    return out / "train_bag", out / "test_bag"


# ----------------------------------------------------------------------------- 3. live replay
def schedule_outages(labels, start_ns: int, end_ns: int, modalities: list[str], outage_s: float,
                     margin_before_s: float = 1.0, margin_after_s: float = 1.5) -> dict[str, list[tuple[int, int]]]:
    """Outages of each modality in turn, in the fault-free stretches of the bag (stamps in ns)."""
    blocked = [(lb.start_ns - int(margin_before_s * NS), lb.end_ns + int(margin_after_s * NS)) for lb in labels]
    outages: dict[str, list[tuple[int, int]]] = {m: [] for m in modalities}
    t, i, length = start_ns + 3 * NS, 0, int(outage_s * NS)
    while t + length < end_ns - NS:
        if any(t < e and t + length > s for s, e in blocked):
            t += NS // 4
            continue
        outages[modalities[i % len(modalities)]].append((t, t + length))
        i += 1
        t += length + int(0.8 * NS)
    return outages


def _node_params(out: Path, bundle: Path, settings, device: str) -> Path:
    """The fusion node's params file: config/fusion.yaml with the training overrides, the bundle and sim time."""
    doc = yaml.safe_load(config_path("fusion.yaml").read_text())
    params = doc["mdgm_fusion"]["ros__parameters"]
    params.update(settings.source.get("fusion_overrides") or {})
    params.update({"bundle": str(bundle.resolve()), "use_sim_time": True, "device": device})
    path = out / "fusion_params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def replay_live(out: Path, bundle: Path, test_bag: Path, settings, outages: dict[str, list[tuple[int, int]]],
                bag_start_ns: int, bag_end_ns: int, env: dict[str, str], device: str = "auto"):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .core import load_bundle
    from .ros.recorder import OutputRecorder

    params_file = _node_params(out, bundle, settings, device)
    specs = list(load_bundle(bundle).model.config.modalities)
    topics = {s.name: s.topic for s in settings.fusion.streams}
    drops = [f"{topics[m]}:{(s - bag_start_ns) / NS:.3f}:{(e - bag_start_ns) / NS:.3f}"
             for m, spans in outages.items() for s, e in spans]
    node_log = open(out / "fusion_node.log", "w")
    node = subprocess.Popen(_module("mdgm_ros.ros.fusion_node", "--ros-args", "--params-file", str(params_file)),
                            env=env, stdout=node_log, stderr=subprocess.STDOUT)
    rclpy.init()
    recorder = OutputRecorder("/mdgm_fusion", specs, settings.fusion.streams)
    executor = SingleThreadedExecutor()
    executor.add_node(recorder)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 120
        while recorder.recording.model_info is None:
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fusion_node did not come up; see {out / 'fusion_node.log'}")
            time.sleep(0.2)
        _log(f"fusion_node is active ({recorder.recording.model_info['model_id']}); replaying {test_bag} "
             f"with {len(drops)} scripted outages")
        play_args = ["mdgm_ros", "play", str(test_bag), "--clock", "--wait", "10"]
        for drop in drops:
            play_args += ["--drop", drop]
        with open(out / "play.log", "w") as play_log:
            played = subprocess.run(_module(*play_args), env=env, stdout=play_log, stderr=subprocess.STDOUT,
                                    timeout=(bag_end_ns - bag_start_ns) / NS + 120.0)
        if played.returncode != 0:
            raise RuntimeError(f"play failed; see {out / 'play.log'}")
        time.sleep(1.0)
        return recorder.recording
    finally:
        stop_process(node, timeout=15)
        node_log.close()
        executor.shutdown()
        recorder.destroy_node()
        rclpy.try_shutdown()


# ----------------------------------------------------------------------------- 4. report
def check_report(report: dict[str, Any], modalities: list[str]) -> list[str]:
    failures = [f"imputation of {name}: the live node published no imputation during its outages"
                for name in modalities if name not in report["imputation"]]
    for name, v in report["imputation"].items():
        if not (v["model"] < v["baseline_mean"] and v["model"] < v["baseline_last"]):
            failures.append(f"imputation of {name}: model {v['model']:.4g} does not beat both the training mean "
                            f"{v['baseline_mean']:.4g} and the last value {v['baseline_last']:.4g}")
    auc = report["anomaly"]["auroc"]
    if not auc >= MIN_AUROC:
        failures.append(f"anomaly AUROC {auc:.3f} < {MIN_AUROC}")
    return failures


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = ["imputation error (standardised MSE; lower is better):",
             f"  {'modality':9s} {'model':>8s} {'mean':>8s} {'last':>8s}  samples"]
    for name, v in report["imputation"].items():
        lines.append(f"  {name:9s} {v['model']:8.3f} {v['baseline_mean']:8.3f} {v['baseline_last']:8.3f}  {v['samples']}")
    a = report["anomaly"]
    lines.append(f"anomaly: AUROC {a['auroc']:.3f}  AP {a['average_precision']:.3f}  "
                 f"({a['fault_samples']} fault / {a['samples']} samples)")
    for kind, v in a["per_fault"].items():
        lines.append(f"  {kind:17s} AUROC {v['auroc']:.3f}  AP {v['average_precision']:.3f}  ({v['samples']} samples"
                     f"{'' if v['pooled'] else ', not pooled'})")
    lat = report["latent"]
    lines.append(f"latent: {lat['active_dims']}/{lat['dim']} active dims, mean posterior std {lat['mean_posterior_std']:.3f}")
    return lines


def _write_json(path: Path, data: Any) -> None:
    from .evaluation.evaluate import json_safe

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(json_safe(data), handle, indent=2, allow_nan=False)
    os.replace(tmp, path)


def run_demo(out: str | Path = "demo_out", quick: bool = False, device: str = "auto", keep: bool = False) -> int:
    from .data.dataset import align_bag
    from .evaluation.evaluate import evaluate_live, load_eval_model
    from .training.trainer import TrainSettings, run_training

    size = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    train_bag, test_bag = simulate_bags(out, size, keep)
    timings["simulate_s"] = round(time.perf_counter() - started, 1)

    bundle = out / "model"
    mark = time.perf_counter()
    if not (keep and bundle.exists()):
        _log(f"training on {train_bag} ({size.epochs} epochs at most)")
        result = run_training([str(train_bag)], config_path("train.yaml"), bundle, device=device,
                              overrides={"training.epochs": size.epochs}, log=_log, show_bar=sys.stderr.isatty())
        _log(f"trained: best epoch {result.best_epoch}, {result.train_samples} samples, {result.seconds} s")
    timings["train_s"] = round(time.perf_counter() - mark, 1)

    settings = TrainSettings.from_file(config_path("train.yaml"))
    labels = _fault_labels(test_bag)
    first, last = _bag_span(test_bag)
    names = [s.name for s in settings.fusion.streams]
    outages = schedule_outages(labels, first, last, names, size.outage_s)
    mark = time.perf_counter()
    recording = replay_live(out, bundle, test_bag, settings, outages, first, last,
                            private_ros_env(base=101, span=100), device)
    timings["replay_s"] = round(time.perf_counter() - mark, 1)

    mark = time.perf_counter()
    em = load_eval_model(bundle)
    stamps = recording.latent_arrays()[0] if recording.latent else None
    if stamps is None or len(stamps) < 10:
        _log(f"the live node published {len(recording.latent)} latents: see {out / 'fusion_node.log'}")
        return 1
    truth = align_bag(test_bag, settings.fusion, list(em.model.config.modalities), sample_at=stamps)
    staleness = {s.name: int(s.staleness * NS) for s in settings.fusion.streams}
    report = evaluate_live(em, truth, recording, outages, staleness, out)
    timings["evaluate_s"] = round(time.perf_counter() - mark, 1)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    report.update({"timings": timings, "quick": quick, "bags": {"train": str(train_bag), "test": str(test_bag)},
                   "bundle": str(bundle), "expected_latents": int((last - first) / NS * settings.fusion.output_rate)})
    failures = check_report(report, names)
    report["passed"], report["failures"] = not failures, failures
    _write_json(out / "report.json", report)
    print("\n".join(summary_lines(report)))
    print(f"report: {out / 'report.json'}; figures: {', '.join(Path(p).name for p in report.get('plots', {}).values())}")
    print(f"timings: {timings}")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _fault_labels(bag: Path) -> list:
    from .data.bags import messages
    from .data.dataset import FAULT_TOPIC
    from .data.labels import FaultLabel

    return [FaultLabel.from_json(msg.data) for _, _, msg in messages(bag, [FAULT_TOPIC])]


def _bag_span(bag: Path) -> tuple[int, int]:
    from rosbags.rosbag2 import Reader
    with Reader(bag) as reader:
        return int(reader.start_time), int(reader.end_time)
