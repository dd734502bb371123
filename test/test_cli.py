"""The ``mdgm-ros`` command: bench JSON, bundle info, and the core example end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mdgm_ros", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_bench_fusion_prints_the_latency_json():
    result = run("bench", "fusion", "--json", "--iterations", "30")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    for key in ("p50_ms", "p99_ms", "samples_per_s"):
        assert payload[key] > 0
    assert payload["p50_ms"] <= payload["p99_ms"]
    assert payload["imputed"] == ["audio"] and payload["threads"] == 1
    assert payload["bare_forward"]["p50_ms"] > 0
    assert payload["ratio_to_bare_p50"] == pytest.approx(payload["p50_ms"] / payload["bare_forward"]["p50_ms"],
                                                         abs=2e-3)


def test_bench_train_times_only_the_families_asked_for():
    result = run("bench", "train", "--json", "--families", "mopoe", "--train-threads", "1")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert list(payload["families"]) == ["mopoe"]
    row = payload["families"]["mopoe"]
    assert row["samples_per_s"] > 0 and row["previous_path"]["samples_per_s"] > 0
    assert [p["modalities"] for p in payload["mopoe_step_vs_modalities"]] == list(range(2, 9))
    unknown = run("bench", "train", "--families", "mopoe,nonsense")
    assert unknown.returncode == 2 and "unknown families nonsense" in unknown.stderr


def test_example_runs_end_to_end_and_bundle_info_reads_it(tmp_path):
    result = run("example", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(v["model"] < v["baseline_mean"] for v in report["imputation"].values())
    assert report["anomaly"]["auroc"] > 0.8 and report["bundle_reload_identical"] is True
    info = run("info", str(tmp_path / "model"))
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["fusion"] == "poe" and summary["calibrated"] is True
    assert [m["name"] for m in summary["modalities"]] == ["camera", "joints", "audio", "tactile"]
    (tmp_path / "model" / "weights.safetensors").write_bytes(b"garbage")
    broken = run("info", str(tmp_path / "model"))
    assert broken.returncode == 2 and "weights.safetensors is corrupt or truncated" in broken.stderr


def test_each_benchmark_lists_and_takes_only_its_own_options():
    listing = run("bench", "--help")
    assert listing.returncode == 0, listing.stderr
    for name in ("fusion", "train", "ros", "data", "soak", "zoo", "weak", "all"):
        assert f"    {name} " in listing.stdout
    zoo = run("bench", "zoo", "--help")
    assert zoo.returncode == 0, zoo.stderr
    assert "--raw-pixels" in zoo.stdout and "--keep-models" in zoo.stdout and "--device" in zoo.stdout
    assert "--no-hostile" not in zoo.stdout and "--iterations" not in zoo.stdout     # soak's, fusion's
    wrong = run("bench", "fusion", "--raw-pixels")
    assert wrong.returncode == 2 and "unrecognized arguments: --raw-pixels" in wrong.stderr


@pytest.mark.parametrize("args", [["bench", "nothing"], ["example", "--objective", "vae"], []])
def test_bad_arguments_fail_cleanly(args):
    result = run(*args)
    assert result.returncode == 2 and "usage" in result.stderr


def test_bench_ros_runs_over_dds_and_prints_json():
    from ros_env import private_ros_env
    private_ros_env()
    result = run("bench", "ros", "--json", "--duration", "3", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["latents"] > 0 and 0 < payload["delivered_fraction"] <= 1
    assert payload["messages"] == "mdgm_ros/Latent" and payload["diagnostics_messages"] > 0
    # publication (the writer's source timestamp) comes before arrival in the benchmark process
    assert 0 < payload["latency_p50_ms"] <= payload["arrival_latency_p50_ms"]
    for key in ("latency_p99_ms", "node_step_p50_ms", "node_cpu_percent_of_one_core", "backlog_growth", "target_met"):
        assert key in payload


def test_bench_data_prints_the_simulator_and_alignment_json():
    result = run("bench", "data", "--json", "--duration", "2", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["robot_seconds"] == 2 and payload["real_time_factor"] > 0
    assert abs(payload["aligned_samples"] - 60) <= 1 and payload["aligned_samples_per_s"] > 0
    assert payload["messages"] > 760 and payload["bag_mb_per_robot_minute"] > 0


def test_example_takes_family_and_still_the_old_objective_spelling_with_a_warning():
    from mdgm_ros.cli import build_parser

    assert build_parser().parse_args(["example", "--family", "mmvae"]).family == "mmvae"
    with pytest.warns(DeprecationWarning, match="--objective is now called --family"):
        assert build_parser().parse_args(["example", "--objective", "mopoe"]).family == "mopoe"
