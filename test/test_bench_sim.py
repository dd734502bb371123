"""``mdgm-ros bench sim``: the shipped default on a simulator seed it never saw, as a user types it (a short
test bag here; the documented run uses five seeds of 180 s), and the targets' verdicts on known figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mdgm_ros.bench.sim import targets

ROOT = Path(__file__).resolve().parents[1]


def _cell(published, model=None, mean=1.0, last=1.0, coverage=0.9, rank=0.5, fallback=0.0):
    return {"published": published, "model": published if model is None else model, "baseline_mean": mean,
            "baseline_last": last, "fallback_rate": fallback, "coverage_90": coverage, "std_error_spearman": rank,
            "samples": 100}


def _anomaly(auroc=0.97, fa=0.02, ap=0.6, events=(3, 3)):
    return {"auroc": auroc, "average_precision": 0.8, "false_alarms": fa, "detected": 0.5,
            "per_fault": {k: {"auroc": 0.9, "average_precision": ap, "events": events[1], "events_detected": events[0]}
                          for k in ("collision", "joint_fault", "object_drop")}}


KINDS = {"camera": "image", "joints": "vector", "audio": "audio"}


def test_targets_are_met_only_where_every_figure_is():
    good = {"0.5": {"camera": _cell(0.5, coverage=None, rank=None), "joints": _cell(0.8), "audio": _cell(0.7)}}
    prediction = {"latent_1_step": {"model": 0.4, "nothing_changes": 0.5, "samples": 10},
                  "joints_10_step": {"model": 1.0, "nothing_changes": 2.0, "samples": 10}}
    verdict = targets(good, _anomaly(), prediction, KINDS, 10)
    assert all(t["met"] for t in verdict.values()), verdict
    bad = {"0.5": {"camera": _cell(0.5, coverage=None, rank=None), "joints": _cell(1.2, coverage=0.97, rank=0.3),
                   "audio": _cell(0.7)}}
    verdict = targets(bad, _anomaly(auroc=0.93, ap=0.4, events=(1, 3)), {
        "latent_1_step": {"model": 0.6, "nothing_changes": 0.5, "samples": 10}}, KINDS, None)
    assert verdict["imputation_within_5pct_of_the_better_baseline"]["misses"] == ["joints 0.5 s: 1.200 vs 1.000"]
    assert not verdict["imputation_beats_both_in_80pct_of_cells"]["met"]              # 2 of 3 cells
    assert verdict["coverage_90_between_085_and_095"]["misses"] == ["joints 0.5 s: 0.970"]
    assert verdict["std_error_spearman_at_least_04"]["misses"] == ["joints 0.5 s: 0.30"]
    assert not verdict["pooled_auroc_at_least_095_false_alarms_at_most_3pct"]["met"]
    assert len(verdict["physical_faults_ap_05_two_thirds_of_events"]["misses"]) == 3
    assert not verdict["published_predictions_beat_nothing_changes"]["met"]
    # a prediction that loses to "nothing changes" but is not published (useful horizon 0) is no miss
    assert targets(good, _anomaly(), {"latent_1_step": {"model": 0.6, "nothing_changes": 0.5, "samples": 10}},
                   KINDS, 0)["published_predictions_beat_nothing_changes"]["met"]


def test_bench_sim_reports_every_figure_of_an_unseen_seed(tmp_path):
    args = [sys.executable, "-m", "mdgm_ros", "bench", "sim", "--seeds", "11", "--test-s", "40", "--bag-dir",
            str(tmp_path)]
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["seeds"] == [11] and report["model_id"].startswith("default-")
    seed = report["per_seed"][0]
    assert seed["seed"] == 11 and Path(seed["bag"]).parent == tmp_path
    assert set(seed["imputation"]) <= {"0.5", "1", "1.5", "3"} and seed["imputation"]
    for per in seed["imputation"].values():
        for v in per.values():
            assert v["published"] >= 0 and 0.0 <= v["fallback_rate"] <= 1.0 and v["samples"] > 0
    assert 0.0 <= seed["anomaly"]["auroc"] <= 1.0 and seed["anomaly"]["per_fault"]
    assert set(seed["prediction"]) == {"latent_1_step", "joints_10_step"}
    assert all(isinstance(t["met"], bool) for t in seed["targets"].values()) and len(seed["targets"]) == 7
    assert set(report["targets_met_on"]) == set(seed["targets"])
    text = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900)   # the bag is reused
    assert text.returncode == 0 and "simulating" not in text.stderr, text.stderr[-2000:]
    assert "seed 11:" in text.stdout and "targets:" in text.stdout and "published" in text.stdout
