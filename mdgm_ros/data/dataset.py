"""rosbag2 -> aligned training samples, with the live node's own conversions and alignment.

Each bag is read in log-time order. Every stream message goes through the same bridge conversion and
:class:`~mdgm_ros.streams.alignment.Aligner` as in ``fusion_node`` (same parameters file: topics, staleness,
buffers, joint order; unstamped audio takes the bag's log time, as the node stamps it on arrival).
A sample is taken at each anchor message, or on the ``output_rate`` grid when the anchor is ''. So
the presence mask, windows and staleness in training are exactly what the robot sees.

Fault labels (a JSON String topic, ``/sim/fault_labels`` by default, and the bag's sidecar label file,
see :mod:`.labels`) mark samples inside a fault span; a bag without labels is normal operation.
:func:`check_bags` checks every configured topic, its type and its message count before any work.
``/sim/task_phase`` gives each sample its task phase (for plots).

The aligned samples of a bag are cached once (``.npz``), keyed by the bag's content hash and
everything that shapes a sample; images are stored as uint8 (they come from 8-bit sources).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..core import ModalitySpec
from ..core.engine.atomic import write_atomically
from ..streams import bridge
from ..streams.alignment import NS, Aligner, PushResult
from ..streams.kinds import make_stream
from ..streams.params import FusionParams, check_against_bundle, message_types_reading, ros_type_of
from . import bags
from .cache import cache_root, enforce_bound, touch
from .labels import DEFAULT_LABEL_TOPIC, FaultLabel, find_sidecar, mark_faults, read_sidecar

CACHE_VERSION = 1
PHASE_TOPIC = "/sim/task_phase"


def default_cache_dir() -> Path:
    return cache_root() / "aligned"


@dataclass
class AlignedDataset:
    """N samples of M modalities. ``raw[m]`` holds zeros where ``mask[:, j]`` is False."""

    names: list[str]
    raw: dict[str, np.ndarray]
    mask: np.ndarray                     # (N, M) bool
    stamps: np.ndarray                   # (N,) int64 ns
    fault: np.ndarray                    # (N,) str: fault kind covering the stamp, '' if none
    near_fault: np.ndarray               # (N,) bool: within a fault span or its settle margin
    phase: np.ndarray                    # (N,) str
    bag: np.ndarray                      # (N,) int: index of the source bag
    labels: list[FaultLabel] = field(default_factory=list)
    rejects: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def subset(self, rows: np.ndarray) -> "AlignedDataset":
        return AlignedDataset(self.names, {k: v[rows] for k, v in self.raw.items()}, self.mask[rows],
                              self.stamps[rows], self.fault[rows], self.near_fault[rows], self.phase[rows],
                              self.bag[rows], self.labels, self.rejects)

    def float_raw(self) -> dict[str, np.ndarray]:
        """Model-ready float32 arrays (uint8 images back to [0, 1])."""
        return {k: (v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v) for k, v in self.raw.items()}

    @staticmethod
    def concat(parts: list["AlignedDataset"]) -> "AlignedDataset":
        if not parts:
            raise ValueError("no data")
        first = parts[0]
        rejects: Counter = Counter()
        for p in parts:
            rejects.update(p.rejects)
        return AlignedDataset(first.names, {k: np.concatenate([p.raw[k] for p in parts]) for k in first.raw},
                              np.concatenate([p.mask for p in parts]), np.concatenate([p.stamps for p in parts]),
                              np.concatenate([p.fault for p in parts]), np.concatenate([p.near_fault for p in parts]),
                              np.concatenate([p.phase for p in parts]), np.concatenate([p.bag for p in parts]),
                              [label for p in parts for label in p.labels], dict(rejects))


def _alignment_key(params: FusionParams, specs: list[ModalitySpec]) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "anchor": params.anchor, "output_rate": params.output_rate,
            "reset_after": params.reset_after,
            "streams": [vars(s) | {"qos": None} for s in params.streams],
            "specs": [{"name": s.name, "kind": s.kind, "shape": list(s.shape),
                       "audio": None if s.audio is None else vars(s.audio)} for s in specs]}


def cache_key(bag_hash: str, params: FusionParams, specs: list[ModalitySpec], settle_s: float,
              label_topic: str = DEFAULT_LABEL_TOPIC) -> str:
    text = json.dumps({"bag": bag_hash, "settle_s": settle_s, "label_topic": label_topic,
                       **_alignment_key(params, specs)},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SampleCollector:
    """Reads one bag's messages through the node's conversions into aligned samples."""

    def __init__(self, params: FusionParams, specs: list[ModalitySpec], sample_at: np.ndarray | None = None,
                 label_topic: str = DEFAULT_LABEL_TOPIC):
        check_against_bundle(params, specs)
        self.label_topic = label_topic
        self.sample_at = None if sample_at is None else np.sort(np.asarray(sample_at, np.int64))
        self.sample_index = 0
        self.params = params
        self.streams = {p.name: make_stream(p, spec) for p, spec in zip(params.streams, specs)}
        self.by_topic = {absolute_topic(s.params.topic): s for s in self.streams.values()}
        self.aligner = Aligner([s.alignment_config() for s in self.streams.values()], params.reset_after)
        self.names = list(self.streams)
        self.arrays: dict[str, list] = {n: [] for n in self.names}
        self.masks: list[list[bool]] = []
        self.stamps: list[int] = []
        self.labels: list[FaultLabel] = []
        self.phases: list[tuple[int, str]] = []
        self.rejects: Counter = Counter()
        self.period_ns = int(NS / params.output_rate) if not params.anchor else 0
        self.next_tick: int | None = None

    def feed(self, topic: str, log_ns: int, msg: Any) -> None:
        if topic == self.label_topic:
            try:
                self.labels.append(FaultLabel.from_json(msg.data))
            except (ValueError, KeyError, TypeError):
                self.rejects["fault_label:invalid"] += 1
            return
        if topic == PHASE_TOPIC:
            self.phases.append((log_ns, msg.data))
            return
        stream = self.by_topic[topic]
        self._ticks_until(log_ns)
        try:
            array = stream.to_array(msg)
        except bridge.ConversionError as err:
            self.rejects[f"{stream.name}:{err.reason}"] += 1
            return
        stamp = bridge.stamp_to_ns(msg.header.stamp) if stream.stamped else log_ns
        pushed = self.aligner.push(stream.name, stamp, array)
        if pushed in PushResult.REJECTED:          # out of order, zero stamp, an unconfirmed jump back
            self.rejects[f"{stream.name}:{pushed}"] += 1
            return
        if stream.name == self.params.anchor and self.sample_at is None:
            self._take(stamp, (stream.name, array))

    def _ticks_until(self, log_ns: int) -> None:
        """Timer mode: the samples a node at ``output_rate`` would have taken before ``log_ns``
        (or, with ``sample_at``, the given stamps up to ``log_ns``)."""
        if self.sample_at is not None:
            while self.sample_index < len(self.sample_at) and self.sample_at[self.sample_index] <= log_ns:
                self._take(int(self.sample_at[self.sample_index]), None, keep_empty=True)
                self.sample_index += 1
            return
        if not self.period_ns:
            return
        if self.next_tick is None or log_ns - self.next_tick > self.params.reset_after * NS:
            self.next_tick = (log_ns // self.period_ns + 1) * self.period_ns
        while self.next_tick <= log_ns:
            self._take(self.next_tick, None)
            self.next_tick += self.period_ns

    def _take(self, stamp: int, anchor: tuple[str, np.ndarray] | None, keep_empty: bool = False) -> None:
        sample = self.aligner.sample(stamp, anchor)
        if not any(sample.present.values()) and not keep_empty:
            return
        for name in self.names:
            array = sample.arrays.get(name)
            spec = self.streams[name].spec
            if array is None:
                array = np.zeros(spec.shape, np.uint8 if spec.kind == "image" else np.float32)
            elif spec.kind == "image":
                array = np.round(array * 255.0).astype(np.uint8)
            self.arrays[name].append(array)
        self.masks.append(sample.mask(self.names))
        self.stamps.append(stamp)

    def finish(self, bag_index: int, settle_s: float) -> AlignedDataset:
        if self.sample_at is not None:
            self._ticks_until(int(self.sample_at[-1]) if len(self.sample_at) else 0)
        n = len(self.stamps)
        stamps = np.asarray(self.stamps, np.int64)
        fault, near = mark_faults(stamps, self.labels, settle_s)
        phase = np.full(n, "", dtype=object)
        if self.phases:
            times = np.asarray([t for t, _ in self.phases], np.int64)
            index = np.searchsorted(times, stamps, side="right") - 1
            names = np.asarray([p for _, p in self.phases], dtype=object)
            phase = np.where(index >= 0, names[np.clip(index, 0, None)], "")
        raw = {k: (np.stack(v) if v else np.zeros((0, *self.streams[k].spec.shape), np.float32))
               for k, v in self.arrays.items()}
        return AlignedDataset(self.names, raw, np.asarray(self.masks, bool).reshape(n, len(self.names)), stamps,
                              fault, near, np.asarray(phase, dtype=str), np.full(n, bag_index),
                              self.labels, dict(self.rejects))


def align_bag(path: str | Path, params: FusionParams, specs: list[ModalitySpec], bag_index: int = 0,
              settle_s: float = 0.5, sample_at: np.ndarray | None = None,
              label_topic: str = DEFAULT_LABEL_TOPIC, max_corrupt: float = bags.MAX_CORRUPT,
              collector: SampleCollector | None = None, damage: bags.DamageHook | None = None) -> AlignedDataset:
    """One bag -> aligned samples (no cache); ``sample_at``: exactly these stamps (ground truth for
    what a live node published at them). Labels come from ``label_topic`` and the bag's sidecar file.
    ``collector``: a :class:`SampleCollector` of the same parameters that keeps the samples elsewhere (shards).
    A damaged bag gives the samples of what it still holds; ``damage`` as in :func:`.bags.raw_messages`."""
    collector = collector or SampleCollector(params, specs, sample_at, label_topic)
    wanted = list(collector.by_topic) + [label_topic, PHASE_TOPIC]
    available = bags.topics(path, damage=bags.ignore_damage)         # reported once, by the read below
    missing = [t for t in collector.by_topic if t not in available]
    if len(missing) == len(collector.by_topic):
        raise bags.BagError(f"bag {path} has none of the input topics {sorted(collector.by_topic)} "
                            f"(it has {sorted(available)})")
    corrupt: Counter = Counter()                   # skipped messages that do not deserialise, per topic
    for topic, log_ns, msg in bags.messages(path, [t for t in wanted if t in available], corrupt=corrupt,
                                           max_corrupt=max_corrupt, damage=damage):
        collector.feed(topic, log_ns, msg)
    collector.rejects.update({f"{topic}:corrupt": n for topic, n in corrupt.items()})
    return with_sidecar_labels(collector.finish(bag_index, settle_s), path, settle_s)


def with_sidecar_labels(data: AlignedDataset, bag: str | Path, settle_s: float) -> AlignedDataset:
    """``data`` with the labels of the bag's sidecar file added (fault marks recomputed)."""
    sidecar = find_sidecar(bag)
    if sidecar is None:
        return data
    labels = list({(label.kind, label.start_ns, label.end_ns): label     # a fault in the topic and the file: once
                   for label in data.labels + read_sidecar(sidecar, bags.start_ns(bag))}.values())
    fault, near = mark_faults(data.stamps, labels, settle_s)
    return dataclasses.replace(data, fault=fault, near_fault=near, labels=labels)


