"""Inference against an exactly solvable linear-Gaussian model, anomaly scores and the fusion step."""
import numpy as np
import pytest
import torch
from conftest import prepared

from mdgm_ros.core import Fuser, calibrate_anomaly, conditional_log_likelihood, impute, iwae_log_likelihood
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine.inference import anomaly_scores, posterior_samples


def test_iwae_is_exact_when_the_posterior_is_exact(linear_gaussian):
    lg = linear_gaussian
    x = lg.sample(64)
    mask = torch.ones(64, 2, dtype=torch.bool)
    with torch.no_grad():
        got = iwae_log_likelihood(lg.model, x, mask, n_samples=8)
    exact = lg.joint(["a", "b"]).log_prob(torch.cat([x["a"], x["b"]], dim=1))
    torch.testing.assert_close(got, exact, atol=1e-6, rtol=0)
    # the same from one modality alone (the PoE of one expert and the prior is its exact posterior)
    with torch.no_grad():
        single = iwae_log_likelihood(lg.model, x, torch.tensor([[True, False]]).expand(64, 2), n_samples=4)
    torch.testing.assert_close(single, lg.joint(["a"]).log_prob(x["a"]), atol=1e-6, rtol=0)


def test_conditional_log_likelihood_converges_to_the_exact_value(linear_gaussian):
    lg = linear_gaussian
    x = lg.sample(16)
    cond = torch.tensor([[True, False]]).expand(16, 2)
    target = torch.tensor([[False, True]]).expand(16, 2)
    with torch.no_grad():
        got = conditional_log_likelihood(lg.model, x, cond, target, n_samples=20000,
                                         generator=torch.Generator().manual_seed(0))
    both = torch.cat([x["a"], x["b"]], dim=1)
    exact = lg.joint(["a", "b"]).log_prob(both) - lg.joint(["a"]).log_prob(x["a"])
    torch.testing.assert_close(got, exact, atol=0.05, rtol=0)


def test_imputation_mean_is_the_exact_conditional_mean(linear_gaussian):
    lg = linear_gaussian
    x = lg.sample(32)
    observed = torch.tensor([[True, False]]).expand(32, 2)
    with torch.no_grad():
        imputed = impute(lg.model, {"a": x["a"]}, observed, ["b"])["b"]
    wa, ba = lg.params["a"]
    wb, bb = lg.params["b"]
    post_var = 1.0 / (1.0 + wa ** 2 / 0.25)
    post_mean = post_var * wa * (x["a"] - ba) / 0.25
    torch.testing.assert_close(imputed.mean, wb * post_mean + bb)
    # sampled imputation adds the posterior spread: var = wb^2 post_var + s_b^2
    with torch.no_grad():
        sampled = impute(lg.model, {"a": x["a"]}, observed, ["b"], n_samples=20000,
                         generator=torch.Generator().manual_seed(1))["b"]
    torch.testing.assert_close(sampled.std ** 2, (wb ** 2 * post_var + 0.64).expand(32, 3), atol=0.03, rtol=0.03)


def test_moe_posterior_samples_use_only_observed_experts(small_model_factory):
    model = small_model_factory("mmvae")
    mu = torch.stack([torch.full((3, 8), float(m) * 10) for m in range(4)])
    logvar = torch.full((4, 3, 8), -10.0)
    mask = torch.tensor([[True, False, False, True], [False, True, False, False], [False, False, False, False]])
    with torch.no_grad():                                  # MMVAE's learned prior is a parameter
        z = posterior_samples(model, mu, logvar, mask, 500, torch.Generator().manual_seed(0))
    assert set(z[:, 0, 0].round().unique().tolist()) == {0.0, 30.0}
    assert set(z[:, 1, 0].round().unique().tolist()) == {10.0}
    assert abs(float(z[:, 2].mean())) < 0.2 and abs(float(z[:, 2].std()) - 1) < 0.1   # prior


@pytest.mark.parametrize("objective", ["mvae", "mmvae", "mopoe"])
def test_fuser_outputs(objective, small_model_factory):
    model = small_model_factory(objective)
    raw_feats, mask, data = prepared(model, 64, seed=0)
    training.fit_normalization(model, raw_feats, mask)
    calibration = calibrate_anomaly(model, training.normalize_features(model, raw_feats), mask)
    raw = {k: torch.from_numpy(v[:3]) for k, v in data.raw.items()}
    step_mask = torch.tensor([[True, True, False, True], [True, True, True, True], [False, True, False, False]])
    raw["audio"][0] = float("nan")                                   # the missing stream holds garbage
    result = Fuser(model, calibration)(raw, step_mask)
    assert result.latent_mean.shape == (3, 8) and (result.latent_std > 0).all()
    assert set(result.imputed) == {"camera", "audio", "tactile"}     # missing somewhere in the batch
    assert result.imputed["audio"].mean.shape == (3, 16, 17)         # log-mel units
    assert torch.isfinite(result.imputed["audio"].mean).all()
    assert torch.isnan(result.scores[0, 2]) and torch.isfinite(result.scores[1]).all()
    assert torch.isfinite(result.total_score).all()
    with_present = Fuser(model, calibration, impute_present=True)(raw, step_mask)
    assert set(with_present.imputed) == set(model.names)


