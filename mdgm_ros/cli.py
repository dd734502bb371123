"""``mdgm-ros`` command line (also ``python -m mdgm_ros``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Callable, Sequence

from .config_files import config_path
from .interrupts import exit_code, sigterm_stops_like_ctrl_c


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    if args.which == "zoo":
        from .bench import zoo
        return zoo.zoo_command(args)
    if args.which == "weak":
        from .bench import weak
        return weak.weak_command(args)
    if args.which == "parity":
        from .bench import parity
        return parity.parity_command(args)

    if args.which == "gpu":
        return _cmd_bench_gpu(args)
    from .bench import models as bench

    results = {}
    if args.which in ("fusion", "all"):
        torch.set_num_threads(args.threads)
        results["fusion"] = {**bench.bench_fusion(iterations=args.iterations, device=args.device),
                             "threads": args.threads}
        from .bench.temporal_step import bench_temporal_step
        for key, family in (("temporal_step", "temporal"), ("temporal_ms_step", "temporal_ms")):
            results["fusion"][key] = bench_temporal_step(iterations=args.iterations, device=args.device,
                                                         family=family, onnxruntime=True)
    if args.which in ("train", "all"):
        torch.set_num_threads(args.train_threads or os.cpu_count() or 1)
        results["train"] = {**bench.bench_train(device=args.device, families=_bench_families(args)),
                            "threads": torch.get_num_threads()}
        if bench.select_device(args.device).type == "cuda":             # AMP and pinned copies, on a GPU
            from .bench.gpu import bench_train_gpu
            results["train"]["gpu"] = bench_train_gpu(args.device)
    if args.which in ("ros", "all"):
        from .bench.ros import bench_ros
        results["ros"] = bench_ros(duration=args.duration, bundle=args.bundle,
                                   device=args.device,
                                   precision=getattr(args, "precision", "fp32"))
    if args.which in ("data", "all"):
        from .bench.data import bench_data, bench_fleet
        results["data"] = bench_data(seconds=args.duration)
        if args.bags > 1:
            results["data"]["fleet"] = bench_fleet(args.bags, args.duration, args.bag_dir, device=args.device,
                                                   log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.which == "sim":                       # minutes per seed: never part of "all"
        from .bench.sim import bench_sim, summary_lines
        results["sim"] = bench_sim(model=args.bundle, seeds=_seeds(args.seeds), test_s=args.test_s,
                                   bag_dir=args.bag_dir, device="cpu" if args.device == "auto" else args.device,
                                   log=lambda text: print(text, file=sys.stderr, flush=True))
        if not args.json:
            print("\n".join(summary_lines(results["sim"])))
            return 0
    if args.which == "soak":                      # minutes long: never part of "all"
        from .bench.soak import bench_soak
        results["soak"] = bench_soak(minutes=args.minutes, warmup_s=args.warmup, bundle=args.bundle or None,
                                     hostile=not args.no_hostile,
                                     log=lambda text: print(text, file=sys.stderr, flush=True))
    results["environment"] = bench.environment(args.device)
    payload = results if args.which == "all" else {**results[args.which], "environment": results["environment"]}
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")
    return 0


def _cmd_bench_gpu(args: argparse.Namespace) -> int:
    """``bench gpu``: every part of the GPU check, the report to --out (and stdout with --json)."""
    from pathlib import Path

    from .bench.gpu_check import PARTS, gpu_check

    report = gpu_check(args.device, quick=args.quick, log=lambda text: print(text, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"gpu check: report written to {args.out}", file=sys.stderr)
    if args.json:
        print(text)
    else:
        for part in PARTS:
            print(f"{part}: {json.dumps(report.get(part))}")
    if report["failed"]:
        print(f"gpu check: FAILED parts: {', '.join(report['failed'])} (their errors are in the report)",
              file=sys.stderr)
        return 1
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from .example import check_report, run_example

    report = run_example(args.out, quick=args.quick, family=args.family, device=args.device,
                         seed=args.seed)
    print(f"\nreport: {args.out}/report.json  (family {report['family']}, fusion {report['fusion']},"
          f" trained in {report['train_seconds']} s on {report['device']})")
    for name, v in report["imputation"].items():
        print(f"  impute {name:8s} from the others: MSE {v['model']:.4g}  (training mean: {v['baseline_mean']:.4g})")
    a = report["anomaly"]
    print(f"  anomaly: AUROC {a['auroc']:.3f}  AP {a['average_precision']:.3f}  "
          f"detected {a['detected_at_threshold']:.0%} / false alarms {a['false_alarms_at_threshold']:.0%}"
          " at the calibrated threshold")
    print(f"  bundle {report['bundle']} reloads identically: {report['bundle_reload_identical']}")
    failures = check_report(report)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .core import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = bundle.model.config
    print(json.dumps({"model_id": bundle.model_id, "content_hash": bundle.content_hash,
                      "fusion": config.fusion, "family": config.family, "latent_dim": config.latent_dim,
                      "modalities": [m.to_dict() for m in config.modalities],
                      "calibrated": bundle.calibration is not None, "created": bundle.manifest.get("created")},
                     indent=2))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .data.bags import BagError

    options = dict(faults=args.faults, per_kind=args.per_kind, storage=args.storage, image_size=args.image_size,
                   distro=args.distro, progress=lambda t: print(f"  simulated {t:.0f} / {args.duration:.0f} s",
                                                                file=sys.stderr, flush=True))
    try:
        if args.robot == "kuka":
            from .sim.kuka import simulate_kuka_to_bag
            result = simulate_kuka_to_bag(args.out, args.duration, args.seed, depth=args.depth, **options)
        elif not args.depth:
            raise ValueError("--no-depth is for --robot kuka (the Panda has no depth camera)")
        else:
            from .sim.record import simulate_to_bag
            result = simulate_to_bag(args.out, args.duration, args.seed, **options)
    except (BagError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def _cmd_play(args: argparse.Namespace) -> int:
    from .data.bags import BagError
    from .ros.play import Drop, play

    try:
        drops = tuple(Drop.parse(d) for d in args.drop)
        stats = play(args.bag, rate=args.rate, loop=args.loop, clock=args.clock, drops=drops,
                     topics=args.topics or None, wait_for_subscribers=args.wait,
                     log=lambda m: print(m, file=sys.stderr))
    except (BagError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        return exit_code(interrupt)
    print(json.dumps(vars(stats)))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .core import BundleError
    from .data.bags import BagError
    from .data.labels import LabelError
    from .streams.params import ParameterError
    from .training.config import parse_set
    from .training.trainer import TrainError, run_training

    try:
        overrides = parse_set(args.set)
        if args.epochs:
            overrides["training.epochs"] = args.epochs
        if args.seed is not None:
            overrides["training.seed"] = args.seed
        if args.deterministic:
            overrides["training.deterministic"] = True
        if args.max_corrupt is not None:
            overrides["data.max_corrupt"] = args.max_corrupt
        result = run_training(args.bags, args.config, args.out, resume=args.resume, device=args.device,
                              overrides=overrides, log=lambda m: print(m, file=sys.stderr, flush=True),
                              show_bar=not args.no_progress and sys.stderr.isatty())
    except (TrainError, BagError, BundleError, ParameterError, LabelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"interrupted: the last finished epoch is in {args.out}.train/; "
              "run again with --resume", file=sys.stderr)
        return exit_code(interrupt)
    if os.environ.get("RANK", "0") == "0":          # one result of a torchrun launch, from rank 0
        print(json.dumps(result.to_dict(), indent=2))
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from .data import cache

    try:
        if args.action == "list":
            found = cache.entries()
            if args.json:
                print(json.dumps({"root": str(cache.cache_root()), "bound_gb": cache.max_bytes() / 1e9,
                                  "entries": [e.to_dict() for e in found]}, indent=2))
            else:
                for e in found:
                    print(f"{e.kind:8s} {e.bytes / 1e6:9.1f} MB  {e.to_dict()['last_used']}  {e.path}  {e.bag}")
                print(f"{len(found)} entries, {sum(e.bytes for e in found) / 1e6:.1f} MB in {cache.cache_root()} "
                      f"(bound {cache.max_bytes() / 1e9:.0f} GB, $MDGM_ROS_CACHE_MAX_GB)")
            return 0
        limit = None if args.max_gb is None else int(args.max_gb * 1e9)
        if args.all:
            limit = 0
        if limit is None and args.older_than is None:
            limit = cache.max_bytes()
        removed = cache.prune(limit_bytes=limit, older_than_days=args.older_than, dry_run=args.dry_run,
                              log=lambda m: print(m, file=sys.stderr))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'would remove' if args.dry_run else 'removed'} {len(removed)} entries, "
          f"{sum(e.bytes for e in removed) / 1e6:.1f} MB")
    return 0


def _floats(text: str) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--outages: expected seconds separated by commas, got {text!r}") from None
    if any(not 0 < v < 3600 for v in values):
        raise ValueError(f"--outages: every length must be in (0, 3600) s, got {text!r}")
    return values or None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .core import BundleError
    from .data.bags import BagError
    from .data.labels import LabelError
    from .evaluation.evaluate import evaluate_bags, json_safe, summary_lines

    try:
        report = evaluate_bags(args.model, args.bags, args.params or None, overrides=_stream_overrides(args.set),
                               plots=args.plots or None, dropout_s=args.dropout,
                               device=args.device, label_topic=args.label_topic, max_corrupt=args.max_corrupt,
                               log=lambda m: print(m, file=sys.stderr, flush=True), compare=args.compare or None,
                               outages_s=_floats(args.outages))
    except (BagError, BundleError, LabelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        print("\n".join(summary_lines(report)))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .core import BundleError
    from .data.bags import BagError
    from .data.labels import LabelError
    from .training.calibration import CalibrateError, recalibrate_bundle

    try:
        written = recalibrate_bundle(args.model, args.bags, args.out, quantile=args.quantile, device=args.device,
                                     params_file=args.params or None, overrides=_stream_overrides(args.set),
                                     label_topic=args.label_topic, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (CalibrateError, BagError, BundleError, LabelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .core import load_bundle

    bundle = load_bundle(written)
    calibration = bundle.calibration
    table = None if calibration is None else calibration.fallback_table
    print(json.dumps({"bundle": str(written), "model_id": bundle.model_id,
                      **bundle.manifest["extra"].get("calibration", {}),
                      "useful_horizon": None if calibration is None else calibration.useful_horizon,
                      "predictive_scale": {} if calibration is None else calibration.predictive_scale,
                      "fallback": {} if table is None else {n: table.describe(n) for n in table.error}}, indent=2))
    return 0


def _stream_overrides(items: list[str]) -> dict[str, Any]:
    """``["camera.topic=/x"]`` -> {"camera.topic": "/x"}; values parsed as YAML."""
    from .training.config import parse_set

    return parse_set(items, "NAME=VALUE, e.g. camera.topic=/wrist/image", ValueError)


def _cmd_init(args: argparse.Namespace) -> int:
    from .data.bags import BagError
    from .robot_config import InitError, run_init

    try:
        result = run_init(args.bags, args.out, image_size=args.image_size, interactive=args.interactive,
                          force=args.force, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (InitError, BagError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        print("init: stopped; nothing written", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from .data.bags import BagError
    from .data.labels import LabelError, label_bag

    try:
        path, labels, origin = label_bag(args.bag, args.add, replace=args.replace)
    except (BagError, LabelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{path}: {len(labels)} labels (seconds from the bag's first message)")
    for label in labels:
        print(f"  {(label.start_ns - origin) / 1e9:9.3f} {(label.end_ns - origin) / 1e9:9.3f}  {label.kind}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, quick=args.quick, device=args.device, keep=args.keep)


def _bench_families(args: argparse.Namespace) -> tuple[str, ...]:
    """``--families a,b`` of ``bench train`` (default: every registered family), checked against the registry."""
    from .core.families import FAMILIES
    names = tuple(f.strip() for f in str(args.families).split(",") if f.strip())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        print(f"error: unknown families {', '.join(unknown)} (known: {', '.join(FAMILIES)})", file=sys.stderr)
        raise SystemExit(2)
    return names


def _seeds(text: str) -> tuple[int, ...]:
    """``--seeds 5,6,8``, each a whole number."""
    try:
        seeds = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        print(f"error: --seeds must be comma-separated whole numbers (got {text!r})", file=sys.stderr)
        raise SystemExit(2) from None
    if not seeds:
        print("error: --seeds names no seed", file=sys.stderr)
        raise SystemExit(2)
    return seeds


def _bench_options(which: str) -> dict[str, Callable[[argparse.ArgumentParser], Any]]:
    """The options of the benchmarks in ``bench fusion|train|ros|data|soak|all``, by name; ``which``
    words the help of an option that means something else per benchmark."""
    from .core.families import FAMILIES

    duration = {"ros": "seconds measured", "data": "seconds of robot time simulated (of each bag, with --bags)"}
    bundle = {"ros": "bundle the node runs (default: the shipped models/default; 'bench': an untrained "
                     "design-card-sized per-frame model)",
              "sim": "bundle to evaluate (default: the shipped models/default)",
              "all": "bundle the ros benchmark's node runs (default: the shipped models/default)"}
    return {
        "iterations": lambda p: p.add_argument("--iterations", type=int, default=2000,
                                               help="timed fusion steps of each kind"),
        "threads": lambda p: p.add_argument(
            "--threads", type=int, default=1,
            help="torch intra-op threads for the live fusion step (default 1, as the node runs)"),
        "train-threads": lambda p: p.add_argument("--train-threads", type=int, default=0,
                                                  help="threads for training (default: all cores)"),
        "families": lambda p: p.add_argument("--families", default=",".join(FAMILIES),
                                             help="comma-separated families to time (default: every registered "
                                                  "family)"),
        "duration": lambda p: p.add_argument(
            "--duration", type=float, default=20.0,
            help=duration.get(which, "seconds measured by ros; seconds of robot time simulated by data")),
        "bundle": lambda p: p.add_argument("--bundle", default="", help=bundle.get(
            which, "bundle the node runs (default: a design-card-sized model)")),
        "precision": lambda p: p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                                              help="the node's precision parameter (default fp32)"),
        "bags": lambda p: p.add_argument("--bags", type=int, default=1,
                                         help="also shard this many simulated bags of --duration s with every core "
                                              "and train streaming from 1 and from all of them (peak RSS)"),
        "bag-dir": lambda p: p.add_argument("--bag-dir", default="", help=(
            "keep (and reuse) the simulated test bags here (default build/bench_sim)" if which == "sim" else
            "with --bags: keep (and reuse) the simulated bags here")),
        "minutes": lambda p: p.add_argument("--minutes", type=float, default=5.0, help="minutes to run the node"),
        "seeds": lambda p: p.add_argument("--seeds", default="5,6,8,9,10",
                                          help="simulator seeds of the test bags, comma-separated (default: five "
                                               "the shipped default never trained or calibrated on)"),
        "test-s": lambda p: p.add_argument("--test-s", type=float, default=180.0,
                                           help="seconds of each test bag (every fault kind once)"),
        "warmup": lambda p: p.add_argument("--warmup", type=float, default=60.0,
                                           help="seconds before the RSS slope is fitted"),
        "quick": lambda p: p.add_argument("--quick", action="store_true",
                                          help="fewer iterations and a shorter node run (CI, a CPU)"),
        "out": lambda p: p.add_argument("--out", default="", help="also write the JSON report to this file"),
        "no-hostile": lambda p: p.add_argument("--no-hostile", action="store_true",
                                               help="only the plain malformed messages, not the hostile ones"),
    }


# benchmark -> (one-line description, its options in _bench_options); zoo, weak and parity bring their own
_BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fusion": ("latency of one live fusion step at batch 1 (per-frame, temporal, temporal in onnxruntime)",
               ("iterations", "threads")),
    "train": ("training throughput of each family on synthetic robot data (on a GPU: also AMP, pinned copies)",
              ("train-threads", "families")),
    "ros": ("the fusion node end to end over DDS: latency, delivery, the node's CPU",
            ("duration", "bundle", "precision")),
    "data": ("simulator, bag writing and alignment speed; with --bags, sharding and streaming training's memory",
             ("duration", "bags", "bag-dir")),
    "sim": ("a bundle on simulator seeds it never saw, each seed's figures apart: the published imputation "
            "against both baselines per outage, interval coverage, anomaly AUROC/AP per fault, predictions, and "
            "the targets each seed meets (not part of all)", ("seeds", "test-s", "bundle", "bag-dir")),
    "soak": ("the fusion node for minutes on malformed and hostile input: memory growth, latency drift "
             "(not part of all)", ("minutes", "warmup", "bundle", "no-hostile")),
    "gpu": ("the prepared GPU check, one report: the fusion step per precision and batch, training fp32 vs "
            "AMP, onnxruntime's providers, a 2-process DDP step, the node over DDS (runs on --device cpu too; "
            "not part of all)", ("quick", "out")),
    "zoo": ("every model family on PolyDigits: coherence, latent probe, joint NLL (not part of all)", ()),
    "weak": ("weak supervision on PolyDigits: modalities missing at random, or contrastive unpaired data "
             "(not part of all)", ()),
    "parity": ("the families MultiVae also has, trained in both libraries from the same networks and initial "
               "weights and measured by the same coherence code (needs pip install multivae==1.0.3; "
               "not part of all)", ()),
    "all": ("fusion, train, ros and data, in one report",
            ("iterations", "threads", "train-threads", "families", "duration", "bundle", "bags", "bag-dir")),
}


def _add_bench_parsers(sub: Any) -> None:
    """``bench NAME``: one sub-parser per benchmark with its own options (``bench NAME --help``)."""
    from .bench import parity, weak, zoo

    bench = sub.add_parser("bench", help="benchmarks; prints JSON with --json",
                           description="Benchmarks. `mdgm-ros bench NAME --help`: that benchmark's options.")
    names = bench.add_subparsers(dest="which", required=True, title="benchmarks", metavar="NAME")
    for name, (summary, options) in _BENCHMARKS.items():
        parser = names.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:] + ".")
        parser.set_defaults(func=_cmd_bench)
        if name == "weak":                       # an experiment, then its options (its own --json)
            weak.add_arguments(parser)
            continue
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
        if name == "zoo":
            zoo.add_zoo_arguments(parser)
            parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        if name == "parity":
            parity.add_arguments(parser)
        adders = _bench_options(name)
        for option in options:
            adders[option](parser)


def build_parser() -> argparse.ArgumentParser:
    from .core.families import FAMILIES
    from .core.families import table as families_table
    from .ros.watch import add_echo_parser, add_watch_parser

    parser = argparse.ArgumentParser(prog="mdgm-ros", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    _add_bench_parsers(sub)
    families_table.add_cli(sub)
    add_echo_parser(sub)
    add_watch_parser(sub)

    example = sub.add_parser("example", help="the model core end to end on synthetic data")
    example.add_argument("--out", default="demo_out")
    example.add_argument("--quick", action="store_true")
    example.add_argument("--family", "--objective", dest="family", default="mvae", choices=list(FAMILIES),
                         action=_RenamedOption, help="the model family (--objective: the old spelling)")
    example.add_argument("--device", default="auto")
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(func=_cmd_example)

    sim = sub.add_parser("simulate", help="record a rosbag2 from a PyBullet robot (Franka Panda or KUKA iiwa)")
    sim.add_argument("--robot", default="panda", choices=["panda", "kuka"],
                     help="panda: camera, joints, audio, tactile; kuka: JPEG wrist camera, joints, wrist "
                          "force-torque, IMU, depth (topics under /iiwa; labels also in OUT.labels.yaml)")
    sim.add_argument("--out", required=True, help="bag folder to create")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds of robot time")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--faults", default="", help="'all', or a comma list of fault kinds (default: none)")
    sim.add_argument("--per-kind", type=int, default=0, help="faults of each kind (0: one per started minute)")
    sim.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    sim.add_argument("--distro", default="kilted", choices=["jazzy", "kilted"],
                     help="message definitions and bag version written")
    sim.add_argument("--image-size", type=int, default=64)
    sim.add_argument("--no-depth", dest="depth", action="store_false",
                     help="with --robot kuka: leave out the depth camera")
    sim.set_defaults(func=_cmd_simulate)

    play = sub.add_parser("play", help="publish a bag with its original timing (like ros2 bag play)")
    play.add_argument("bag")
    play.add_argument("--rate", type=float, default=1.0)
    play.add_argument("--loop", action="store_true")
    play.add_argument("--clock", action="store_true", help="publish /clock (for use_sim_time)")
    play.add_argument("--topics", nargs="*", help="only these topics")
    play.add_argument("--drop", action="append", default=[], metavar="TOPIC:START:END",
                      help="withhold TOPIC from START to END seconds after the bag start (repeatable)")
    play.add_argument("--wait", type=float, default=2.0, help="seconds to wait for subscribers first")
    play.set_defaults(func=_cmd_play)

    train = sub.add_parser("train", help="train a model bundle from rosbags")
    train.add_argument("--bags", nargs="+", required=True)
    train.add_argument("--config", default=str(config_path("train.yaml")))
    train.add_argument("--out", required=True, help="bundle folder, e.g. models/NAME")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <out>.train/")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value (YAML), e.g. --set training.lr=1e-3 "
                            "--set fusion_overrides.camera.topic=/camera/color/image_raw (repeatable)")
    train.add_argument("--epochs", type=int, default=0, help="override training.epochs")
    train.add_argument("--seed", type=int, default=None, help="override training.seed")
    train.add_argument("--max-corrupt", type=float, default=None, metavar="FRACTION",
                       help="skip at most this fraction of a topic's messages that do not deserialise "
                            "(data.max_corrupt, default 0.01); above it the run stops naming the topic")
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic kernels: two runs give bit-identical weights (training.deterministic)")
    train.add_argument("--device", default="auto")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a terminal)")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="imputation vs baselines, anomaly AUROC/AP per fault, latent stats")
    ev.add_argument("--model", required=True)
    ev.add_argument("--bags", nargs="+", required=True)
    ev.add_argument("--params", default="", metavar="FILE",
                    help="a params file overriding the stream settings the bundle was trained with (default: none)")
    ev.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override one stream parameter, e.g. --set camera.topic=/wrist/image (repeatable)")
    ev.add_argument("--plots", default="", help="folder for the PNGs")
    ev.add_argument("--dropout", type=float, default=1.0, help="seconds of each simulated outage")
    ev.add_argument("--compare", default="", metavar="BUNDLE",
                    help="with a temporal --model: the per-frame bundle to compare it with on the same bags")
    ev.add_argument("--outages", default="0.5,1,1.5,3", metavar="SECONDS",
                    help="temporal model: outage lengths of the comparison, comma-separated")
    ev.add_argument("--label-topic", default=None,
                    help="std_msgs/String JSON fault-label topic in the bags (default: the one the model was "
                         "trained with, else /sim/fault_labels); sidecar files BAG.labels.yaml are read too")
    ev.add_argument("--max-corrupt", type=float, default=0.01, metavar="FRACTION",
                    help="skip at most this fraction of a topic's messages that do not deserialise")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=_cmd_evaluate)

    cal = sub.add_parser("calibrate", help="measure a trained bundle's calibration anew on bags it has not seen",
                         description="Anomaly thresholds, the predictive std's 90 %% interval scales, the useful "
                                     "prediction horizon and the fallback table, measured on the fault-free samples "
                                     "of --bags (read as the bundle was trained); weights unchanged. A bundle "
                                     "without training bounds gets them from the bags' range.")
    cal.add_argument("--model", required=True, help="the bundle to calibrate")
    cal.add_argument("--bags", nargs="+", required=True, help="bags of the same robot the bundle was not trained on")
    cal.add_argument("--out", required=True,
                     help="the calibrated bundle's folder (may be --model: replaced atomically)")
    cal.add_argument("--quantile", type=float, default=None,
                     help="the anomaly thresholds' quantile of normal scores (default: the bundle's, else 0.99)")
    cal.add_argument("--params", default="", metavar="FILE",
                     help="a params file overriding the stream settings the bundle was trained with (default: none)")
    cal.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override one stream parameter, e.g. --set camera.topic=/wrist/image (repeatable)")
    cal.add_argument("--label-topic", default=None, help="fault-label topic (default: the one the model was trained "
                                                         "with); labelled fault spans are left out")
    cal.add_argument("--device", default="cpu")
    cal.set_defaults(func=_cmd_calibrate)

    init = sub.add_parser("init", help="a robot's model.yaml, fusion.yaml and train.yaml from its bags",
                          description="Read the bags' topics and types, propose one modality per sensor stream, "
                                      "write model.yaml, fusion.yaml and train.yaml into --out, print every "
                                      "choice with its reason and the next command.")
    init.add_argument("--bags", nargs="+", required=True, help="rosbag2 folders (MCAP or sqlite3)")
    init.add_argument("--out", required=True, help="folder for the three files")
    init.add_argument("--image-size", type=int, default=64, help="model input size of cameras (pixels)")
    init.add_argument("--interactive", action="store_true", help="ask before keeping each stream")
    init.add_argument("--force", action="store_true", help="overwrite the files in --out")
    init.add_argument("--json", action="store_true", help="print what was chosen as JSON on stdout")
    init.set_defaults(func=_cmd_init)

    label = sub.add_parser("label", help="write fault labels of a bag into its sidecar file BAG.labels.yaml")
    label.add_argument("bag")
    label.add_argument("--add", action="append", default=[], metavar="START:END:KIND",
                       help="a fault from START to END seconds after the bag's first message (repeatable)")
    label.add_argument("--replace", action="store_true", help="drop the labels already in the file")
    label.set_defaults(func=_cmd_label)

    demo = sub.add_parser("demo", help="simulate, train, replay through the live node, evaluate")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, not the real figures)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--keep", action="store_true", help="reuse bags and model already in --out")
    demo.set_defaults(func=_cmd_demo)

    cache = sub.add_parser("cache", help="list or prune the aligned-sample and shard cache ($MDGM_ROS_CACHE)")
    cache.add_argument("action", choices=["list", "prune"])
    cache.add_argument("--json", action="store_true", help="list: JSON")
    cache.add_argument("--max-gb", type=float, default=None,
                       help="prune: least recently used entries until the rest fit (default $MDGM_ROS_CACHE_MAX_GB)")
    cache.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="prune: entries unused this long")
    cache.add_argument("--all", action="store_true", help="prune: everything")
    cache.add_argument("--dry-run", action="store_true", help="prune: only say what would go")
    cache.set_defaults(func=_cmd_cache)

    info = sub.add_parser("info", help="verify a model bundle and print its summary")
    info.add_argument("bundle")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with sigterm_stops_like_ctrl_c():
            return _run_command(argv)
    except KeyboardInterrupt as interrupt:          # a command without its own interrupted path
        print("interrupted", file=sys.stderr)
        return exit_code(interrupt)
    except BrokenPipeError:              # `mdgm-ros families | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run_command(argv: list[str]) -> int:
    with warnings.catch_warnings():
        # the old spellings (objective -> family) still work for one release: say so on one line
        warnings.filterwarnings("always", message=".* is now called ", category=DeprecationWarning)
        warnings.showwarning = _show_deprecation
        _shown.clear()
        args = build_parser().parse_args(argv)
        return int(args.func(args))


_shown: set[str] = set()        # this command's warning lines: a damaged bag read by several steps is one line


def _show_deprecation(message, category, filename, lineno, file=None, line=None) -> None:
    if f"warning: {message}" not in _shown:
        _shown.add(f"warning: {message}")
        print(f"warning: {message}", file=sys.stderr)


class _RenamedOption(argparse.Action):
    """An option with an old spelling (its second option string) that still works, with a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string != self.option_strings[0]:
            warnings.warn(f"{option_string} is now called {self.option_strings[0]}; the old name goes in the "
                          "next release", DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


if __name__ == "__main__":
    raise SystemExit(main())
