"""``--help`` of every node executable prints usage and the node's parameters and exits 0, starting nothing.

The help comes from ``mdgm_ros.ros.node_help`` through ``guard.node_main`` (before ``rclpy.init``); the
docs generator reads the same declarations. Timing: the target is 5 s on an idle machine; the bound here
is generous (30 s) so a loaded CI machine does not fail it.
"""
from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdgm_ros.ros.node_help import wants_help
from mdgm_ros.ros.processes import private_ros_env

ROOT = Path(__file__).resolve().parents[1]
# what a node that starts writes: rcutils log lines, a node's name in brackets, a traceback
STARTED = re.compile(r"\[(DEBUG|INFO|WARN|ERROR|FATAL)\]|\[(mdgm_fusion|mdgm_trainer|sim_robot|synthetic_streams)\]"
                     r"|Traceback")

NODES = {  # module -> (parameters or options it really declares)
    "fusion_node": ("bundle", "anchor", "output_rate", "engine", "device", "bundle_roots", "message_type"),
    "trainer_node": ("bags", "out", "config", "fusion_node"),
    "sim_robot_node": ("seed", "duration", "faults", "real_time_factor"),
    "synthetic_streams": ("--duration", "--malformed", "--hostile", "--stop-audio-after"),
}


def _help(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=private_ros_env(), capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - began


def _check(done: subprocess.CompletedProcess, elapsed: float, prog: str, words: tuple[str, ...]) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {prog} "), done.stdout[:500]
    for word in words:
        assert re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w-])", done.stdout), (word, done.stdout)
    assert "--ros-args" in done.stdout and "docs/nodes.rst" in done.stdout and "example:" in done.stdout
    assert not STARTED.search(done.stderr), done.stderr[-2000:]
    assert not STARTED.search(done.stdout), done.stdout[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) < 60 and max(len(line) for line in lines) <= 100, done.stdout
    assert elapsed < 30, f"{prog} --help took {elapsed:.1f} s"


@pytest.mark.parametrize("module", sorted(NODES))
def test_help_prints_usage_and_parameters_and_exits_0(module):
    done, elapsed = _help([sys.executable, "-m", f"mdgm_ros.ros.{module}", "--help"])
    _check(done, elapsed, module, NODES[module])
    print(f"{module} --help: {elapsed:.2f} s")


def test_fusion_node_help_names_its_params_file_and_the_per_modality_parameters():
    done, elapsed = _help([sys.executable, "-m", "mdgm_ros.ros.fusion_node", "-h"])
    _check(done, elapsed, "fusion_node", NODES["fusion_node"])
    assert "config/fusion.yaml" in done.stdout
    assert "<modality>.<parameter>" in done.stdout
    for tail in ("topic", "message_type", "qos", "staleness", "joint_names", "sample_rate"):
        assert tail in done.stdout, tail


def test_synthetic_streams_h_shows_its_own_options():
    done, elapsed = _help([sys.executable, "-m", "mdgm_ros.ros.synthetic_streams", "-h"])
    _check(done, elapsed, "synthetic_streams", NODES["synthetic_streams"])
    assert "options:" in done.stdout


def test_the_installed_console_script_answers_help():
    """``make install`` puts fusion_node next to the venv's python; its --help is the module's."""
    script = shutil.which("fusion_node", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("no fusion_node console script next to this python (make install)")
    done, elapsed = _help([script, "--help"])
    _check(done, elapsed, "fusion_node", NODES["fusion_node"])


@pytest.mark.parametrize("argv,expected", [
    (["--help"], True),
    (["-h"], True),
    (["fusion_node", "--help"], True),                  # a main given the full argv, program name first
    (["--seed", "3", "-h"], True),
    (["--ros-args", "-p", "foo:=1"], False),
    (["--ros-args", "-p", "help:=1"], False),
    (["--ros-args", "--help"], True),                   # rcl has no help flag: it would refuse it as unknown
    (["--ros-args", "-p", "foo:=1", "--", "--help"], True),   # `--` ends the ROS arguments
    (["--helpful"], False),
    ([], False),
])
def test_wants_help(argv, expected):
    assert wants_help(argv) is expected


def test_wants_help_reads_sys_argv_when_given_none(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fusion_node", "-h"])
    assert wants_help(None)
    monkeypatch.setattr(sys, "argv", ["fusion_node", "--ros-args", "-p", "foo:=1"])
    assert not wants_help(None)


def test_node_main_answers_help_before_main_runs(capsys):
    from mdgm_ros.ros.guard import node_main

    calls: list = []

    @node_main
    def main(args=None):
        calls.append(args)
        return 7

    assert main(["--help"]) == 0 and calls == []
    out = capsys.readouterr().out
    assert out.startswith("usage: test_node_help [-h] [--ros-args")
    assert main(["--ros-args", "-p", "foo:=1"]) == 7 and calls == [["--ros-args", "-p", "foo:=1"]]


def test_the_docs_generator_uses_the_same_declarations():
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        ext = importlib.import_module("mdgm_reference")
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    from mdgm_ros.ros import node_help

    for name in ("declared_in_source", "value_text", "type_text", "recorded_fusion_parameters"):
        assert getattr(ext, name) is getattr(node_help, name), name