def bag_labels(bag: str | Path, label_topic: str = DEFAULT_LABEL_TOPIC) -> list[FaultLabel]:
    """A bag's fault labels: its label topic (invalid messages skipped) and its sidecar file."""
    labels = []
    if label_topic in bags.topics(bag):
        for _, _, msg in bags.messages(bag, [label_topic]):
            try:
                labels.append(FaultLabel.from_json(msg.data))
            except (ValueError, KeyError, TypeError):
                pass
    sidecar = find_sidecar(bag)
    return labels + (read_sidecar(sidecar, bags.start_ns(bag)) if sidecar else [])


def absolute_topic(topic: str) -> str:
    """Bags record fully qualified names; a relative parameter topic resolves against the root namespace."""
    return topic if topic.startswith("/") else "/" + topic.removeprefix("~/")


def _listing(summary: dict[str, tuple[str, int]]) -> str:
    return ", ".join(f"{t} ({kind}, {n} messages)" for t, (kind, n) in sorted(summary.items())) or "no topics"


class BagProblems(bags.BagError):
    """Every problem found in the bags before any work, each line with its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__(f"{len(problems)} problems in the bags and the config, each with its fix:\n"
                             + "\n".join(f"  {i + 1}. {p}" for i, p in enumerate(problems)))


@dataclass(frozen=True)
class Fixes:
    """How the command at hand spells a fix: ``train`` sets fusion parameters through
    ``--set fusion_overrides.NAME=VALUE`` and tolerates absent streams with ``data.absent_ok``;
    ``evaluate`` through ``--set NAME=VALUE`` (absent streams are scored as missing there)."""

    parameter: str = "--set fusion_overrides."
    absent: str = "--set data.absent_ok=[{name}]"

    def set(self, name: str, value: str) -> str:
        return f"{self.parameter}{name}={value}"


TRAIN_FIXES = Fixes()
EVALUATE_FIXES = Fixes("--set ", "")


def bag_problems(path: str | Path, params: FusionParams, absent_ok: Iterable[str] = (),
                 fixes: Fixes = TRAIN_FIXES) -> tuple[list[str], list[str]]:
    """(problems, absent modalities) of one bag: every configured topic exists with the expected type
    and messages, and a joint-state stream's configured joints are in its messages."""
    path = Path(path)
    if not path.exists():
        return [f"bag {path} does not exist"], []
    summary = bags.topic_summary(path)
    problems, absent = [], []
    for stream in params.streams:
        topic, expected = absolute_topic(stream.topic), ros_type_of(stream.message_type)
        found, count = summary.get(topic, (None, 0))
        if found is not None and found != expected:
            choices = message_types_reading(found) or [found]
            problems.append(f"bag {path}: {stream.name} topic {topic} carries {found}, but {stream.name}.message_type "
                            f"{stream.message_type} reads {expected}: "
                            f"{fixes.set(stream.name + '.message_type', choices[0])}"
                            + (f" (or {', '.join(choices[1:])})" if len(choices) > 1 else ""))
            continue
        if not count:
            if stream.name in absent_ok:
                absent.append(stream.name)
                continue
            same_type = [t for t, (kind, n) in sorted(summary.items()) if kind == expected and n]
            hint = (f"point it at one of them with {fixes.set(stream.name + '.topic', same_type[0])}" if same_type
                    else f"no topic of type {expected} is in the bag")
            absent_fix = fixes.absent.format(name=stream.name)
            problems.append(f"bag {path} has no {stream.name} messages on {topic} ({expected}): {hint}"
                            + (f", or, if this bag has no {stream.name} on purpose, {absent_fix}" if absent_fix else "")
                            + f". The bag has: {_listing(summary)}")
            continue
        if stream.message_type == "joint_state":
            problem = _joint_problem(path, topic, stream, fixes)
            if problem:
                problems.append(problem)
    return problems, absent


