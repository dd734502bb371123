"""Objective families: shapes, masks, MVAE subset terms, DReG vs IWAE, MoPoE bound, mmJSD prior."""
import math

import pytest
import torch
from conftest import prepared, small_specs

from mdgm_ros.core import BetaSchedule, ModelConfig, SpecError, compute_objective
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.families import mmjsd, mopoe, mvae
from mdgm_ros.core.model import posterior as post

ALL = ["elbo", "mvae", "mopoe", "mmvae", "mmjsd"]


@pytest.mark.parametrize("objective", ALL)
def test_every_objective_gives_finite_per_sample_losses_and_gradients(objective, small_model_factory):
    model = small_model_factory(objective)
    raw, mask, _ = prepared(model, 12, seed=0, missing_rate=0.4)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)      # missing rows hold NaN: must never leak
    mask[0] = False                                       # a row with nothing observed
    out = compute_objective(model, feats, mask, beta=0.7)
    assert out.loss.shape == (12,) and torch.isfinite(out.loss).all()
    assert out.loss[0] == 0 and all(v[0] == 0 for v in out.terms.values())
    out.loss.mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_objective_and_fusion_must_match():
    with pytest.raises(SpecError, match="mmvae"):
        ModelConfig(tuple(small_specs()), family="mmvae", fusion="poe")
    assert ModelConfig(tuple(small_specs()), family="mopoe").proper_subsets_include_prior is False
    assert ModelConfig(tuple(small_specs()), family="mvae").proper_subsets_include_prior is True


def _decoder_grads(model):
    return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())
            for name, dec in model.decoders.items()}


def test_mvae_subset_elbo_reconstructs_only_its_modalities(small_model_factory):
    model = small_model_factory("mvae")
    raw, mask, _ = prepared(model, 8, seed=1)
    training.fit_normalization(model, raw, mask)
    feats = model.complete(training.normalize_features(model, raw), mask)
    mu, logvar = model.experts(feats, mask)
    subset = torch.zeros_like(mask)
    subset[:, [1, 3]] = True                                             # joints + tactile
    value = mvae.subset_elbo(model, feats, mu, logvar, subset, beta=1.0,
                             generator=torch.Generator().manual_seed(0))
    value.sum().backward()
    assert _decoder_grads(model) == {"camera": False, "joints": True, "audio": False, "tactile": True}
    # the value does not depend on the other modalities' data
    changed = dict(feats)
    changed["camera"] = feats["camera"] + 5.0
    again = mvae.subset_elbo(model, changed, mu.detach(), logvar.detach(), subset, 1.0,
                             torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, value.detach())


def test_mvae_has_joint_unimodal_and_subset_terms_and_skips_missing(small_model_factory):
    model = small_model_factory("mvae", family_options={"k": 2})
    raw, mask, _ = prepared(model, 10, seed=2)
    training.fit_normalization(model, raw, mask)
    mask[:5, 2] = False                                                  # audio missing in 5 rows
    out = compute_objective(model, training.normalize_features(model, raw), mask)
    assert set(out.terms) == {"elbo_joint", "elbo_camera", "elbo_joints", "elbo_audio", "elbo_tactile",
                              "elbo_subset0", "elbo_subset1"}
    assert torch.all(out.terms["elbo_audio"][:5] == 0) and torch.all(out.terms["elbo_audio"][5:] != 0)
    total = sum(out.terms.values())
    torch.testing.assert_close(out.loss, -total)


def test_mmvae_dreg_gives_finite_gradients_and_iwae_runs_under_no_grad(small_model_factory):
    model = small_model_factory("mmvae", family_options={"K": 4})
    raw, mask, _ = prepared(model, 6, seed=3, missing_rate=0.3)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    out = compute_objective(model, feats, mask)
    out.loss.mean().backward()
    enc_grads = [p.grad for p in model.encoders.parameters() if p.grad is not None]
    assert enc_grads and all(torch.isfinite(g).all() for g in enc_grads)
    assert any(g.abs().sum() > 0 for g in enc_grads)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="no_grad"):
            compute_objective(model, feats, mask)
        iwae = compute_objective(model, feats, mask, estimator="iwae")
    assert torch.isfinite(iwae.loss).all()


