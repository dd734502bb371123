"""A robot the project was not built around, from its bags alone: the KUKA iiwa simulator (JPEG wrist
camera, depth camera, 7 joints in the driver's order, WrenchStamped, Imu, no audio, no tactile) through
``mdgm-ros init`` -> ``train`` -> ``evaluate`` -> ``fusion_node -p bundle:=...`` + ``play --clock``, with no
file edited by hand; the bundle's stream settings, the contradiction warnings and the all-at-once checks."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_env import ROOT, spin_until, start, stop

FAST = ["--set", "data.cache=false", "--set", "data.block_s=3.0", "--device", "cpu"]
MODALITIES = ["camera", "depth", "imu", "joints", "wrench"]


def mdgm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdgm_ros", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def kuka(tmp_path_factory):
    """Two KUKA bags recorded as a user types it, the configs ``init`` writes, a 1-epoch bundle."""
    root = tmp_path_factory.mktemp("kuka")
    for name, seed, duration, faults in (("train", 11, "30", []), ("test", 12, "24", [
            "--faults", "collision,object_drop,joint_fault", "--per-kind", "1"])):
        done = mdgm("simulate", "--robot", "kuka", "--out", str(root / name), "--duration", duration, "--seed",
                    str(seed), "--image-size", "32", *faults)
        assert done.returncode == 0, done.stderr[-2000:]
    init = mdgm("init", "--bags", str(root / "train"), "--out", str(root / "cfg"), "--image-size", "32", "--json")
    assert init.returncode == 0, init.stderr[-3000:]
    train = mdgm("train", "--config", str(root / "cfg" / "train.yaml"), "--bags", str(root / "train"),
                 "--out", str(root / "bundle"), "--epochs", "1", *FAST)
    assert train.returncode == 0, train.stderr[-3000:]
    return {"root": root, "train": root / "train", "test": root / "test", "cfg": root / "cfg",
            "bundle": root / "bundle", "init": init}


def test_init_proposes_every_sensor_stream_and_says_why(kuka):
    result = json.loads(kuka["init"].stdout)
    chosen = {m["name"]: m for m in result["modalities"]}
    assert sorted(chosen) == MODALITIES
    assert chosen["camera"]["message_type"] == "compressed_image"
    assert chosen["depth"]["message_type"] == "depth_image"
    assert chosen["wrench"]["message_type"] == "wrench_stamped" and chosen["imu"]["message_type"] == "imu"
    assert abs(chosen["joints"]["rate_hz"] - 100) < 5 and abs(chosen["camera"]["rate_hz"] - 15) < 2
    assert any(line.startswith("/sim/") for line in result["left_out"])
    assert result["output_rate"] == pytest.approx(15.0, abs=1.0)
    stderr = kuka["init"].stderr
    assert "next: mdgm-ros train --config" in stderr and "left out: /sim/task_phase" in stderr
    fusion = yaml.safe_load((kuka["cfg"] / "fusion.yaml").read_text())["mdgm_fusion"]["ros__parameters"]
    assert fusion["joints"]["joint_names"][:2] == ["iiwa_joint_3", "iiwa_joint_4"]     # the driver's order
    assert fusion["anchor"] == "" and "audio" not in fusion["modalities"]
    model = yaml.safe_load((kuka["cfg"] / "model.yaml").read_text())
    assert {m["name"]: m.get("shape") for m in model["modalities"]}["depth"] == [1, 32, 32]
    train = yaml.safe_load((kuka["cfg"] / "train.yaml").read_text())
    assert train["modality_weights"]["wrench"] > train["modality_weights"].get("camera", 1.0)


def test_init_refuses_to_overwrite_and_a_bag_without_sensors_is_one_line(kuka, tmp_path):
    again = mdgm("init", "--bags", str(kuka["train"]), "--out", str(kuka["cfg"]))
    assert again.returncode == 2 and "exist: choose another --out or add --force" in again.stderr
    missing = mdgm("init", "--bags", str(tmp_path / "nothing"), "--out", str(tmp_path / "cfg"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: bag {tmp_path / 'nothing'} does not exist"]


def test_init_interactive_asks_per_stream_and_renames(kuka, tmp_path):
    from mdgm_ros.robot_config import run_init

    answers = iter(["", "n", "", "arm", ""])           # keep camera, drop depth, keep imu, joints -> arm, keep wrench
    result = run_init([str(kuka["train"])], tmp_path / "cfg", image_size=32, interactive=True, log=lambda m: None,
                      ask=lambda prompt: next(answers))
    assert [m["name"] for m in result["modalities"]] == ["camera", "imu", "arm", "wrench"]


def test_the_bundle_records_its_stream_settings(kuka):
    manifest = json.loads((kuka["bundle"] / "manifest.json").read_text())
    streams = manifest["extra"]["streams"]
    assert streams["modalities"] == MODALITIES and streams["anchor"] == ""
    assert streams["wrench.message_type"] == "wrench_stamped" and streams["wrench.topic"] == "/iiwa/wrist_ft"
    assert streams["joints.joint_names"][0] == "iiwa_joint_3" and len(streams["wrench.fields"]) == 6
    config = json.loads((kuka["bundle"] / "config.json").read_text())
    assert {m["name"]: m["shape"] for m in config["modalities"]}["joints"] == [21]     # 7 joints x 3 fields


def test_evaluate_needs_no_params_and_prints_the_users_figures_only(kuka):
    done = mdgm("evaluate", "--model", str(kuka["bundle"]), "--bags", str(kuka["test"]), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert sorted(report["imputation"]) == MODALITIES
    assert all(np.isfinite(v["model"]) and v["samples"] > 0 for v in report["imputation"].values())
    # the imputations' predictive std: 90 % interval coverage and rank correlation with the error
    assert all(0.0 <= v["coverage_90"] <= 1.0 and -1.0 <= v["std_error_spearman"] <= 1.0
               for v in report["imputation"].values())
    # what the node publishes with its fallback on (the bundle's held-out table per outage length)
    assert all(np.isfinite(v["published"]) and 0.0 <= v["fallback_rate"] <= 1.0 for v in report["imputation"].values())
    assert all(v["published"] == pytest.approx(v["model"], rel=1e-5) for v in report["imputation"].values()
               if v["fallback_rate"] == 0.0)
    # the bounded streams' share of samples outside the training range, normal and fault
    assert set(report["out_of_range"]) == {"joints", "wrench", "imu"}
    assert all(0.0 <= v["normal"] <= 1.0 and v["normal_samples"] > 0 for v in report["out_of_range"].values())
    assert report["anomaly"]["fault_samples"] > 0 and 0.0 <= report["anomaly"]["auroc"] <= 1.0
    assert not [w for w in report["warnings"] if w.startswith("parameter")]
    text = mdgm("evaluate", "--model", str(kuka["bundle"]), "--bags", str(kuka["test"]))
    assert text.returncode == 0 and "imputation error" in text.stdout and "90 % interval" in text.stdout
    assert "out of its training range: wrench" in text.stdout
    assert "NOT met" not in text.stdout + text.stderr and "targets" not in text.stdout


def test_evaluate_warns_for_each_override_that_contradicts_the_bundle(kuka):
    done = mdgm("evaluate", "--model", str(kuka["bundle"]), "--bags", str(kuka["test"]), "--json",
                "--set", "anchor=camera", "--set", "wrench.staleness=0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    warned = [w for w in json.loads(done.stdout)["warnings"] if w.startswith("parameter")]
    assert warned == ["parameter anchor = 'camera', but the bundle was trained with ''",
                      "parameter wrench.staleness = 0.5, but the bundle was trained with 0.1"], warned


def _bad_bag(src: Path, dst: Path) -> Path:
    """The camera as raw Image instead of JPEG, no IMU, one joint fewer: three mistakes in one bag."""
    import cv2
    from sensor_msgs.msg import Image

    from mdgm_ros.data.bags import BagWriter, messages

    with BagWriter(dst) as bag:
        for topic, stamp, msg in messages(src):
            if topic == "/iiwa/imu":
                continue
            if topic.endswith("/compressed"):
                pixels = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
                msg = Image(header=msg.header, height=pixels.shape[0], width=pixels.shape[1], encoding="bgr8",
                            step=pixels.shape[1] * 3, data=pixels.tobytes())
            if topic == "/iiwa/joint_states":
                keep = [i for i, n in enumerate(msg.name) if n != "iiwa_joint_7"]
                msg.name = [msg.name[i] for i in keep]
                for field in ("position", "velocity", "effort"):
                    setattr(msg, field, [getattr(msg, field)[i] for i in keep])
            bag.write(topic, stamp, msg)
    return dst


def test_every_mistake_is_reported_in_one_run_with_its_fix(kuka, tmp_path):
    bad = _bad_bag(kuka["train"], tmp_path / "bad")
    config = tmp_path / "cfg"
    config.mkdir()
    for name in ("fusion.yaml", "train.yaml"):
        (config / name).write_text((kuka["cfg"] / name).read_text())
    model = yaml.safe_load((kuka["cfg"] / "model.yaml").read_text())
    for entry in model["modalities"]:
        if entry["name"] == "joints":
            entry["shape"] = [27]                       # a copied Panda number: 7 joints x 3 fields is 21
    (config / "model.yaml").write_text(yaml.safe_dump(model))
    done = mdgm("train", "--config", str(config / "train.yaml"), "--bags", str(bad), "--out", str(tmp_path / "m"),
                *FAST)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    error = done.stderr[done.stderr.index("error: "):]
    assert error.startswith("error: 4 problems"), error
    assert "camera topic /iiwa/wrist_camera/image/compressed carries sensor_msgs/msg/Image" in error
    assert "--set fusion_overrides.camera.message_type=image" in error
    assert "no imu messages on /iiwa/imu" in error and "--set data.absent_ok=[imu]" in error
    assert "joints on /iiwa/joint_states names 6 joints" in error
    assert "--set fusion_overrides.joints.joint_names=[iiwa_joint_3,iiwa_joint_4,iiwa_joint_5,iiwa_joint_6," in error
    assert f"but {config / 'model.yaml'} gives joints shape [27]: set its shape to [21] there" in error
    assert not (tmp_path / "m").exists()
    # evaluate on the same bag: its own flags, and a missing stream is scored as missing, not an error
    ev = mdgm("evaluate", "--model", str(kuka["bundle"]), "--bags", str(bad))
    error = ev.stderr[ev.stderr.index("error: "):]
    assert ev.returncode == 2 and error.startswith("error: 3 problems"), ev.stderr[-3000:]
    assert "--set camera.message_type=image" in error and "--set joints.joint_names=[" in error
    assert "imu (/iiwa/imu) is absent from every bag: the evaluation needs it in at least one: --set imu.topic=" \
        in error
    assert "fusion_overrides" not in error and "absent_ok" not in error


def _node(bundle: Path, env: dict, log: Path, *extra: str) -> subprocess.Popen:
    return start("mdgm_ros.ros.fusion_node", "--ros-args", "-p", f"bundle:={bundle}", "-p", "use_sim_time:=true",
                 *extra, env=env, log=log)


def test_the_node_runs_the_bundle_alone_and_publishes_wrench_and_imu_imputations(kuka, ros_node, tmp_path):
    """WrenchStamped and Imu feed the live node without a relay; during their outages the node publishes
    their imputations as WrenchStamped and Imu, stamped inside the outage."""
    from geometry_msgs.msg import WrenchStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Imu

    from mdgm_ros.msg import Latent

    node, env = ros_node
    got: dict[str, list] = {"latent": [], "wrench": [], "imu": []}
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Latent, "/mdgm_fusion/latent", got["latent"].append, qos)
    node.create_subscription(WrenchStamped, "/mdgm_fusion/imputed/wrench", got["wrench"].append, qos)
    node.create_subscription(Imu, "/mdgm_fusion/imputed/imu", got["imu"].append, qos)
    fusion = _node(kuka["bundle"], env, tmp_path / "node.log")
    try:
        assert spin_until(node, lambda: "]: active" in (tmp_path / "node.log").read_text(), 60), \
            (tmp_path / "node.log").read_text()[-3000:]
        play = start("mdgm_ros", "play", str(kuka["test"]), "--clock", "--wait", "10", "--drop", "/iiwa/wrist_ft:6:10",
                     "--drop", "/iiwa/imu:6:10", env=env, log=tmp_path / "play.log")
        assert spin_until(node, lambda: play.poll() is not None, 120), (tmp_path / "play.log").read_text()
        spin_until(node, lambda: False, 1.0)
    finally:
        stop(fusion)
    log = (tmp_path / "node.log").read_text()
    assert play.returncode == 0, (tmp_path / "play.log").read_text()[-2000:]
    assert "contradicts" not in log and "the bundle was trained with" not in log, log[-3000:]
    assert len(got["latent"]) > 100, log[-3000:]
    from mdgm_ros.data.bags import start_ns

    origin = start_ns(kuka["test"])
    for key, values in (("wrench", lambda m: [m.wrench.force.x, m.wrench.force.z, m.wrench.torque.z]),
                        ("imu", lambda m: [m.linear_acceleration.z, m.angular_velocity.x, m.orientation.w])):
        assert len(got[key]) > 20, (key, len(got[key]), log[-3000:])
        stamps = np.asarray([(m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec - origin) / 1e9
                             for m in got[key]])
        # imputed during the outage, at most at the very start, before the node first heard the stream, and
        # where the stream left the range the bundle was trained on (its expert left out: Latent.present)
        j = list(got["latent"][0].modalities).index(key)
        left_out = {round((m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec - origin) / 1e9, 6)
                    for m in got["latent"] if not m.present[j]}
        outside = stamps[(stamps < 6.0 - 0.2) | (stamps > 10.0 + 0.5)]
        assert all(t < 0.2 or round(t, 6) in left_out for t in outside), (key, outside, sorted(left_out)[:20])
        if any(t >= 0.2 for t in outside):
            assert f"{key} is outside its training range" in log, log[-3000:]
        assert ((stamps >= 6.0 - 0.2) & (stamps <= 10.0 + 0.5)).sum() > 20, (key, stamps)
        assert np.isfinite([values(m) for m in got[key]]).all()


def test_a_params_file_contradicting_the_bundle_is_warned_item_by_item(kuka, ros_node, tmp_path):
    doc = yaml.safe_load((kuka["cfg"] / "fusion.yaml").read_text())
    params = doc["mdgm_fusion"]["ros__parameters"]
    params.update(anchor="camera", output_rate=50.0)
    params["wrench"]["topic"] = "/ft_sensor/wrench"
    params["joints"]["joint_fields"] = ["position", "velocity", "effort"]          # as trained: no warning
    (tmp_path / "fusion.yaml").write_text(yaml.safe_dump(doc))
    _, env = ros_node
    log = tmp_path / "node.log"
    fusion = _node(kuka["bundle"], env, log, "--params-file", str(tmp_path / "fusion.yaml"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "]: active" not in log.read_text():
            time.sleep(0.2)
    finally:
        stop(fusion)
    text = log.read_text()
    warned = [line for line in text.splitlines() if "but the bundle was trained with" in line]
    assert any("parameter anchor = 'camera', but the bundle was trained with ''" in w for w in warned), text[-3000:]
    assert any("parameter wrench.topic = '/ft_sensor/wrench', but the bundle was trained with '/iiwa/wrist_ft'" in w
               for w in warned), text[-3000:]
    assert any("parameter output_rate = 50.0, but the bundle was trained with 15.0" in w for w in warned), warned
    assert len(warned) == 3 and all("WARN" in w for w in warned), warned
