"""``mdgm-ros`` command line (also ``python -m mdgm_ros``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from . import bench

    results = {}
    if args.which in ("fusion", "all"):
        torch.set_num_threads(args.threads)
        results["fusion"] = {**bench.bench_fusion(iterations=args.iterations, device=args.device),
                             "threads": args.threads}
    if args.which in ("train", "all"):
        torch.set_num_threads(args.train_threads or os.cpu_count() or 1)
        results["train"] = {**bench.bench_train(device=args.device), "threads": torch.get_num_threads()}
    if args.which in ("ros", "all"):
        from .bench_ros import bench_ros
        results["ros"] = bench_ros(duration=args.duration)
    results["environment"] = bench.environment(args.device)
    payload = results if args.which == "all" else {**results[args.which], "environment": results["environment"]}
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from .example import check_report, run_example

    report = run_example(args.out, quick=args.quick, objective=args.objective, device=args.device,
                         seed=args.seed)
    print(f"\nreport: {args.out}/report.json  (objective {report['objective']}, fusion {report['fusion']},"
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
                      "fusion": config.fusion, "objective": config.objective, "latent_dim": config.latent_dim,
                      "modalities": [m.to_dict() for m in config.modalities],
                      "calibrated": bundle.calibration is not None, "created": bundle.manifest.get("created")},
                     indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdgm-ros", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="benchmarks; prints JSON with --json")
    bench.add_argument("which", choices=["fusion", "train", "ros", "all"])
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--iterations", type=int, default=2000)
    bench.add_argument("--threads", type=int, default=1,
                       help="torch intra-op threads for the live fusion step (default 1, as the node runs)")
    bench.add_argument("--train-threads", type=int, default=0, help="threads for training (default: all cores)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--duration", type=float, default=20.0, help="seconds measured by `bench ros`")
    bench.set_defaults(func=_cmd_bench)

    example = sub.add_parser("example", help="the model core end to end on synthetic data")
    example.add_argument("--out", default="demo_out")
    example.add_argument("--quick", action="store_true")
    example.add_argument("--objective", default="mvae", choices=["elbo", "mvae", "mopoe", "mmvae", "mmjsd"])
    example.add_argument("--device", default="auto")
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(func=_cmd_example)

    info = sub.add_parser("info", help="verify a model bundle and print its summary")
    info.add_argument("bundle")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
