"""The fallback to a baseline: the held-out table per outage length, the live policy, the bundle round trip
and the trainer writing the table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mdgm_ros.core import AnomalyCalibration, MultimodalVAE, load_bundle, save_bundle
from mdgm_ros.core.engine import fallback
from mdgm_ros.core.engine.fallback import LAST, MEAN, MODEL, SOURCES, FallbackPolicy, FallbackTable
from mdgm_ros.core.engine.inference import FusionResult, Imputation
from mdgm_ros.core.model.modalities import ModalitySpec, Normalization
from mdgm_ros.core.model.vae import ModelConfig


def test_bucket_edges_grow_and_end_at_the_longest_outage():
    assert fallback.bucket_edges(1) == [1]
    edges = fallback.bucket_edges(30)
    assert edges[:4] == [1, 2, 3, 4] and edges[-1] == 30 and edges == sorted(set(edges))
    table = FallbackTable(edges)
    assert table.bucket(np.array([1, 4, 30, 31, 500])).tolist() == [0, 3, len(edges) - 1, len(edges) - 1,
                                                                     len(edges) - 1]


def _table(model_err, last_err, mean_err, samples=100, steps=(1, 2, 4)):
    return FallbackTable(list(steps), {"a": {MODEL: list(model_err), LAST: list(last_err), MEAN: list(mean_err)}},
                         {"a": [samples] * len(steps)})


def test_choice_takes_the_lowest_error_per_outage_length_and_the_model_without_evidence():
    table = _table([1.0, 1.0, 1.0], [0.1, 0.9, 3.0], [2.0, 2.0, 0.5])
    assert [SOURCES[c] for c in table.choice("a", np.array([1, 2, 3, 4, 9]))] == [LAST, LAST, MEAN, MEAN, MEAN]
    assert table.describe("a") == "last_value up to 2 steps, training_mean after"
    few = _table([1.0, 1.0, 1.0], [0.1, 0.9, 3.0], [2.0, 2.0, 0.5], samples=fallback.MIN_SAMPLES - 1)
    assert few.choice("a", np.array([1, 3])).tolist() == [0, 0]
    assert table.choice("unknown", np.array([1])).tolist() == [0]
    # an untrusted step takes the better baseline even where the model's error is the lowest
    good = _table([0.1, 0.1, 0.1], [0.5, 0.9, 3.0], [2.0, 2.0, 0.5])
    assert [SOURCES[c] for c in good.choice("a", np.array([1, 4]), np.array([False, False]))] == [LAST, MEAN]
    assert good.choice("a", np.array([1, 4]), np.array([True, True])).tolist() == [0, 0]


def test_table_problems_are_named():
    assert _table([1, 1, 1], [1, 1, 1], [1, 1, 1]).problem() is None
    assert "increasing" in FallbackTable([2, 1]).problem()
    bad = _table([1, 1, 1], [1, float("nan"), 1], [1, 1, 1])
    assert "finite" in bad.problem()
    calibration = AnomalyCalibration({"a": 0.0}, {"a": 1.0}, {"a": 3.0}, fallback={"steps": [1], "error": 3})
    assert "fallback" in calibration.problem()


def _model(dim: int = 3) -> MultimodalVAE:
    specs = [ModalitySpec("a", "vector", (dim,)), ModalitySpec("b", "vector", (2,))]
    model = MultimodalVAE(ModelConfig(modalities=specs, latent_dim=4))
    model.set_normalization("a", Normalization(mean=np.array([1.0, 2.0, 3.0]), std=np.array([2.0, 2.0, 2.0])))
    return model.eval()


def test_the_table_travels_with_the_bundle(tmp_path):
    model = _model()
    table = _table([1.0, 1.0, 1.0], [0.1, 0.9, 3.0], [2.0, 2.0, 0.5])
    calibration = AnomalyCalibration({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}, {"a": 3.0, "b": 3.0, "total": 4.0},
                                     fallback=table.to_dict())
    save_bundle(tmp_path / "b", model, calibration)
    loaded = load_bundle(tmp_path / "b").calibration.fallback_table
    assert loaded == table
    assert json.loads((tmp_path / "b" / "calibration.json").read_text())["fallback"]["steps"] == [1, 2, 4]


def test_calibration_measures_each_source_per_outage_length():
    """A random walk (step std 0.1): the last value k steps old errs by 0.01 k, an imputer with noise of std
    0.5 by 0.25 at every length, the mean (0) by the walk's spread; the table finds the crossing near 25 steps."""
    gen = torch.Generator().manual_seed(0)
    windows, steps = 200, 120
    walk = torch.cumsum(0.1 * torch.randn(windows, steps, 1, generator=gen), 1) + 3.0
    feats = {"a": walk.reshape(-1, 1)}
    mask = torch.ones(windows * steps, 1, dtype=torch.bool)
    rows = torch.arange(windows * steps).reshape(windows, steps)

    class Model:
        names = ["a"]
        device = torch.device("cpu")

    def impute(part, m, name, rows):
        truth = part[name][rows]
        return truth + 0.5 * torch.randn(truth.shape, generator=gen), torch.full_like(truth, 0.5)

    table = fallback.calibrate_fallback(Model(), feats, mask, rows, {"a": torch.zeros(1)}, impute, max_steps=40)
    errors = table.error["a"]
    assert errors[MODEL] == pytest.approx([0.25] * len(table.steps), rel=0.2)
    for b, k in enumerate(table.steps):        # the bucket's mean outage age is at most its edge
        assert errors[LAST][b] <= 0.01 * k * 1.5 + 0.01
    assert min(errors[MEAN]) > 5.0
    picks = [SOURCES[c] for c in table.choice("a", np.asarray(table.steps))]
    assert picks[0] == LAST and picks[-1] == MODEL
    switch = table.steps[picks.index(MODEL)]
    assert 15 <= switch <= 40
    assert sum(table.samples["a"]) > 1000
    assert table.variance["a"] == pytest.approx([0.25] * len(table.steps))    # the imputer's std, squared


