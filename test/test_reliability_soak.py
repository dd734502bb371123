"""The soak benchmark's arithmetic (the soak itself is a benchmark: `mdgm-ros bench soak`, not a test)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from mdgm_ros.bench.soak import _counters, _summary, slope_mb_per_min


def test_rss_slope_is_megabytes_per_minute():
    assert slope_mb_per_min([(t, 300 + 0.5 * t / 60) for t in range(0, 600, 5)]) == pytest.approx(0.5)
    assert slope_mb_per_min([(0, 1.0)]) != slope_mb_per_min([(0, 1.0)])          # NaN: too few samples


def test_summary_delivered_fraction_and_counters():
    ns = 1_000_000_000
    camera = [(100.0 + k / 30, k * ns // 30) for k in range(3000)]
    latent = [(t + 0.01, s, s + 10_000_000) for t, s in camera[::2]]               # every other frame answered
    status = SimpleNamespace(name="/mdgm_fusion: camera", values=[SimpleNamespace(key="rejected_zero_stamp", value="7"),
                                                                 SimpleNamespace(key="age_s", value="0.1")])
    record = {"camera": camera, "latent": latent, "rss": [(t, 300.0) for t in range(0, 100, 5)],
              "diagnostics": [SimpleNamespace(status=[status])]}
    out = _summary(record, 100.0, 200.0, 10.0, 30.0, True)
    assert out["delivered_fraction"] == pytest.approx(0.5, abs=0.01)
    assert out["rss_slope_mb_per_min"] == pytest.approx(0.0)
    assert out["latency_p99_ms_by_tenth"][0] == pytest.approx(10.0)
    assert out["node_counters"] == {"rejected_zero_stamp": 7} == _counters(record["diagnostics"])