def test_trained_model_imputes_each_modality_better_than_the_mean(small_model_factory):
    """A short real training run on data whose modalities share a latent factor."""
    model = small_model_factory("mvae", latent_dim=8)
    feats, mask, _ = prepared(model, 1200, seed=0, missing_rate=0.2)
    training.fit_normalization(model, feats, mask)
    norm = training.normalize_features(model, feats)
    config = training.TrainConfig(epochs=12, batch_size=64, lr=3e-3, seed=0,
                                  beta=training.BetaSchedule("linear", 0.0, 1.0, 100))
    history = training.train(model, norm, mask, config)
    assert history[-1].train_loss < history[0].train_loss
    test_feats, test_mask, _ = prepared(model, 300, seed=99)
    test_norm = training.normalize_features(model, test_feats)
    ratios = {}
    with torch.no_grad():
        for j, name in enumerate(model.names):
            observed = test_mask.clone()
            observed[:, j] = False
            imputed = impute(model, test_norm, observed, [name])[name].mean
            mse = ((imputed - test_norm[name]) ** 2).mean()
            mean_mse = ((norm[name][mask[:, j]].mean(0) - test_norm[name]) ** 2).mean()
            ratios[name] = float(mse / mean_mse)
    print("imputation MSE / mean-predictor MSE:", ratios)
    # camera pixels far from the blob are pure sensor noise, which no predictor beats
    limits = {"camera": 0.65, "joints": 0.2, "audio": 0.45, "tactile": 0.2}
    assert all(ratios[n] < limits[n] for n in limits), ratios
    # anomaly scores: calibrated on normal data, swapped rows score higher
    calibration = calibrate_anomaly(model, test_norm, test_mask)
    swapped = dict(test_norm)
    swapped["joints"] = test_norm["joints"].roll(1, dims=0)
    with torch.no_grad():
        _, normal_total = anomaly_scores(model, test_norm, test_mask, calibration)
        scores, bad_total = anomaly_scores(model, swapped, test_mask, calibration)
    # the calibration's own rows: about 1 % of totals above the 0.99 threshold, each channel's median at 0
    assert float((normal_total > calibration.threshold["total"]).float().mean()) <= 0.02
    medians = [calibration.tables[n]["nll"].score(torch.tensor([float(np.median(calibration.tables[n]["nll"].values))]))
               for n in model.names]
    assert all(abs(float(m)) < 0.05 for m in medians), medians
    assert float((bad_total > normal_total).float().mean()) > 0.9
    assert float(scores[:, 1].mean()) > 3.0                           # the joints score points at the joints


@pytest.mark.parametrize("objective", ["mvae", "mopoe"])
def test_fuser_closed_form_path_equals_the_general_masked_path(objective, small_model_factory):
    model = small_model_factory(objective)
    assert model.family.closed_form_poe(model)         # MoPoE too: its prior rule is in the closed form
    raw_feats, mask, data = prepared(model, 64, seed=0)
    training.fit_normalization(model, raw_feats, mask)
    calibration = calibrate_anomaly(model, training.normalize_features(model, raw_feats), mask)
    fuser = Fuser(model, calibration, impute_present=True)
    raw = {k: torch.from_numpy(v[:2]) for k, v in data.raw.items()}
    for pattern in ([True, True, False, True], [True, False, False, False], [True, True, True, True]):
        step_mask = torch.tensor([pattern, pattern])
        observed = [n for n, p in zip(model.names, pattern) if p]
        fast = fuser(raw, step_mask)
        with torch.inference_mode():
            slow = fuser._fused_general(model.features({n: raw[n] for n in observed}), step_mask, observed)
        torch.testing.assert_close(fast.latent_mean, slow.latent_mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fast.latent_std, slow.latent_std, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fast.scores, slow.scores, atol=1e-3, rtol=1e-3, equal_nan=True)
        for name in model.names:
            torch.testing.assert_close(fast.imputed[name].mean, slow.imputed[name].mean, atol=1e-4, rtol=1e-4)
