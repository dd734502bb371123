"""rosbag2 files without rosbag2: write and read MCAP / sqlite3 bags with the pure-Python ``rosbags``.

Payloads are the standard CDR bytes of the ROS message (serialised by rclpy, as ``ros2 bag record``
stores them), so a bag written here opens in ``ros2 bag`` / Foxglove, and a bag recorded on a robot
(Humble, Jazzy or Kilted; MCAP or sqlite3) reads here. The message definitions stored in a written bag
come from the ``rosbags`` typestore of the chosen distro (Jazzy or Kilted; Humble bags are read only).
Reading deserialises with rclpy into the
same message classes the live node receives, so :mod:`mdgm_ros.streams.bridge` converts both paths alike.

Writes are atomic: a bag is written into a temporary folder next to the target and renamed into place.
MCAP bags are written with chunk CRCs (rosbags writes 0, "none"; they are filled in before the rename),
and rosbags checks every non-zero chunk CRC on reading, so flipped bytes end the read with a BagError.

A message that does not deserialise is skipped and counted per topic (``corrupt``); when more than
``max_corrupt`` of a topic's messages are corrupt the read stops with a BagError naming the topic.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# distros written (message definitions from their typestore, their rosbag2 metadata version); Humble's
# bags (metadata version 5) are read but not written: rosbags writes versions 8 and 9 only
DISTROS = {"jazzy": Stores.ROS2_JAZZY, "kilted": Stores.ROS2_KILTED}
_BAG_VERSION = {"jazzy": 8, "kilted": 9}
MAX_CORRUPT = 0.01          # default: stop when more than 1 % of a topic's messages do not deserialise
_MCAP_MAGIC = b"\x89MCAP0\r\n"


class BagError(RuntimeError):
    """A bag that cannot be read or written, with the path and the reason."""


@functools.lru_cache(maxsize=None)
def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ValueError, ImportError, AttributeError) as err:
        raise BagError(f"message type {msgtype!r} is not available in this ROS install: {err}") from err


def type_name(msg_or_class: Any) -> str:
    """rclpy message (or class) -> 'pkg/msg/Name'."""
    cls = msg_or_class if isinstance(msg_or_class, type) else type(msg_or_class)
    package = cls.__module__.split(".")[0]
    return f"{package}/msg/{cls.__name__}"


class BagWriter:
    """``with BagWriter(path) as bag: bag.write(topic, stamp_ns, msg)``; the bag appears on success."""

    def __init__(self, path: str | Path, storage: str = "mcap", distro: str = "kilted"):
        if storage not in STORAGES:
            raise BagError(f"storage {storage!r} not in {sorted(STORAGES)}")
        if distro not in DISTROS:
            raise BagError(f"distro {distro!r} not in {sorted(DISTROS)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists; remove it or choose another --out")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_root = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._writer = Writer(self._tmp_root / self.path.name, version=_BAG_VERSION[distro],
                              storage_plugin=STORAGES[storage])
        self._typestore = get_typestore(DISTROS[distro])
        self._connections: dict[str, Any] = {}
        self.count = 0

    def __enter__(self) -> "BagWriter":
        self._writer.open()
        return self

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, type_name(msg), typestore=self._typestore)
            self._connections[topic] = connection
        self._writer.write(connection, int(stamp_ns), serialize_message(msg))
        self.count += 1

    def set_info(self, key: str, value: str) -> None:
        """A string stored in the bag's metadata (custom_data, rosbag2 version 9 only)."""
        if self._writer.version >= 9:
            self._writer.set_custom_data(f"mdgm_ros.{key}", value)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.close()
            if exc_type is None:
                for file in (self._tmp_root / self.path.name).glob("*.mcap"):
                    add_chunk_crcs(file)
                (self._tmp_root / self.path.name).rename(self.path)
        finally:
            shutil.rmtree(self._tmp_root, ignore_errors=True)


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    log_ns: int
    data: bytes


def _open(path: Path) -> Reader:
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises several unrelated types for broken bags
        raise BagError(f"cannot open bag {path}: {type(err).__name__}: {err}") from err
    return reader