def _joint_problem(path: Path, topic: str, stream, fixes: Fixes) -> str:
    try:
        msg = bags.first_message(path, topic)
    except bags.BagError:
        return ""                              # the read itself reports it
    if msg is None:
        return ""
    names = list(msg.name)
    missing = [n for n in stream.joint_names if n not in names]
    if not missing:
        return ""
    fix = fixes.set(stream.name + ".joint_names", "[" + ",".join(names) + "]")
    return (f"bag {path}: {stream.name} on {topic} names {len(names)} joints {names}, but {stream.name}.joint_names "
            f"lists {len(stream.joint_names)} ({len(missing)} not in the bag: {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}): {fix}")


def check_bag(path: str | Path, params: FusionParams, absent_ok: Iterable[str] = (),
              fixes: Fixes = TRAIN_FIXES) -> list[str]:
    """Before any epoch: :func:`bag_problems` of one bag; BagProblems if there are any, else the
    modalities this bag lacks that ``absent_ok`` allows."""
    problems, absent = bag_problems(path, params, absent_ok, fixes)
    if problems:
        raise BagProblems(problems)
    return absent


def check_bags(paths: Iterable[str | Path], params: FusionParams, absent_ok: Iterable[str] = (),
               fixes: Fixes = TRAIN_FIXES, more: Iterable[str] = ()) -> dict[str, list[str]]:
    """Every bag checked before stopping: one :class:`BagProblems` with all problems of all bags (and
    ``more``, found by the caller); a modality absent from every bag cannot be trained or scored."""
    problems, absent = list(more), {}
    for path in paths:
        found, lacking = bag_problems(path, params, absent_ok, fixes)
        problems += found
        absent[str(path)] = lacking
    for stream in params.streams:
        if absent and all(stream.name in lacking for lacking in absent.values()):
            remedy = ("record it, or leave it out of the model (model modalities and fusion params)" if fixes.absent
                      else f"the evaluation needs it in at least one: {fixes.set(stream.name + '.topic', 'TOPIC')} "
                           "if it is recorded under another name")
            problems.append(f"{stream.name} ({absolute_topic(stream.topic)}) is absent from every bag: {remedy}")
    if problems:
        raise BagProblems(problems)
    return absent


