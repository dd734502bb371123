"""A damaged bag gives what it still holds: an MCAP file cut short (with or without its metadata.yaml) or
with a chunk of flipped bytes, a sqlite3 file cut short or with a broken page. The messages come in
log-time order with one warning saying what is lost, through the readers and through train, evaluate,
play and label as a user types them; an intact bag reads as before, without a warning."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
from ros_env import spin_until, start, stop
from rosbags.rosbag2 import Reader

from mdgm_ros.config_files import config_path
from mdgm_ros.core import default_robot_modalities
from mdgm_ros.data import bags, dataset
from mdgm_ros.data.shards import ensure_shards
from mdgm_ros.streams.params import fusion_params_from_file

ROOT = Path(__file__).resolve().parents[1]
NS = 1_000_000_000
FAST = ["--set", "data.cache=false", "--set", "data.block_s=0.5", "--set", "training.batch_size=16",
        "--set", "export.onnx=false", "--device", "cpu"]


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    """storage -> (a 6 s simulated bag, its messages as rosbags reads them); 48 px images make three MCAP chunks."""
    from mdgm_ros.sim.record import simulate_to_bag

    root = tmp_path_factory.mktemp("intact")
    out = {}
    for storage in ("mcap", "sqlite3"):
        path = root / storage
        simulate_to_bag(path, 6.0, seed=1, storage=storage, image_size=48)
        reader = Reader(path)
        reader.open()
        out[storage] = (path, [bags.BagMessage(c.topic, c.msgtype, int(t), bytes(d)) for c, t, d in reader.messages()])
        reader.close()
    return out


def _mcap_chunks(file: Path) -> list[tuple[int, int]]:
    """(offset, length) of every chunk record's body."""
    data, at, out = file.read_bytes(), 8, []
    while at + 9 <= len(data) and data[at] != 0x02:
        length = struct.unpack_from("<Q", data, at + 1)[0]
        if data[at] == 0x06:
            out.append((at + 9, length))
        at += 9 + length
    return out