def topics(path: str | Path) -> dict[str, str]:
    """topic -> message type of a bag."""
    reader = _open(Path(path))
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def topic_summary(path: str | Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) of a bag, from its metadata (nothing is deserialised)."""
    reader = _open(Path(path))
    try:
        counts: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            _, before = counts.get(c.topic, (c.msgtype, 0))
            counts[c.topic] = (c.msgtype, before + int(c.msgcount))
        return counts
    finally:
        reader.close()


def start_ns(path: str | Path) -> int:
    """Log time of the bag's first message (0 for an empty bag): the origin of relative label times."""
    reader = _open(Path(path))
    try:
        return int(reader.start_time) if reader.message_count else 0
    finally:
        reader.close()


def duration_s(path: str | Path) -> float:
    """Seconds from the bag's first to its last message."""
    reader = _open(Path(path))
    try:
        return (int(reader.end_time) - int(reader.start_time)) / 1e9 if reader.message_count else 0.0
    finally:
        reader.close()


def raw_messages(path: str | Path, only: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """A bag's messages in log-time order as CDR bytes (for replay without deserialising)."""
    path = Path(path)
    reader = _open(path)
    try:
        wanted = set(only) if only is not None else None
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not connections:                        # rosbags reads every topic for an empty selection
            return
        for connection, log_ns, data in reader.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, int(log_ns), bytes(data))
    except BagError:
        raise
    except Exception as err:
        raise BagError(f"bag {path} is damaged: {type(err).__name__}: {err}") from err
    finally:
        reader.close()


def messages(path: str | Path, only: Iterable[str] | None = None, max_corrupt: float = MAX_CORRUPT,
             corrupt: Counter | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log_ns, rclpy message) in log-time order. A message that does not deserialise is skipped
    and counted in ``corrupt`` (topic -> count); more than ``max_corrupt`` of a topic's messages
    corrupt stops the read with a BagError."""
    corrupt = Counter() if corrupt is None else corrupt
    totals = {topic: count for topic, (_, count) in topic_summary(path).items()}
    for item in raw_messages(path, only):
        try:
            msg = deserialize_message(item.data, message_class(item.msgtype))
        except BagError:
            raise
        except Exception as err:  # rclpy raises RMWError / RuntimeError / ... for broken CDR
            corrupt[item.topic] += 1
            _check_corrupt(path, item.topic, corrupt[item.topic], totals.get(item.topic, 0), max_corrupt, err)
            continue
        yield item.topic, item.log_ns, msg


def _check_corrupt(path, topic: str, count: int, total: int, max_corrupt: float, err: Exception) -> None:
    if count > max_corrupt * max(total, 1):
        raise BagError(f"bag {path}: {count} of {total} messages on {topic} do not deserialise (more than "
                       f"the {max_corrupt:.1%} that are skipped; --max-corrupt raises that): {type(err).__name__}: "
                       f"{str(err)[:200]}")


def add_chunk_crcs(file: Path) -> int:
    """Fill in the CRC32 of every uncompressed MCAP chunk whose CRC is 0 (in place); returns how many."""
    with open(file, "r+b") as fh:
        data = bytearray(fh.read())
        if data[:8] != _MCAP_MAGIC:
            raise BagError(f"{file} is not an MCAP file")
        patched, at = 0, 8
        while at + 9 <= len(data):
            opcode, length = data[at], struct.unpack_from("<Q", data, at + 1)[0]
            body = at + 9
            if opcode == 0x02:                                 # footer
                break
            if opcode == 0x06 and _patch_chunk(data, body, length):
                patched += 1
            at = body + length
        if patched:
            fh.seek(0)
            fh.write(data)
            fh.flush()
    return patched


def _patch_chunk(data: bytearray, body: int, length: int) -> bool:
    crc_at = body + 24
    (crc,) = struct.unpack_from("<I", data, crc_at)
    (name_len,) = struct.unpack_from("<I", data, body + 28)
    if crc or name_len:                                        # already set, or compressed: leave it
        return False
    records_at = body + 32
    (size,) = struct.unpack_from("<Q", data, records_at)
    if records_at + 8 + size > body + length:
        raise BagError("MCAP chunk record overruns its length")
    struct.pack_into("<I", data, crc_at, zlib.crc32(data[records_at + 8:records_at + 8 + size]))
    return True


def content_hash(path: str | Path) -> str:
    """sha256 over the bag's files (names and bytes): the cache key of its aligned samples. Memoised
    per (file, size, mtime), so a training run reads each bag's bytes once for all its uses."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    signature = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _content_hash(signature)


@functools.lru_cache(maxsize=64)
def _content_hash(signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in signature:
        file = Path(name)
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
