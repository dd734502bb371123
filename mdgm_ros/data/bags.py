"""rosbag2 files without rosbag2: write and read MCAP / sqlite3 bags with the pure-Python ``rosbags``.

Payloads are the standard CDR bytes of the ROS message (serialised by rclpy, as ``ros2 bag record``
stores them), so a bag written here opens in ``ros2 bag`` / Foxglove, and a bag recorded on a robot
(Humble, Jazzy or Kilted; MCAP or sqlite3) reads here. The message definitions stored in a written bag
come from the ``rosbags`` typestore of the chosen distro (Jazzy or Kilted; Humble bags are read only).
Reading deserialises with rclpy into the
same message classes the live node receives, so :mod:`mdgm_ros.streams.bridge` converts both paths alike.

Writes are atomic: a bag is written into a temporary folder next to the target and renamed into place.
MCAP bags are written with chunk CRCs (rosbags writes 0, "none"; they are filled in before the rename),
and rosbags checks every non-zero chunk CRC on reading.

A damaged bag gives what it still holds. An intact bag is read by rosbags; where rosbags cannot open a
bag or stops inside it, the bag's files are read around the damage: an MCAP file record by record in file
order (mcap's ``StreamReader``, as ``mcap recover`` does), skipping a chunk that fails its CRC or does not
decompress and ending at a cut (the cut chunk gives its whole records); a sqlite3 file row by row, skipping
the rows that raise (a malformed page) and reading a file cut short. Topics and types come from the
file's channels / topics table, else from metadata.yaml, which a crash may leave missing. The messages
come in log-time order, and what was lost is a :class:`BagDamage` given once per read to the reader's
``damage`` callback (by default a :class:`BagDamageWarning`; :func:`damage_text` words it on one line).

A message that does not deserialise is skipped and counted per topic (``corrupt``); when more than
``max_corrupt`` of a topic's messages are corrupt the read stops with a BagError naming the topic.
"""
from __future__ import annotations

import functools
import hashlib
import heapq
import math
import shutil
import sqlite3
import struct
import tempfile
import warnings
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, Chunk, Footer, Schema
from mcap.records import Message as McapMessage
from mcap.stream_reader import CRCValidationError, StreamReader, breakup_chunk, get_chunk_data_stream
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


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class; BagError when this install lacks it."""
    from ..streams.bridge import message_class as find

    try:
        return find(msgtype)
    except ValueError as err:
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


def _open(path: Path) -> tuple[Reader | None, _Salvaged | None]:
    """rosbags' reader of an intact bag, or (None, what a damaged one still holds)."""
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises several unrelated types for broken bags
        salvaged = _salvage(path)
        if salvaged is None:
            raise BagError(f"cannot open bag {path}: {type(err).__name__}: {err}") from err
        return None, salvaged
    return reader, None


def topics(path: str | Path, damage: DamageHook | None = None) -> dict[str, str]:
    """topic -> message type of a bag. ``damage``: where a damaged bag's :class:`BagDamage` goes (the
    default: a :class:`BagDamageWarning`), here and in every function below that opens a bag."""
    reader, salvaged = _open(Path(path))
    if salvaged is not None:
        _report(salvaged.damage, damage)
        return {topic: kind for topic, (kind, _) in salvaged.topics.items()}
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def topic_summary(path: str | Path, damage: DamageHook | None = None) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) of a bag, from its metadata (nothing is deserialised);
    of a damaged bag that rosbags cannot open, the messages that still read."""
    reader, salvaged = _open(Path(path))
    if salvaged is not None:
        _report(salvaged.damage, damage)
        return dict(salvaged.topics)
    try:
        counts: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            _, before = counts.get(c.topic, (c.msgtype, 0))
            counts[c.topic] = (c.msgtype, before + int(c.msgcount))
        return counts
    finally:
        reader.close()


def start_ns(path: str | Path, damage: DamageHook | None = None) -> int:
    """Log time of the bag's first message (0 for an empty bag): the origin of relative label times."""
    reader, salvaged = _open(Path(path))
    if salvaged is not None:
        _report(salvaged.damage, damage)
        return salvaged.first_ns or 0
    try:
        return int(reader.start_time) if reader.message_count else 0
    finally:
        reader.close()


