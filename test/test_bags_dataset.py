"""Bags (rosbags MCAP / sqlite3, per distro) and the bag -> aligned samples pipeline."""
from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from mdgm_ros.core import default_robot_modalities
from mdgm_ros.data import bags, dataset
from mdgm_ros.data.labels import FaultLabel
from mdgm_ros.streams import bridge
from mdgm_ros.streams.params import fusion_params_from_file

NS = 1_000_000_000
PARAMS = "config/fusion.yaml"


def _write_small(path, storage="mcap", distro="kilted", n=5):
    with bags.BagWriter(path, storage=storage, distro=distro) as bag:
        for i in range(n):
            bag.write("/joint_states", i * NS // 10, bridge.array_to_joint_state(np.full(3, i, float), ["a", "b", "c"],
                                                                                ["position"], i * NS // 10))
            bag.write("/note", i * NS // 10, String(data=f"n{i}"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("distro", ["jazzy", "kilted"])
def test_bags_round_trip_per_storage_and_distro(tmp_path, storage, distro):
    path = tmp_path / f"{storage}_{distro}"
    _write_small(path, storage, distro)
    assert bags.topics(path) == {"/joint_states": "sensor_msgs/msg/JointState", "/note": "std_msgs/msg/String"}
    items = list(bags.messages(path))
    assert [t for t, _, _ in items] == ["/joint_states", "/note"] * 5
    positions = [list(m.position) for t, _, m in items if t == "/joint_states"]
    assert positions == [[float(i)] * 3 for i in range(5)]
    assert [m.data for t, _, m in items if t == "/note"] == [f"n{i}" for i in range(5)]
    assert list(tmp_path.iterdir()) == [path]                              # no temporary folder left


def test_a_humble_format_bag_reads(tmp_path):
    """Humble writes metadata version 5 and sqlite3 schema 3 without message definitions: downgrade one."""
    import sqlite3

    import yaml
    path = tmp_path / "humble"
    _write_small(path, "sqlite3", "jazzy")
    meta = yaml.safe_load((path / "metadata.yaml").read_text())
    info = meta["rosbag2_bagfile_information"]
    info["version"] = 5
    for key in ("custom_data", "ros_distro"):
        info.pop(key, None)
    for topic in info["topics_with_message_count"]:
        topic["topic_metadata"].pop("type_description_hash", None)
        topic["topic_metadata"]["offered_qos_profiles"] = ""
    (path / "metadata.yaml").write_text(yaml.safe_dump(meta))
    with sqlite3.connect(next(path.glob("*.db3"))) as db:
        db.execute("DROP TABLE message_definitions")
        db.execute("DROP TABLE metadata")
        db.execute("UPDATE schema SET schema_version = 3")
    assert bags.topics(path) == {"/joint_states": "sensor_msgs/msg/JointState", "/note": "std_msgs/msg/String"}
    assert [m.data for t, _, m in bags.messages(path) if t == "/note"] == [f"n{i}" for i in range(5)]


def test_bag_write_is_atomic_and_never_overwrites(tmp_path):
    path = tmp_path / "bag"
    with pytest.raises(RuntimeError, match="boom"):
        with bags.BagWriter(path) as bag:
            bag.write("/note", 1, String(data="x"))
            raise RuntimeError("boom")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    _write_small(path)
    with pytest.raises(bags.BagError, match="exists"):
        bags.BagWriter(path)


def test_damaged_or_missing_bags_raise_bag_errors(tmp_path):
    with pytest.raises(bags.BagError, match="does not exist"):
        bags.topics(tmp_path / "nothing")
    path = tmp_path / "bag"
    _write_small(path, n=200)
    data_file = next(path.glob("*.mcap"))
    data_file.write_bytes(b"not a bag at all")             # a cut or broken bag reads around it (test_damaged_bags)
    with pytest.raises(bags.BagError, match="not an MCAP file"):
        list(bags.messages(path))


def test_simulated_bag_has_every_stream_and_the_labels(sim_bag):
    path, result = sim_bag
    assert set(bags.topics(path)) == {"/camera/image_raw", "/joint_states", "/audio", "/tactile",
                                      "/sim/fault_labels", "/sim/task_phase"}
    assert result["messages"]["joints"] >= 16 * 200 - 400                  # a dropout removes at most 2 s
    kinds = sorted(f["kind"] for f in result["faults"])
    assert kinds == ["camera_blackout", "stream_dropout"]


def test_aligned_samples_follow_the_node_parameters(sim_bag):
    path, result = sim_bag
    specs = default_robot_modalities()
    anchored = dataset.align_bag(path, fusion_params_from_file(PARAMS), specs)
    assert len(anchored) == result["messages"]["camera"]                   # one sample per camera frame
    assert anchored.raw["camera"].dtype == np.uint8 and anchored.raw["audio"].shape[1:] == (8000,)
    assert anchored.mask[:, 0].all()                                        # the anchor is always present
    assert not anchored.mask[:10, 2].any()                                  # 0.5 s of audio needed first
    timer = dataset.align_bag(path, fusion_params_from_file(PARAMS, overrides={"anchor": "", "output_rate": 10.0}),
                              specs)
    assert abs(len(timer) - 160) <= 2
    labels = {lb.kind: lb for lb in anchored.labels}
    dropout = labels["stream_dropout"]
    column = ["camera", "joints", "audio", "tactile"].index(dropout.detail["stream"])
    inside = (timer.stamps > dropout.start_ns + 0.2 * NS) & (timer.stamps < dropout.end_ns)
    assert inside.any() and not timer.mask[inside, column].any()            # the dropped stream is missing
    blackout = labels["camera_blackout"]
    rows = anchored.fault == "camera_blackout"
    assert rows.any() and np.all((anchored.stamps[rows] >= blackout.start_ns)
                                 & (anchored.stamps[rows] <= blackout.end_ns))
    assert anchored.raw["camera"][rows].mean() < 10
    assert anchored.near_fault.sum() > (anchored.fault != "").sum()         # the settle margin is excluded too
    assert set(anchored.phase) - {""} <= {"reach", "hold", "approach", "descend", "grasp", "lift", "transport",
                                         "place", "release", "push", "retreat"}


def test_cache_is_keyed_by_content_and_gives_the_same_samples(sim_bag, tmp_path):
    path, _ = sim_bag
    params, specs = fusion_params_from_file(PARAMS), default_robot_modalities()
    logs = []
    first = dataset.load_bags([path], params, specs, tmp_path, log=logs.append)
    second = dataset.load_bags([path], params, specs, tmp_path, log=logs.append)
    assert "from the cache" not in logs[0] and "from the cache" in logs[1]
    for name in first.raw:
        assert np.array_equal(first.raw[name], second.raw[name])
    assert np.array_equal(first.mask, second.mask) and list(first.fault) == list(second.fault)
    other = fusion_params_from_file(PARAMS, overrides={"audio.staleness": 0.2})
    dataset.load_bags([path], other, specs, tmp_path, log=logs.append)
    assert "from the cache" not in logs[2] and len(list(tmp_path.glob("*.npz"))) == 2


def test_bad_messages_are_counted_and_unlabelled_bags_are_normal(tmp_path):
    path = tmp_path / "bag"
    specs = default_robot_modalities()
    with bags.BagWriter(path) as bag:
        for i in range(40):
            stamp = NS + i * NS // 30
            image = bridge.array_to_image(np.full((3, 64, 64), 0.5, np.float32), stamp)
            if i == 7:
                image = Image(header=image.header, height=64, width=64, encoding="rgb8", step=192, data=b"\x00" * 10)
            bag.write("/camera/image_raw", stamp, image)
            bag.write("/joint_states", stamp,
                      bridge.array_to_joint_state(np.zeros(27), [f"panda_joint{j}" for j in range(1, 8)]
                                                  + ["panda_finger_joint1", "panda_finger_joint2"],
                                                  ["position", "velocity", "effort"], stamp))
            bag.write("/joint_states", stamp,
                      JointState(header=bridge.array_to_joint_state(np.zeros(3), ["x", "y", "z"],
                                                                    ["position"], stamp).header))
    data = dataset.align_bag(path, fusion_params_from_file(PARAMS), specs)
    assert len(data) == 39
    assert data.rejects == {"camera:size": 1, "joints:unknown_joints": 40}
    assert (data.fault == "").all() and not data.near_fault.any() and data.labels == []
    assert (FaultLabel.from_json(FaultLabel("collision", 1, 2, {"a": 1}).to_json())
            == FaultLabel("collision", 1, 2, {"a": 1}))
