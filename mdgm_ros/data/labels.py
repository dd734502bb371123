"""Fault labels: what went wrong and when, in bag time. A data concept shared by the simulator (which
emits them), training (which leaves faults out) and evaluation (which scores detection)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


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
