"""`mdgm-ros demo --quick`: simulate -> train -> replay through the live node over DDS -> evaluate."""
from __future__ import annotations

import json
from pathlib import Path

from ros_env import ROOT, private_ros_env
from terminal import run_in_terminal


def test_quick_demo_runs_the_whole_loop_over_real_topics_in_a_terminal(tmp_path):
    """Attached to a terminal, as `make demo-quick` is: the progress bar is on, and every long step
    says how far it is."""
    env = {**private_ros_env(), "MDGM_ROS_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "demo"
    code, screen = run_in_terminal(["-m", "mdgm_ros", "demo", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                                   timeout=1200)
    report_file = out / "report.json"
    assert report_file.is_file(), screen[-4000:]
    report = json.loads(report_file.read_text())
    # the quick run is a smoke test of the loop; its exit status follows its own checks
    assert code == (1 if report["failures"] else 0), screen[-3000:]
    for progress in ("train_bag: simulated 40 / 45 s", "epoch 1/3:", "batch/s", "fusion_node is active"):
        assert progress in screen, progress
    assert "pybullet build time" not in screen and "Traceback" not in screen
    assert report["published"]["latent"] >= 0.8 * report["expected_latents"]
    assert set(report["imputation"]) == {"camera", "joints", "audio", "tactile"}
    for name, entry in report["imputation"].items():
        assert entry["samples"] > 0 and entry["model"] >= 0 and entry["baseline_mean"] > 0, name
    # the node's published predictive std of the vector, tactile and audio imputations, against the bag
    for name in ("joints", "audio", "tactile"):
        entry = report["imputation"][name]
        assert entry["std_samples"] > 0 and 0.0 <= entry["coverage_90"] <= 1.0, (name, entry)
    anomaly = report["anomaly"]
    assert 0.0 <= anomaly["auroc"] <= 1.0 and 0.0 <= anomaly["average_precision"] <= 1.0
    assert anomaly["per_fault"] and all(0.0 <= v["auroc"] <= 1.0 for v in anomaly["per_fault"].values())
    assert report["latent"]["dim"] == 16
    # the live node runs the temporal model of the shipped default: it announces and publishes predictions
    assert report["published"]["prediction_horizon"] == 10 and report["published"]["latent_prediction"] > 0
    assert report["prediction"]["latent_1_step"]["samples"] > 0 and "live prediction latent_1_step" in screen
    assert "fine-tuning" in screen and "temporal_ms" in screen
    for png in report["plots"].values():
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "imputation error" in screen and "anomaly: AUROC" in screen and "detected" in screen
    temporal = report["temporal"]                       # step 5: the temporal model against the per-frame one
    assert set(temporal["imputation"]) == {"0.5", "1", "1.5", "3"} and set(temporal["anomaly"]) == {"temporal",
                                                                                                   "per_frame"}
    assert all(0.0 <= v["fallback_rate"] <= 1.0 and v["published"] >= 0.0
               for per in temporal["imputation"].values() for v in per.values())
    assert "fault_timeline_compare" in report["plots"] and "temporal-model targets:" in screen
    live, offline = Path(report["plots"]["anomaly_timeline"]), Path(report["plots"]["fault_timeline_compare"])
    assert offline.parent.name == "temporal" and live.parent == offline.parent.parent    # step 5 keeps step 4's
    assert live.read_bytes() != (offline.parent / "anomaly_timeline.png").read_bytes()      # two figures