def duration_s(path: str | Path, damage: DamageHook | None = None) -> float:
    """Seconds from the bag's first to its last message."""
    reader, salvaged = _open(Path(path))
    if salvaged is not None:
        _report(salvaged.damage, damage)
        return (salvaged.last_ns + 1 - salvaged.first_ns) / 1e9 if salvaged.first_ns is not None else 0.0
    try:
        return (int(reader.end_time) - int(reader.start_time)) / 1e9 if reader.message_count else 0.0
    finally:
        reader.close()


def raw_messages(path: str | Path, only: Iterable[str] | None = None,
                 damage: DamageHook | None = None) -> Iterator[BagMessage]:
    """A bag's messages in log-time order as CDR bytes (for replay without deserialising). A damaged bag
    gives the messages it still holds, and its :class:`BagDamage` once to ``damage``."""
    path = Path(path)
    wanted = set(only) if only is not None else None
    reader, salvaged = _open(path)
    if salvaged is not None:
        _report(salvaged.damage, damage)
        yield from _salvaged_messages(salvaged, wanted)
        return
    last_ns, at_last, failure = None, [], None     # what was given at the last instant, were the read to fail
    try:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not connections:                        # rosbags reads every topic for an empty selection
            return
        stream = reader.messages(connections=connections)
        while True:
            try:
                connection, log_ns, data = next(stream)
            except StopIteration:
                break
            except Exception as err:               # a chunk that fails its CRC, a malformed page, ...
                failure = err
                break
            if log_ns != last_ns:
                last_ns, at_last = log_ns, []
            at_last.append((connection.topic, bytes(data)))
            yield BagMessage(connection.topic, connection.msgtype, int(log_ns), at_last[-1][1])
    finally:
        reader.close()
    if failure is None:
        return
    salvaged = _salvage(path)
    if salvaged is None:
        raise BagError(f"bag {path} is damaged: {type(failure).__name__}: {failure}") from failure
    _report(salvaged.damage, damage)
    for item in _salvaged_messages(salvaged, wanted):          # the rest, after what was given
        if last_ns is not None and item.log_ns < last_ns:
            continue
        if item.log_ns == last_ns and (item.topic, item.data) in at_last:
            at_last.remove((item.topic, item.data))
            continue
        yield item


def first_message(path: str | Path, topic: str) -> Any:
    """The first message on ``topic`` (deserialised), or None when the bag holds none."""
    for _, _, msg in messages(path, [topic]):
        return msg
    return None