def _without_sidecar(data: AlignedDataset, bag: Path, settle_s: float) -> AlignedDataset:
    """What the bag itself holds: the cache must not keep labels of an editable sidecar file."""
    sidecar = find_sidecar(bag)
    if sidecar is None:
        return data
    extra = read_sidecar(sidecar, bags.start_ns(bag))
    labels = [label for label in data.labels if label not in extra]
    fault, near = mark_faults(data.stamps, labels, settle_s)
    return dataclasses.replace(data, fault=fault, near_fault=near, labels=labels)


def _save(path: Path, data: AlignedDataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"raw.{k}": v for k, v in data.raw.items()}
    meta = {"names": data.names, "labels": [json.loads(label.to_json()) for label in data.labels],
            "rejects": data.rejects}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, mask=data.mask, stamps=data.stamps, fault=data.fault, near_fault=data.near_fault,
                     phase=data.phase, meta=np.asarray(json.dumps(meta)), **arrays)

    write_atomically(path, write, publish=False)


def _load(path: Path, bag_index: int) -> AlignedDataset:
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        raw = {k[4:]: npz[k] for k in npz.files if k.startswith("raw.")}
        n = len(npz["stamps"])
        return AlignedDataset(meta["names"], {k: raw[k] for k in meta["names"]}, npz["mask"], npz["stamps"],
                              npz["fault"], npz["near_fault"], npz["phase"], np.full(n, bag_index),
                              [FaultLabel(**label) for label in meta["labels"]], meta["rejects"])


