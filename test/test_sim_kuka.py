"""The KUKA iiwa simulator: bags recorded from the command line, its stream conventions, its physics and
its faults (on the label topic and in the sidecar file)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from mdgm_ros.cli import build_parser, main
from mdgm_ros.data import bags
from mdgm_ros.data.labels import FaultLabel, read_sidecar, sidecar_path
from mdgm_ros.sim.faults import FaultSpec
from mdgm_ros.sim.kuka import JOINT_NAMES, KUKA_FAULT_KINDS, STREAMS, KukaConfig, KukaTableSim, simulate_kuka_to_bag

ROOT = Path(__file__).resolve().parents[1]
TYPESTORE = get_typestore(Stores.ROS2_KILTED)
DURATION = 8.0
NS = 1_000_000_000
EXPECTED = {                                   # topic -> (type, messages per second)
    "/iiwa/wrist_camera/image/compressed": ("sensor_msgs/msg/CompressedImage", 15.0),
    "/iiwa/joint_states": ("sensor_msgs/msg/JointState", 100.0),
    "/iiwa/wrist_ft": ("geometry_msgs/msg/WrenchStamped", 100.0),
    "/iiwa/imu": ("sensor_msgs/msg/Imu", 100.0),
    "/iiwa/depth/image_raw": ("sensor_msgs/msg/Image", 10.0),
}
DRIVER_NAMES = ["iiwa_joint_3", "iiwa_joint_4", "iiwa_joint_5", "iiwa_joint_6", "iiwa_joint_7", "iiwa_joint_1",
                "iiwa_joint_2"]
TORQUE_LIMIT = {"iiwa_joint_1": 176.0, "iiwa_joint_2": 176.0, "iiwa_joint_3": 110.0, "iiwa_joint_4": 110.0,
                "iiwa_joint_5": 110.0, "iiwa_joint_6": 40.0, "iiwa_joint_7": 40.0}       # N m, the iiwa 7's


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, Path]:
    """The same 8 s bag (seed 1, a collision and an object drop) recorded by the command line as a user
    types it, once per storage."""
    root = tmp_path_factory.mktemp("kuka")
    out = {}
    for storage in ("mcap", "sqlite3"):
        bag = root / f"run_{storage}"
        cmd = [sys.executable, "-m", "mdgm_ros", "simulate", "--robot", "kuka", "--out", str(bag), "--duration",
               str(int(DURATION)), "--seed", "1", "--faults", "collision,object_drop", "--per-kind", "1",
               "--image-size", "32", "--storage", storage]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        out[storage] = bag
    return out


def _messages(bag: Path, topic: str) -> list[tuple[int, object]]:
    return [(log_ns, msg) for _, log_ns, msg in bags.messages(bag, [topic])]


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * NS + int(msg.header.stamp.nanosec)


def _labels(bag: Path) -> list[FaultLabel]:
    return [FaultLabel.from_json(msg.data) for _, msg in _messages(bag, "/sim/fault_labels")]


def _series(bag: Path):
    """Stamps, wrench (N, 6), IMU acceleration (N, 3), joint speeds and efforts (N, 7 each), all at the same
    100 Hz stamps."""
    wrench = {_stamp(m): [m.wrench.force.x, m.wrench.force.y, m.wrench.force.z,
                          m.wrench.torque.x, m.wrench.torque.y, m.wrench.torque.z]
              for _, m in _messages(bag, "/iiwa/wrist_ft")}
    accel = {_stamp(m): [m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z]
             for _, m in _messages(bag, "/iiwa/imu")}
    joints = {_stamp(m): (list(m.velocity), list(m.effort)) for _, m in _messages(bag, "/iiwa/joint_states")}
    stamps = np.array(sorted(set(wrench) & set(accel) & set(joints)))
    return (stamps, np.array([wrench[s] for s in stamps]), np.array([accel[s] for s in stamps]),
            np.array([joints[s][0] for s in stamps]), np.array([joints[s][1] for s in stamps]))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_every_stream_is_recorded_with_its_type_at_its_rate(recorded, storage):
    summary = bags.topic_summary(recorded[storage])
    for topic, (msgtype, rate) in EXPECTED.items():
        assert summary[topic][0] == msgtype
        assert summary[topic][1] == pytest.approx(rate * DURATION, rel=0.03), topic
    assert summary["/sim/fault_labels"] == ("std_msgs/msg/String", 2)
    assert {s.topic: s.msgtype for s in STREAMS.values()} == {t: summary[t][0] for t in summary}
    assert not any(t.startswith("/camera") or t in ("/joint_states", "/audio", "/tactile") for t in summary)


def test_camera_frames_are_jpegs_and_depth_is_millimetres(recorded):
    frames = _messages(recorded["mcap"], "/iiwa/wrist_camera/image/compressed")
    assert all("jpeg" in m.format for _, m in frames)
    decoded = [cv2.imdecode(np.frombuffer(bytes(m.data), np.uint8), cv2.IMREAD_COLOR) for _, m in frames]
    assert all(d is not None and d.shape == (32, 32, 3) for d in decoded)
    assert np.std([d.mean() for d in decoded]) > 1.0                       # the view changes as the arm moves
    depth = _messages(recorded["mcap"], "/iiwa/depth/image_raw")
    _, msg = depth[0]
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("16UC1", 32, 32, 64)
    mm = np.frombuffer(bytes(msg.data), "<u2").reshape(32, 32)
    seen = mm[mm > 0]
    assert seen.size > 0.5 * mm.size and 600 < np.median(seen) < 3000      # the table, about 1 m away
    assert all(_stamp(m) == log_ns for log_ns, m in frames + depth)        # stamped with sim time


def test_joint_states_come_in_the_driver_order_not_the_urdf_order(recorded):
    joints = _messages(recorded["mcap"], "/iiwa/joint_states")
    assert JOINT_NAMES == DRIVER_NAMES
    for _, msg in joints:
        assert list(msg.name) == DRIVER_NAMES
        assert len(msg.position) == len(msg.velocity) == len(msg.effort) == 7
    positions = np.array([m.position for _, m in joints])
    assert np.isfinite(positions).all()
    assert positions[0, DRIVER_NAMES.index("iiwa_joint_4")] < -1.0          # the elbow bent at the start
    assert abs(positions[0, DRIVER_NAMES.index("iiwa_joint_1")]) < 0.2


def test_wrench_and_imu_are_physical(recorded):
    bag = recorded["mcap"]
    stamps, wrench, accel, speed, _ = _series(bag)
    assert np.isfinite(wrench).all() and np.isfinite(accel).all()
    still = np.abs(speed).max(axis=1) < 0.02
    assert still.sum() >= 20
    assert np.median(np.linalg.norm(accel[still], axis=1)) == pytest.approx(9.81, abs=0.15)
    _, imu = _messages(bag, "/iiwa/imu")[0]
    q = [imu.orientation.x, imu.orientation.y, imu.orientation.z, imu.orientation.w]
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-6)
    assert imu.header.frame_id and all(imu.linear_acceleration_covariance[i] > 0 for i in (0, 4, 8))
    assert imu.orientation_covariance[0] > 0 and imu.angular_velocity_covariance[0] > 0
    _, ft = _messages(bag, "/iiwa/wrist_ft")[0]
    assert ft.header.frame_id == "iiwa_link_ee"
    # the block (0.5 kg) hangs on the flange while it is carried, up to the drop
    drop = next(lb for lb in _labels(bag) if lb.kind == "object_drop")
    phases = [(log_ns, m.data) for log_ns, m in _messages(bag, "/sim/task_phase")]
    idle_end = next(t for t, p in phases if p != "idle")
    empty = wrench[stamps < idle_end, 2].mean()
    held = wrench[(stamps > drop.start_ns - 0.15 * NS) & (stamps <= drop.start_ns), 2].mean()
    after = wrench[(stamps > drop.start_ns + 0.3 * NS) & (stamps < drop.end_ns), 2].mean()
    assert held - empty == pytest.approx(0.5 * 9.81, abs=1.5)
    assert held - after == pytest.approx(0.5 * 9.81, abs=1.5)


def test_labels_are_on_the_topic_and_in_the_sidecar_file(recorded):
    for bag in recorded.values():
        on_topic = _labels(bag)
        assert sorted(lb.kind for lb in on_topic) == ["collision", "object_drop"]
        sidecar = sidecar_path(bag)
        assert sidecar == bag.parent / f"{bag.name}.labels.yaml" and sidecar.is_file()
        in_file = read_sidecar(sidecar, bags.start_ns(bag))
        assert [lb.kind for lb in in_file] == [lb.kind for lb in on_topic]
        for a, b in zip(in_file, on_topic):
            assert abs(a.start_ns - b.start_ns) <= 1e6 and abs(a.end_ns - b.end_ns) <= 1e6


def test_a_collision_shows_in_the_force_torque_imu_and_joints(recorded):
    bag = recorded["mcap"]
    stamps, wrench, accel, _, effort = _series(bag)
    labels = _labels(bag)
    normal = np.ones(len(stamps), bool)
    for lb in labels:
        normal &= ~((stamps >= lb.start_ns) & (stamps <= lb.end_ns + NS))
    force = np.linalg.norm(wrench[:, :3], axis=1)
    hit = next(lb for lb in labels if lb.kind == "collision")
    inside = (stamps >= hit.start_ns) & (stamps <= hit.end_ns)
    assert force[inside].max() > 5 * np.percentile(force[normal], 99)
    jolt = np.abs(np.linalg.norm(accel, axis=1) - 9.81)
    assert jolt[inside].max() > np.percentile(jolt[normal], 99)
    load = np.abs(effort) / np.array([TORQUE_LIMIT[name] for name in DRIVER_NAMES])
    assert load[inside].max() > 0.95 and load[normal].max() < 0.5          # it stalls with joints at their limit


def _canonical(message: bags.BagMessage) -> tuple[str, int, bytes]:
    """Re-serialised with zeroed CDR padding (rclpy leaves padding bytes unset, so they vary between runs)."""
    return message.topic, message.log_ns, TYPESTORE.serialize_cdr(
        TYPESTORE.deserialize_cdr(message.data, message.msgtype), message.msgtype)


def test_same_seed_same_bytes_other_seed_other_bytes(recorded, tmp_path):
    mcap = sorted(bags.raw_messages(recorded["mcap"]), key=lambda m: (m.topic, m.log_ns))
    sqlite = sorted(bags.raw_messages(recorded["sqlite3"]), key=lambda m: (m.topic, m.log_ns))
    assert len(mcap) == len(sqlite) > 2000
    imu = [(m.log_ns, m.data) for m in mcap if m.topic == "/iiwa/imu"]
    assert len(imu) == 800 and imu == [(m.log_ns, m.data) for m in sqlite if m.topic == "/iiwa/imu"]
    assert [_canonical(m) for m in mcap] == [_canonical(m) for m in sqlite]
    other = simulate_kuka_to_bag(tmp_path / "seed2", 2.0, seed=2, image_size=32)
    assert other["messages"]["joints"] == 200 and other["faults"] == []
    mine = [m.data for m in mcap if m.topic == "/iiwa/joint_states"][:200]
    theirs = [m.data for m in bags.raw_messages(tmp_path / "seed2", ["/iiwa/joint_states"])]
    assert len(theirs) == 200 and mine != theirs
    assert read_sidecar(sidecar_path(tmp_path / "seed2"), 0) == []             # no fault: an empty label file


def _run(seconds: float, spec: FaultSpec):
    with KukaTableSim(KukaConfig(seed=3, image_size=16, depth=False, faults=(spec,))) as sim:
        return list(sim.events(seconds)), sim.labels


@pytest.mark.parametrize("kind", ["payload", "joint_fault", "camera_occlusion", "camera_blackout", "stream_dropout"])
def test_each_other_fault_does_what_it_says_inside_its_label(kind):
    detail = {"stream": "imu"} if kind == "stream_dropout" else {}
    events, labels = _run(2.6, FaultSpec(kind, 0.8, 0.8, detail))
    assert [lb.kind for lb in labels] == [kind] and kind in KUKA_FAULT_KINDS
    label = labels[0]
    inside = [e for e in events if label.start_ns + 0.2 * NS <= e.stamp_ns <= label.start_ns + 0.8 * NS]
    before = [e for e in events if e.stamp_ns < label.start_ns]

    def series(stream, rows):
        return np.array([e.data for e in rows if e.stream == stream])
    if kind == "payload":
        assert series("wrench", inside)[:, 2].mean() - series("wrench", before)[:, 2].mean() > \
            0.8 * 9.81 * label.detail["kg"]
    elif kind == "joint_fault":
        joint = DRIVER_NAMES.index(label.detail["joint"])
        assert np.abs(series("joints", inside)[:, 2, joint]).max() < 0.04 * TORQUE_LIMIT[label.detail["joint"]] + 0.3
        assert np.abs(series("joints", before)[:, 2, joint]).max() > 5
    elif kind == "camera_occlusion":
        assert series("camera", inside).mean() < 0.8 * series("camera", before).mean()
    elif kind == "camera_blackout":
        assert series("camera", inside).mean() < 10
    else:
        assert len(series("imu", inside)) == 0 and len(series("joints", inside)) > 0


def test_panda_stays_the_default_and_kuka_options_are_checked(tmp_path, capsys):
    args = build_parser().parse_args(["simulate", "--out", "x"])
    assert args.robot == "panda" and args.depth
    assert main(["simulate", "--out", str(tmp_path / "p"), "--no-depth"]) == 2
    assert "--robot kuka" in capsys.readouterr().err
    assert main(["simulate", "--robot", "kuka", "--out", str(tmp_path / "k"), "--faults", "audio_noise"]) == 2
    assert "unknown fault kind" in capsys.readouterr().err
    sidecar_path(tmp_path / "old").write_text("labels: []\n")
    with pytest.raises(bags.BagError, match="labels of an earlier bag"):
        simulate_kuka_to_bag(tmp_path / "old", 1.0, seed=0)
    assert not (tmp_path / "p").exists() and not (tmp_path / "k").exists() and not (tmp_path / "old").exists()