def test_mmvae_iwae_value_is_the_bound_for_both_estimators(small_model_factory):
    model = small_model_factory("mmvae", family_options={"K": 3})
    raw, mask, _ = prepared(model, 4, seed=4)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    a = compute_objective(model, feats, mask, generator=torch.Generator().manual_seed(5))
    b = compute_objective(model, feats, mask, generator=torch.Generator().manual_seed(5), estimator="iwae")
    torch.testing.assert_close(a.terms["iwae"], b.terms["iwae"])
    torch.testing.assert_close(b.loss, -b.terms["iwae"])


@pytest.mark.parametrize("posterior, learn_prior", [("gaussian", False), ("laplace", False), ("gaussian", True),
                                                    ("laplace", True)])
def test_mmvae_dreg_on_the_weighted_samples_only_gives_the_full_graphs_gradients(small_model_factory, posterior,
                                                                                learn_prior):
    """The fast DReG path builds the decoders' graph only for samples of non-negligible weight; every
    parameter's gradient and the bound must equal those of the path that decodes every sample with graph."""
    model = small_model_factory("mmvae", family_options={"K": 5, "posterior": posterior,
                                                            "learn_prior": learn_prior})
    raw, mask, _ = prepared(model, 8, seed=6, missing_rate=0.3)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    grads, bounds = [], []
    for fast in (True, False):
        model.zero_grad()
        out = compute_objective(model, feats, mask, generator=torch.Generator().manual_seed(7), fast=fast)
        out.loss.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        bounds.append(out.terms["iwae"])
    torch.testing.assert_close(bounds[0], bounds[1])
    assert set(grads[0]) == set(grads[1]) and any(n.startswith("encoders.") for n in grads[0])
    assert ("extra.prior.logvar" in grads[0]) == learn_prior                 # the learned prior trains
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_mopoe_kl_bound_is_the_average_over_observed_subsets(small_model_factory):
    model = small_model_factory("mopoe")
    mu, logvar = torch.randn(4, 1, 8), torch.randn(4, 1, 8) * 0.3
    mask = torch.tensor([[True, False, True, True]])
    kls = []
    for subset in post.enumerate_subsets(4):
        if (subset & ~mask[0]).any():
            continue
        q_mu, q_lv = model.subset_posterior(mu, logvar, subset[None], mask)
        kls.append(post.kl_to_standard_normal(q_mu, q_lv))
    assert len(kls) == 7
    torch.testing.assert_close(mopoe.kl_upper_bound(model, mu, logvar, mask), torch.stack(kls).mean(0))


def test_mmjsd_dynamic_prior_is_the_weighted_product():
    mu, logvar = torch.randn(3, 2, 4), torch.randn(3, 2, 4) * 0.3
    mask = torch.tensor([[True, True, True], [True, False, True]])
    f_mu, f_lv, pi = mmjsd.dynamic_prior(mu, logvar, mask)
    torch.testing.assert_close(pi, torch.tensor([0.25, 1 / 3]))
    for b in range(2):
        present = mask[b].nonzero().flatten()
        prec = pi[b] * (1 + torch.exp(-logvar[present, b]).sum(0))
        torch.testing.assert_close(f_lv[b], -torch.log(prec))
        torch.testing.assert_close(f_mu[b], pi[b] * (mu[present, b] * torch.exp(-logvar[present, b])).sum(0) / prec)
    assert (mmjsd.jensen_shannon(mu, logvar, mask) >= 0).all()


