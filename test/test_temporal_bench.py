"""The temporal step benchmark runs (its numbers belong in `mdgm-ros bench`, not in a test)."""
import pytest
import torch

from mdgm_ros.bench.temporal_step import bench_temporal_step


@pytest.mark.parametrize("objective", ["temporal", "temporal_ms"])
def test_temporal_step_benchmark_reports_percentiles_and_keeps_its_state(objective):
    torch.set_num_threads(1)
    report = bench_temporal_step(iterations=5, warmup=2, device="cpu", horizon=3, family=objective,
                                 onnxruntime=True)
    assert report["benchmark"] == "temporal_step" and report["imputed"] == ["audio"]
    assert report["family"] == objective
    assert 0 < report["p50_ms"] <= report["p99_ms"] and report["target"] == {"p50_ms": 2.5, "p99_ms": 5.0}
    engine = report["onnxruntime_step"]                           # the node's engine: onnxruntime, same loop
    assert 0 < engine["p50_ms"] <= engine["p99_ms"] and engine["ratio_to_torch_p50"] > 0
