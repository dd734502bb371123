"""Launch files: checked statically here (launch_ros is not installable from pip); run where it imports."""
from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def _entry_points() -> set[str]:
    text = (ROOT / "setup.py").read_text()
    return set(re.findall(r'"([\w-]+) = mdgm_ros[\w.]*:\w+"', text))


def _node_calls(path: Path) -> list[dict[str, str]]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("Node", "LifecycleNode"):
            calls.append({k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)})
    return calls


def _node_calls_with_includes(path: Path) -> list[dict[str, str]]:
    """The nodes a launch file starts itself and through the launch files of this package it includes."""
    text = path.read_text()
    included = [p for p in LAUNCH_FILES if p != path and f'"launch", "{p.name}"' in text]
    return [call for p in [path, *included] for call in _node_calls(p)]


def _declared_arguments(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            names.add(node.args[0].value)
    return names


FORWARDED = {"namespace", "params_file", "use_sim_time", "log_level", "autostart"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_take_the_usual_arguments(path):
    assert FORWARDED <= _declared_arguments(path)


def test_the_arguments_reach_the_fusion_node():
    fusion = (ROOT / "launch" / "fusion.launch.py").read_text()
    for name in ("namespace", "params_file", "use_sim_time", "log_level", "autostart", "model", "device"):
        assert f'LaunchConfiguration("{name}")' in fusion, name
    assert '"autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)' in fusion
    assert 'ros_arguments=["--log-level", LaunchConfiguration("log_level")]' in fusion
    sim = ast.parse((ROOT / "launch" / "sim.launch.py").read_text())
    forwarded = next(n for n in sim.body if isinstance(n, ast.Assign) and n.targets[0].id == "FORWARDED")
    assert FORWARDED | {"model"} == set(ast.literal_eval(forwarded.value))


def _default_params_files(path: Path) -> list[Path]:
    """Files under config/ that a launch file passes (by name, through FindPackageShare)."""
    text = path.read_text()
    return [ROOT / "config" / name for name in re.findall(r'"config",\s*"([\w.]+\.yaml)"', text)]


def test_there_are_launch_files_and_they_parse():
    assert [p.name for p in LAUNCH_FILES] == ["fusion.launch.py", "sim.launch.py"]
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_executable_is_an_entry_point(path):
    calls = _node_calls(path)
    assert calls, f"{path.name} starts no node"
    for call in calls:
        assert call.get("package") == "mdgm_ros"
        assert call["executable"] in _entry_points(), f"{call['executable']} is not a console script of setup.py"


def _declared_parameters(params_file: Path) -> set[str]:
    code = ("import json, rclpy\nfrom mdgm_ros.ros.fusion_node import FusionNode\n"
            f"rclpy.init(args=['x', '--ros-args', '--params-file', {str(params_file)!r}])\n"
            "node = FusionNode()\nassert node.params is not None, node.param_error\n"
            "print(json.dumps(sorted(node._parameters)))\nnode.destroy_node()\nrclpy.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _flatten(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_sim_launch_includes_the_fusion_launch_with_the_shipped_default_model():
    text = (ROOT / "launch" / "sim.launch.py").read_text()
    assert '"launch", "fusion.launch.py"' in text and '"models", "default"' in text
    assert '"models", "default"' in (ROOT / "launch" / "fusion.launch.py").read_text()
    assert (ROOT / "models" / "default" / "manifest.json").is_file()
    assert "models/default" in (ROOT / "setup.py").read_text()


@pytest.mark.parametrize("path", [p for p in LAUNCH_FILES if _default_params_files(p)], ids=lambda p: p.name)
def test_params_files_load_and_only_name_declared_parameters(path):
    files = _default_params_files(path)
    assert files and all(f.is_file() for f in files)
    for params_file in files:
        data = yaml.safe_load(params_file.read_text())
        for node_name, section in data.items():
            assert node_name in {c.get("name") for c in _node_calls_with_includes(path)}
            declared = _declared_parameters(params_file)
            undeclared = _flatten(section["ros__parameters"]) - declared
            assert not undeclared, f"{params_file.name} sets undeclared parameters {sorted(undeclared)}"
            overrides = {"bundle", "device", "use_sim_time"}                 # set by the launch file itself
            assert overrides <= declared


LAUNCH_SCRIPT = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

path, model, params, namespace = sys.argv[1:5]
service = LaunchService()
service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    PythonLaunchDescriptionSource(path), launch_arguments={
        "model": model, "params_file": params, "namespace": namespace, "log_level": "debug",
        "autostart": "true", "use_sim_time": "false"}.items())]))
sys.exit(service.run())   # in the main thread, as launch requires; SIGINT shuts it down
"""

PROBE_SCRIPT = """
import sys, time
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from mdgm_ros.msg import ModelInfo
rclpy.init(); node = rclpy.create_node("launch_probe"); got = []
node.create_subscription(ModelInfo, sys.argv[1], got.append, QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
end = time.time() + 90
while not got and time.time() < end:
    rclpy.spin_once(node, timeout_sec=0.2)
print("model_id " + got[-1].model_id if got else "none")
"""


def test_launch_files_run_where_launch_ros_imports(tmp_path):
    pytest.importorskip("launch_ros", reason="launch_ros (the ROS launch system) has no pip wheel: the launch "
                                             "files were checked statically only; this test runs where it imports")
    from ros_env import private_ros_env
    from test_fusion_node import _bundle
    env = private_ros_env()
    bundle = _bundle(tmp_path / "model", 8, 0)
    launch = subprocess.Popen([sys.executable, "-c", LAUNCH_SCRIPT, str(ROOT / "launch" / "fusion.launch.py"),
                               str(bundle), str(ROOT / "config" / "fusion.yaml"), "launch_test"],
                              env=env, cwd=tmp_path, stdout=open(tmp_path / "launch.log", "w"),
                              stderr=subprocess.STDOUT)
    try:
        check = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, "/launch_test/mdgm_fusion/model_info"],
                               capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
        log = (tmp_path / "launch.log").read_text()[-3000:]
        assert check.stdout.strip().startswith("model_id "), check.stdout + check.stderr + log
        assert launch.poll() is None, log
    finally:
        launch.send_signal(signal.SIGINT)
        try:
            launch.wait(timeout=30)
        except subprocess.TimeoutExpired:
            launch.kill()
            launch.wait()