def test_beta_schedules():
    assert BetaSchedule("constant", end=0.5)(123) == 0.5
    linear = BetaSchedule("linear", 0.0, 1.0, 100)
    assert [linear(s) for s in (0, 50, 100, 1000)] == [0.0, 0.5, 1.0, 1.0]
    cyc = BetaSchedule("cyclical", 0.0, 1.0, 100)
    assert [cyc(s) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    with pytest.raises(ValueError):
        BetaSchedule("exponential")


def test_loss_reduction_is_per_sample_then_mean(small_model_factory):
    """Duplicating the batch leaves the mean loss unchanged (no hidden sums over the batch)."""
    model = small_model_factory("elbo")
    raw, mask, _ = prepared(model, 5, seed=6)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        single = compute_objective(model, feats, mask, generator=torch.Generator().manual_seed(1)).loss
        doubled_feats = {k: torch.cat([v, v]) for k, v in feats.items()}
        doubled = compute_objective(model, doubled_feats, torch.cat([mask, mask]),
                                    generator=torch.Generator().manual_seed(1)).loss
    assert doubled.shape == (10,)
    assert math.isclose(float(single.mean()), float(doubled.mean()), rel_tol=0.05)


def test_mopoe_batched_kl_bound_equals_the_subset_loop(small_model_factory):
    model = small_model_factory("mopoe")
    mu, logvar = torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 1]],
                        dtype=torch.bool)
    torch.testing.assert_close(mopoe.kl_upper_bound(model, mu, logvar, mask),
                               mopoe.kl_upper_bound_loop(model, mu, logvar, mask))


def test_mopoe_sampled_kl_is_an_unbiased_estimate_of_the_bound(small_model_factory):
    model = small_model_factory("mopoe")
    mu, logvar = torch.randn(4, 1, 8), torch.randn(4, 1, 8) * 0.5
    mask = torch.tensor([[True, False, True, True]])
    exact = mopoe.kl_upper_bound(model, mu, logvar, mask)
    gen = torch.Generator().manual_seed(0)
    subsets = post.sample_present_subsets(mask.expand(20000, 4), gen)
    draws = post.kl_to_standard_normal(*model.subset_posterior(mu.expand(4, 20000, 8), logvar.expand(4, 20000, 8),
                                                               subsets, mask.expand(20000, 4)))
    assert float(draws.mean()) == pytest.approx(float(exact), rel=0.02)
    assert mopoe.resolve_kl_estimator("auto", mopoe.EXACT_KL_MAX_MODALITIES) == "exact"
    assert mopoe.resolve_kl_estimator("auto", mopoe.EXACT_KL_MAX_MODALITIES + 1) == "sampled"
    with pytest.raises(ValueError, match="kl_estimator"):
        mopoe.resolve_kl_estimator("closed", 4)


def test_mopoe_prior_only_in_the_product_of_all_modalities(small_model_factory):
    """As the reference: a subset's generation uses the prior-free PoE it was trained with."""
    model = small_model_factory("mopoe")
    mu, logvar = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    got = model.posterior_summary(mu, logvar, mask)
    for b, with_prior in ((0, False), (1, True)):
        ref = post.product_of_experts(mu[:, b:b + 1], logvar[:, b:b + 1], mask[b:b + 1], include_prior=with_prior)
        torch.testing.assert_close(got[0][b], ref[0][0])
        torch.testing.assert_close(got[1][b], ref[1][0])


@pytest.mark.parametrize("objective, options", [("mopoe", {}), ("mmvae", {"estimator": "iwae", "K": 3})])
def test_fast_paths_equal_the_previous_code_path(objective, options, small_model_factory):
    model = small_model_factory(objective)
    raw, mask, _ = prepared(model, 10, seed=2, missing_rate=0.4)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    fast = compute_objective(model, feats, mask, generator=torch.Generator().manual_seed(1), **options)
    slow = compute_objective(model, feats, mask, generator=torch.Generator().manual_seed(1), fast=False, **options)
    assert not bool(mask.all())
    torch.testing.assert_close(fast.loss, slow.loss)