def load_bags(paths: Iterable[str | Path], params: FusionParams, specs: list[ModalitySpec],
              cache_dir: Path | None = None, settle_s: float = 0.5, log=print,
              label_topic: str = DEFAULT_LABEL_TOPIC, max_corrupt: float = bags.MAX_CORRUPT) -> AlignedDataset:
    """Aligned samples of several bags (each cached by content hash); ``cache_dir=None`` disables it.
    Sidecar labels are read afresh each time (they are not part of the bag's content)."""
    parts, used = [], []
    for index, path in enumerate(paths):
        path = Path(path)
        cached = None
        if cache_dir is not None:
            key = cache_key(bags.content_hash(path), params, specs, settle_s, label_topic)
            cached = Path(cache_dir) / f"{key}.npz"
            used.append(cached)
            if cached.is_file():
                touch(cached)                      # its least-recently-used age for the cache bound
                try:
                    parts.append(with_sidecar_labels(_load(cached, index), path, settle_s))
                    log(f"{path}: {len(parts[-1])} aligned samples from the cache ({cached.name})")
                    continue
                except (OSError, ValueError, KeyError) as err:
                    log(f"{path}: cache entry {cached} unreadable ({err}); rebuilding it")
        data = align_bag(path, params, specs, index, settle_s, label_topic=label_topic, max_corrupt=max_corrupt)
        log(f"{path}: {len(data)} aligned samples, {len(data.labels)} fault labels"
            + (f", rejected {data.rejects}" if data.rejects else ""))
        if cached is not None:
            _save(cached, _without_sidecar(data, path, settle_s))
        parts.append(data)
    if cache_dir is not None:
        enforce_bound(used, log, Path(cache_dir).parent)
    return AlignedDataset.concat(parts)
