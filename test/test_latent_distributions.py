"""The mixture families' Laplace latents (objective option ``posterior="laplace"``): densities against
torch.distributions, the MMVAE and MMVAE+ objectives against a hand computation, and what the runtime
reads from them (moments, samples, densities, the option's validation)."""
import math

import pytest
import torch
from test_private_latents import BETA, assert_bound_both_ways
from torch.distributions import Laplace

from mdgm_ros.core import (
    Fuser,
    ModalitySpec,
    ModelConfig,
    MultimodalVAE,
    SpecError,
    iwae_log_likelihood,
    load_bundle,
    save_bundle,
)
from mdgm_ros.core.families.private import private_codes
from mdgm_ros.core.model.latent_distributions import GAUSSIAN, LaplaceLatent, distribution_named

LAPLACE = distribution_named("laplace")


def softmax_scale(raw):
    return torch.softmax(raw, -1) * raw.shape[-1] + 1e-6


def test_laplace_densities_and_prior_match_torch_distributions():
    torch.manual_seed(0)
    raw, mu, z = torch.randn(3, 5, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    logvar = LAPLACE.from_encoder(raw)
    assert torch.allclose(LaplaceLatent.scale(logvar).sum(-1), torch.full((3, 5), 4.0), atol=1e-4)   # sum D
    want = Laplace(mu, softmax_scale(raw)).log_prob(z).sum(-1)
    assert torch.allclose(LAPLACE.log_prob(z, mu, logvar), want, atol=1e-5)
    assert torch.allclose(LAPLACE.prior_log_prob(z), Laplace(0.0, 1.0).log_prob(z).sum(-1))
    mask = torch.tensor([[True, True, False], [False, True, True], [True, True, True], [True, False, False],
                         [False, False, True]])                                         # (B, M)
    comp = Laplace(mu, softmax_scale(raw)).log_prob(z[0][None]).sum(-1)                   # (M, B)
    comp = torch.where(mask.t(), comp, torch.tensor(float("-inf")))
    want_mix = torch.logsumexp(comp, 0) - torch.log(mask.sum(1).float())
    assert torch.allclose(LAPLACE.mixture_log_prob(z[0], mu, logvar, mask), want_mix, atol=1e-5)


def test_laplace_samples_have_the_laplace_variance_and_follow_the_generator():
    logvar = LAPLACE.from_encoder(torch.tensor([[0.0, 1.0, -1.0]])).expand(100000, 3)
    draw = LAPLACE.sample(torch.ones(100000, 3), logvar, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(draw.mean(0), torch.ones(3), atol=0.03)
    assert torch.allclose(draw.var(0), logvar[0].exp(), rtol=0.05)
    again = LAPLACE.sample(torch.ones(100000, 3), logvar, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)
    mu = torch.zeros(2, 4, 3, requires_grad=True)                                          # reparameterised
    LAPLACE.stratified(mu, torch.zeros(2, 4, 3), 5).sum().backward()
    assert mu.grad is not None and torch.allclose(mu.grad, torch.full_like(mu, 5.0))


def test_the_option_is_validated_when_the_model_is_built():
    two = (ModalitySpec("a", "vector", (3,)), ModalitySpec("b", "vector", (4,)))
    with pytest.raises(SpecError, match="must be one of \\['gaussian', 'laplace'\\], got 'cauchy'"):
        MultimodalVAE(ModelConfig(two, family="mmvae", family_options={"posterior": "cauchy"}))
    with pytest.raises(SpecError, match="mopoe has no objective option 'posterior'"):
        MultimodalVAE(ModelConfig(two, family="mopoe", family_options={"posterior": "laplace"}))
    model = MultimodalVAE(ModelConfig(two, family="mmvae"))
    assert model.family.latent_distribution(model.config) is GAUSSIAN


# ----------------------------------------------------------------------------- objectives by hand
@pytest.fixture
def laplace_means(monkeypatch):
    """Every Laplace sample is its mean, so the K samples coincide and the bound is one weight."""
    monkeypatch.setattr(LaplaceLatent, "sample", lambda self, mu, logvar, n_samples=None, generator=None:
                        mu if n_samples is None else mu.expand(n_samples, *mu.shape))


def build(name, **options):
    torch.manual_seed(2)
    two = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
           ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)))
    private_dim = 3 if name == "mmvae_plus" else None
    model = MultimodalVAE(ModelConfig(two, latent_dim=2, family=name, private_dim=private_dim,
                                      family_options={"posterior": "laplace", "K": 3, **options}))
    with torch.no_grad():
        for enc in (*model.encoders.values(), *model.private_encoders.values()):
            enc.head.bias.add_(0.3)                 # experts away from the prior
    return model, {"a": torch.randn(3, 3), "b": torch.randn(3, 4)}


