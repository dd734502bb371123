"""``mdgm-ros bench sim``: what a controller relies on, per simulator seed the model never saw.

For each seed a test bag is simulated (every fault kind once, ``--test-s`` seconds; kept in ``--bag-dir``
and reused) and evaluated offline as ``mdgm-ros evaluate`` does (:mod:`~mdgm_ros.evaluation.evaluate`):
per outage length (0.5, 1, 1.5, 3 s) and modality the imputation the node publishes (fallback on) against
the training mean and the last value, its 90 % interval coverage and the rank correlation of its std with
its error, the share of samples where a baseline went out; the anomaly AUROC / AP pooled and per fault,
with the false alarms and the events caught at the operating point; the 1-step latent and 10-step joint
predictions against "nothing changes". Each seed's figures stand on their own: the report also says, per
seed, which of the project's targets they meet (``targets``), never an average over seeds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ..core.engine.uncertainty import STD_KINDS

SEEDS = (5, 6, 8, 9, 10)
OUTAGES_S = (0.5, 1.0, 1.5, 3.0)
PHYSICAL_FAULTS = ("collision", "joint_fault", "object_drop")
RANK_KINDS = ("vector", "tactile")                    # ... whose std must rank the error


def bench_sim(model: str = "", seeds: tuple[int, ...] = SEEDS, test_s: float = 180.0, bag_dir: str = "",
              device: str = "cpu", log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..core import load_bundle
    from ..evaluation.evaluate import evaluate_bags
    from ..sim.record import simulate_to_bag
    from ..streams.params import resolve_bundle

    model = resolve_bundle(model)[0]
    bundle = load_bundle(model)
    kinds = {m.name: m.kind for m in bundle.model.config.modalities}
    folder = Path(bag_dir or "build/bench_sim")
    per_seed = []
    for seed in seeds:
        bag = folder / f"seed{seed}_{test_s:g}s"
        if not (bag / "metadata.yaml").is_file():
            log(f"simulating {test_s:g} s with every fault kind, seed {seed} -> {bag}")
            simulate_to_bag(bag, test_s, seed=seed, faults="all", per_kind=1)
        log(f"evaluating {bundle.model_id} on {bag}")
        report = evaluate_bags(model, [str(bag)], device=device, outages_s=OUTAGES_S, log=lambda m: None)
        per_seed.append(seed_figures(seed, bag, report, kinds, bundle.calibration))
    return {"model": str(model), "model_id": bundle.model_id, "test_s": test_s, "seeds": list(seeds),
            "outages_s": list(OUTAGES_S), "per_seed": per_seed,
            "targets_met_on": {name: [s["seed"] for s in per_seed if s["targets"][name]["met"]]
                               for name in (per_seed[0]["targets"] if per_seed else {})}}


def seed_figures(seed: int, bag: Path, report: dict[str, Any], kinds: dict[str, str], calibration) -> dict[str, Any]:
    """One seed's cells, anomaly and prediction figures, and its targets."""
    temporal = report.get("temporal")
    cells = {}
    if temporal is not None:
        for length, per in temporal["imputation"].items():
            cells[length] = {name: {"published": v["published"], "model": v["temporal"],
                                    "baseline_mean": v["baseline_mean"], "baseline_last": v["baseline_last"],
                                    "fallback_rate": v["fallback_rate"], "coverage_90": v.get("coverage_90"),
                                    "std_error_spearman": v.get("std_error_spearman"), "samples": v["samples"]}
                             for name, v in per.items()}
    else:                                         # a per-frame bundle: its --dropout cell only
        cells[str(report["protocol"].get("dropout_s", 1.0))] = {
            name: {"published": v.get("published", v["model"]), "model": v["model"],
                   "baseline_mean": v["baseline_mean"], "baseline_last": v["baseline_last"],
                   "fallback_rate": v.get("fallback_rate", 0.0), "coverage_90": v.get("coverage_90"),
                   "std_error_spearman": v.get("std_error_spearman"), "samples": v["samples"]}
            for name, v in report["imputation"].items()}
    a = report["anomaly"]
    anomaly = {"auroc": a["auroc"], "average_precision": a["average_precision"],
               "false_alarms": a.get("false_alarms_at_threshold"), "detected": a.get("detected_at_threshold"),
               "per_fault": {k: {"auroc": v["auroc"], "average_precision": v["average_precision"],
                                 "events": v.get("events"), "events_detected": v.get("events_detected")}
                             for k, v in a["per_fault"].items()}}
    prediction = {k: {"model": v["temporal"], "nothing_changes": v["nothing_changes"], "samples": v["samples"]}
                  for k, v in (temporal or {}).get("prediction", {}).items()}
    useful = None if calibration is None else calibration.useful_horizon
    return {"seed": seed, "bag": str(bag), "imputation": cells, "anomaly": anomaly, "prediction": prediction,
            "useful_horizon": useful, "out_of_range": report.get("out_of_range", {}),
            "targets": targets(cells, anomaly, prediction, kinds, useful)}


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def targets(cells: dict, anomaly: dict, prediction: dict, kinds: dict[str, str], useful: int | None
            ) -> dict[str, dict[str, Any]]:
    """Each target of the project, met or not, with the figures that decide it."""
    flat = [(length, name, v) for length, per in cells.items() for name, v in per.items()]
    worse = [f"{name} {length} s: {v['published']:.3f} vs {min(v['baseline_mean'], v['baseline_last']):.3f}"
             for length, name, v in flat if v["published"] > 1.05 * min(v["baseline_mean"], v["baseline_last"])]
    beats = sum(v["published"] < min(v["baseline_mean"], v["baseline_last"]) for _, _, v in flat)
    coverage = [(length, name, v["coverage_90"]) for length, name, v in flat if kinds.get(name) in STD_KINDS]
    off = [f"{name} {length} s: {c:.3f}" for length, name, c in coverage if not (_finite(c) and 0.85 <= c <= 0.95)]
    ranks = [(length, name, v["std_error_spearman"]) for length, name, v in flat if kinds.get(name) in RANK_KINDS]
    low = [f"{name} {length} s: {r:.2f}" if _finite(r) else f"{name} {length} s: -" for length, name, r in ranks
           if not (_finite(r) and r >= 0.4)]
    faults = {k: anomaly["per_fault"].get(k) for k in PHYSICAL_FAULTS}
    weak = [f"{k}: absent" for k, v in faults.items() if v is None]
    weak += [f"{k}: AP {v['average_precision']:.2f}, {v['events_detected']}/{v['events']} events"
             for k, v in faults.items() if v is not None and not (
                 v["average_precision"] >= 0.5 and v["events"] and v["events_detected"] >= 2 / 3 * v["events"])]
    fa = anomaly["false_alarms"]
    predictions = []
    for key, step in (("latent_1_step", 1), ("joints_10_step", 10)):
        v = prediction.get(key)
        if v is None or v["model"] < v["nothing_changes"]:
            continue
        if useful is not None and useful < step:       # the node does not publish that far ahead
            continue
        predictions.append(f"{key}: {v['model']:.3f} vs nothing changes {v['nothing_changes']:.3f}")
    return {
        "imputation_within_5pct_of_the_better_baseline": {"met": not worse, "misses": worse},
        "imputation_beats_both_in_80pct_of_cells": {"met": bool(flat) and beats >= 0.8 * len(flat),
                                                   "cells": len(flat), "beats_both": int(beats)},
        "coverage_90_between_085_and_095": {"met": bool(coverage) and not off, "misses": off},
        "std_error_spearman_at_least_04": {"met": bool(ranks) and not low, "misses": low},
        "pooled_auroc_at_least_095_false_alarms_at_most_3pct": {
            "met": anomaly["auroc"] >= 0.95 and _finite(fa) and fa <= 0.03, "auroc": anomaly["auroc"],
            "false_alarms": fa},
        "physical_faults_ap_05_two_thirds_of_events": {"met": not weak, "misses": weak},
        "published_predictions_beat_nothing_changes": {"met": not predictions, "misses": predictions,
                                                       "useful_horizon": useful},
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['model_id']} on {len(result['per_seed'])} unseen seeds ({result['test_s']:g} s each, every "
             "fault kind once); imputation: standardised MSE of what the node publishes (fallback on)"]
    for seed in result["per_seed"]:
        lines.append(f"seed {seed['seed']}:")
        lines.append(f"  {'outage':>6s} {'modality':9s} {'published':>9s} {'model':>8s} {'mean':>8s} {'last':>8s} "
                     f"{'fallback':>8s} {'90% cov':>8s} {'rank':>5s}")
        for length, per in seed["imputation"].items():
            for name, v in per.items():
                cov, rank = v["coverage_90"], v["std_error_spearman"]
                lines.append(f"  {length + ' s':>6s} {name:9s} {v['published']:9.3f} {v['model']:8.3f} "
                             f"{v['baseline_mean']:8.3f} {v['baseline_last']:8.3f} {v['fallback_rate']:8.1%} "
                             f"{(f'{cov:.1%}' if _finite(cov) else '-'):>8s} "
                             f"{(f'{rank:.2f}' if _finite(rank) else '-'):>5s}")
        a = seed["anomaly"]
        lines.append(f"  anomaly: AUROC {a['auroc']:.3f} AP {a['average_precision']:.3f}, false alarms "
                     f"{a['false_alarms']:.1%}; " + ", ".join(
                         f"{k} AP {v['average_precision']:.2f} {v['events_detected']}/{v['events']}"
                         for k, v in a["per_fault"].items()))
        for key, v in seed["prediction"].items():
            lines.append(f"  prediction {key}: {v['model']:.3f} vs nothing changes {v['nothing_changes']:.3f}")
        missed = [name for name, t in seed["targets"].items() if not t["met"]]
        lines.append("  targets: " + ("all met" if not missed else "missed: " + ", ".join(missed)))
    return lines
