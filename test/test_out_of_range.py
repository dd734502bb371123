"""Inputs outside the training range (mdgm_ros.core.engine.ranges): bounds fitted with the
normalisation and kept by the bundle; an out-of-range stream is left out of the posterior, imputed from
the others, and scored with a bounded score above its threshold, in the per-frame and temporal steps, at
batch 1 (closed form) and in batches (the masked path)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import prepared
from test_temporal import temporal_model

from mdgm_ros.core import Fuser, TemporalFilter, load_bundle, save_bundle
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine import ranges
from mdgm_ros.core.engine.anomaly import AnomalyCalibration
from mdgm_ros.core.engine.inference import calibrate_anomaly
from mdgm_ros.core.model.modalities import Normalization, SpecError, range_bounds


def test_bounds_widen_the_training_range_each_feature_by_its_own_width_on_a_vector():
    low, high = range_bounds(np.array([0.0, -100.0, 5.0]), np.array([1.0, 100.0, 5.0]), "vector")
    np.testing.assert_allclose(low, [-0.5, -200.0, 5.0 - 0.5 * 6e-6], rtol=1e-5)
    np.testing.assert_allclose(high, [1.5, 200.0, 5.0 + 0.5 * 6e-6], rtol=1e-5)


def test_on_a_taxel_grid_a_rarely_touched_taxel_gets_a_quarter_of_the_widest_width():
    low, high = range_bounds(np.array([0.0, 0.0]), np.array([2.0, 0.0]), "tactile")
    np.testing.assert_allclose(low, [-1.0, -0.25])
    np.testing.assert_allclose(high, [3.0, 0.25])


def test_normalization_bounds_round_trip_and_bad_bounds_are_refused():
    norm = Normalization(np.zeros(3), np.ones(3), np.full(3, -2.0), np.full(3, 2.0))
    again = Normalization.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again.low, norm.low)
    assert Normalization.from_dict({"shape": [3], "mean": [0] * 3, "std": [1] * 3}).low is None   # older bundles
    with pytest.raises(SpecError, match="both"):
        Normalization(np.zeros(3), np.ones(3), np.zeros(3))
    with pytest.raises(SpecError, match="high > low"):
        Normalization(np.zeros(3), np.ones(3), np.ones(3), np.ones(3))


@pytest.fixture(scope="module")
def fitted():
    """A small MVAE fitted briefly on synthetic data, normalised with bounds, calibrated."""
    from conftest import small_specs

    from mdgm_ros.core import ModelConfig, MultimodalVAE
    torch.manual_seed(0)
    model = MultimodalVAE(ModelConfig(tuple(small_specs()), latent_dim=8, family="mvae"))
    feats, mask, data = prepared(model, 400, seed=0)
    training.fit_normalization(model, feats, mask)
    feats = training.normalize_features(model, feats)
    training.train(model, feats, mask, training.TrainConfig(epochs=2, batch_size=64, seed=0))
    calibration = calibrate_anomaly(model.eval(), feats, mask)
    return model, calibration, data


def _row(data, i=0):
    return {n: torch.as_tensor(np.asarray(v[i:i + 1], np.float32)) for n, v in data.raw.items()}


def test_fitting_the_normalisation_stores_bounds_for_vectors_and_taxels_only(fitted):
    model, _, data = fitted
    assert {n for n in model.names if model.specs[n].normalization.bounded} == {"joints", "tactile"}
    joints = model.specs["joints"].normalization
    assert (joints.low <= data.raw["joints"].min(0)).all() and (joints.high >= data.raw["joints"].max(0)).all()
    over = ranges.excess(model, model.features(_row(data)))
    assert set(over) == {"joints", "tactile"} and all(float(v) == 0 for v in over.values())


@pytest.mark.parametrize("batch", [1, 3])
def test_a_joint_far_beyond_its_range_is_left_out_imputed_and_flagged(fitted, batch):
    model, calibration, data = fitted
    raw = {n: torch.as_tensor(np.asarray(v[:batch], np.float32)) for n, v in data.raw.items()}
    mask = torch.ones(batch, 4, dtype=torch.bool)
    fuser = Fuser(model, calibration)
    clean = fuser(raw, mask)
    assert clean.out_of_range is None
    spread = float(data.raw["joints"][:, 0].std())
    wild = {**raw, "joints": raw["joints"].clone()}
    wild["joints"][0, 0] += 20 * spread
    seen = []
    result = fuser(wild, mask, on_latent=lambda r: seen.append(r.out_of_range.clone()))
    j = model.names.index("joints")
    expected = torch.zeros(batch, 4, dtype=torch.bool)
    expected[0, j] = True
    assert torch.equal(result.out_of_range, expected) and torch.equal(seen[0], expected)
    no_joints = mask.clone()
    no_joints[:, j] = False
    without = fuser({n: x for n, x in raw.items() if n != "joints"}, no_joints)
    # row 0's posterior is the one without joints; the other rows keep theirs
    torch.testing.assert_close(result.latent_mean[:1], without.latent_mean[:1])
    torch.testing.assert_close(result.latent_mean[1:], clean.latent_mean[1:])
    assert "joints" in result.imputed
    torch.testing.assert_close(result.imputed["joints"].mean[:1], without.imputed["joints"].mean[:1])
    score, threshold = float(result.scores[0, j]), calibration.threshold["joints"]
    assert threshold + ranges.SCORE_FLOOR < score <= threshold + ranges.SCORE_FLOOR + ranges.SCORE_RISE
    assert float(result.total_score[0]) > calibration.threshold["total"]
    if batch > 1:
        torch.testing.assert_close(result.scores[1:], clean.scores[1:])


def test_the_score_is_bounded_finite_and_grows_with_the_excess(fitted):
    model, calibration, data = fitted
    j = model.names.index("tactile")
    scores = []
    for value in (1e1, 1e3, 1e30, 3e38):
        raw = {**_row(data), "tactile": torch.full((1, 2, 4, 4), value)}
        result = Fuser(model, calibration)(raw, torch.ones(1, 4, dtype=torch.bool))
        assert all(bool(torch.isfinite(t).all()) for t in (result.latent_mean, result.latent_std, result.scores,
                                                            result.total_score, result.imputed["tactile"].mean))
        scores.append(float(result.scores[0, j]))
    assert scores == sorted(scores) and scores[-1] <= calibration.threshold["tactile"] + 5.0


def test_every_stream_out_of_range_leaves_the_prior_and_every_stream_scored(fitted):
    model, calibration, data = fitted
    raw = {**_row(data), "joints": torch.full((1, 27), 1e6), "tactile": torch.full((1, 2, 4, 4), 50.0)}
    mask = torch.tensor([[False, True, False, True]])
    result = Fuser(model, calibration)(raw, mask)
    assert bool(result.out_of_range[0, 1]) and bool(result.out_of_range[0, 3])
    assert torch.isnan(result.scores[0, [0, 2]]).all() and (result.scores[0, [1, 3]] > 1).all()
    assert set(result.imputed) == set(model.names)


def test_without_a_calibration_an_out_of_range_stream_is_left_out_and_unscored(fitted):
    model, _, data = fitted
    raw = {**_row(data), "joints": torch.full((1, 27), 1e6)}
    result = Fuser(model, None)(raw, torch.ones(1, 4, dtype=torch.bool))
    assert math.isnan(float(result.scores[0, 1])) and bool(result.out_of_range[0, 1])


def test_the_bundle_keeps_the_bounds(fitted, tmp_path):
    model, calibration, _ = fitted
    loaded = load_bundle(save_bundle(tmp_path / "b", model, calibration)).model
    for name in ("joints", "tactile"):
        torch.testing.assert_close(loaded.feature_bounds(name), model.feature_bounds(name))
    assert loaded.feature_bounds("camera") is None


@pytest.mark.parametrize("private_dim, closed_form, dtype", [(0, True, torch.float32), (0, False, torch.float32),
                                                             (3, True, torch.float32), (0, True, torch.float64)])
def test_the_temporal_step_leaves_an_out_of_range_stream_out_and_flags_it(private_dim, closed_form, dtype):
    """(float64: the check by the normalised features, as on a device)"""
    model = temporal_model(n_mod=3, private_dim=private_dim)
    for name in model.names:
        model.set_normalization(name, Normalization(np.zeros(6), np.ones(6), np.full(6, -10.0), np.full(6, 10.0)))
    names = model.names
    calibration = AnomalyCalibration(
        {n: 0.0 for n in names}, {n: 1.0 for n in names}, {**{n: 2.0 for n in names}, "total": 2.5})
    model = model.to(dtype)
    wild, plain = TemporalFilter(model, calibration, horizon=2), TemporalFilter(model, calibration, horizon=2)
    wild.closed_form = plain.closed_form = closed_form
    gen = torch.Generator().manual_seed(1)
    for t in range(5):
        raw = {n: torch.randn(1, 6, generator=gen, dtype=dtype) for n in names}
        mask = torch.ones(1, 3, dtype=torch.bool)
        sent = {**raw, "m1": raw["m1"] + (40.0 if t >= 3 else 0.0)}
        a = wild(sent, mask)
        kept = mask if t < 3 else torch.tensor([[True, False, True]])
        b = plain({n: x for n, x in raw.items() if n != "m1" or t < 3}, kept)
        torch.testing.assert_close(a.latent_mean, b.latent_mean)
        torch.testing.assert_close(wild.state.mean, plain.state.mean)
        if t >= 3:
            assert bool(a.out_of_range[0, 1]) and float(a.scores[0, 1]) > 3.0 and "m1" in a.imputed
            assert float(a.total_score[0]) > 2.5
        else:
            assert a.out_of_range is None


def test_a_callers_range_flags_replace_the_steps_own_scan(fitted):
    """The fusion node flags streams while it converts messages; the step then only measures those."""
    model, calibration, data = fitted
    raw, mask = _row(data), torch.ones(1, 4, dtype=torch.bool)
    j = model.names.index("joints")
    wild = {**raw, "joints": raw["joints"] + 1e3}
    flags = torch.zeros(1, 4, dtype=torch.bool)
    flags[0, j] = True
    fuser = Fuser(model, calibration)
    own, told = fuser(wild, mask), fuser(wild, mask, out_of_range=flags)
    torch.testing.assert_close(told.latent_mean, own.latent_mean)
    torch.testing.assert_close(told.scores, own.scores)
    assert torch.equal(told.out_of_range, own.out_of_range)
    assert fuser(raw, mask, out_of_range=torch.zeros(1, 4, dtype=torch.bool)).out_of_range is None


def test_a_family_that_needs_every_stream_keeps_an_out_of_range_one():
    model = temporal_model(n_mod=2)
    from mdgm_ros.core import ModelConfig, MultimodalVAE
    model = MultimodalVAE(ModelConfig(model.config.modalities, latent_dim=4, family="jvae")).eval()
    for name in model.names:
        model.set_normalization(name, Normalization(np.zeros(6), np.ones(6), np.full(6, -3.0), np.full(6, 3.0)))
    raw = {n: torch.zeros(1, 6) for n in model.names}
    raw["m0"][0, 0] = 50.0
    result = Fuser(model)(raw, torch.ones(1, 2, dtype=torch.bool))
    assert result is not None and result.out_of_range is None and torch.isfinite(result.latent_mean).all()
