"""Anomaly scores as normal quantiles of calibrated surprise (mdgm_ros.core.anomaly): the tables, the
two surprise channels, the absence of an expected stream, the max total and the old calibrations."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import prepared

from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine.anomaly import (
    AnomalyCalibration,
    QuantileTable,
    StackedTables,
    calibration_from_nll,
    standardize_scores,
    stream_surprise,
)


class Names:
    names = ["a", "b"]


def test_a_table_of_a_normal_sample_gives_back_the_value_itself():
    sample = np.random.default_rng(0).standard_normal(20000)
    table = QuantileTable.fit(sample)
    assert len(table.values) == 257 and table.problem() is None
    x = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)
    assert torch.allclose(table.score(x), x, atol=0.08)


def test_scores_keep_their_order_past_the_calibration_data_and_nan_stays_nan():
    table = QuantileTable.fit(np.random.default_rng(1).exponential(size=500))
    top = table.values[-1]
    x = torch.tensor([top, top + 1.0, top + 10.0, float("nan")], dtype=torch.float64)
    s = table.score(x)
    assert s[0] < s[1] < s[2] and math.isnan(float(s[3]))
    assert float(s[0]) == pytest.approx(table.probits[-1])


def _calibration(count=999, presence=None):
    rng = np.random.default_rng(2)
    surprise = torch.from_numpy(rng.standard_normal((count, 2, 2)))
    calibration = calibration_from_nll(Names(), surprise)
    if presence is not None:
        calibration.presence = presence
    return calibration


def test_a_stream_scores_its_larger_channel_and_the_total_its_calibrated_max_or_sum():
    calibration = _calibration()
    surprise = torch.tensor([[[0.0, 3.0], [1.0, -1.0]]], dtype=torch.float64)
    scores, total = standardize_scores(Names(), surprise, calibration)
    a = calibration.tables["a"]["error"].score(torch.tensor([3.0], dtype=torch.float64))
    b = calibration.tables["b"]["nll"].score(torch.tensor([1.0], dtype=torch.float64))
    assert torch.allclose(scores[0], torch.cat([a, b]))
    of_max = calibration.tables["total"]["max"].score(torch.maximum(a, b))
    of_sum = calibration.tables["total"]["sum"].score((a + b) / math.sqrt(2))
    assert float(total[0]) == pytest.approx(max(float(of_max), float(of_sum)))


def test_two_streams_a_little_off_together_outrank_one_stream_as_far_off_alone():
    """The sum statistic: a collision is a sound, a jolt and an image change at once."""
    calibration = _calibration(count=20000)
    one = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]], dtype=torch.float64)
    both = torch.tensor([[[2.0, 2.0], [2.0, 2.0]]], dtype=torch.float64)
    (one_scores, one_total), (_, both_total) = (standardize_scores(Names(), x, calibration) for x in (one, both))
    assert float(both_total[0]) > float(one_total[0]) + 0.5
    assert float(one_total[0]) < float(one_scores[0, 0])         # one stream's 2-sigma is no rarity among 2x2 channels


def test_a_silent_stream_that_is_expected_scores_how_rare_its_silence_was():
    calibration = _calibration(count=999, presence={"a": 1.0, "b": 0.9})
    surprise = torch.full((2, 2, 2), float("nan"), dtype=torch.float64)
    surprise[:, 0] = 0.0                                               # a observed, b silent
    expected = torch.tensor([[True, True], [True, False]])
    scores, total = standardize_scores(Names(), surprise, calibration, expected)
    assert float(scores[0, 1]) == pytest.approx(float(torch.special.ndtri(torch.tensor(0.9))), abs=1e-6)
    assert math.isnan(float(scores[1, 1]))                             # not expected: no evidence
    rare = AnomalyCalibration.absence_score(calibration, "a")          # never silent in 999 rows
    assert rare == pytest.approx(float(torch.special.ndtri(torch.tensor(1 - 1 / 1000, dtype=torch.float64))))
    assert math.isfinite(float(total[0])) and math.isfinite(float(total[1]))


def test_calibrations_without_tables_keep_the_z_scores_and_the_sum_total():
    old = AnomalyCalibration.from_dict({"mean": {"a": 1.0, "b": 2.0}, "std": {"a": 2.0, "b": 1.0},
                                        "threshold": {"a": 2.0, "b": 2.0, "total": 2.5}})
    assert not old.tables and "tables" not in old.to_dict()
    nll = torch.tensor([[3.0, 4.0], [5.0, float("nan")]])
    scores, total = standardize_scores(Names(), nll, old)
    assert torch.allclose(scores[0], torch.tensor([1.0, 2.0]))
    assert float(total[0]) == pytest.approx(3.0 / math.sqrt(2))
    assert float(total[1]) == pytest.approx(2.0)


def test_the_calibration_round_trips_through_its_dict():
    calibration = _calibration(presence={"a": 1.0, "b": 0.5})
    again = AnomalyCalibration.from_dict(calibration.to_dict())
    assert again.tables["b"]["error"].values == calibration.tables["b"]["error"].values
    assert again.presence == calibration.presence and again.threshold == calibration.threshold


def test_the_error_channel_is_the_squared_error_in_sensor_units(small_model_factory):
    model = small_model_factory("mvae", latent_dim=4)
    feats, mask, _ = prepared(model, 32, seed=0)
    training.fit_normalization(model, feats, mask)
    norm = training.normalize_features(model, feats)
    name = "joints"
    decoded = model.decode(name, torch.zeros(32, 4))
    value = stream_surprise(model, name, norm[name], decoded)
    mean = model.denormalize(name, model.output_moments(name, decoded)[0])
    assert torch.allclose(value[:, 1], ((mean - feats[name]) ** 2).sum(1), rtol=1e-4)
    assert torch.allclose(value[:, 0], -model.log_likelihood(name, norm[name], decoded))


def _reference_score(table: QuantileTable, x: float) -> float:
    """The quantile function read plainly, one table at a time: flat below the first point, linear
    between points (a value equal to tied points reads the first of them), the tail's slope past the
    last one."""
    v, p = np.asarray(table.values), np.asarray(table.probits)
    if math.isnan(x):
        return math.nan
    if x > v[-1]:
        return p[-1] + (x - v[-1]) * table.slope
    i = int(np.searchsorted(v, x, side="left"))
    if i == 0:
        return float(p[0])
    return float(p[i - 1] + (x - v[i - 1]) / (v[i] - v[i - 1]) * (p[i] - p[i - 1]))


def test_stacked_tables_score_every_row_as_its_own_table_reads():
    rng = np.random.default_rng(3)
    tables = [QuantileTable.fit(rng.exponential(size=400)), QuantileTable.fit(rng.normal(5.0, 2.0, size=50)),
              QuantileTable.fit(np.round(rng.normal(size=300), 1)),          # ties between stored points
              QuantileTable.fit(np.full(10, 2.0))]                          # one value only
    probes = [np.concatenate([[t.values[0] - 1.0, t.values[0], t.values[-1], t.values[-1] + 3.0, np.nan, np.inf],
                              rng.uniform(t.values[0] - 0.5, t.values[-1] + 0.5, size=200), t.values[:40]])
              for t in tables]
    probes = [np.resize(p, 250) for p in probes]
    x = torch.tensor(np.stack(probes), dtype=torch.float64)
    scored = StackedTables(tables, x).score(x).numpy()
    for row, (table, values) in enumerate(zip(tables, probes)):
        expected = np.array([_reference_score(table, float(v)) for v in values])
        np.testing.assert_allclose(scored[row], expected, rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_the_surprise_of_a_location_decoder_equals_its_elementwise_log_density(small_model_factory, likelihood):
    from mdgm_ros.core.model import likelihoods

    model = small_model_factory("mvae", latent_dim=4)
    feats, mask, _ = prepared(model, 16, seed=1)
    training.fit_normalization(model, feats, mask)
    for name in model.names:
        spec = model.specs[name]
        model.specs[name] = dataclasses.replace(spec, likelihood=likelihood)
    norm = training.normalize_features(model, feats)
    with torch.no_grad():
        for name in model.names:
            spec = model.specs[name]
            decoded = model.decode(name, torch.randn(3, 16, 4))                     # (samples, batch, ...)
            value = stream_surprise(model, name, norm[name], decoded)
            dims = len(spec.feature_shape)
            nll = -likelihoods.per_sample_log_prob(likelihood, norm[name], decoded, model.log_scale(name), dims)
            _, std = model.normalization_stats(name)
            error = ((decoded - norm[name]) * std).pow(2).flatten(-dims).sum(-1)
            assert value.shape == (3, 16, 2)
            torch.testing.assert_close(value[..., 0], nll, rtol=1e-5, atol=1e-3)
            torch.testing.assert_close(value[..., 1], error, rtol=1e-5, atol=1e-3)
    # a new normalisation is picked up (the error weights follow the std tensor)
    name = model.names[0]
    training.fit_normalization(model, {n: 3.0 * f for n, f in feats.items()}, mask)
    _, std = model.normalization_stats(name)
    decoded = model.decode(name, torch.zeros(16, 4)).detach()
    value = stream_surprise(model, name, norm[name], decoded)
    dims = len(model.specs[name].feature_shape)
    torch.testing.assert_close(value[:, 1], ((decoded - norm[name]) * std).pow(2).flatten(-dims).sum(-1),
                               rtol=1e-5, atol=1e-3)


def test_a_stream_counts_as_absent_only_after_it_was_seen_and_stayed_silent_long_enough():
    from types import SimpleNamespace

    from mdgm_ros.evaluation.metrics import absent_long_enough
    mask = np.array([[1, 0], [0, 0], [0, 1], [0, 1], [1, 1], [0, 1]], bool)
    data = SimpleNamespace(mask=mask, stamps=np.arange(6) * 300_000_000, bag=np.array([0, 0, 0, 0, 1, 1]))
    absent = absent_long_enough(data, 0.5)
    assert absent[:, 0].tolist() == [False, False, True, True, False, False]   # 0.3 s: a late message
    assert not absent[:, 1].any()                                            # never seen before: no evidence
