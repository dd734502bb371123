"""Families with modality-specific (private) latents: objectives against a hand computation, the latent
layout and its use by the decoders, generation rules, bundles and ONNX export."""
import math

import numpy as np
import pytest
import torch
from conftest import assert_onnx_round_trip
from torch.distributions import Normal, kl_divergence

from mdgm_ros.core import (
    Fuser,
    ModalitySpec,
    ModelConfig,
    MultimodalVAE,
    SpecError,
    compute_objective,
    impute,
    iwae_log_likelihood,
    load_bundle,
    save_bundle,
)
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine.export import export_parts
from mdgm_ros.core.families import FAMILIES
from mdgm_ros.core.families.private import private_codes
from mdgm_ros.core.model import posterior as post

PRIVATE = [n for n, f in FAMILIES.items() if f.properties.modality_specific_latents]
# every private-latent family with its default options, DMVAE-Lee's discrete (concrete) shared c and
# MMVAE+'s Laplace latents
VARIANTS = [(n, {}) for n in PRIVATE] + [("dmvae_lee", {"shared": "concrete"}),
                                         ("mmvae_plus", {"posterior": "laplace"})]
VARIANT_IDS = [n + ("-" + "-".join(map(str, o.values())) if o else "") for n, o in VARIANTS]
BETA = 0.7


def test_the_private_latent_families_are_registered_and_only_they_have_private_latents():
    assert {"mopoe_ms", "mmjsd_ms", "mmvae_plus"} <= set(PRIVATE)
    for name, family in FAMILIES.items():
        dim = ModelConfig(specs(2), family=name).private_dim
        assert bool(dim) == family.properties.modality_specific_latents, name


def specs(n_mod=2, dim=5, hidden=(16,)):
    return tuple(ModalitySpec(f"m{j}", "vector", (dim,), scale=0.3, learn_scale=True, hidden=hidden)
                 for j in range(n_mod))


# ----------------------------------------------------------------------------- config and layout
def test_private_dim_is_validated_and_sizes_the_decoders_and_private_encoders():
    model = MultimodalVAE(ModelConfig(specs(3), latent_dim=3, family="mopoe_ms", private_dim=6))
    assert model.private_dim == 6 and set(model.private_encoders) == set(model.names)
    assert model.decoders["m0"].net[0].in_features == 9
    assert model.private_encoders["m1"](torch.randn(2, 5))[0].shape == (2, 6)
    assert ModelConfig(specs(), family="mmvae_plus").private_dim == FAMILIES["mmvae_plus"].private_latent_dims
    with pytest.raises(SpecError, match="has no private latents"):
        ModelConfig(specs(), family="mopoe", private_dim=2)
    with pytest.raises(SpecError, match="needs private latents"):
        ModelConfig(specs(), family="mopoe_ms", private_dim=0)
    with pytest.raises(SpecError, match="private_dim must be an integer"):
        ModelConfig(specs(), family="mopoe_ms", private_dim=-1)
    # families without private latents keep their config (and so their bundles and model ids) as before
    assert "private_dim" not in ModelConfig(specs(), family="mopoe").to_dict()
    assert ModelConfig.from_dict(ModelConfig(specs(), family="mmjsd_ms", private_dim=3).to_dict()).private_dim == 3


def test_custom_private_encoders_plug_in_through_the_network_registry():
    from mdgm_ros.core.model.networks import register_network

    class Linear(torch.nn.Module):
        def __init__(self, spec, latent_dim):
            super().__init__()
            self.net = torch.nn.Linear(spec.shape[0], 2 * latent_dim)

        def forward(self, x):
            return self.net(x).chunk(2, dim=-1)

    register_network("encoder", "private_linear_test", Linear, replace=True)
    config = ModelConfig(specs(), family="mopoe_ms", networks={"m0": {"private": {"name": "private_linear_test"}}})
    model = MultimodalVAE(config)
    assert isinstance(model.private_encoders["m0"], Linear) and not isinstance(model.private_encoders["m1"], Linear)


# ----------------------------------------------------------------------------- objectives by hand
@pytest.fixture
def mean_z(monkeypatch):
    monkeypatch.setattr(post, "reparameterize", lambda mu, logvar, n_samples=None, generator=None:
                        mu if n_samples is None else mu.expand(n_samples, *mu.shape))
    monkeypatch.setattr(post, "sample_present_subsets", lambda mask, generator=None: mask)


