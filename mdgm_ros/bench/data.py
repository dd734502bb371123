"""``mdgm-ros bench data``: the simulator's real-time factor, bag writing, and bag -> aligned samples."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config_files import config_path
from ..core import default_robot_modalities


def bench_data(seconds: float = 20.0) -> dict[str, Any]:
    """Simulate ``seconds`` of robot time into an MCAP bag, then align it as training does (no cache)."""
    from ..data.dataset import align_bag
    from ..streams.params import fusion_params_from_file
    from ..sim.record import simulate_to_bag

    config = config_path("fusion.yaml")
    folder = Path(tempfile.mkdtemp(prefix="mdgm-bench-"))
    try:
        started = time.perf_counter()
        result = simulate_to_bag(folder / "bag", seconds, seed=0)
        simulated = time.perf_counter() - started
        size = sum(p.stat().st_size for p in (folder / "bag").iterdir())
        params = fusion_params_from_file(str(config), overrides={"anchor": "", "output_rate": 30.0})
        started = time.perf_counter()
        data = align_bag(folder / "bag", params, default_robot_modalities())
        aligned = time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"robot_seconds": seconds, "simulate_and_record_s": round(simulated, 2),
            "real_time_factor": round(seconds / simulated, 2), "messages": sum(result["messages"].values()),
            "bag_mb_per_robot_minute": round(size / 1e6 * 60.0 / seconds, 1),
            "align_s": round(aligned, 3), "aligned_samples": len(data),
            "aligned_samples_per_s": round(len(data) / aligned, 1)}