def messages(path: str | Path, only: Iterable[str] | None = None, max_corrupt: float = MAX_CORRUPT,
             corrupt: Counter | None = None, damage: DamageHook | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log_ns, rclpy message) in log-time order. A message that does not deserialise is skipped
    and counted in ``corrupt`` (topic -> count); more than ``max_corrupt`` of a topic's messages
    corrupt stops the read with a BagError."""
    corrupt = Counter() if corrupt is None else corrupt
    totals = {topic: count for topic, (_, count) in topic_summary(path, damage=ignore_damage).items()}
    for item in raw_messages(path, only, damage):
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
    return _content_hash(_signature(path))


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


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


# ----------------------------------------------------------------------------- damaged bags
class BagDamageWarning(UserWarning):
    """A damaged bag was read around its damage; ``damage`` is its :class:`BagDamage`."""

    def __init__(self, damage: BagDamage):
        super().__init__(damage_text(damage))
        self.damage = damage


@dataclass(frozen=True)
class LostSpan:
    """Messages a damaged bag lost from ``start_s`` to ``end_s`` seconds after its start (``end_s`` None:
    an unknown end); ``messages`` None: how many is unknown. ``what``: "chunk", "run of rows" or "end"."""

    start_s: float
    end_s: float | None
    messages: int | None
    what: str


@dataclass(frozen=True)
class BagDamage:
    """What a damaged bag still holds and what it lost; seconds count from the bag's start (its metadata's,
    else its first message that reads). ``None``: unknown."""

    path: str
    kind: str                           # what is wrong, in words
    messages_read: int
    messages_lost: int | None
    seconds_lost: float | None
    spans: tuple[LostSpan, ...]
    read_s: float = 0.0                 # the last message that reads
    total_messages: int | None = None   # as the bag's metadata.yaml says, where it has one
    total_s: float | None = None


DamageHook = Callable[[BagDamage], None]
_PLURAL = {"chunk": "chunks", "run of rows": "runs of rows"}


def damage_text(damage: BagDamage) -> str:
    """One line: what is wrong with the bag, what was read and what is lost."""
    d = damage
    text = f"bag {d.path} is damaged ({d.kind}): read {d.messages_read} messages up to {d.read_s:.1f} s"
    for what in dict.fromkeys(s.what for s in d.spans if s.what != "end"):
        spans = [s for s in d.spans if s.what == what]
        counts = [s.messages for s in spans]
        count = "an unknown number of" if None in counts else str(sum(counts))
        seconds = sum(s.end_s - s.start_s for s in spans)
        ranges = ", ".join(f"{_seconds(s.start_s, s.end_s - s.start_s)}-{_seconds(s.end_s, s.end_s - s.start_s)} s"
                           for s in spans)
        many = "one " + what if len(spans) == 1 else f"{len(spans)} {_PLURAL.get(what, what)}"
        text += f"; {many} of {count} messages spanning {_seconds(seconds, seconds)} s ({ranges}) skipped"
    end = next((s for s in d.spans if s.what == "end"), None)
    if d.total_messages is not None and d.total_s is not None and d.messages_lost is not None:
        seconds = "" if d.seconds_lost is None else f" / {_seconds(d.seconds_lost, d.seconds_lost)} s"
        text += (f"; {d.messages_lost} messages{seconds} of the {d.total_messages} messages / {d.total_s:g} s "
                 "in its metadata are lost")
    elif end is not None:
        text += f"; an unknown number after {end.start_s:.1f} s are lost"
    elif not d.spans and not d.messages_lost:
        text += "; nothing else is lost"
    return text


def _seconds(value: float, scale: float) -> str:
    """Tenths of a second, hundredths where ``scale`` is under a second."""
    return f"{value:.1f}" if scale >= 1 else f"{value:.2f}"


def report_damage(damage: BagDamage) -> None:
    """The default ``damage`` of the bag readers: a :class:`BagDamageWarning` (``warnings``)."""
    warnings.warn(BagDamageWarning(damage), stacklevel=3)


def ignore_damage(damage: BagDamage) -> None:
    """A ``damage`` for a read whose damage is reported by another read of the same pass."""


def known_damage(path: str | Path) -> BagDamage | None:
    """The damage found by a read of this bag in this process (the bag unchanged since), else None."""
    path = Path(path)
    found = _SALVAGED.get(_signature(path)) if path.exists() else None
    return found.damage if found is not None else None


def _report(found: BagDamage, damage: DamageHook | None) -> None:
    (report_damage if damage is None else damage)(found)


@dataclass
class _Scan:
    """One storage file of a damaged bag: the messages that read, and what does not."""

    file: Path
    topics: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # channel / topic id -> topic, type
    counts: Counter = field(default_factory=Counter)                          # channel -> messages that read
    first_ns: int | None = None
    last_ns: int | None = None
    skipped: list[tuple[int | None, int, int]] = field(default_factory=list)  # (messages, start, end ns)
    problems: list[str] = field(default_factory=list)
    cut: bool = False                   # nothing after last_ns reads
    unknown: int = 0                    # messages that read but name no known topic (lost)
    plan: Any = None                    # how to read it again (storage specific)

    def add(self, channel: int, log_ns: int) -> None:
        self.counts[channel] += 1
        self.first_ns = log_ns if self.first_ns is None else min(self.first_ns, log_ns)
        self.last_ns = log_ns if self.last_ns is None else max(self.last_ns, log_ns)


@dataclass
class _Salvaged:
    scans: list[_Scan]
    topics: dict[str, tuple[str, int]]
    first_ns: int | None
    last_ns: int | None
    damage: BagDamage


_SALVAGED: OrderedDict[tuple, _Salvaged] = OrderedDict()      # by the bag's files (names, sizes, mtimes)


def _salvage(path: Path) -> _Salvaged | None:
    """What a bag that rosbags cannot read still holds, read the way ``mcap recover`` reads an MCAP file
    and row by row from a sqlite3 file; None where nothing in it is damaged."""
    key = _signature(path)
    if key in _SALVAGED:
        _SALVAGED.move_to_end(key)
        return _SALVAGED[key]
    info = _bag_info(path)
    files = _storage_files(path, info)
    if not files:
        return None
    expected = {Path(f.get("path", "")).name: f.get("message_count") for f in (info or {}).get("files") or []}
    try:
        scans = [_scan_mcap(f) if f.suffix == ".mcap" else _scan_sqlite(f, expected.get(f.name))
                 for f in files]
    except (OSError, sqlite3.Error) as err:
        raise BagError(f"cannot read bag {path}: {type(err).__name__}: {err}") from err
    salvaged = _combine(path, info, scans)
    if salvaged is not None:
        _SALVAGED[key] = salvaged
        while len(_SALVAGED) > 8:
            _SALVAGED.popitem(last=False)
    return salvaged


def _bag_info(path: Path) -> dict[str, Any] | None:
    """The bag's metadata.yaml (rosbag2_bagfile_information), None where it is missing or unreadable."""
    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        int(info["starting_time"]["nanoseconds_since_epoch"]), int(info["duration"]["nanoseconds"])
        return info
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _storage_files(path: Path, info: dict[str, Any] | None) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix in (".mcap", ".db3") else []
    listed = [path / name for name in (info or {}).get("relative_file_paths") or []]
    files = [f for f in listed if f.is_file() and f.suffix in (".mcap", ".db3")]
    return files or sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".mcap", ".db3"))