def test_policy_publishes_the_last_value_then_the_model_and_forgets_on_reset():
    model = _model()
    table = FallbackTable([1, 2, 4], {"a": {MODEL: [1.0, 1.0, 0.2], LAST: [0.04, 0.5, 3.0], MEAN: [2.0, 2.0, 2.0]}},
                          {"a": [100, 100, 100]})
    means = {"a": torch.tensor([1.0, 2.0, 3.0])}
    policy = FallbackPolicy(model, table, means, enabled=["a"])

    def step(seen: bool) -> tuple[FusionResult, str]:
        raw = {"a": torch.tensor([[5.0, 6.0, 7.0]])} if seen else {}
        policy.observe(raw, np.array([[seen, True]]))
        result = FusionResult(torch.zeros(1, 4), torch.ones(1, 4))
        if not seen:
            result.imputed["a"] = Imputation(torch.full((1, 3), -9.0), torch.full((1, 3), 0.7))
        return result, policy.apply(result).name_of("a")

    step(True)
    result, source = step(False)                  # 1 step missing: the last value (its error 0.04 -> std 0.2 x 2)
    assert source == LAST
    assert result.imputed["a"].mean.tolist() == [[5.0, 6.0, 7.0]]
    assert result.imputed["a"].std == pytest.approx(torch.full((1, 3), 0.4))
    result, source = step(False)                  # 2 steps: the model (1.0 < 0.5? no: the last value still)
    assert source == LAST
    result, source = step(False)                  # 3 steps (bucket up to 4): the model
    assert source == MODEL and result.imputed["a"].mean.tolist() == [[-9.0, -9.0, -9.0]]
    # untrusted: the better baseline at that length (the mean, 2.0 < 3.0)
    policy.observe({}, np.array([[False, True]]))
    result = FusionResult(torch.zeros(1, 4), torch.ones(1, 4), imputed={"a": Imputation(torch.zeros(1, 3),
                                                                                        torch.ones(1, 3))})
    assert policy.apply(result, np.array([True])).name_of("a") == MEAN
    assert result.imputed["a"].mean.tolist() == [[1.0, 2.0, 3.0]]
    # after a reset there is no last value: where it would be chosen, the model (its error is below the mean's)
    policy.reset()
    policy.observe({}, np.array([[False, True]]))
    result = FusionResult(torch.zeros(1, 4), torch.ones(1, 4), imputed={"a": Imputation(torch.zeros(1, 3),
                                                                                        torch.ones(1, 3))})
    assert policy.apply(result).name_of("a") == MODEL


