"""Fault labels: what went wrong and when, in bag time. A data concept shared by the simulator (which
emits them), training (which leaves faults out) and evaluation (which scores detection).

Where labels come from, for a bag folder ``run1``:
- a sidecar file next to it, ``run1.labels.yaml`` (or ``run1.labels.csv``), written by hand or by
  ``mdgm-ros label run1 --add 12.5:14.0:collision``;
- a ``std_msgs/String`` topic inside the bag carrying one JSON label per message (the simulator's
  ``/sim/fault_labels``; another topic via ``data.label_topic`` / ``--label-topic``).
Both are used when both exist.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..core.engine.atomic import write_text_atomically


@dataclass(frozen=True)
class FaultLabel:
    """A fault as it actually happened, in stamps (ns); published and recorded as JSON."""

    kind: str
    start_ns: int
    end_ns: int
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FaultLabel":
        data = json.loads(text)
        return cls(str(data["kind"]), int(data["start_ns"]), int(data["end_ns"]), dict(data.get("detail", {})))

    def covers(self, stamp_ns: int) -> bool:
        return self.start_ns <= stamp_ns <= self.end_ns


DEFAULT_LABEL_TOPIC = "/sim/fault_labels"      # std_msgs/String, one FaultLabel JSON per message
SIDECAR_SUFFIXES = (".labels.yaml", ".labels.csv")
NS = 1_000_000_000


class LabelError(ValueError):
    """A label file that cannot be read or a label that makes no sense, with the file and the reason."""


def sidecar_path(bag: str | Path, suffix: str = ".labels.yaml") -> Path:
    """``recordings/run1`` -> ``recordings/run1.labels.yaml`` (next to the bag folder)."""
    bag = Path(bag)
    return bag.with_name(bag.name + suffix)


def find_sidecar(bag: str | Path) -> Path | None:
    found = [p for p in (sidecar_path(bag, s) for s in SIDECAR_SUFFIXES) if p.is_file()]
    if len(found) > 1:
        raise LabelError(f"both {found[0]} and {found[1]} exist: keep one label file per bag")
    return found[0] if found else None


def _label(kind: Any, start: Any, end: Any, origin_ns: int, where: str) -> FaultLabel:
    try:
        start_s, end_s = float(start), float(end)
    except (TypeError, ValueError):
        raise LabelError(f"{where}: start and end must be numbers (seconds), got {start!r}, {end!r}") from None
    kind = str(kind or "").strip()
    if not kind or any(c.isspace() or c == "," for c in kind):
        raise LabelError(f"{where}: kind must be one word (e.g. collision), got {kind!r}")
    if not (np.isfinite(start_s) and np.isfinite(end_s)) or end_s < start_s:
        raise LabelError(f"{where}: needs finite start <= end, got {start_s} .. {end_s}")
    return FaultLabel(kind, origin_ns + int(round(start_s * NS)), origin_ns + int(round(end_s * NS)))


def read_sidecar(path: str | Path, bag_start_ns: int) -> list[FaultLabel]:
    """Labels of a sidecar file. YAML: ``time: relative|absolute`` and ``labels: [{kind, start, end}]``;
    CSV: a ``kind,start,end`` header. Times are seconds; relative ones count from the bag's start."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(f"cannot read label file {path}: {err}") from None
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and not {"kind", "start", "end"} <= set(rows[0]):
            raise LabelError(f"{path}: the CSV header must be kind,start,end (got {','.join(rows[0])})")
        return [_label(r["kind"], r["start"], r["end"], bag_start_ns, f"{path} row {i + 2}")
                for i, r in enumerate(rows)]
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise LabelError(f"{path} is not YAML: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels", []), list):
        raise LabelError(f"{path}: expected a mapping with a 'labels:' list")
    unknown = set(doc) - {"bag", "time", "labels"}
    if unknown or doc.get("time", "relative") not in ("relative", "absolute"):
        raise LabelError(f"{path}: keys are bag, time (relative | absolute), labels; got {sorted(doc)} "
                         f"with time {doc.get('time')!r}")
    origin = bag_start_ns if doc.get("time", "relative") == "relative" else 0
    labels = []
    for i, entry in enumerate(doc.get("labels") or []):
        where = f"{path} label {i + 1}"
        if not isinstance(entry, dict) or set(entry) - {"kind", "start", "end", "note"}:
            raise LabelError(f"{where}: expected {{kind, start, end[, note]}}, got {entry!r}")
        labels.append(_label(entry.get("kind"), entry.get("start"), entry.get("end"), origin, where))
    return labels


