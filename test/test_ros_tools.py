"""play, sim_robot_node and trainer_node over real DDS, in separate processes, on a private domain."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from ros_env import ROOT, spin_for, spin_until, start, stop

from mdgm_ros.data import bags

NS = 1_000_000_000


def _subscribe_all(node, record):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray, String

    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    for topic, kind in [("/camera/image_raw", Image), ("/joint_states", JointState), ("/audio", Float32MultiArray),
                        ("/tactile", Image), ("/sim/fault_labels", String), ("/sim/task_phase", String),
                        ("/clock", Clock)]:
        node.create_subscription(kind, topic, lambda m, t=topic: record[t].append((time.monotonic(), m)), qos)


def _stamp(msg) -> int:
    return msg.header.stamp.sec * NS + msg.header.stamp.nanosec


def test_play_replays_a_bag_with_its_timing_clock_and_drops(ros_node, sim_bag, tmp_path):
    node, env = ros_node
    record = defaultdict(list)
    _subscribe_all(node, record)
    bag, result = sim_bag
    rate = 4.0
    proc = start("mdgm_ros", "play", str(bag), "--rate", str(rate), "--clock", "--wait", "10",
                 "--drop", "/joint_states:5:7", env=env, log=tmp_path / "play.log")
    try:
        assert spin_until(node, lambda: proc.poll() is not None, 90), (tmp_path / "play.log").read_text()
        spin_for(node, 1.0)
    finally:
        stop(proc)
    assert proc.returncode == 0, (tmp_path / "play.log").read_text()
    stats = json.loads((tmp_path / "play.log").read_text().strip().splitlines()[-1])
    joints = [m for _, m in record["/joint_states"]]
    items = list(bags.raw_messages(bag))
    start_ns = items[0].log_ns
    in_window = sum(1 for i in items if i.topic == "/joint_states" and 5 * NS <= i.log_ns - start_ns < 7 * NS)
    assert stats["dropped"] == in_window > 0
    assert len(joints) == result["messages"]["joints"] - stats["dropped"]          # reliable: nothing lost
    assert not [m for m in joints if 5 * NS <= _stamp(m) - start_ns < 7 * NS]
    assert len(record["/camera/image_raw"]) == result["messages"]["camera"]
    assert len(record["/sim/fault_labels"]) == 2
    arrivals = [t for t, _ in record["/camera/image_raw"]]
    assert arrivals[-1] - arrivals[0] == pytest.approx(16.0 / rate, abs=0.6)      # the bag's timing, 4x faster
    clocks = [m.clock.sec * NS + m.clock.nanosec for _, m in record["/clock"]]
    assert clocks == sorted(clocks) and clocks[-1] - clocks[0] > 15 * NS


def test_sim_robot_node_publishes_the_live_topics(ros_node, tmp_path):
    node, env = ros_node
    record = defaultdict(list)
    _subscribe_all(node, record)
    proc = start("mdgm_ros.ros.sim_robot_node", "--ros-args", "-p", "duration:=4.0", env=env, log=tmp_path / "sim.log")
    try:
        assert spin_until(node, lambda: proc.poll() is not None, 60), (tmp_path / "sim.log").read_text()
        spin_for(node, 0.5)
    finally:
        stop(proc)
    assert proc.returncode == 0, (tmp_path / "sim.log").read_text()
    counts = {t: len(v) for t, v in record.items()}
    # discovery takes a moment (longer on a loaded machine, and what is published before it is lost), so
    # the counts only show that every stream flows; the rates come from the stamps of what arrived
    assert counts["/joint_states"] > 100 and counts["/tactile"] > 50 and counts["/audio"] > 25
    assert counts["/camera/image_raw"] > 20 and counts["/sim/task_phase"] >= 1
    for topic, hz in (("/joint_states", 200.0), ("/tactile", 100.0), ("/camera/image_raw", 30.0)):
        stamps = [_stamp(m) for _, m in record[topic]]
        rate = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / NS)
        assert 0.5 * hz < rate < 1.2 * hz, (topic, rate)             # best effort may drop some
    cams = [m for _, m in record["/camera/image_raw"]]
    assert cams[0].encoding == "rgb8" and (cams[0].height, cams[0].width) == (64, 64)
    stamps = [_stamp(m) for m in cams]
    assert abs(stamps[-1] / NS - time.time()) < 5                     # stamped with the node's (wall) clock


def test_trainer_node_trains_then_reloads_the_fusion_node(ros_node, sim_bag, trained_bundle, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from mdgm_ros.msg import ModelInfo

    node, env = ros_node
    env = {**env, "MDGM_ROS_CACHE": str(tmp_path / "cache")}
    infos, diagnostics = [], []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(ModelInfo, "/mdgm_fusion/model_info", lambda m: infos.append({"model_id": m.model_id}),
                             latched)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diagnostics.extend(s for s in m.status if s.name.startswith("/mdgm_trainer")),
                             50)
    fusion = start("mdgm_ros.ros.fusion_node", "--ros-args", "--params-file", str(ROOT / "config" / "fusion.yaml"),
                   "-p", f"bundle:={trained_bundle[0]}", "-p", f"bundle_roots:=['{tmp_path}']",
                   env=env, log=tmp_path / "fusion.log")
    trainer = None
    try:
        assert spin_until(node, lambda: infos, 60), (tmp_path / "fusion.log").read_text()[-2000:]
        first_id = infos[-1]["model_id"]
        new = tmp_path / "retrained"
        trainer = start("mdgm_ros.ros.trainer_node", "--ros-args", "-p", f"bags:=['{sim_bag[0]}']", "-p", f"out:={new}",
                        "-p", "epochs:=1", env=env, log=tmp_path / "trainer.log")
        assert spin_until(node, lambda: trainer.poll() is not None, 240), (tmp_path / "trainer.log").read_text()[-3000:]
        assert trainer.returncode == 0, (tmp_path / "trainer.log").read_text()[-3000:]
        assert spin_until(node, lambda: infos[-1]["model_id"] != first_id, 20)
        assert infos[-1]["model_id"].startswith("retrained-")
        states = [{kv.key: kv.value for kv in s.values}["state"] for s in diagnostics]
        assert "training" in states and states[-1] == "done"
        assert "reload_model: loaded retrained-" in (tmp_path / "trainer.log").read_text()
    finally:
        if trainer is not None:
            stop(trainer)
        stop(fusion)


def test_cli_simulate_writes_sqlite3_and_refuses_an_existing_bag(tmp_path):
    out = tmp_path / "bag"
    cmd = [sys.executable, "-m", "mdgm_ros", "simulate", "--out", str(out), "--duration", "1.5", "--storage", "sqlite3"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["messages"]["joints"] == 300 and list(out.glob("*.db3"))
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr


def test_play_loops_and_the_stamps_start_over(ros_node, tmp_path):
    from mdgm_ros.sim.record import simulate_to_bag

    node, env = ros_node
    record = defaultdict(list)
    _subscribe_all(node, record)
    bag = tmp_path / "short"
    count = simulate_to_bag(bag, 1.0, seed=1)["messages"]["joints"]
    proc = start("mdgm_ros", "play", str(bag), "--rate", "2", "--loop", "--wait", "10", env=env,
                 log=tmp_path / "play.log")
    try:
        assert spin_until(node, lambda: len(record["/joint_states"]) > 2.5 * count, 60), \
            (tmp_path / "play.log").read_text()
    finally:
        stop(proc)
    stamps = [_stamp(m) for _, m in record["/joint_states"]]
    backwards = [b for a, b in zip(stamps, stamps[1:]) if b < a]
    assert len(backwards) >= 2 and all(b == min(stamps) for b in backwards)
