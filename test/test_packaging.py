"""The package installs the ROS way: colcon build of the ament_cmake package (interfaces + Python), run from
the install space; and the pip/venv way (`make install`), where setup.py and CMakeLists.txt must agree."""
import configparser
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_manifest_is_format_3_ament_cmake_with_interfaces():
    from catkin_pkg.package import parse_package  # what colcon-ros and rosdep use
    package = parse_package(str(ROOT))
    package.validate()
    assert package.package_format == 3 and package.name == "mdgm_ros"
    assert package.get_build_type() == "ament_cmake"
    assert ({"ament_cmake", "ament_cmake_python", "rosidl_default_generators"}
            <= {d.name for d in package.buildtool_depends})
    runtime = {d.name for d in package.exec_depends}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "std_srvs", "rosidl_default_runtime",
            "builtin_interfaces", "action_msgs", "python3-opencv", "launch", "launch_ros", "ament_index_python",
            "lifecycle_msgs", "rcl_interfaces", "python3-yaml", "python3-numpy"} <= runtime
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}
    from mdgm_ros import __version__
    assert package.version == __version__


def test_install_requires_leaves_torch_to_the_platform():
    """A Jetson's own PyTorch build must survive `pip install`: setup.py names no torch at all
    (requirements.txt pins it for this machine), and every requirement is a plain name pip can resolve."""
    import ast
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    assert requires and not [r for r in requires if r.lower().startswith("torch")]
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().split()


def test_ros2_run_layout():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/mdgm_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/mdgm_ros"
    assert (ROOT / "resource" / "mdgm_ros").is_file()


def test_cmake_installs_the_console_scripts_of_setup_py():
    """colcon (CMakeLists.txt) and pip (setup.py) install the same executables."""
    import re
    cmake = set(re.findall(r'"([\w-]+)=([\w.]+)"', (ROOT / "CMakeLists.txt").read_text()))
    setup = set(re.findall(r'"([\w-]+) = ([\w.]+):main"', (ROOT / "setup.py").read_text()))
    assert cmake and cmake == setup
    for msg in ("Latent", "AnomalyScores", "ImputedArray", "LatentPrediction", "ModelInfo"):
        assert f"msg/{msg}.msg" in (ROOT / "CMakeLists.txt").read_text() and (ROOT / "msg" / f"{msg}.msg").is_file()


def _tracked_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [line for line in out.stdout.splitlines() if line]


def _sourced(setup: Path, env: dict) -> dict:
    """The environment after `. install/setup.sh`, as a robot's shell has it."""
    out = subprocess.run(["sh", "-c", f". {setup} && env -0"], capture_output=True, env=env, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def test_colcon_build_and_run_from_the_install_space(tmp_path):
    src = tmp_path / "src" / "mdgm_ros"
    for rel in _tracked_files():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    venv = Path(sys.prefix)
    # the pip ROS wheels are the underlay here (on a robot: /opt/ros/<distro>, sourced)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "AMENT_PREFIX_PATH": str(venv)}
    build = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "colcon", "build", "--base-paths", "src",
                            "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", f"-DCMAKE_PREFIX_PATH={venv}",
                            "-DBUILD_TESTING=OFF"], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    prefix = tmp_path / "install" / "mdgm_ros"
    share = prefix / "share" / "mdgm_ros"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "mdgm_ros").is_file()
    assert (share / "package.xml").is_file() and (share / "msg" / "Latent.msg").is_file()
    for config in ("model.yaml", "train.yaml", "fusion.yaml"):
        assert (share / "config" / config).is_file(), config
    for executable in ("mdgm-ros", "fusion_node", "sim_robot_node", "trainer_node", "synthetic_streams"):
        assert os.access(prefix / "lib" / "mdgm_ros" / executable, os.X_OK), executable
    for launch in ("fusion.launch.py", "sim.launch.py"):
        assert (share / "launch" / launch).is_file(), launch
    shipped = share / "models" / "default"
    assert (shipped / "manifest.json").is_file() and (shipped / "weights.safetensors").is_file()
    run_env = _sourced(tmp_path / "install" / "setup.sh", env)
    where = subprocess.run([sys.executable, "-c",
                            "import mdgm_ros, mdgm_ros.msg as m; from mdgm_ros.action import Train; "
                            "print(mdgm_ros.__file__); print(m.__file__); m.Latent(mean=[1.0])"],
                           cwd=tmp_path, capture_output=True, text=True, env=run_env)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(prefix)) for line in where.stdout.split()), where.stdout
    script = prefix / "lib" / "mdgm_ros" / "mdgm-ros"
    info = subprocess.run([sys.executable, str(script), "info", str(shipped)], capture_output=True, text=True,
                          env=run_env, cwd=tmp_path, timeout=120)
    assert info.returncode == 0 and '"calibrated": true' in info.stdout, info.stderr
    _run_installed_fusion_node(prefix, run_env, tmp_path)


def _run_installed_fusion_node(prefix: Path, env: dict, tmp_path: Path) -> None:
    """The installed fusion_node, started with no parameters (`ros2 run mdgm_ros fusion_node`), runs the
    shipped models/default from the install space's share folder and activates."""
    from ros_env import private_ros_env
    env = {**env, **{k: v for k, v in private_ros_env().items() if k.startswith("ROS_")}, "PYTHONUNBUFFERED": "1"}
    node = prefix / "lib" / "mdgm_ros" / "fusion_node"
    process = subprocess.Popen([sys.executable, str(node)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=tmp_path)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "]: active" in line or "cannot configure" in line:
                break
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)
    log = "".join(lines)
    default = prefix / "share" / "mdgm_ros" / "models" / "default"
    assert f"bundle {default} (default" in lines[0] and "]: active" in log, log
