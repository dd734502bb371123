"""Posterior aggregation: PoE against brute force, MoE densities, MoPoE subset sampling, KLs."""
import math

import numpy as np
import pytest
import torch

from mdgm_ros.core.model import posterior as post


def _grid_moments(mus, variances, with_prior):
    grid = np.linspace(-12, 12, 200001)
    log_density = np.zeros_like(grid)
    for mu, var in zip(mus, variances):
        log_density += -0.5 * (grid - mu) ** 2 / var
    if with_prior:
        log_density += -0.5 * grid ** 2
    density = np.exp(log_density - log_density.max())
    density /= density.sum()
    mean = (grid * density).sum()
    return mean, ((grid - mean) ** 2 * density).sum()


@pytest.mark.parametrize("with_prior", [True, False])
def test_poe_matches_brute_force_product_on_a_grid(with_prior):
    mu = torch.tensor([[[0.7]], [[-1.3]], [[2.0]]], dtype=torch.float64)      # (M=3, B=1, D=1)
    logvar = torch.log(torch.tensor([[[0.5]], [[2.0]], [[0.3]]], dtype=torch.float64))
    mask = torch.tensor([[True, True, True]])
    joint_mu, joint_lv = post.product_of_experts(mu, logvar, mask, include_prior=with_prior)
    mean, var = _grid_moments([0.7, -1.3, 2.0], [0.5, 2.0, 0.3], with_prior)
    assert joint_mu.item() == pytest.approx(mean, abs=1e-6)
    assert math.exp(joint_lv.item()) == pytest.approx(var, rel=1e-4)


def test_poe_closed_form_with_prior():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 5, 6), torch.randn(4, 5, 6)
    mask = torch.rand(5, 4) > 0.3
    got_mu, got_lv = post.product_of_experts(mu, logvar, mask)
    prec = 1.0 + (mask.t().unsqueeze(-1) * torch.exp(-logvar)).sum(0)
    want_mu = (mask.t().unsqueeze(-1) * mu * torch.exp(-logvar)).sum(0) / prec
    torch.testing.assert_close(got_mu, want_mu)
    torch.testing.assert_close(got_lv, -torch.log(prec))


@pytest.mark.parametrize("include_prior", [True, False])
def test_empty_subset_gives_the_prior(include_prior):
    mu, logvar = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    joint_mu, joint_lv = post.product_of_experts(mu, logvar, mask, include_prior=include_prior)
    assert torch.all(joint_mu == 0) and torch.all(joint_lv == 0)


def test_missing_expert_contributes_nothing_even_if_nan():
    mu, logvar = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    mask = torch.tensor([[True, False, True], [True, False, True]])
    reference = post.product_of_experts(mu[[0, 2]], logvar[[0, 2]], mask[:, [0, 2]])
    mu[1], logvar[1] = float("nan"), float("nan")
    got = post.product_of_experts(mu, logvar, mask)
    torch.testing.assert_close(got[0], reference[0])
    torch.testing.assert_close(got[1], reference[1])
    # a zero-filled placeholder would be a confident fake expert at 0: it must not count either
    mu[1], logvar[1] = 0.0, -10.0
    torch.testing.assert_close(post.product_of_experts(mu, logvar, mask)[0], reference[0])


def test_extreme_logvars_stay_finite():
    mu = torch.tensor([[[1e3]], [[-1e3]]])
    logvar = torch.tensor([[[-200.0]], [[300.0]]])
    joint_mu, joint_lv = post.product_of_experts(mu, logvar, torch.tensor([[True, True]]))
    assert torch.isfinite(joint_mu).all() and torch.isfinite(joint_lv).all()
    assert post.LOGVAR_MIN <= joint_lv.item() <= post.LOGVAR_MAX