def loglik(model, name, x, z):
    loc = model.decoders[name](z)
    return torch.distributions.Normal(loc, math.exp(float(model.log_scales[name]))).log_prob(x).sum(-1) \
        * model.specs[name].weight


def laplace_expert(encoder, x):
    mu, raw = encoder(x)
    return Laplace(mu, softmax_scale(raw.clamp(-10, 10)))


def mixture_log_q(experts, c):
    return torch.logsumexp(torch.stack([q.log_prob(c).sum(-1) for q in experts]), 0) - math.log(len(experts))


@pytest.mark.parametrize("learn_prior", [False, True])
def test_mmvae_laplace_objective_by_hand(laplace_means, learn_prior):
    """The fixed Laplace(0, 1) prior, or the learned one: MultiVae's, scales softmax(rho) * D."""
    model, x = build("mmvae", learn_prior=learn_prior)
    rho = torch.tensor([0.5, -0.3])
    if learn_prior:
        with torch.no_grad():
            model.extra["prior"].logvar.copy_(rho[None])
    prior = Laplace(torch.zeros(2), softmax_scale(rho) if learn_prior else torch.ones(2))
    experts = [laplace_expert(model.encoders[m], x[m]) for m in ("a", "b")]
    lws = []
    for q in experts:
        z = q.mean
        recon = sum(loglik(model, n, x[n], z) for n in ("a", "b"))
        lws.append(recon + BETA * (prior.log_prob(z).sum(-1) - mixture_log_q(experts, z)))
    assert_bound_both_ways(model, x, (lws[0] + lws[1]) / 2)


def test_mmvae_plus_laplace_objective_by_hand(laplace_means):
    model, x = build("mmvae_plus")
    with torch.no_grad():
        model.extra["aux_prior"].logvar.copy_(torch.tensor([[0.4, -0.2, 0.0]]).expand(2, 3))
    shared = [laplace_expert(model.encoders[m], x[m]) for m in ("a", "b")]
    private = {m: laplace_expert(model.private_encoders[m], x[m]) for m in ("a", "b")}
    prior_c, prior_w = Laplace(torch.zeros(2), torch.ones(2)), Laplace(torch.zeros(3), torch.ones(3))
    lws = []
    for j, m in enumerate(("a", "b")):
        c, w = shared[j].mean, private[m].mean
        recon = sum(loglik(model, n, x[n], torch.cat([c, w if n == m else torch.zeros(3, 3)], -1))
                    for n in ("a", "b"))                                       # r's samples: its mean, 0
        log_q = mixture_log_q(shared, c) + private[m].log_prob(w).sum(-1)
        log_p = prior_c.log_prob(c).sum(-1) + prior_w.log_prob(w).sum(-1)
        lws.append(recon + BETA * (log_p - log_q))
    assert_bound_both_ways(model, x, (lws[0] + lws[1]) / 2)


def test_mmvae_plus_learned_laplace_prior_objective_by_hand(laplace_means):
    """MultiVae's learn_shared_prior: one Laplace over [c, w] whose softmax runs over all D + P scales."""
    model, x = build("mmvae_plus", learn_prior=True)
    rho = torch.tensor([0.5, -0.3, 0.2, 0.0, -0.6])                      # D = 2, P = 3
    with torch.no_grad():
        model.extra["aux_prior"].logvar.zero_()
        model.extra["prior"].logvar.copy_(rho[None])
    shared = [laplace_expert(model.encoders[m], x[m]) for m in ("a", "b")]
    private = {m: laplace_expert(model.private_encoders[m], x[m]) for m in ("a", "b")}
    prior = Laplace(torch.zeros(5), softmax_scale(rho))
    lws = []
    for j, m in enumerate(("a", "b")):
        c, w = shared[j].mean, private[m].mean
        recon = sum(loglik(model, n, x[n], torch.cat([c, w if n == m else torch.zeros(3, 3)], -1))
                    for n in ("a", "b"))
        log_q = mixture_log_q(shared, c) + private[m].log_prob(w).sum(-1)
        lws.append(recon + BETA * (prior.log_prob(torch.cat([c, w], -1)).sum(-1) - log_q))
    assert_bound_both_ways(model, x, (lws[0] + lws[1]) / 2)
    z = torch.randn(4, 2)                                                 # p(c): the first D dimensions
    want = Laplace(torch.zeros(2), softmax_scale(rho)[:2]).log_prob(z).sum(-1)
    assert torch.allclose(model.family.prior_log_prob(model, z), want, atol=1e-5)