def build(name, proper_subsets_include_prior=None, **options):
    torch.manual_seed(2)
    two = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
           ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)))
    model = MultimodalVAE(ModelConfig(two, latent_dim=2, family=name, private_dim=3, family_options=options,
                                      proper_subsets_include_prior=proper_subsets_include_prior))
    with torch.no_grad():                   # experts away from N(0, I), so every KL term is non-zero
        for enc in (*model.encoders.values(), *model.private_encoders.values()):
            enc.head.bias.add_(0.3)
    return model, {"a": torch.randn(3, 3), "b": torch.randn(3, 4)}


def gaussian(mu, logvar):
    return Normal(mu, torch.exp(0.5 * logvar))


def loglik(model, name, x, c, s):
    loc = model.decoders[name](torch.cat([c, s], -1))
    return Normal(loc, math.exp(float(model.log_scales[name]))).log_prob(x).sum(-1) * model.specs[name].weight


def experts(model, x):
    shared = {n: model.encoders[n](x[n]) for n in ("a", "b")}
    private = {n: model.private_encoders[n](x[n]) for n in ("a", "b")}
    return shared, private


def std_kl(q):
    return kl_divergence(gaussian(*q), Normal(torch.zeros_like(q[0]), torch.ones_like(q[0]))).sum(-1)


def full_poe(shared):
    precision = 1.0 + sum(torch.exp(-lv) for _, lv in shared.values())
    mean = sum(mu * torch.exp(-lv) for mu, lv in shared.values()) / precision
    return mean, -torch.log(precision)


def test_mopoe_ms_objective_by_hand(mean_z):
    model, x = build("mopoe_ms", beta_private=0.5)
    shared, private = experts(model, x)
    c, c_lv = full_poe(shared)                             # the sampled subset is the full set (patched)
    recon = sum(loglik(model, n, x[n], c, private[n][0]) for n in ("a", "b"))
    kl_c = (std_kl(shared["a"]) + std_kl(shared["b"]) + std_kl((c, c_lv))) / 3    # proper subsets: no prior
    kl_s = std_kl(private["a"]) + std_kl(private["b"])
    out = compute_objective(model, x, torch.ones(3, 2, dtype=torch.bool), beta=BETA)
    assert torch.allclose(out.loss, -(recon - BETA * kl_c - BETA * 0.5 * kl_s), atol=1e-4)
    assert torch.allclose(out.terms["kl_private"], kl_s, atol=1e-5) and float(kl_s.detach().min()) > 0
    # a row without b: only a's terms, and b's private KL is not counted (the prior expert in every
    # product, so the hand computation does not hang on MoPoE's rule for proper subsets)
    model, x = build("mopoe_ms", beta_private=0.5, proper_subsets_include_prior=True)
    shared, private = experts(model, x)
    mask = torch.tensor([[True, False]] * 3)
    one = compute_objective(model, x, mask, beta=BETA)
    c_a = full_poe({"a": shared["a"]})
    expected = (loglik(model, "a", x["a"], c_a[0], private["a"][0]) - BETA * std_kl(c_a)
                - BETA * 0.5 * std_kl(private["a"]))
    assert torch.allclose(one.loss, -expected, atol=1e-4)


def test_mmjsd_ms_objective_eq31_by_hand(mean_z):
    model, x = build("mmjsd_ms")
    shared, private = experts(model, x)
    recon = sum(loglik(model, n, x[n], shared[m][0], private[n][0]) for m in ("a", "b") for n in ("a", "b")) / 2
    # dynamic prior f: PoE of q_a, q_b and p(c), each to the power 1/3
    precision = (1.0 + torch.exp(-shared["a"][1]) + torch.exp(-shared["b"][1])) / 3
    f_mu = (shared["a"][0] * torch.exp(-shared["a"][1]) + shared["b"][0] * torch.exp(-shared["b"][1])) / 3 / precision
    f = Normal(f_mu, precision.rsqrt())
    prior = Normal(torch.zeros(2), torch.ones(2))
    jsd = (kl_divergence(gaussian(*shared["a"]), f).sum(-1) + kl_divergence(gaussian(*shared["b"]), f).sum(-1)
           + kl_divergence(prior, f).sum(-1)) / 3
    kl_s = std_kl(private["a"]) + std_kl(private["b"])
    out = compute_objective(model, x, torch.ones(3, 2, dtype=torch.bool), beta=BETA)
    assert torch.allclose(out.loss, -(recon - BETA * jsd - BETA * kl_s), atol=1e-4)