def test_subset_prior_switch():
    mu, logvar = torch.randn(2, 1, 3), torch.zeros(2, 1, 3)
    present = torch.tensor([[True, True]])
    proper = torch.tensor([[True, False]])
    _, lv_without = post.subset_product_of_experts(mu, logvar, proper, present, False)
    _, lv_with = post.subset_product_of_experts(mu, logvar, proper, present, True)
    torch.testing.assert_close(lv_without, torch.zeros(1, 3))                # one unit expert alone
    torch.testing.assert_close(lv_with, torch.full((1, 3), -math.log(2.0)))  # plus the prior
    _, lv_full = post.subset_product_of_experts(mu, logvar, present, present, False)
    torch.testing.assert_close(lv_full, torch.full((1, 3), -math.log(3.0)))  # all modalities: prior always
    # the observed set of a row missing a modality is a proper subset: no prior (as the MoPoE reference)
    _, lv_observed = post.subset_product_of_experts(mu, logvar, proper, proper, False)
    torch.testing.assert_close(lv_observed, torch.zeros(1, 3))


def test_all_subset_products_equal_one_product_per_subset():
    mu, logvar = torch.randn(3, 4, 5), torch.randn(3, 4, 5) * 2
    subsets = post.enumerate_subsets(3)
    include = subsets.all(1)
    got_mu, got_lv = post.all_subset_products(mu, logvar, subsets, include)
    for s, subset in enumerate(subsets):
        ref_mu, ref_lv = post.product_of_experts(mu, logvar, subset.expand(4, 3), include_prior=bool(include[s]))
        torch.testing.assert_close(got_mu[s], ref_mu)
        torch.testing.assert_close(got_lv[s], ref_lv)


def test_weighted_poe_scales_precisions():
    mu, logvar = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.ones(3, 2, dtype=torch.bool)
    w = torch.tensor([0.25, 0.5])
    got_mu, got_lv = post.product_of_experts(mu, logvar, mask, weights=w, prior_weight=0.25)
    prec = 0.25 + (w[:, None, None] * torch.exp(-logvar)).sum(0)
    torch.testing.assert_close(got_lv, -torch.log(prec))
    torch.testing.assert_close(got_mu, (w[:, None, None] * mu * torch.exp(-logvar)).sum(0) / prec)


def test_kl_closed_forms_match_monte_carlo():
    torch.manual_seed(1)
    mu_q, lv_q = torch.randn(3), torch.randn(3) * 0.5
    mu_p, lv_p = torch.randn(3), torch.randn(3) * 0.5
    z = post.reparameterize(mu_q, lv_q, n_samples=400000)
    mc_std = (post.gaussian_log_prob(z, mu_q, lv_q) - post.standard_normal_log_prob(z)).mean()
    mc_gen = (post.gaussian_log_prob(z, mu_q, lv_q) - post.gaussian_log_prob(z, mu_p, lv_p)).mean()
    assert post.kl_to_standard_normal(mu_q, lv_q).item() == pytest.approx(mc_std.item(), abs=0.02)
    assert post.kl_gaussians(mu_q, lv_q, mu_p, lv_p).item() == pytest.approx(mc_gen.item(), abs=0.03)
    zeros = torch.zeros(3)
    torch.testing.assert_close(post.kl_gaussians(mu_q, lv_q, zeros, zeros), post.kl_to_standard_normal(mu_q, lv_q))


def test_mixture_log_prob_matches_manual_and_ignores_missing():
    torch.manual_seed(2)
    mu, logvar = torch.randn(3, 4, 2), torch.randn(3, 4, 2) * 0.3
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [True, True, False]])
    z = torch.randn(5, 4, 2)
    got = post.mixture_log_prob(z, mu, logvar, mask)
    for b in range(4):
        comps = [post.gaussian_log_prob(z[:, b], mu[m, b], logvar[m, b]) for m in range(3) if mask[b, m]]
        want = torch.logsumexp(torch.stack(comps), 0) - math.log(len(comps))
        torch.testing.assert_close(got[:, b], want)


def test_mixture_density_integrates_to_one():
    mu = torch.tensor([[[-2.0]], [[1.0]], [[5.0]]], dtype=torch.float64)
    logvar = torch.log(torch.tensor([[[0.3]], [[1.5]], [[0.1]]], dtype=torch.float64))
    grid = torch.linspace(-15, 15, 30001, dtype=torch.float64).reshape(-1, 1, 1)
    density = torch.exp(post.mixture_log_prob(grid, mu, logvar, torch.tensor([[True, True, False]])))
    assert (density.sum() * (grid[1] - grid[0])).item() == pytest.approx(1.0, abs=1e-6)


