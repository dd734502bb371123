"""Predictive uncertainty of imputations (mdgm_ros.core.engine.uncertainty): the moment-matched std
against the closed form of a linear-Gaussian model, interval coverage where the truth is known, the
calibrated scale, the temporal filter's std over its state, and the bundle round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_temporal import random_sequences, temporal_model

from mdgm_ros.core import Fuser, TemporalFilter, load_bundle, save_bundle
from mdgm_ros.core.engine import uncertainty
from mdgm_ros.core.engine.anomaly import AnomalyCalibration
from mdgm_ros.core.engine.filter import calibrate_predictive_scale_sequences
from mdgm_ros.core.engine.inference import calibrate_predictive_scale


def _observe_a(lg, n, seed=0):
    torch.manual_seed(seed)
    data = lg.sample(n)
    return data, torch.tensor([[True, False]]).expand(n, 2)


def test_the_predictive_std_of_a_linear_gaussian_model_is_the_closed_form(linear_gaussian):
    lg = linear_gaussian
    data, mask = _observe_a(lg, 5)
    fuser = Fuser(lg.model, predictive_std=["b"])
    result = fuser({"a": data["a"]}, mask)
    (w_a, _), (w_b, _) = lg.params["a"], lg.params["b"]
    # exact posterior of z given x_a (prior N(0, I)): variance 1 / (1 + w_a^2 / s_a^2) per dimension
    z_var = 1.0 / (1.0 + w_a ** 2 / lg.scales["a"] ** 2)
    expected = torch.sqrt(w_b ** 2 * z_var + lg.scales["b"] ** 2).expand(5, 3)
    torch.testing.assert_close(result.imputed["b"].std, expected)
    plain = Fuser(lg.model)({"a": data["a"]}, mask)     # without: the decoder's own spread only
    torch.testing.assert_close(plain.imputed["b"].std, torch.full((5, 3), lg.scales["b"], dtype=torch.float64))
    torch.testing.assert_close(plain.imputed["b"].mean, result.imputed["b"].mean)


def test_the_central_90_percent_interval_covers_90_percent_where_the_truth_is_known(linear_gaussian):
    lg = linear_gaussian
    data, mask = _observe_a(lg, 6000, seed=1)
    for predictive, low, high in ((["b"], 0.885, 0.915), ([], 0.0, 0.875)):
        result = Fuser(lg.model, predictive_std=predictive)({"a": data["a"]}, mask)
        coverage = uncertainty.interval_coverage((result.imputed["b"].mean - data["b"]).numpy(),
                                                 result.imputed["b"].std.numpy())
        assert low <= coverage <= high, (predictive, coverage)


def test_the_calibrated_scale_restores_coverage_of_a_too_narrow_spread():
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 2.0, 20000)
    scale = uncertainty.predictive_scale(errors, np.ones_like(errors))
    assert scale == pytest.approx(2.0, rel=0.05)
    assert uncertainty.interval_coverage(errors, np.full_like(errors, scale)) == pytest.approx(0.9, abs=0.01)
    assert uncertainty.predictive_scale(np.ones(3), np.ones(3)) == 1.0        # too few elements: unchanged


def test_the_fuser_applies_the_calibrated_scale_and_calibration_finds_it(linear_gaussian):
    lg = linear_gaussian
    data, _ = _observe_a(lg, 4000, seed=2)
    feats = lg.model.features(data)
    scales = calibrate_predictive_scale(lg.model, feats, torch.ones(4000, 2, dtype=torch.bool))
    assert set(scales) == {"a", "b"} and all(0.9 < s < 1.1 for s in scales.values())     # the model is exact
    names = lg.model.names
    calibration = AnomalyCalibration({n: 0.0 for n in names}, {n: 1.0 for n in names},
                                     {**{n: 2.0 for n in names}, "total": 2.0}, predictive_scale={"b": 3.0})
    mask = torch.tensor([[True, False]])
    scaled = Fuser(lg.model, calibration, predictive_std=["b"])({"a": data["a"][:1]}, mask)
    plain = Fuser(lg.model, predictive_std=["b"])({"a": data["a"][:1]}, mask)
    torch.testing.assert_close(scaled.imputed["b"].std, 3.0 * plain.imputed["b"].std)


def test_rank_correlation_is_spearmans():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert uncertainty.rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert uncertainty.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert uncertainty.rank_correlation(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) \
        == pytest.approx(0.9486832980505138)        # ties share their average rank


@pytest.mark.parametrize("private_dim", [0, 3])
def test_the_temporal_std_covers_the_whole_belief_and_grows_in_an_outage(private_dim):
    model = temporal_model(n_mod=3, private_dim=private_dim)
    plain = TemporalFilter(model)
    full = TemporalFilter(model, predictive_std=model.names)
    feats, _ = random_sequences(model, batch=1, steps=8, seed=4)
    stds = []
    for t in range(8):
        observed = ["m0", "m1", "m2"] if t < 4 else ["m0", "m2"]           # m1 drops out at step 4
        mask = torch.tensor([[n in observed for n in model.names]])
        raw = {n: feats[n][:, t] for n in observed}
        a, b = plain(raw, mask), full(raw, mask)
        if t >= 4:
            assert (b.imputed["m1"].std >= a.imputed["m1"].std - 1e-6).all()
            torch.testing.assert_close(a.imputed["m1"].mean, b.imputed["m1"].mean)
            stds.append(float(b.imputed["m1"].std.mean()))
    assert stds[-1] > stds[0] and all(np.isfinite(stds))


def test_the_temporal_scale_is_calibrated_on_outages_through_whole_windows():
    model = temporal_model(n_mod=3, private_dim=3)
    feats, mask = random_sequences(model, batch=1, steps=60, p_present=1.0, seed=5)
    rows = {n: v[0] for n, v in feats.items()}
    windows = torch.arange(60).reshape(6, 10)
    scales = calibrate_predictive_scale_sequences(model, rows, mask[0], windows)
    assert set(scales) == set(model.names) and all(np.isfinite(s) and s > 0 for s in scales.values())


def test_the_bundle_keeps_the_predictive_scale(tmp_path):
    model = temporal_model(n_mod=2)
    names = model.names
    calibration = AnomalyCalibration({n: 0.0 for n in names}, {n: 1.0 for n in names},
                                     {**{n: 2.0 for n in names}, "total": 2.0}, predictive_scale={"m0": 1.5, "m1": 0.7})
    folder = save_bundle(tmp_path / "b", model, calibration)
    assert load_bundle(folder).calibration.predictive_scale == {"m0": 1.5, "m1": 0.7}
    calibration.predictive_scale["m0"] = float("nan")
    assert "predictive_scale" in calibration.problem()


def test_the_useful_prediction_horizon_is_where_the_prediction_beats_nothing_changes():
    from mdgm_ros.core.engine.filter import calibrate_prediction_horizon
    from mdgm_ros.core.families.temporal import TRANSITION

    model = temporal_model(n_mod=2)
    feats, mask = random_sequences(model, batch=1, steps=80, p_present=1.0, seed=6)
    rows = {n: v[0] for n, v in feats.items()}
    windows = torch.arange(80).reshape(4, 20)
    with torch.no_grad():                      # a transition that throws the state away: never better
        for p in model.extra[TRANSITION].parameters():
            p.mul_(0.0)
    result = calibrate_prediction_horizon(model, rows, mask[0], windows, horizon=5)
    assert len(result["model_mse"]) == 5 and all(c > 0 for c in result["samples"])
    beats = [a < b for a, b in zip(result["model_mse"], result["nothing_changes_mse"])]
    expected = next((k for k, b in enumerate(beats) if not b), 5)
    assert result["useful"] == expected


def test_the_node_publishes_no_further_than_the_useful_horizon():
    from mdgm_ros.ros.fusion_node import published_horizon

    calibration = AnomalyCalibration({"a": 0.0}, {"a": 1.0}, {"a": 2.0, "total": 2.0})
    assert published_horizon(10, calibration) == 10 and calibration.useful_horizon is None   # not measured
    calibration.prediction = {"useful": 3}
    assert published_horizon(10, calibration) == 3 and published_horizon(2, calibration) == 2
    assert published_horizon(10, None) == 10
    again = AnomalyCalibration.from_dict(calibration.to_dict())
    assert again.useful_horizon == 3
    calibration.prediction = {"useful": -1}
    assert "prediction.useful" in calibration.problem()