def test_mmvae_plus_objective_by_hand(mean_z):
    model, x = build("mmvae_plus", K=3)
    with torch.no_grad():
        model.extra["aux_prior"].logvar.fill_(0.4)
    shared, private = experts(model, x)
    prior_c, prior_w = Normal(torch.zeros(2), torch.ones(2)), Normal(torch.zeros(3), torch.ones(3))
    r_mean = torch.zeros(3, 3)                   # samples are the means (patched): r's mean is 0
    lws = []
    for m in ("a", "b"):
        c, w = shared[m][0], private[m][0]
        recon = sum(loglik(model, n, x[n], c, w if n == m else r_mean) for n in ("a", "b"))
        log_q_c = torch.logsumexp(torch.stack([gaussian(*shared[e]).log_prob(c).sum(-1) for e in ("a", "b")]), 0) \
            - math.log(2)
        log_q_w = gaussian(*private[m]).log_prob(w).sum(-1)
        log_p = prior_c.log_prob(c).sum(-1) + prior_w.log_prob(w).sum(-1)
        lws.append(recon + BETA * (log_p - log_q_c - log_q_w))
    assert_bound_both_ways(model, x, (lws[0] + lws[1]) / 2)   # K identical samples: the IWAE term is the weight


def assert_bound_both_ways(model, x, expected):
    """The IWAE estimator's loss and the DReG surrogate's reported bound both equal ``expected``."""
    mask = torch.ones(3, 2, dtype=torch.bool)
    with torch.no_grad():
        out = compute_objective(model, x, mask, beta=BETA, estimator="iwae")
    assert torch.allclose(out.loss, -expected, atol=1e-4)
    dreg = compute_objective(model, x, mask, beta=BETA)               # the training surrogate
    assert torch.allclose(dreg.terms["iwae"], expected, atol=1e-4)


@pytest.mark.parametrize("posterior, learn_prior", [("gaussian", False), ("laplace", False), ("laplace", True)])
def test_mmvae_plus_dreg_on_the_weighted_samples_only_gives_the_full_graphs_gradients(posterior, learn_prior):
    """The objective builds the graph only for samples of non-negligible weight; the reference here builds
    it for all M*K*B samples (DReG hooks on every c and w): every parameter's gradient must agree."""
    from mdgm_ros.core.families import mmvae_plus as mp
    from mdgm_ros.core.families.common import dreg_weights, masked_mean_over_experts
    torch.manual_seed(0)
    model = MultimodalVAE(ModelConfig(specs(3), latent_dim=3, family="mmvae_plus", private_dim=2,
                                      family_options={"K": 4, "posterior": posterior,
                                                         "learn_prior": learn_prior}))
    dist = model.family.latent_distribution(model.config)
    feats = {n: torch.randn(6, 5) for n in model.names}
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False]] * 2)
    model.zero_grad()
    compute_objective(model, feats, mask, beta=BETA, generator=torch.Generator().manual_seed(3)).loss.sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    d = mp.draw(model, feats, mask, 4, torch.Generator().manual_seed(3), dist)
    c, w, lw = mp.log_weights_at(model, feats, mask, d, *mp.every_sample(mask, 4), BETA, detach_q=True, dist=dist)
    present = mask.t().unsqueeze(1)
    lw = torch.where(present, lw.reshape(3, 4, 6), torch.zeros(()))
    weights = dreg_weights(lw, present)
    for value in (c, w):
        value.register_hook(lambda grad: weights.reshape(-1, 1) * grad)
    masked_mean_over_experts((weights * lw).sum(1), mask).sum().neg().backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(fast) == set(full) and any("aux_prior" in n for n in full)
    assert ("extra.prior.logvar" in full) == learn_prior                     # the learned p(c, w) trains
    for name in full:
        torch.testing.assert_close(fast[name], full[name], rtol=1e-4, atol=1e-5, msg=name)


def test_mmvae_plus_generation_draws_missing_private_latents_from_the_auxiliary_prior():
    model = MultimodalVAE(ModelConfig(specs(2), latent_dim=2, family="mmvae_plus", private_dim=3))
    with torch.no_grad():
        model.extra["aux_prior"].logvar.fill_(math.log(4.0))
    feats = {n: torch.randn(4000, 5) for n in model.names}
    mask = torch.tensor([[True, False]] * 4000)
    with torch.no_grad():
        codes = private_codes(model, feats, mask, n_samples=2, generator=torch.Generator().manual_seed(0))
        own_mu, own_lv = model.private_experts(feats, mask)
    assert codes.shape == (2, 2, 4000, 3)
    assert abs(float(codes[1].std()) - 2.0) < 0.1 and abs(float(codes[1].mean())) < 0.1     # r_b: std 2
    assert abs(float((codes[0] - own_mu[0]).std()) - float(torch.exp(0.5 * own_lv[0]).mean())) < 0.1


