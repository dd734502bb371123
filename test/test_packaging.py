"""The package installs the ROS way: colcon build of the ament_python package, run from the install space."""
import configparser
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_manifest_is_format_3_ament_python():
    from catkin_pkg.package import parse_package  # what colcon-ros and rosdep use
    package = parse_package(str(ROOT))
    package.validate()
    assert package.package_format == 3 and package.name == "mdgm_ros"
    assert package.get_build_type() == "ament_python"
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "std_srvs"} <= {d.name for d in package.exec_depends}
    from mdgm_ros import __version__
    assert package.version == __version__


def test_ros2_run_layout():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/mdgm_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/mdgm_ros"
    assert (ROOT / "resource" / "mdgm_ros").is_file()
    assert not (ROOT / "msg").exists(), "custom interfaces cannot be generated with the pip ROS 2 wheels"


def _tracked_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [line for line in out.stdout.splitlines() if line]


def test_colcon_build_and_run_from_the_install_space(tmp_path):
    src = tmp_path / "src" / "mdgm_ros"
    for rel in _tracked_files():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    build = subprocess.run([sys.executable, "-m", "colcon", "build", "--base-paths", "src"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    prefix = tmp_path / "install" / "mdgm_ros"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "mdgm_ros").is_file()
    assert (prefix / "share" / "mdgm_ros" / "package.xml").is_file()
    assert (prefix / "share" / "mdgm_ros" / "config" / "model.yaml").is_file()
    script = prefix / "lib" / "mdgm_ros" / "mdgm-ros"
    assert script.is_file()
    for executable in ("fusion_node", "sim_robot_node", "trainer_node", "synthetic_streams"):
        assert (prefix / "lib" / "mdgm_ros" / executable).is_file(), executable
    for launch in ("fusion.launch.py", "sim.launch.py"):
        assert (prefix / "share" / "mdgm_ros" / "launch" / launch).is_file(), launch
    assert (prefix / "share" / "mdgm_ros" / "config" / "train.yaml").is_file()
    shipped = prefix / "share" / "mdgm_ros" / "models" / "default"
    assert (shipped / "manifest.json").is_file() and (shipped / "weights.safetensors").is_file()
    site = next(prefix.glob("lib/python3*/site-packages"))
    run_env = {**env, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import mdgm_ros; print(mdgm_ros.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=run_env)
    assert where.stdout.strip().startswith(str(prefix)), where.stdout + where.stderr
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                            env=run_env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and "bench" in result.stdout, result.stderr
    info = subprocess.run([sys.executable, str(script), "info", str(shipped)], capture_output=True, text=True,
                          env=run_env, cwd=tmp_path, timeout=120)
    assert info.returncode == 0 and '"calibrated": true' in info.stdout, info.stderr
    _run_installed_fusion_node(prefix, run_env, tmp_path)


def _run_installed_fusion_node(prefix: Path, env: dict, tmp_path: Path) -> None:
    """The installed fusion_node starts from the install space with the installed params file,
    configures with a bundle and activates."""
    from ros_env import private_ros_env
    from test_fusion_node import _bundle
    bundle = _bundle(tmp_path / "model", 8, 0)
    env = {**env, **private_ros_env()}
    env["PYTHONPATH"] = str(next(prefix.glob("lib/python3*/site-packages")))
    node = prefix / "lib" / "mdgm_ros" / "fusion_node"
    params = prefix / "share" / "mdgm_ros" / "config" / "fusion.yaml"
    process = subprocess.Popen([sys.executable, str(node), "--ros-args", "--params-file", str(params),
                                "-p", f"bundle:={bundle}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=tmp_path)
    watchdog = threading.Timer(90, process.kill)
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
    assert "configured with test8-" in log and "]: active" in log, log