def _flip_middle_chunk(file: Path) -> None:
    chunks = _mcap_chunks(file)
    assert len(chunks) >= 3
    body, length = chunks[len(chunks) // 2]
    data = bytearray(file.read_bytes())
    middle = body + 40 + (length - 40) // 2                           # inside the chunk's records
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    file.write_bytes(bytes(data))


def _break_middle_page(file: Path) -> None:
    """Overwrite the header of a table-leaf page near the middle of a sqlite3 file (page 1 stays whole)."""
    data = bytearray(file.read_bytes())
    size = struct.unpack_from(">H", data, 16)[0]
    pages = len(data) // size
    page = next(p for p in sorted(range(1, pages), key=lambda p: abs(p - pages // 2)) if data[p * size] == 0x0D)
    data[page * size + 1:page * size + 60] = b"\xff" * 59
    file.write_bytes(bytes(data))


def _cut(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])


@pytest.fixture(scope="module")
def damaged(intact, tmp_path_factory):
    """name -> (damaged copy, the intact messages); the copies are read, never changed, by the tests."""
    root = tmp_path_factory.mktemp("damaged")
    recipes = {"mcap-cut": ("mcap", _cut, False), "mcap-cut-no-metadata": ("mcap", _cut, True),
               "mcap-chunk": ("mcap", _flip_middle_chunk, False), "sqlite3-cut": ("sqlite3", _cut, False),
               "sqlite3-page": ("sqlite3", _break_middle_page, False)}
    out = {}
    for name, (storage, damage, drop_metadata) in recipes.items():
        path = shutil.copytree(intact[storage][0], root / name)
        damage(next(path.glob("*.mcap" if storage == "mcap" else "*.db3")))
        if drop_metadata:
            (path / "metadata.yaml").unlink()                   # a crash leaves none
        out[name] = (path, intact[storage][1])
    return out


def _read(path: Path, only=None) -> tuple[list[bags.BagMessage], list[str]]:
    """The bag's messages and the texts of the damage warnings they came with."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(bags.raw_messages(path, only))
    return items, [str(w.message) for w in caught if issubclass(w.category, bags.BagDamageWarning)]


def _in_order_and_among(part: list[bags.BagMessage], whole: list[bags.BagMessage]) -> bool:
    """Log times never go back, and ``part`` is ``whole`` with messages left out."""
    remaining = iter(whole)
    return [m.log_ns for m in part] == sorted(m.log_ns for m in part) and all(m in remaining for m in part)


def mdgm(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdgm_ros", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_damage_text_says_what_was_read_and_what_is_lost():
    cut = bags.BagDamage("run1", "MCAP cut short: no summary/footer", 1234, 1210, 29.5,
                         (bags.LostSpan(30.5, 60.0, None, "end"),), 30.5, 2444, 60.0)
    assert bags.damage_text(cut) == ("bag run1 is damaged (MCAP cut short: no summary/footer): read 1234 messages up "
                                     "to 30.5 s; 1210 messages / 29.5 s of the 2444 messages / 60 s in its metadata "
                                     "are lost")
    crash = bags.BagDamage("run1", "MCAP cut short: no summary/footer; no metadata.yaml", 1234, None, None,
                           (bags.LostSpan(30.5, None, None, "end"),), 30.5)
    assert bags.damage_text(crash).endswith("read 1234 messages up to 30.5 s; an unknown number after 30.5 s are lost")
    chunk = bags.BagDamage("run1", "MCAP chunk fails its checksum", 2132, 312, 2.1,
                           (bags.LostSpan(12.0, 14.1, 312, "chunk"),), 60.0, 2444, 60.0)
    assert "; one chunk of 312 messages spanning 2.1 s (12.0-14.1 s) skipped; 312 messages / 2.1 s of" \
        in bags.damage_text(chunk)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_an_intact_bag_reads_as_before_without_a_warning(intact, storage):
    path, whole = intact[storage]
    with warnings.catch_warnings():
        warnings.simplefilter("error", bags.BagDamageWarning)
        assert list(bags.raw_messages(path)) == whole
        assert sum(n for _, n in bags.topic_summary(path).values()) == len(whole)
        assert bags.start_ns(path) == whole[0].log_ns
        assert bags.duration_s(path) == pytest.approx((whole[-1].log_ns - whole[0].log_ns) / NS, abs=1e-6)
        assert sum(1 for _ in bags.messages(path, ["/joint_states"])) == 1200
    assert bags.known_damage(path) is None


@pytest.mark.parametrize("name", ["mcap-cut", "mcap-cut-no-metadata", "sqlite3-cut"])
def test_a_bag_cut_at_half_reads_its_first_part_with_one_warning(damaged, name):
    path, whole = damaged[name]
    items, said = _read(path)
    assert 0 < len(items) < len(whole) and _in_order_and_among(items, whole)
    early = [m for m in whole if m.log_ns < items[-1].log_ns - NS // 20]
    assert items[:len(early)] == early and len(early) > len(whole) // 3       # the whole first part
    assert len(said) == 1 and f"bag {path} is damaged (" in said[0] and "cut short" in said[0]
    read_s = (items[-1].log_ns - whole[0].log_ns) / NS
    if name.endswith("no-metadata"):
        assert said[0].endswith(f"an unknown number after {read_s:.1f} s are lost")
    else:
        assert said[0].endswith(f"{len(whole) - len(items)} messages / {6.0 - read_s:.1f} s of the {len(whole)} "
                                "messages / 6 s in its metadata are lost")

    found: list[bags.BagDamage] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", bags.BagDamageWarning)       # a callback takes the place of the warning
        assert list(bags.raw_messages(path, damage=found.append)) == items
        summary = bags.topic_summary(path, damage=found.append)
        assert bags.start_ns(path, damage=found.append) == whole[0].log_ns
        assert bags.duration_s(path, damage=found.append) == pytest.approx(read_s, abs=1e-6)
        assert set(bags.topics(path, damage=found.append)) == {m.topic for m in whole}
    assert len(found) == 5 and all(d == found[0] for d in found) and bags.known_damage(path) == found[0]
    assert bags.damage_text(found[0]) == said[0] and found[0].messages_read == len(items)
    assert sum(n for _, n in summary.values()) == len(items)
    assert found[0].messages_lost == (None if name.endswith("no-metadata") else len(whole) - len(items))

    with warnings.catch_warnings(record=True) as caught:            # one warning for a read that deserialises
        warnings.simplefilter("always")
        assert sum(1 for _ in bags.messages(path)) == len(items)
    assert [str(w.message) for w in caught if w.category is bags.BagDamageWarning] == said


@pytest.mark.parametrize("name, what", [("mcap-chunk", "one chunk of"), ("sqlite3-page", "one run of rows of")])
def test_a_corrupt_chunk_or_page_is_skipped_and_the_rest_reads(damaged, name, what):
    path, whole = damaged[name]
    items, said = _read(path)
    assert 0 < len(items) < len(whole) and _in_order_and_among(items, whole)
    assert items[0] == whole[0] and items[-1] == whole[-1]               # before and after the damage
    lost = len(whole) - len(items)
    assert len(said) == 1 and f"bag {path} is damaged (" in said[0]
    assert f"{what} {lost} messages spanning " in said[0] and f"; {lost} messages / " in said[0]
    joints, said = _read(path, ["/joint_states"])
    assert joints == [m for m in items if m.topic == "/joint_states"] and len(said) == 1


def test_a_damaged_bag_caches_its_samples_and_shards_report_its_damage_once(damaged, tmp_path):
    path, _ = damaged["mcap-chunk"]
    params = fusion_params_from_file(str(config_path("fusion.yaml")), overrides={"anchor": "", "output_rate": 30.0})
    logs: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = dataset.load_bags([path], params, default_robot_modalities(), tmp_path / "aligned", log=logs.append)
        again = dataset.load_bags([path], params, default_robot_modalities(), tmp_path / "aligned", log=logs.append)
        opened = ensure_shards([path], params, default_robot_modalities(), shard_size=50, workers=1,
                               root=tmp_path / "shards", log=logs.append)
    assert len(first) == len(again) == len(opened[0]) > 0 and any("from the cache" in line for line in logs)
    assert (first.stamps == again.stamps).all()
    said = [w for w in caught if w.category is bags.BagDamageWarning]
    assert len(said) == 2 and said[0].message.damage == said[1].message.damage        # the aligning read, the shards


def test_train_and_evaluate_a_cut_bag_with_one_warning_line(damaged, tmp_path):
    env = {**os.environ, "MDGM_ROS_CACHE": str(tmp_path / "cache")}
    crashed, _ = damaged["mcap-cut-no-metadata"]
    out = tmp_path / "model"
    done = mdgm("train", "--bags", str(crashed), "--config", str(ROOT / "config" / "train.yaml"), "--out", str(out),
                "--epochs", "1", *FAST, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "manifest.json").is_file() and "Traceback" not in done.stderr
    lines = _warning_lines(done.stderr)
    assert len(lines) == 1 and f"bag {crashed} is damaged (MCAP cut short" in lines[0], done.stderr[-3000:]

    cut, _ = damaged["sqlite3-cut"]
    done = mdgm("evaluate", "--model", str(out), "--bags", str(cut), "--json", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    lines = _warning_lines(done.stderr)
    assert len(lines) == 1 and f"bag {cut} is damaged (sqlite3 file cut short" in lines[0], done.stderr[-3000:]
    assert report["warnings"] == [lines[0].removeprefix("warning: ")] and report["samples"] > 0


def test_label_a_cut_bag(damaged, tmp_path):
    path = shutil.copytree(damaged["mcap-cut"][0], tmp_path / "cut")
    done = mdgm("label", str(path), "--add", "1:2:collision")
    assert done.returncode == 0, done.stderr
    assert "1 labels" in done.stdout and (tmp_path / "cut.labels.yaml").is_file()
    assert len(_warning_lines(done.stderr)) == 1 and "is damaged" in done.stderr
    beyond = mdgm("label", str(path), "--add", "4:5:collision")           # past what the cut bag still holds
    lasts = bags.duration_s(path, damage=bags.ignore_damage)
    assert beyond.returncode == 2 and f"the bag lasts {lasts:.3f} s" in beyond.stderr and 2.5 < lasts < 3.5


def test_play_publishes_what_a_cut_bag_holds(ros_node, damaged, tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    node, env = ros_node
    record = defaultdict(list)
    node.create_subscription(JointState, "/joint_states", lambda m: record["joints"].append(m),
                             QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
    path, _ = damaged["mcap-cut"]
    items, _ = _read(path)
    log = tmp_path / "play.log"
    proc = start("mdgm_ros", "play", str(path), "--rate", "10", "--wait", "10", env=env, log=log)
    try:
        assert spin_until(node, lambda: proc.poll() is not None, 90), log.read_text()
        spin_until(node, lambda: len(record["joints"]) >= sum(m.topic == "/joint_states" for m in items), 5)
        time.sleep(0.1)
    finally:
        stop(proc)
    text = log.read_text()
    assert proc.returncode == 0, text
    stats = json.loads(text.strip().splitlines()[-1])
    assert stats["published"] == len(items)
    assert len(record["joints"]) == sum(m.topic == "/joint_states" for m in items)        # reliable: all of it
    assert len(_warning_lines(text)) == 1 and f"bag {path} is damaged" in text