def _combine(path: Path, info: dict[str, Any] | None, scans: list[_Scan]) -> _Salvaged | None:
    types = {t["topic_metadata"]["name"]: t["topic_metadata"]["type"]
             for t in (info or {}).get("topics_with_message_count") or []}
    for scan in scans:
        for channel, (topic, kind) in list(scan.topics.items()):
            if kind is None and topic in types:
                scan.topics[channel] = (topic, types[topic])
            elif kind is None:
                del scan.topics[channel]
        for channel in [c for c in scan.counts if c not in scan.topics]:
            scan.unknown += scan.counts.pop(channel)
    problems = list(dict.fromkeys(p for scan in scans for p in scan.problems))
    unknown = sum(scan.unknown for scan in scans)
    if unknown:
        problems.append(f"{unknown} messages name no topic that reads")
    if info is None:
        problems.append("no metadata.yaml")
    if not problems:
        return None
    counts: dict[str, tuple[str, int]] = {topic: (kind, 0) for topic, kind in types.items()}
    for scan in scans:
        for channel, (topic, kind) in scan.topics.items():
            counts[topic] = (kind, counts.get(topic, (kind, 0))[1] + scan.counts.get(channel, 0))
    firsts = [s.first_ns for s in scans if s.first_ns is not None]
    lasts = [s.last_ns for s in scans if s.last_ns is not None]
    first, last = (min(firsts), max(lasts)) if firsts else (None, None)
    total = int(info["message_count"]) if info is not None and "message_count" in info else None
    origin = int(info["starting_time"]["nanoseconds_since_epoch"]) if info is not None else (first or 0)
    total_s = int(info["duration"]["nanoseconds"]) / 1e9 if info is not None else None

    def rel(ns: int) -> float:
        return (ns - origin) / 1e9

    spans = []
    for i, scan in enumerate(scans):
        what = "chunk" if scan.file.suffix == ".mcap" else "run of rows"
        spans += [LostSpan(rel(a), rel(b), n, what) for n, a, b in scan.skipped]
        if scan.cut:
            after = [s.first_ns for s in scans[i + 1:] if s.first_ns is not None]
            start = scan.last_ns if scan.last_ns is not None else (first if first is not None else origin)
            end = after[0] if after else (origin + int(total_s * 1e9) if total_s is not None else None)
            spans.append(LostSpan(rel(start), None if end is None else max(rel(end), rel(start)), None, "end"))
    spans.sort(key=lambda s: (s.what == "end", s.start_s))
    read = sum(sum(scan.counts.values()) for scan in scans)
    if total is not None:
        lost = max(total - read, 0)
    else:
        known = [s.messages for s in spans]
        lost = None if None in known else sum(known) + unknown
    seconds = None if any(s.end_s is None for s in spans) else sum(s.end_s - s.start_s for s in spans)
    damage = BagDamage(str(path), "; ".join(problems), read, lost, seconds, tuple(spans),
                       rel(last) if last is not None else 0.0, total, total_s)
    return _Salvaged(scans, counts, first, last, damage)


