"""`mdgm-ros train`: bags -> bundle, metrics, checkpoints, resume, early stopping, ONNX export."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from mdgm_ros.core import load_bundle
from mdgm_ros.training.trainer import TRAINING_MEANS, TrainError, run_training

TINY = {"data.cache": False, "data.block_s": 3.0}


def _train(bag, out, epochs, **kw):
    overrides = {**TINY, "training.epochs": epochs, **kw.pop("overrides", {})}
    return run_training([str(bag)], "config/train.yaml", out, device="cpu", overrides=overrides,
                        log=lambda m: None, show_bar=False, **kw)


def test_training_writes_a_calibrated_bundle_with_metrics(trained_bundle):
    out, result = trained_bundle
    bundle = load_bundle(out)
    assert bundle.calibration is not None and set(bundle.calibration.threshold) == {"total", "camera", "joints",
                                                                                    "audio", "tactile"}
    scales = bundle.calibration.predictive_scale              # the predictive std's 90 % interval factors
    assert set(scales) == {"camera", "joints", "audio", "tactile"} and all(0 < s < 100 for s in scales.values())
    assert all(bundle.model.feature_bounds(n) is not None for n in ("joints", "tactile"))
    table = bundle.calibration.fallback_table                 # the model and both baselines per outage length
    assert table is not None and table.steps[-1] == 90 and set(table.error) == {"camera", "joints", "audio", "tactile"}
    assert all(sum(table.samples[n]) > 0 for n in table.error) and table.problem() is None
    assert set(bundle.means) == {"camera", "joints", "audio", "tactile"}
    training = bundle.manifest["extra"]["training"]
    assert training["alignment"] == {"anchor": "", "output_rate": 30.0} and training["epochs"] == 2
    assert result.excluded_fault_samples > 0 and result.val_samples > 0
    assert (out / TRAINING_MEANS).is_file() and TRAINING_MEANS in bundle.manifest["files"]
    rows = list(csv.DictReader(open(out.with_name(out.name + ".train") / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["val_loss"]) > 0 for r in rows)
    assert list((out.with_name(out.name + ".train") / "tensorboard").glob("events.out.tfevents.*"))


def test_onnx_exports_match_the_torch_modules(trained_bundle):
    ort = pytest.importorskip("onnxruntime")
    out, result = trained_bundle
    model = load_bundle(out).model
    assert len(result.onnx) == 8
    generator = torch.Generator().manual_seed(0)
    for name in model.names:
        x = torch.randn(3, *model.specs[name].feature_shape, generator=generator)
        mu, logvar = model.encoders[name](x)
        session = ort.InferenceSession(str(out / f"onnx_{name}_encoder.onnx"))
        onnx_mu, onnx_lv = session.run(None, {"features": x.numpy()})
        np.testing.assert_allclose(onnx_mu, mu.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(onnx_lv, logvar.detach().numpy(), rtol=1e-4, atol=1e-4)
        z = torch.randn(5, model.latent_dim, generator=generator)
        session = ort.InferenceSession(str(out / f"onnx_{name}_decoder.onnx"))
        np.testing.assert_allclose(session.run(None, {"z": z.numpy()})[0], model.decoders[name](z).detach().numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_an_interrupted_run_resumes_to_the_same_weights(sim_bag, tmp_path):
    bag = sim_bag[0]
    straight = _train(bag, tmp_path / "straight", 3)
    epochs_done = []
    _train(bag, tmp_path / "resumed", 3, should_stop=lambda: len(epochs_done) >= 1,
           progress=lambda e, n, v: epochs_done.append(e))
    resumed = _train(bag, tmp_path / "resumed", 3, resume=True)
    assert straight.epochs == resumed.epochs == 3
    a = load_bundle(tmp_path / "straight").model.state_dict()
    b = load_bundle(tmp_path / "resumed").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader(open(tmp_path / "resumed.train" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    with pytest.raises(TrainError, match="other bags or another config"):
        _train(bag, tmp_path / "resumed", 4, resume=True, overrides={"data.settle_s": 1.0})


def test_early_stopping_keeps_the_best_epoch(sim_bag, tmp_path):
    result = _train(sim_bag[0], tmp_path / "m", 10,
                    overrides={"training.patience": 1, "training.min_delta": 1e9})
    assert result.stopped_early and result.epochs == 2 and result.best_epoch == 1
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["extra"]["training"]["best_epoch"] == 1


def test_bad_training_input_is_a_clear_error(tmp_path, sim_bag):
    with pytest.raises(TrainError, match="val_fraction"):
        _train(sim_bag[0], tmp_path / "m", 1, overrides={"data.val_fraction": 0.95})
    from mdgm_ros.data.bags import BagError
    with pytest.raises(BagError, match="does not exist"):
        _train(tmp_path / "nope", tmp_path / "m", 1)