def write_sidecar(path: str | Path, labels: list[FaultLabel], bag_start_ns: int, bag_name: str) -> Path:
    """Write labels as a YAML sidecar (relative seconds), atomically."""
    path = Path(path)
    doc = {"bag": bag_name, "time": "relative",
           "labels": [{"kind": lb.kind, "start": round((lb.start_ns - bag_start_ns) / NS, 3),
                       "end": round((lb.end_ns - bag_start_ns) / NS, 3)} for lb in labels]}
    header = ("# Fault labels of a rosbag2 folder (mdgm-ros label). time: relative = seconds from the bag's\n"
              "# first message; absolute = seconds since the epoch (as header stamps). kind: one word.\n")
    return write_text_atomically(path, header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))


def mark_faults(stamps: np.ndarray, labels: list[FaultLabel], settle_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(fault kind per stamp, '' if none; within a span or its settle margin) for sorted or unsorted stamps."""
    fault = np.full(len(stamps), "", dtype=object)
    near = np.zeros(len(stamps), bool)
    for label in labels:
        inside = (stamps >= label.start_ns) & (stamps <= label.end_ns)
        fault[inside & (fault == "")] = label.kind
        near |= (stamps >= label.start_ns) & (stamps <= label.end_ns + int(settle_s * NS))
    return fault.astype(str), near


def parse_span(text: str) -> tuple[float, float, str]:
    """``"12.5:14.0:collision"`` -> (12.5, 14.0, "collision")."""
    parts = text.split(":")
    if len(parts) != 3:
        raise LabelError(f"--add {text!r}: expected START:END:KIND, e.g. 12.5:14.0:collision")
    label = _label(parts[2], parts[0], parts[1], 0, f"--add {text!r}")
    return label.start_ns / NS, label.end_ns / NS, label.kind


def label_bag(bag: str | Path, spans: list[str], replace: bool = False) -> tuple[Path, list[FaultLabel], int]:
    """Add ``START:END:KIND`` spans (seconds from the bag's first message) to the bag's YAML sidecar.
    Returns (sidecar path, all its labels, the bag's start in ns)."""
    from . import bags  # rclpy and rosbags: only when a bag is opened

    bag = Path(bag)
    if not bag.exists():
        raise bags.BagError(f"bag {bag} does not exist")
    origin, duration = bags.start_ns(bag, damage=bags.ignore_damage), bags.duration_s(bag)   # one warning
    existing = find_sidecar(bag)
    if existing is not None and existing.suffix == ".csv" and not replace:
        raise LabelError(f"{existing} is a CSV file: edit it, or pass --replace to write {sidecar_path(bag)}")
    labels = [] if replace or existing is None else read_sidecar(existing, origin)
    for text in spans:
        start, end, kind = parse_span(text)
        if end > duration + 1e-9:
            raise LabelError(f"--add {text!r}: the bag lasts {duration:.3f} s (times count from its first message)")
        labels.append(FaultLabel(kind, origin + int(round(start * NS)), origin + int(round(end * NS))))
    if not spans and not replace:
        return existing or sidecar_path(bag), labels, origin
    labels.sort(key=lambda lb: (lb.start_ns, lb.end_ns, lb.kind))
    path = write_sidecar(sidecar_path(bag), labels, origin, bag.name)
    if existing is not None and existing != path:
        existing.unlink()
    return path, labels, origin
