"""The model core imports torch, numpy, safetensors and the standard library only: no rclpy, no ROS message types."""
import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "mdgm_ros" / "core"
FORBIDDEN = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "std_srvs", "builtin_interfaces",
             "rosidl", "rosbags", "cv2", "launch")


def test_core_source_imports_nothing_from_ros():
    allowed_roots = {"torch", "numpy", "safetensors"} | set(sys.stdlib_module_names)    # and nothing of ROS
    for file in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed_roots, f"{file.name} imports {roots - allowed_roots}"


def test_importing_the_core_loads_no_ros_module():
    code = ("import sys, pkgutil, importlib, mdgm_ros.core as c\n"
            "for m in pkgutil.walk_packages(c.__path__, 'mdgm_ros.core.'): importlib.import_module(m.name)\n"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