def _salvaged_messages(salvaged: _Salvaged, wanted: set[str] | None) -> Iterator[BagMessage]:
    streams = [(_read_mcap if s.file.suffix == ".mcap" else _read_sqlite)(s, wanted) for s in salvaged.scans]
    yield from heapq.merge(*streams, key=lambda item: item.log_ns)


# MCAP: the records in file order (mcap's StreamReader, chunks whole); a chunk that fails its CRC or does not
# decompress is skipped, a cut ends the file: its last chunk gives the whole records it still holds.
@dataclass(frozen=True)
class _McapStop:
    offset: int                         # where the part of the file that does not read starts
    error: Exception


class _Counted:
    """A binary file that counts the bytes read from it (the offsets of the records)."""

    def __init__(self, handle):
        self.handle, self.pos = handle, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.pos += len(data)
        return data


def _mcap_records(file: Path) -> Iterator[Any]:
    """The top-level records of an MCAP file in order; a :class:`_McapStop` where the rest does not read."""
    with open(file, "rb") as handle:
        source = _Counted(handle)
        records = StreamReader(source, emit_chunks=True, record_size_limit=max(file.stat().st_size, 1)).records
        offset = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as err:    # mcap raises EndOfFile, struct.error, ... for a cut or broken record
                yield _McapStop(offset, err)
                return
            offset = source.pos
            yield record
            if isinstance(record, Footer):
                return


def _unit(record: Chunk | McapMessage) -> list[Any]:
    """The records of a chunk (its CRC checked), or the message outside chunks."""
    return breakup_chunk(record, validate_crc=True) if isinstance(record, Chunk) else [record]


def _walk(data: bytes) -> tuple[list[Any], bool]:
    """The schemas, channels and messages among the whole records at the start of ``data``, and whether
    the records fill it exactly."""
    found, at = [], 0
    while at + 9 <= len(data):
        opcode, length = data[at], struct.unpack_from("<Q", data, at + 1)[0]
        if at + 9 + length > len(data):
            break
        stream = ReadDataStream(BytesIO(data[at + 9:at + 9 + length]))
        try:
            if opcode == Opcode.MESSAGE:
                found.append(McapMessage.read(stream, length))
            elif opcode == Opcode.CHANNEL:
                found.append(Channel.read(stream))
            elif opcode == Opcode.SCHEMA:
                found.append(Schema.read(stream))
        except Exception:               # a record broken inside: not used
            pass
        at += 9 + length
    return found, at == len(data)


def _runs_past_end(file: Path, offset: int) -> bool:
    """Whether the record at ``offset`` runs past the end of the file (the file was cut there)."""
    with open(file, "rb") as handle:
        handle.seek(offset)
        head = handle.read(9)
    return len(head) < 9 or offset + 9 + struct.unpack_from("<Q", head, 1)[0] > file.stat().st_size