def test_policy_leaves_present_and_unenabled_streams_alone():
    model = _model()
    table = FallbackTable([1], {"b": {MODEL: [1.0], LAST: [0.0], MEAN: [2.0]}}, {"b": [100]})
    policy = FallbackPolicy(model, table, {"b": torch.zeros(2)}, enabled=["a"])
    assert policy.enabled == frozenset()          # "a" has no table, "b" is not enabled
    policy = FallbackPolicy(model, table, {"b": torch.zeros(2)})
    policy.observe({"b": torch.tensor([[1.0, 1.0]])}, np.array([[True, True]]))
    result = FusionResult(torch.zeros(1, 4), torch.ones(1, 4), imputed={"b": Imputation(torch.zeros(1, 2),
                                                                                        torch.ones(1, 2))})
    assert policy.apply(result).source == {}      # "b" is present: impute_present's reconstruction stays


def test_evaluate_scores_the_source_the_node_publishes():
    from types import SimpleNamespace

    from mdgm_ros.evaluation.temporal_vs_frame import published_errors

    table = _table([1.0, 1.0, 1.0], [0.1, 0.9, 3.0], [2.0, 2.0, 0.5])
    calibration = AnomalyCalibration({"a": 0.0}, {"a": 1.0}, {"a": 3.0}, fallback=table.to_dict())
    em = SimpleNamespace(bundle=SimpleNamespace(calibration=calibration),
                         model=SimpleNamespace(specs={"a": SimpleNamespace(kind="vector")}))
    errors = np.array([[1.0, 1.0, 1.0, 1.0],          # the model's error per row
                       [5.0, 5.0, 5.0, 0.4],          # the training mean's
                       [0.2, 0.8, 9.0, 9.0]])         # the last value's
    out = published_errors(em, "a", np.array([1, 2, 3, 9]), errors)
    assert out["published"] == pytest.approx((0.2 + 0.8 + 5.0 + 0.4) / 4) and out["fallback_rate"] == 1.0
    plain = SimpleNamespace(bundle=SimpleNamespace(calibration=AnomalyCalibration({"a": 0.0}, {"a": 1.0}, {"a": 3.0})))
    assert published_errors(plain, "a", np.array([1, 2, 3, 9]), errors) == {"published": 1.0, "fallback_rate": 0.0}
    # a flagged row takes the better baseline there: row 4 (9 steps) the mean either way, row 1 the last value
    flagged = published_errors(em, "a", np.array([1, 2, 3, 9]), errors, untrusted=np.array([True, False, False, True]))
    assert flagged["published"] == pytest.approx((0.2 + 0.8 + 5.0 + 0.4) / 4)


def test_a_samples_predicted_variance_scales_the_models_expected_error():
    table = FallbackTable([1, 4], {"a": {MODEL: [1.0, 1.0], LAST: [2.0, 20.0], MEAN: [4.0, 15.0]}},
                          {"a": [100, 100]}, {"a": [0.5, 0.5]})
    # the bucket's mean predicted variance is 0.5: a row predicting 1.5 expects 3x the model's held-out error
    picks = table.choice("a", np.array([1, 1, 3, 3]), variance=np.array([1.5, 0.5, 0.1, 100.0]))
    assert [SOURCES[c] for c in picks] == [LAST, MODEL, MODEL, MODEL]      # 100 / 0.5 is capped at 10 (< 15)
    assert table.choice("a", np.array([1]), variance=np.array([np.nan])).tolist() == [0]
    assert "variance" in FallbackTable([1], {"a": {MODEL: [1.0], LAST: [1.0], MEAN: [1.0]}}, {"a": [1]},
                                       {"a": [0.0]}).problem()
