"""Launch files: checked statically here (launch_ros is not installable from pip); run where it imports."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import threading
import time
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
            assert node_name in {c.get("name") for c in _node_calls(path)}
            declared = _declared_parameters(params_file)
            undeclared = _flatten(section["ros__parameters"]) - declared
            assert not undeclared, f"{params_file.name} sets undeclared parameters {sorted(undeclared)}"
            overrides = {"bundle", "device", "use_sim_time"}                 # set by the launch file itself
            assert overrides <= declared


def test_launch_files_run_where_launch_ros_imports(tmp_path):
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from pip: launch files were "
                                             "checked statically only")
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from ros_env import private_ros_env
    from test_fusion_node import _bundle
    private_ros_env()
    bundle = _bundle(tmp_path / "model", 8, 0)
    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch" / "fusion.launch.py")),
        launch_arguments={"model": str(bundle), "params_file": str(ROOT / "config" / "fusion.yaml")}.items())]))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        check = subprocess.run([sys.executable, "-c", (
            "import rclpy, time\nfrom std_msgs.msg import String\nfrom rclpy.qos import QoSProfile, DurabilityPolicy\n"
            "rclpy.init(); n = rclpy.create_node('p'); got = []\n"
            "n.create_subscription(String, '/mdgm_fusion/model_info', got.append, "
            "QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))\n"
            "end = time.time() + 60\nwhile not got and time.time() < end: rclpy.spin_once(n, timeout_sec=0.2)\n"
            "print('ok' if got else 'none')")], capture_output=True, text=True, timeout=120)
        assert check.stdout.strip().endswith("ok"), check.stdout + check.stderr
    finally:
        service.shutdown()
        runner.join(timeout=20)
        time.sleep(0.5)
