"""`mdgm-ros train` with the temporal family on a real (simulated) bag: windows, the GRU or MLP
transition, predictive calibration, the ONNX transition, resume of an interrupted run."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mdgm_ros.core import load_bundle
from mdgm_ros.core import temporal as tp
from mdgm_ros.core.families.temporal import TRANSITION, GRUTransition, Transition
from mdgm_ros.training.trainer import run_training

TEMPORAL = {"data.cache": False, "data.block_s": 3.0, "data.window": 8, "data.window_stride": 8,
            "model_overrides.objective": "temporal", "model_overrides.fusion": "poe",
            "model_overrides.objective_options": {"transition_hidden": 32, "p_outage": 0.3}}


def _train(bag, out, epochs, options=None, **kw):
    overrides = {**TEMPORAL, "training.epochs": epochs}
    if options:
        overrides["model_overrides.objective_options"] = {**TEMPORAL["model_overrides.objective_options"], **options}
    return run_training([str(bag)], "config/train.yaml", out, device="cpu", overrides=overrides,
                        log=lambda m: None, show_bar=False, **kw)


@pytest.fixture(scope="module")
def gru_bundle(sim_bag, tmp_path_factory):
    out = tmp_path_factory.mktemp("temporal") / "gru"
    return out, _train(sim_bag[0], out, 2, {"transition": "gru"})


def test_a_temporal_bundle_from_a_bag_carries_windows_predictive_calibration_and_the_transition(gru_bundle):
    out, result = gru_bundle
    bundle = load_bundle(out)
    model = bundle.model
    assert tp.is_temporal(model) and isinstance(model.extra[TRANSITION], GRUTransition)
    temporal = bundle.manifest["extra"]["temporal"]
    assert temporal["window"] == 8 and temporal["train_windows"] > 0 and temporal["transition"] == "gru"
    assert abs(temporal["step_s"] - 1 / 30) < 1e-9
    assert set(bundle.calibration.threshold) == {"total", "camera", "joints", "audio", "tactile"}
    assert "onnx_transition.onnx" in result.onnx and (out / "onnx_transition.onnx").is_file()
    rows = list(csv.DictReader(open(out.with_name(out.name + ".train") / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(np.isfinite(float(r["val_loss"])) for r in rows)
    assert list((out.with_name(out.name + ".train") / "tensorboard").glob("events.out.tfevents.*"))
    # the live filter runs the bundle with its calibration: finite standardised scores for every stream
    filt = tp.TemporalFilter(model, bundle.calibration)
    raw = {n: torch.zeros(1, *model.specs[n].shape) for n in model.names}
    result = filt(raw, torch.ones(1, 4, dtype=torch.bool))
    assert torch.isfinite(result.total_score).all() and torch.isfinite(result.scores).all()


def test_the_onnx_transition_matches_torch(gru_bundle):
    ort = pytest.importorskip("onnxruntime")
    out, _ = gru_bundle
    model = load_bundle(out).model
    z = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(0))
    mean, logvar = model.extra[TRANSITION](z)
    session = ort.InferenceSession(str(out / "onnx_transition.onnx"))
    onnx_mean, onnx_lv = session.run(None, {"z": z.numpy()})
    np.testing.assert_allclose(onnx_mean, mean.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(onnx_lv, logvar.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_an_interrupted_temporal_run_resumes_to_the_same_weights(sim_bag, tmp_path):
    bag = sim_bag[0]
    straight = _train(bag, tmp_path / "straight", 2)
    done = []
    _train(bag, tmp_path / "resumed", 2, should_stop=lambda: len(done) >= 1, progress=lambda e, n, v: done.append(e))
    assert len(list(csv.DictReader(open(tmp_path / "resumed.train" / "metrics.csv")))) == 1
    resumed = _train(bag, tmp_path / "resumed", 2, resume=True)
    assert straight.epochs == resumed.epochs == 2
    a = load_bundle(tmp_path / "straight").model
    b = load_bundle(tmp_path / "resumed").model
    assert isinstance(a.extra[TRANSITION], Transition)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
