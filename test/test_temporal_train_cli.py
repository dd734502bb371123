"""`mdgm-ros train` with the temporal family on a real (simulated) bag: windows, the GRU or MLP
transition, predictive calibration, the ONNX transition, resume of an interrupted run."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mdgm_ros.core import load_bundle
from mdgm_ros.core.engine import filter as tp
from mdgm_ros.core.families.temporal import TRANSITION, GRUTransition, Transition
from mdgm_ros.training.trainer import run_training

TEMPORAL = {"data.cache": False, "data.block_s": 3.0, "data.window": 8, "data.window_stride": 8,
            "model_overrides.family": "temporal", "model_overrides.fusion": "poe",
            "model_overrides.family_options": {"transition_hidden": 32, "p_outage": 0.3}}


def _train(bag, out, epochs, options=None, **kw):
    overrides = {**TEMPORAL, "training.epochs": epochs}
    if options:
        overrides["model_overrides.family_options"] = {**TEMPORAL["model_overrides.family_options"], **options}
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
    assert set(bundle.calibration.predictive_scale) == {"camera", "joints", "audio", "tactile"}
    prediction = bundle.calibration.prediction              # how far ahead the prediction beats "nothing changes"
    assert 0 <= prediction["useful"] <= 10 and len(prediction["model_mse"]) == 10
    table = bundle.calibration.fallback_table                 # the filter's imputation vs both baselines
    assert table is not None and table.problem() is None and set(table.error) == set(model.names)
    assert all(sum(table.samples[n]) > 0 for n in table.error)
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


def test_evaluate_compares_the_temporal_and_the_per_frame_model_on_one_bag(gru_bundle, trained_bundle, sim_bag,
                                                                           tmp_path):
    from mdgm_ros.evaluation import temporal_vs_frame as te
    from mdgm_ros.evaluation.evaluate import evaluate_bags, summary_lines

    report = evaluate_bags(str(gru_bundle[0]), [str(sim_bag[0])], plots=tmp_path,
                           compare=str(trained_bundle[0]), outages_s=(0.5, 1.0), log=lambda m: None)
    comparison = report["temporal"]
    assert set(comparison["imputation"]) == {"0.5", "1"}
    for per in comparison["imputation"].values():
        for entry in per.values():
            assert entry["samples"] > 0 and all(np.isfinite(entry[k]) for k in
                                                ("temporal", "per_frame", "baseline_mean", "baseline_last"))
    assert report["imputation"]["joints"]["model"] == comparison["imputation"]["1"]["joints"]["temporal"]
    assert set(comparison["anomaly"]) == {"temporal", "per_frame"}
    assert comparison["anomaly"]["temporal"]["per_fault"]["camera_blackout"]["samples"] > 0
    assert set(comparison["prediction"]) == {"latent_1_step", "joints_10_step"}
    assert (tmp_path / "fault_timeline_compare.png").stat().st_size > 10_000
    # the project's own targets belong to the demo: a user's evaluation prints the figures only
    assert "verdict" not in comparison
    assert not any("targets" in line or "NOT met" in line for line in summary_lines(report))
    assert isinstance(te.verdict(comparison)["passed"], bool)


def test_the_evaluation_filter_over_rows_is_the_offline_filter(gru_bundle, sim_bag):
    from mdgm_ros.data.dataset import load_bags
    from mdgm_ros.evaluation import temporal_vs_frame as te
    from mdgm_ros.evaluation.evaluate import load_eval_model
    from mdgm_ros.streams.params import fusion_params_from_file

    em = load_eval_model(gru_bundle[0])
    params = fusion_params_from_file("config/fusion.yaml", overrides={"anchor": "", "output_rate": 30.0})
    data = load_bags([str(sim_bag[0])], params, list(em.model.config.modalities), None, log=lambda m: None)
    data = data.subset(np.arange(len(data)) < 120)
    ex = te.row_experts(em, data)
    run = te.data_runs(data, 0.1)[0]
    mask = data.mask.copy()
    mask[run[20:50], 3] = False                                       # a tactile outage
    rows = te.filter_rows(em.model, ex, mask, [run])
    with torch.no_grad():
        seq = tp.filter_sequence(em.model, {n: v[run].unsqueeze(0) for n, v in ex.feats.items()},
                                 torch.from_numpy(mask[run]).unsqueeze(0))
    torch.testing.assert_close(rows["mean"][run], seq.mean[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows["prior_logvar"][run], seq.prior_logvar[0], rtol=1e-5, atol=1e-5)


def test_compare_needs_a_temporal_model(trained_bundle, sim_bag):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "mdgm_ros", "evaluate", "--model", str(trained_bundle[0]), "--bags",
                          str(sim_bag[0]), "--compare", str(trained_bundle[0])], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error: --compare needs a temporal")


def test_init_from_takes_the_per_frame_encoders_decoders_and_normalisation(trained_bundle):
    from mdgm_ros.core import MultimodalVAE
    from mdgm_ros.training.trainer import TrainError, TrainSettings, init_weights

    settings = TrainSettings.from_file("config/train_temporal.yaml")
    model = MultimodalVAE(settings.model)
    logs = []
    init_weights(model, str(trained_bundle[0]), logs.append)
    source = load_bundle(trained_bundle[0]).model
    own, theirs = model.state_dict(), source.state_dict()
    encoder_keys = [k for k in theirs if k.startswith(("encoders.", "decoders."))]
    assert encoder_keys
    for key in encoder_keys:          # a decoder that reads [z, s_m] keeps the source's columns for z
        assert torch.equal(own[key][..., :theirs[key].shape[-1]], theirs[key]), key
        assert own[key].shape[-1] == theirs[key].shape[-1] or not own[key][..., theirs[key].shape[-1]:].any(), key
    for name in model.names:
        np.testing.assert_array_equal(model.specs[name].normalization.mean, source.specs[name].normalization.mean)
    assert "transition" in "".join(k for k in model.state_dict() if k not in source.state_dict())
    assert logs and "normalisation of camera, joints, audio, tactile" in logs[0]
    with pytest.raises(TrainError, match="init_from"):
        init_weights(model, "/nonexistent/bundle", logs.append)
