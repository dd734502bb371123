"""``mdgm-ros calibrate`` as a user types it: a trained bundle measured anew on a bag it has not seen (weights
unchanged, every calibration part new, the bags recorded), the bag it was trained on refused, training bounds
fitted where an older bundle has none."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mdgm_ros.core import load_bundle, save_bundle
from mdgm_ros.core.model.modalities import Normalization

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def mdgm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdgm_ros", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def other_bag(tmp_path_factory):
    from mdgm_ros.sim.record import simulate_to_bag

    path = tmp_path_factory.mktemp("calibration_bag") / "sim12"
    simulate_to_bag(path, 12.0, seed=5, faults="collision", per_kind=1)
    return path


def test_calibrate_measures_a_bundle_anew_on_unseen_bags(trained_bundle, other_bag, tmp_path):
    source, _ = trained_bundle
    out = tmp_path / "calibrated"
    done = mdgm("calibrate", "--model", str(source), "--bags", str(other_bag), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    old, new = load_bundle(source), load_bundle(out)
    assert report["model_id"] == new.model_id != old.model_id and report["from_model"] == old.model_id
    assert report["bags"] == [str(other_bag)] and report["samples"] > 100
    old_files, new_files = old.manifest["files"], new.manifest["files"]
    assert set(old_files) == set(new_files)
    assert all(new_files[n] == old_files[n] for n in old_files if n not in ("calibration.json", "manifest.json"))
    assert new.calibration.threshold != old.calibration.threshold        # measured on other data
    assert set(new.calibration.predictive_scale) == set(new.model.names)
    table = new.calibration.fallback_table
    assert table is not None and set(table.error) == set(new.model.names)
    assert set(report["fallback"]) == set(table.error)
    assert "imputation published per outage length" in done.stderr
    assert new.manifest["extra"]["training"] == old.manifest["extra"]["training"]


def test_calibrate_refuses_the_bags_the_bundle_was_trained_on(trained_bundle, sim_bag, tmp_path):
    source, _ = trained_bundle
    done = mdgm("calibrate", "--model", str(source), "--bags", str(sim_bag[0]), "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "was used to train this model: calibrate on bags it has not seen" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x").exists()


def test_a_bundle_without_training_bounds_gets_them_from_the_bags(trained_bundle, other_bag, tmp_path):
    source, _ = trained_bundle
    bundle = load_bundle(source)
    model = bundle.model
    for name in ("joints", "tactile"):
        norm = model.specs[name].normalization
        model.set_normalization(name, Normalization(norm.mean, norm.std))
    older = save_bundle(tmp_path / "older", model, bundle.calibration, name="older")
    assert load_bundle(older).model.feature_bounds("joints") is None
    done = mdgm("calibrate", "--model", str(older), "--bags", str(other_bag), "--out", str(older))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "had no training bounds for joints, tactile: fitted from the calibration bags' range" in done.stderr
    calibrated = load_bundle(older).model
    assert calibrated.feature_bounds("joints") is not None and calibrated.feature_bounds("tactile") is not None
