"""Start-up errors end with one `error:` line and a non-zero exit, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest
from ros_env import ROOT, private_ros_env


def _run(tmp_path, *ros_args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdgm_ros.ros.fusion_node", "--ros-args", *ros_args], cwd=ROOT,
                          env=private_ros_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,words", [
    (["-p", "camera.staleness:=abc"], "parameter camera.staleness: 'abc' is a string, expected a double"),
    (["--params-file", "/nonexistent/params.yaml"], "Couldn't parse params file"),
    (["--params-file", "{bad}"], "Couldn't parse params file"),
    (["-p", "camera.staleness:=-1.0"], "staleness"),
    (["-p", "engine:=tensorrt"], "engine 'tensorrt' is not one of torch | onnxruntime"),
    (["-p", "absence_after:=-0.5"], "absence_after"),
    (["-p", "engine:=onnxruntime", "-p", "precision:=bf16"], "precision applies to the torch engine"),
])
def test_bad_parameters_give_one_line(tmp_path, args, words):
    if args[-1] == "{bad}":
        (tmp_path / "bad.yaml").write_text("a: [\n  - {\n")
        args = [args[0], str(tmp_path / "bad.yaml")]
    done = _run(tmp_path, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], done.stderr


def test_onnxruntime_engine_with_a_bundle_without_onnx_files_says_so_and_keeps_running(tmp_path):
    """engine:=onnxruntime needs the bundle's ONNX files: one `cannot configure` line naming the fix, the
    node stays up (unconfigured, as for any bad bundle) and stops cleanly on SIGINT."""
    import signal
    import time

    import torch
    from ros_env import start, stop

    from mdgm_ros.core import ModelConfig, MultimodalVAE, default_robot_modalities, save_bundle

    torch.manual_seed(0)
    bundle = save_bundle(tmp_path / "no_onnx", MultimodalVAE(ModelConfig(tuple(default_robot_modalities()),
                                                                         latent_dim=4)))
    log = tmp_path / "node.log"
    node = start("mdgm_ros.ros.fusion_node", "--ros-args", "-p", f"bundle:={bundle}", "-p", "engine:=onnxruntime",
                 env=private_ros_env(), log=log)
    try:
        deadline = time.monotonic() + 90
        while "cannot configure" not in log.read_text() and node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert node.poll() is None, text[-2000:]
        assert "has no onnx_camera_encoder.onnx: train with export.onnx: true" in text, text[-2000:]
        node.send_signal(signal.SIGINT)
        assert node.wait(timeout=60) == 0
        assert "Traceback" not in log.read_text()
    finally:
        stop(node)
