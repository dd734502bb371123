"""The prepared GPU check (``make gpu-check`` / ``mdgm-ros bench gpu``) on the CPU, as CI keeps it working:
every part runs through its real path (the fusion steps, the trainer's steps, onnxruntime, two DDP
processes, the fusion node over DDS with the shipped default) and one report comes out."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mdgm_ros.bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_make_gpu_check_on_the_cpu_writes_one_report_with_every_part(tmp_path):
    from mdgm_ros.ros.processes import private_ros_env

    out = tmp_path / "report" / "gpu_check.json"
    done = subprocess.run(["make", "-s", "gpu-check", "GPU_CHECK_DEVICE=cpu", "GPU_CHECK_QUICK=1",
                           f"GPU_CHECK_OUT={out}"], cwd=ROOT, env={**os.environ, **private_ros_env()},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == [] and report["quick"] is True
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    fusion = report["fusion"]
    assert {"batch1_fp32", "batch1_bf16", "batch64_fp32", "batch64_bf16"} <= set(fusion)
    assert fusion["batch64_fp32"]["samples_per_s"] > 0 and fusion["per_frame_vs_bare"]["ratio_to_bare_p50"] > 0
    assert fusion["temporal_ms"]["with_prediction"]["horizon"] == 10
    assert set(report["train"]["families"]) == {"mopoe", "mmvae", "temporal_ms"}
    assert all(row["amp_samples_per_s"] > 0 for row in report["train"]["families"].values())
    assert report["onnxruntime"]["CPUExecutionProvider"]["max_abs_difference_to_torch_fp32"] < 1e-4
    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["ranks_equal"] is True
    node = report["node"]["fp32"]
    assert node["bundle"] == "models/default" and node["delivered_fraction"] > 0.8 and node["latents"] > 50
    assert "gpu check: node done" in done.stderr


def test_a_part_that_fails_is_reported_and_the_others_still_run(monkeypatch):
    def broken(device, quick):
        raise RuntimeError("no such kernel")

    monkeypatch.setitem(gpu_check.RUNNERS, "train", broken)
    report = gpu_check.gpu_check("cpu", quick=True, parts=("environment", "train", "onnxruntime"))
    assert report["failed"] == ["train"]
    assert "no such kernel" in report["train"]["error"]
    assert report["onnxruntime"]["CPUExecutionProvider"]["p50_ms"] > 0


def test_the_check_says_what_cannot_run_here(monkeypatch):
    monkeypatch.setattr(gpu_check, "_version_of", lambda module: None)
    assert gpu_check.node(gpu_check.select_device("cpu"), True) == {
        "skipped": "rclpy does not import here (the node needs ROS 2)"}
    assert gpu_check.precisions(gpu_check.select_device("cpu")) == ("fp32", "bf16")
