"""Evaluation pieces that need no simulator: metrics pooling, the offline outage protocol, outage plans."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mdgm_ros.data.dataset import AlignedDataset
from mdgm_ros.data.labels import FaultLabel
from mdgm_ros.demo import schedule_outages
from mdgm_ros.evaluation.evaluate import _block_last_rows, _steps_since_last, anomaly_metrics, json_safe

NS = 1_000_000_000


def test_anomaly_metrics_pool_content_faults_and_keep_dropouts_apart():
    fault = np.array([""] * 6 + ["collision"] * 2 + ["stream_dropout"] * 2)
    total = np.array([0, 1, 2, 0, 1, 2, 5, 6, -1, -2], float)
    valid = np.ones(10, bool)
    out = anomaly_metrics(total, fault, valid, threshold=3.0)
    assert out["auroc"] == 1.0 and out["samples"] == 8 and out["fault_samples"] == 2
    assert out["per_fault"]["stream_dropout"] == {"auroc": 0.0, "average_precision": pytest.approx((1 / 7 + 2 / 8) / 2),
                                                  "samples": 2, "pooled": False, "detected_at_threshold": 0.0}
    assert out["detected_at_threshold"] == 1.0 and out["false_alarms_at_threshold"] == 0.0
    valid[6] = False                                       # excluded rows (outages) do not count
    assert anomaly_metrics(total, fault, valid)["fault_samples"] == 1


def test_fault_events_are_counted_per_span_with_their_detection_delay():
    stamps = np.arange(12) * NS // 10                       # 10 Hz
    fault = np.array([""] * 2 + ["collision"] * 3 + [""] * 2 + ["collision"] * 3 + [""] * 2)
    total = np.array([0, 0, 1, 5, 5, 0, 0, 1, 1, 1, 0, 0], float)
    out = anomaly_metrics(total, fault, np.ones(12, bool), threshold=3.0, stamps=stamps)
    collision = out["per_fault"]["collision"]
    assert collision["events"] == 2 and collision["events_detected"] == 1
    assert (collision["median_delay_s"] == pytest.approx(0.1)
            and collision["detected_at_threshold"] == pytest.approx(2 / 6))
    bag = np.array([0] * 6 + [1] * 6)                        # a span never joins rows of two bags
    assert anomaly_metrics(total, fault, np.ones(12, bool), 3.0, stamps % (6 * NS // 10), bag)["per_fault"][
        "collision"]["events"] == 2


def test_last_value_is_the_row_before_each_outage_block():
    stamps = np.arange(10) * NS // 4                        # 4 rows per second
    data = AlignedDataset(["x"], {"x": np.zeros((10, 1), np.float32)}, np.ones((10, 1), bool), stamps,
                          np.full(10, ""), np.zeros(10, bool), np.full(10, ""), np.zeros(10, int))
    assert list(_block_last_rows(data, 1.0)) == [-1, -1, -1, -1, 3, 3, 3, 3, 7, 7]
    # the steps since the last row: what the fallback table is looked up with
    assert list(_steps_since_last(data, _block_last_rows(data, 1.0))) == [0, 0, 0, 0, 1, 2, 3, 4, 1, 2]


def test_outages_stay_clear_of_faults_and_take_turns():
    labels = [FaultLabel("collision", 20 * NS, 22 * NS), FaultLabel("audio_noise", 40 * NS, 41 * NS)]
    outages = schedule_outages(labels, 0, 60 * NS, ["camera", "joints", "audio", "tactile"], 1.5)
    spans = sorted(s for v in outages.values() for s in v)
    assert all(len(v) >= 3 for v in outages.values())
    for start, end in spans:
        assert end - start == int(1.5 * NS)
        for label in labels:
            assert end <= label.start_ns - NS or start >= label.end_ns + int(1.5 * NS)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))


def test_reports_are_strict_json():
    text = json.dumps(json_safe({"auroc": float("nan"), "n": np.int64(3), "v": [np.float32(0.5)]}), allow_nan=False)
    assert json.loads(text) == {"auroc": None, "n": 3, "v": [0.5]}


def test_demo_checks_fail_on_any_missing_or_losing_modality_and_on_a_low_auroc():
    from mdgm_ros.demo import check_report

    good = {"imputation": {m: {"model": 0.1, "baseline_mean": 0.2, "baseline_last": 0.3} for m in ("a", "b")},
            "anomaly": {"auroc": 0.9}}
    assert check_report(good, ["a", "b"]) == []
    assert check_report(good, ["a", "b", "c"]) == ["imputation of c: the live node published no imputation during "
                                                   "its outages"]
    losing = {**good, "imputation": {**good["imputation"], "b": {"model": 0.25, "baseline_mean": 0.2,
                                                                 "baseline_last": 0.3}}}
    assert len(check_report(losing, ["a", "b"])) == 1
    assert check_report({**good, "anomaly": {"auroc": float("nan")}}, ["a", "b"]) == ["anomaly AUROC nan < 0.85"]
    predicting = {**good, "published": {"prediction_horizon": 10}}
    assert check_report(predicting, ["a", "b"]) == ["latent prediction: the live node published no "
                                                    "~/latent_prediction to score"]
    scored = {"latent_1_step": {"temporal": 0.5, "nothing_changes": 0.4, "samples": 9}}
    assert check_report({**predicting, "prediction": scored}, ["a", "b"]) == []     # reported, not checked


def test_live_predictions_are_scored_against_the_latents_published_at_their_stamps():
    from mdgm_ros.evaluation.evaluate import live_prediction

    step = 33_333_333
    stamps = np.arange(40, dtype=np.int64) * step + 5_000_000          # jitter-free 30 Hz publications
    latent = np.stack([np.arange(40.0), -np.arange(40.0)], axis=1)      # a ramp: "nothing changes" is off by k
    clean = np.ones(40, bool)
    clean[20] = False                                                   # a fault: pairs touching it are left out
    exact = [(int(t), t + step * np.arange(1, 4) + 1_000_000, latent[i + 1:i + 4] + 0.1) for i, t in
             enumerate(stamps[:-3])]
    result = live_prediction(stamps, latent, exact, clean, horizons=(1, 3, 5))
    assert set(result) == {"latent_1_step", "latent_3_step"}            # no prediction reaches 5 steps
    assert result["latent_1_step"]["temporal"] == pytest.approx(0.01)
    assert result["latent_1_step"]["nothing_changes"] == pytest.approx(1.0)
    assert result["latent_3_step"]["nothing_changes"] == pytest.approx(9.0)
    assert result["latent_1_step"]["samples"] == 37 - 2 and result["latent_3_step"]["samples"] == 37 - 2
    gap = [(t, steps + 100 * step, mean) for t, steps, mean in exact]    # no latent published at those stamps
    assert live_prediction(stamps, latent, gap, clean) == {}