def _cut_chunk(file: Path, offset: int) -> list[Any]:
    """The whole records of the cut (uncompressed) chunk at ``offset``: the end of a file cut short."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        handle.seek(offset)
        head = handle.read(9)
        if len(head) < 9 or head[0] != Opcode.CHUNK:
            return []
        if not _runs_past_end(file, offset):    # the record is whole, so broken rather than cut: not trusted
            return []
        body = handle.read(min(size - offset - 9, 1 << 28))
    if len(body) < 40 or struct.unpack_from("<I", body, 28)[0]:          # compressed: a cut stream
        return []
    return _walk(body[40:])[0]


def _scan_mcap(file: Path) -> _Scan:
    with open(file, "rb") as handle:
        head = handle.read(8)
    if head != _MCAP_MAGIC[:len(head)]:
        raise BagError(f"{file} is not an MCAP file")
    scan = _Scan(file)
    channels: dict[int, Channel] = {}
    schemas: dict[int, Schema] = {}
    spare: list[Any] = []               # channels and schemas in chunks that do not read: the last resort
    units: list[int | None] = []        # each chunk / message outside chunks: its first log time, None: skipped
    cut_at = None

    def take(records: list[Any]) -> int | None:
        first = None
        for record in records:
            if isinstance(record, Channel):
                channels[record.id] = record
            elif isinstance(record, Schema):
                schemas[record.id] = record
            elif isinstance(record, McapMessage):
                scan.add(record.channel_id, record.log_time)
                first = record.log_time if first is None else min(first, record.log_time)
        return first

    for record in _mcap_records(file):
        if isinstance(record, Channel | Schema):
            take([record])
        elif isinstance(record, Chunk | McapMessage):
            try:
                units.append(take(_unit(record)))
            except Exception as err:    # a CRC that fails, a chunk that does not decompress or parse
                units.append(None)
                scan.problems.append("MCAP chunk fails its checksum" if isinstance(err, CRCValidationError)
                                     else f"MCAP chunk does not read: {type(err).__name__}")
                scan.skipped.append(_lost_chunk(record, spare))
        elif isinstance(record, _McapStop):
            records = _cut_chunk(file, record.offset)
            if records:
                units.append(take(records))
                cut_at = record.offset
            scan.problems.append("MCAP cut short: no summary/footer" if _runs_past_end(file, record.offset) else
                                 f"MCAP unreadable from byte {record.offset}: {type(record.error).__name__}")
            scan.cut = True
    for item in spare:
        (channels if isinstance(item, Channel) else schemas).setdefault(item.id, item)
    for channel in channels.values():
        schema = schemas.get(channel.schema_id)
        scan.topics[channel.id] = (channel.topic, schema.name if schema is not None and schema.name else None)
    scan.plan = (units, cut_at)
    return scan


def _lost_chunk(record: Chunk | McapMessage, spare: list[Any]) -> tuple[int | None, int, int]:
    """(messages, start, end ns) of a chunk that does not read; its channels and schemas go to ``spare``."""
    if not isinstance(record, Chunk):
        return 1, record.log_time, record.log_time
    try:
        data = record.data if not record.compression else get_chunk_data_stream(record)[0].read(
            record.uncompressed_size)
        found, whole = _walk(data)
    except Exception:                   # does not decompress: how many messages is unknown
        found, whole = [], False
    spare += [r for r in found if isinstance(r, Channel | Schema)]
    count = sum(isinstance(r, McapMessage) for r in found) if whole else None
    start, end = record.message_start_time, record.message_end_time
    return count, start, max(start, end)


def _read_mcap(scan: _Scan, wanted: set[str] | None) -> Iterator[BagMessage]:
    """The messages of an MCAP file that read, in log-time order: chunks merged as rosbags merges them."""
    units, cut_at = scan.plan
    limits = [math.inf] * (len(units) + 1)          # the earliest message of this unit or any later one
    for k in range(len(units) - 1, -1, -1):
        limits[k] = min(limits[k + 1], math.inf if units[k] is None else units[k])
    heap: list[tuple] = []
    ordinal = 0

    def push(records: list[Any]) -> None:
        for i, record in enumerate(records):
            if isinstance(record, McapMessage) and record.channel_id in scan.topics:
                topic, kind = scan.topics[record.channel_id]
                if wanted is None or topic in wanted:
                    heapq.heappush(heap, (record.log_time, ordinal, i, topic, kind, record.data))

    for record in _mcap_records(scan.file):
        if isinstance(record, _McapStop):
            if cut_at is not None and ordinal < len(units):
                push(_cut_chunk(scan.file, cut_at))
                ordinal += 1
            break
        if not isinstance(record, Chunk | McapMessage) or ordinal >= len(units):
            continue
        if units[ordinal] is not None:
            push(_unit(record))
        ordinal += 1
        while heap and heap[0][0] <= limits[ordinal]:
            log_ns, _, _, topic, kind, data = heapq.heappop(heap)
            yield BagMessage(topic, kind, int(log_ns), bytes(data))
    while heap:
        log_ns, _, _, topic, kind, data = heapq.heappop(heap)
        yield BagMessage(topic, kind, int(log_ns), bytes(data))


# sqlite3: row by row in rowid order; a row range that raises (a malformed or missing page) is skipped to the
# next row that reads (found by bisection). A file cut short reads with writable_schema (its page count is
# then taken from the file's size).
_ROWS = "SELECT id, topic_id, timestamp, data FROM messages WHERE id >= ? ORDER BY id"


def _sqlite(file: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{file.resolve().as_uri()}?immutable=1&mode=ro", uri=True)
    db.execute("PRAGMA writable_schema=ON")
    return db


def _readable(db: sqlite3.Connection, at: int) -> bool:
    """Whether the first row from rowid ``at`` on reads (or there is none)."""
    try:
        db.execute(_ROWS + " LIMIT 1", (at,)).fetchall()
        return True
    except sqlite3.DatabaseError:
        return False


def _next_readable(db: sqlite3.Connection, bad: int, last: int | None) -> int | None:
    """The first rowid after ``bad`` from which rows read again; None: nothing after it reads."""
    step, good = 1, None
    while good is None:
        at = bad + step
        if (last is not None and at > last) or step > 1 << 40:
            return None
        if _readable(db, at):
            good = at
        else:
            bad, step = at, step * 2
    while good - bad > 1:
        middle = (bad + good) // 2
        bad, good = (bad, middle) if _readable(db, middle) else (middle, good)
    return good


def _scan_sqlite(file: Path, expected: int | None) -> _Scan:
    scan = _Scan(file)
    db = _sqlite(file)
    try:
        try:
            scan.topics = {int(i): (str(name), str(kind)) for i, name, kind in
                           db.execute("SELECT id, name, type FROM topics")}
        except sqlite3.DatabaseError as err:
            raise BagError(f"{file}: its topics table does not read: {err}") from err
        last = None
        try:
            last = db.execute("SELECT max(id) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError:
            pass
        last = max(last or 0, expected or 0) or None
        try:
            lo = db.execute("SELECT min(id) FROM messages").fetchone()[0] or 1
        except sqlite3.DatabaseError:
            lo = 1
        rows: list[tuple[int, int, int]] = []
        runs: list[tuple[int, int, int]] = []           # rowids that do not read: (first, last, rows before)
        while True:
            try:
                for rowid, topic, stamp, _ in db.execute(_ROWS, (lo,)):
                    if rowid >= lo:
                        rows.append((rowid, topic, stamp))
                        lo = rowid + 1
                break
            except sqlite3.DatabaseError as err:
                if not scan.problems:
                    scan.problems.append(_sqlite_problem(file, err))
                after = _next_readable(db, lo, last)
                if after is None:
                    scan.cut = True
                    break
                runs.append((lo, after - 1, len(rows)))
                lo = after
    finally:
        db.close()
    keep = []
    for rowid, topic, stamp in rows:
        if topic not in scan.topics:
            scan.unknown += 1
            continue
        keep.append((stamp, rowid, topic))
        scan.add(topic, stamp)
    for first, end, before in runs:
        stamps = [rows[i][2] for i in (before - 1, before) if 0 <= i < len(rows)]
        count = (min(end, last) if last is not None else end) - first + 1
        scan.skipped.append((max(count, 0), min(stamps), max(stamps)))
    keep.sort()
    scan.plan = keep
    return scan


def _sqlite_problem(file: Path, err: Exception) -> str:
    with open(file, "rb") as handle:
        head = handle.read(100)
    if len(head) == 100 and head[92:96] == head[24:28]:        # the page count in the header is valid
        page = struct.unpack_from(">H", head, 16)[0]
        size = (page if page != 1 else 65536) * struct.unpack_from(">I", head, 28)[0]
        if file.stat().st_size < size:
            return f"sqlite3 file cut short: {file.stat().st_size} of {size} bytes"
    return f"sqlite3: {err}"


def _read_sqlite(scan: _Scan, wanted: set[str] | None) -> Iterator[BagMessage]:
    """The rows of a sqlite3 file that read, in log-time order (then rowid, as rosbags orders them)."""
    rows = [r for r in scan.plan if wanted is None or scan.topics[r[2]][0] in wanted]
    db = _sqlite(scan.file)
    try:
        for at in range(0, len(rows), 256):
            batch = rows[at:at + 256]
            ids = [rowid for _, rowid, _ in batch]
            try:
                data = dict(db.execute(f"SELECT id, data FROM messages WHERE id IN ({','.join('?' * len(ids))})",
                                       ids))
            except sqlite3.DatabaseError:
                data = {}
                for rowid in ids:
                    try:
                        data.update(db.execute("SELECT id, data FROM messages WHERE id = ?", (rowid,)))
                    except sqlite3.DatabaseError:
                        pass
            for stamp, rowid, topic in batch:
                if rowid in data:
                    name, kind = scan.topics[topic]
                    yield BagMessage(name, kind, int(stamp), bytes(data[rowid]))
    finally:
        db.close()