@pytest.mark.parametrize("posterior", ["gaussian", "laplace"])
def test_mmvae_learned_prior_is_what_the_runtime_reads(posterior):
    """The joint NLL's p(z), the empty set's moments, samples and density all use the learned prior."""
    model, x = build("mmvae", learn_prior=True, posterior=posterior)
    rho = torch.tensor([1.0, -1.0])
    with torch.no_grad():
        model.extra["prior"].logvar.copy_(rho[None])
    if posterior == "laplace":
        prior = Laplace(torch.zeros(2), softmax_scale(rho))
    else:
        prior = torch.distributions.Normal(torch.zeros(2), torch.exp(0.5 * rho))
    z = torch.randn(4, 3, 2)
    with torch.no_grad():
        assert torch.allclose(model.family.prior_log_prob(model, z), prior.log_prob(z).sum(-1), atol=1e-5)
        empty = torch.zeros(20000, 2, dtype=torch.bool)
        mu, logvar = model.experts({n: v.repeat(6667, 1)[:20000] for n, v in x.items()}, empty)
        mean, log_var = model.family.posterior_summary(model, mu, logvar, empty)
        assert torch.allclose(mean, torch.zeros_like(mean)) and torch.allclose(log_var.exp()[0], prior.variance)
        draws = model.family.posterior_samples(model, mu, logvar, empty, 1, torch.Generator().manual_seed(0))[0]
        assert torch.allclose(draws.var(0), prior.variance, rtol=0.06)
        density = model.family.posterior_log_prob(model, draws[None, :5], mu[:, :5], logvar[:, :5], empty[:5])
        assert torch.allclose(density[0], prior.log_prob(draws[:5]).sum(-1), atol=1e-5)


def test_a_learned_prior_survives_the_bundle_round_trip(tmp_path):
    model, x = build("mmvae", learn_prior=True)
    with torch.no_grad():
        model.extra["prior"].logvar.copy_(torch.tensor([[0.7, -0.4]]))
    loaded = load_bundle(save_bundle(tmp_path / "m", model)).model
    assert torch.equal(loaded.extra["prior"].logvar, model.extra["prior"].logvar)
    z = torch.randn(5, 2)
    assert torch.equal(loaded.family.prior_log_prob(loaded, z), model.family.prior_log_prob(model, z))


def test_the_learn_prior_option_is_validated():
    two = (ModalitySpec("a", "vector", (3,)), ModalitySpec("b", "vector", (4,)))
    with pytest.raises(ValueError, match="'learn_prior' must be true or false, got 'yes'"):
        MultimodalVAE(ModelConfig(two, family="mmvae", family_options={"learn_prior": "yes"}))
    assert "prior" in MultimodalVAE(ModelConfig(two, family="mmvae")).extra                  # the default
    assert "prior" not in MultimodalVAE(ModelConfig(two, family="mmvae",
                                                    family_options={"learn_prior": False})).extra


# ----------------------------------------------------------------------------- what the runtime reads
def test_laplace_posteriors_are_published_with_their_moments_and_sampled_as_laplace():
    model, x = build("mmvae_plus")
    model.eval()
    mask = torch.tensor([[True, False]] * 3)
    with torch.no_grad():
        mu, raw = model.encoders["a"](x["a"])
        scale = softmax_scale(raw)
        result = Fuser(model, anomaly=False)(x, mask)
        assert torch.allclose(result.latent_mean, mu, atol=1e-5)
        assert torch.allclose(result.latent_std, math.sqrt(2.0) * scale, rtol=1e-4)       # one expert: its std
        w_mu, w_raw = model.private_encoders["a"](x["a"])
        assert torch.allclose(result.private_std["a"], math.sqrt(2.0) * softmax_scale(w_raw), rtol=1e-4)
        r_scale = softmax_scale(model.extra["aux_prior"].logvar[1])
        codes = private_codes(model, {n: v.repeat(20000, 1) for n, v in x.items()}, mask.repeat(20000, 1),
                              n_samples=1, generator=torch.Generator().manual_seed(0))[1, 0]
        assert torch.allclose(codes.var(0), 2.0 * r_scale ** 2, rtol=0.06)           # b's w from r_b
        exp_mu, exp_lv = model.experts(x, mask)
        z = model.family.posterior_samples(model, exp_mu, exp_lv, mask, 4, torch.Generator().manual_seed(1))
        want = Laplace(mu, scale).log_prob(z).sum(-1)
        assert torch.allclose(model.family.posterior_log_prob(model, z, exp_mu, exp_lv, mask), want, atol=1e-4)
        assert torch.isfinite(iwae_log_likelihood(model, x, torch.ones(3, 2, dtype=torch.bool), n_samples=8)).all()
    assert model.family.latent_description(model.config)["distribution"].startswith("Laplace")