@pytest.mark.parametrize("posterior, learn_prior", [("gaussian", False), ("laplace", False), ("laplace", True)])
def test_mmvae_plus_generation_prior_joint_draws_missing_private_latents_from_p(posterior, learn_prior, tmp_path):
    """generation_prior=joint: a missing modality's w comes from p's w part (the reference code's test-time
    generation), not from r_n; the option survives a bundle; a bad value fails at construction."""
    from mdgm_ros.core.families import FamilyError
    options = {"posterior": posterior, "learn_prior": learn_prior, "generation_prior": "joint"}
    model = MultimodalVAE(ModelConfig(specs(2), latent_dim=2, family="mmvae_plus", private_dim=3,
                                      family_options=options))
    with torch.no_grad():
        model.extra["aux_prior"].logvar.copy_(torch.tensor([[3.0, -2.0, 2.0]] * 2))   # r_n far from p
        if learn_prior:
            model.extra["prior"].logvar.copy_(torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]]))
    p_mean, p_logvar = model.extra["prior"]() if learn_prior else (torch.zeros(1, 5), None)
    expected_logvar = (p_logvar[0, 2:] if learn_prior
                       else model.latent_dist.prior_logvar(torch.zeros(3)))     # N(0, 1) or Laplace(0, 1)
    mean, logvar = model.family.private_prior(model, "m1")
    torch.testing.assert_close(mean, p_mean[0, 2:])
    torch.testing.assert_close(logvar, expected_logvar)
    feats = {n: torch.randn(4000, 5) for n in model.names}
    mask = torch.tensor([[True, False]] * 4000)
    with torch.no_grad():
        codes = private_codes(model, feats, mask, n_samples=2, generator=torch.Generator().manual_seed(0))
    std = torch.exp(0.5 * expected_logvar)
    assert torch.allclose(codes[1].std(dim=(0, 1)), std, rtol=0.1)       # p's scales, not r_n's
    loaded = load_bundle(save_bundle(tmp_path / "b", model)).model
    assert loaded.config.family_options["generation_prior"] == "joint"
    torch.testing.assert_close(loaded.family.private_prior(loaded, "m1")[1], expected_logvar)
    with pytest.raises(FamilyError, match="generation_prior.*'aux', 'joint'.*'r'"):
        MultimodalVAE(ModelConfig(specs(2), family="mmvae_plus", family_options={"generation_prior": "r"}))


# ----------------------------------------------------------------------------- generation rules
@pytest.mark.parametrize("name,options", VARIANTS, ids=VARIANT_IDS)
def test_cross_modal_generation_uses_the_prior_and_self_reconstruction_the_own_private_latent(name, options):
    model = MultimodalVAE(ModelConfig(specs(3), latent_dim=3, family=name, family_options=options)).eval()
    feats = {n: torch.randn(4, 5) for n in model.names}
    mask = torch.tensor([[True, True, False]] * 4)
    with torch.no_grad():
        mu, logvar = model.experts(model.complete(feats, mask), mask)
        c = model.posterior_summary(mu, logvar, mask)[0]
        s_mu, _ = model.private_experts(model.complete(feats, mask), mask)
        prior_mean = model.family.private_prior(model, "m2")[0]
        result = Fuser(model, impute_present=True, anomaly=False)({n: feats[n] for n in ("m0", "m1")}, mask)
        missing = model.decoders["m2"](torch.cat([c, prior_mean.expand(4, -1)], -1))
        present = model.decoders["m0"](torch.cat([c, s_mu[0]], -1))
    assert torch.allclose(result.imputed["m2"].mean, model.denormalize("m2", missing), atol=1e-5)
    assert torch.allclose(result.imputed["m0"].mean, model.denormalize("m0", present), atol=1e-5)
    assert set(result.private_mean) == {"m0", "m1"} and torch.allclose(result.private_mean["m1"], s_mu[1])
    assert torch.allclose(impute(model, feats, mask, ["m2"])["m2"].mean, missing, atol=1e-5)