def test_stratified_samples_come_from_each_expert():
    mu = torch.tensor([[[-5.0, 0.0]], [[5.0, 1.0]]])
    logvar = torch.log(torch.tensor([[[0.25, 0.25]], [[4.0, 4.0]]]))
    z = post.stratified_mixture_samples(mu, logvar, 20000, torch.Generator().manual_seed(0))
    assert z.shape == (2, 20000, 1, 2)
    torch.testing.assert_close(z.mean(1)[:, 0], mu[:, 0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.var(1)[:, 0], torch.exp(logvar[:, 0]), atol=0.1, rtol=0.05)


def test_subset_enumeration():
    subsets = post.enumerate_subsets(4)
    assert subsets.shape == (15, 4)
    assert len({tuple(s.tolist()) for s in subsets}) == 15 and subsets.any(1).all()


def test_mopoe_subset_sampling_respects_masks_and_reaches_every_subset():
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, True, True, True], [True, False, True, False], [False, False, True, False],
                         [False, False, False, False]]).repeat(5000, 1)
    subsets = post.sample_present_subsets(mask, gen)
    assert not (subsets & ~mask).any(), "a subset used a missing modality"
    assert subsets[mask.any(1)].any(1).all(), "an observed row got an empty subset"
    assert not subsets[~mask.any(1)].any(), "a row with nothing observed got a subset"
    full = subsets[0::4]
    counts = {}
    for row in full.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert len(counts) == 15
    expected = len(full) / 15
    assert all(abs(c - expected) < 0.2 * expected for c in counts.values()), counts
    pair = subsets[1::4]
    assert {tuple(r) for r in pair.tolist()} == {(True, False, False, False), (False, False, True, False),
                                                (True, False, True, False)}


def test_mixture_moments():
    mu = torch.tensor([[[-1.0]], [[1.0]]])
    logvar = torch.zeros(2, 1, 1)
    mean, lv = post.mixture_moments(mu, logvar, torch.tensor([[True, True]]))
    assert mean.item() == pytest.approx(0.0) and math.exp(lv.item()) == pytest.approx(2.0)
    mean, lv = post.mixture_moments(mu, logvar, torch.tensor([[False, False]]))
    assert mean.item() == 0.0 and lv.item() == 0.0


def test_exclusive_sums_leave_each_term_out_without_subtracting_it():
    from mdgm_ros.core.model.posterior import exclusive_sums

    x = torch.rand(5, 2, 3, dtype=torch.float64)
    expected = torch.stack([x.sum(0) - x[m] for m in range(5)])
    torch.testing.assert_close(exclusive_sums(x), expected)
    torch.testing.assert_close(exclusive_sums(x[:1]), torch.zeros_like(x[:1]))
    big = torch.tensor([[2.0e4], [1.0e-4], [3.0e-4]], dtype=torch.float32)     # one term dominates
    assert float(exclusive_sums(big)[0]) == pytest.approx(4.0e-4, rel=1e-5)


def test_the_leave_one_out_products_hold_when_one_expert_dominates_in_float32():
    from mdgm_ros.core.model.posterior import dense_product_with_leave_one_out

    mu = torch.tensor([[[1.0, -2.0]], [[0.5, 0.25]], [[-1.0, 3.0]]])
    logvar = torch.tensor([[[-10.0, -10.0]], [[0.0, 9.0]], [[1.0, 10.0]]])       # expert 0 dominates
    _, _, loo32 = dense_product_with_leave_one_out(mu, logvar, loo_prior=False)
    _, _, loo64 = dense_product_with_leave_one_out(mu.double(), logvar.double(), loo_prior=False)
    assert torch.isfinite(loo32).all()
    torch.testing.assert_close(loo32.double(), loo64, rtol=1e-4, atol=1e-5)