# ----------------------------------------------------------------------------- training: s_m is used
def private_factor_data(n, seed, n_mod=3, dim=5):
    """x_m = tanh(A_m c + B_m s_m) + noise: a shared 2-d factor c and a private 1-d factor s_m each."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(11)
    c = rng.uniform(-1, 1, (n, 2))
    feats = {}
    for j in range(n_mod):
        a, b = fixed.normal(0, 1.2, (2, dim)), fixed.normal(0, 1.5, (1, dim))
        s = rng.uniform(-1, 1, (n, 1))
        feats[f"m{j}"] = torch.from_numpy(np.tanh(c @ a + s @ b) + rng.normal(0, 0.05, (n, dim))).float()
    return feats, torch.ones((n, n_mod), dtype=torch.bool)


@pytest.mark.parametrize("name", PRIVATE)    # the concrete c: a categorical factor, test_private_latents_more.py
def test_private_latents_are_used_by_the_decoders_and_cross_modal_generation_beats_the_mean(name):
    """Would fail if the decoders ignored s_m: then every row's own s_m and another row's decode alike."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MultimodalVAE(ModelConfig(specs(3), latent_dim=3, family=name, private_dim=2))
    raw, mask = private_factor_data(768, 0)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    config = training.TrainConfig(epochs=25, batch_size=64, lr=3e-3,
                                  beta=training.BetaSchedule("linear", 0.0, 1.0, 200), seed=0)
    training.train(model, feats, mask, config)
    test_raw, test_mask = private_factor_data(300, 1)
    test = training.normalize_features(model, test_raw)
    model.eval()
    with torch.no_grad():
        mu, logvar = model.experts(test, test_mask)
        c = model.posterior_summary(mu, logvar, test_mask)[0]
        s_mu, _ = model.private_experts(test, test_mask)
        shuffled = torch.randperm(300, generator=torch.Generator().manual_seed(0))
        for j, n in enumerate(model.names):
            own = float(((model.decode(n, c, s_mu[j]) - test[n]) ** 2).mean())
            other = float(((model.decode(n, c, s_mu[j][shuffled]) - test[n]) ** 2).mean())
            assert own < 0.8 * other, (n, own, other)
        for j, source in enumerate(model.names):
            cond = torch.zeros_like(test_mask)
            cond[:, j] = True
            targets = [n for n in model.names if n != source]
            imputed = impute(model, test, cond, targets)
            for n in targets:
                baseline = float(((test[n] - feats[n].mean(0)) ** 2).mean())
                assert float(((imputed[n].mean - test[n]) ** 2).mean()) < 0.9 * baseline, (source, n)
        assert torch.isfinite(iwae_log_likelihood(model, test, test_mask, n_samples=8)).all()


# ----------------------------------------------------------------------------- bundles and ONNX
@pytest.mark.parametrize("name,options", VARIANTS, ids=VARIANT_IDS)
def test_private_latent_bundle_round_trip(name, options, tmp_path):
    model = MultimodalVAE(ModelConfig(specs(3), latent_dim=3, family=name, family_options=options,
                                      private_dim=2)).eval()
    loaded = load_bundle(save_bundle(tmp_path / name, model)).model
    assert loaded.config.private_dim == 2 and loaded.family is model.family
    x = {n: torch.randn(2, 5) for n in model.names}
    mask = torch.tensor([[True, False, True]] * 2)
    with torch.no_grad():
        for a, b in zip(loaded.private_experts(x, mask), model.private_experts(x, mask)):
            assert torch.equal(a, b)
        assert torch.equal(impute(loaded, x, mask, ["m1"])["m1"].mean, impute(model, x, mask, ["m1"])["m1"].mean)


@pytest.mark.parametrize("name,options", VARIANTS, ids=VARIANT_IDS)
def test_every_network_of_a_private_latent_family_exports_to_onnx(name, options, tmp_path):
    pytest.importorskip("onnxruntime")
    model = MultimodalVAE(ModelConfig(specs(2), latent_dim=3, family=name, family_options=options,
                                      private_dim=2)).eval()
    parts = export_parts(model)
    stems = {p.stem for p in parts}
    assert {f"onnx_{n}_private_encoder" for n in model.names} <= stems
    assert_onnx_round_trip(parts, tmp_path)
    decoder = next(p for p in parts if p.stem == "onnx_m0_decoder")
    assert decoder.args[0].shape[-1] == 5                       # [c, s_m]
