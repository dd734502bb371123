"""The surrogate-inference families' objectives against a hand computation on a tiny batch.

z is the posterior mean (reparameterisation patched) so every term is deterministic; the hand
computation uses torch.distributions, not the package's own Gaussian helpers."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, compute_objective
from mdgm_ros.core.model import posterior as post

BETA, ALPHA = 0.7, 0.5


@pytest.fixture(autouse=True)
def mean_z(monkeypatch):
    monkeypatch.setattr(post, "reparameterize", lambda mu, logvar, n_samples=None, generator=None: mu)


def build(name: str, **options):
    torch.manual_seed(1)
    specs = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
             ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)))
    model = MultimodalVAE(ModelConfig(specs, latent_dim=2, family=name, family_options=options))
    x = {"a": torch.randn(3, 3), "b": torch.randn(3, 4)}
    return model, x


def gaussian(mu, logvar):
    return Normal(mu, torch.exp(0.5 * logvar))


def loglik(model, name, x, z):
    scale = math.exp(float(model.log_scales[name]))
    return Normal(model.decoders[name](z), scale).log_prob(x).sum(-1) * model.specs[name].weight


def parts(model, x):
    joint = model.subset_encoders["a__b"](x["a"], x["b"])
    uni = {n: model.encoders[n](x[n]) for n in ("a", "b")} if len(model.encoders) else {}
    prior = Normal(torch.zeros(2), torch.ones(2))
    kl_prior = lambda q: kl_divergence(gaussian(*q), prior).sum(-1)      # noqa: E731
    kl_joint = {n: kl_divergence(gaussian(*joint), gaussian(*uni[n])).sum(-1) for n in uni}
    recon_joint = loglik(model, "a", x["a"], joint[0]) + loglik(model, "b", x["b"], joint[0])
    elbo_uni = {n: loglik(model, n, x[n], uni[n][0]) - BETA * kl_prior(uni[n]) for n in uni}
    return joint, recon_joint, kl_prior(joint), kl_joint, elbo_uni


def loss(model, x, mask=None, **kw):
    mask = torch.ones(3, 2, dtype=torch.bool) if mask is None else mask
    return compute_objective(model, x, mask, beta=BETA, **kw).loss


def test_jvae_eq12():
    model, x = build("jvae")
    _, recon, kl, _, _ = parts(model, x)
    assert torch.allclose(loss(model, x), -(recon - BETA * kl), atol=1e-4)
    partial = torch.tensor([[True, True], [True, False], [False, True]])
    out = loss(model, x, partial)
    assert out[1] == 0 and out[2] == 0 and torch.isclose(out[0], -(recon - BETA * kl)[0], atol=1e-4)


def test_jmvae_eq14():
    model, x = build("jmvae", alpha=ALPHA)
    _, recon, kl, kl_joint, _ = parts(model, x)
    expected = recon - BETA * kl - BETA * ALPHA * (kl_joint["a"] + kl_joint["b"])
    assert torch.allclose(loss(model, x), -expected, atol=1e-4)


def test_telbo_eq17_and_its_stages():
    model, x = build("telbo")
    _, recon, kl, _, elbo_uni = parts(model, x)
    joint = recon - BETA * kl
    unimodal = elbo_uni["a"] + elbo_uni["b"]
    assert torch.allclose(loss(model, x, stage="joint"), -joint, atol=1e-4)
    assert torch.allclose(loss(model, x, stage="unimodal"), -unimodal, atol=1e-4)
    assert torch.allclose(loss(model, x), -(joint + unimodal), atol=1e-4)
    partial = torch.tensor([[True, True], [True, False], [True, False]])
    out = loss(model, x, partial, stage="unimodal")
    assert torch.allclose(out[1:], -elbo_uni["a"][1:], atol=1e-4)
    with pytest.raises(ValueError, match="stages"):
        loss(model, x, stage="bridge")


def test_m2vae_eq18():
    model, x = build("m2vae", alpha=ALPHA)
    _, recon, kl, kl_joint, elbo_uni = parts(model, x)
    expected = (recon - BETA * kl + elbo_uni["a"] + elbo_uni["b"]
                - BETA * ALPHA * (kl_joint["a"] + kl_joint["b"]))
    assert torch.allclose(loss(model, x), -expected, atol=1e-4)


def test_vaevae_is_m2vae_without_the_joint_kl_to_the_prior():
    model, x = build("vaevae", alpha=ALPHA)
    _, recon, kl, kl_joint, elbo_uni = parts(model, x)
    expected = recon + elbo_uni["a"] + elbo_uni["b"] - BETA * ALPHA * (kl_joint["a"] + kl_joint["b"])
    assert torch.allclose(loss(model, x), -expected, atol=1e-4)
    assert float(kl.detach().abs().sum()) > 0          # the dropped term is not zero by accident


def test_bridged_stages_eq12_then_bridged_unimodal_objective():
    gamma = 0.3
    model, x = build("bridged", gamma=gamma)
    joint_enc = model.subset_encoders["a__b"]
    h_a, h_b = joint_enc.bodies[0](x["a"]), joint_enc.bodies[1](x["b"])
    hat_b, = model.extra["bridge_a"](h_a)
    hat_a, = model.extra["bridge_b"](h_b)
    joint = joint_enc.head(torch.cat([h_a, h_b], -1))
    q_a = joint_enc.head(torch.cat([h_a, hat_b], -1))
    q_b = joint_enc.head(torch.cat([hat_a, h_b], -1))
    prior = Normal(torch.zeros(2), torch.ones(2))
    kl = lambda q: kl_divergence(gaussian(*q), prior).sum(-1)       # noqa: E731
    elbo_joint = (loglik(model, "a", x["a"], joint[0]) + loglik(model, "b", x["b"], joint[0])
                  - BETA * kl(joint))
    bridge = (loglik(model, "a", x["a"], q_a[0]) - BETA * kl(q_a) + loglik(model, "b", x["b"], q_b[0])
              - BETA * kl(q_b) - gamma * (((hat_b - h_b) ** 2).sum(-1) + ((hat_a - h_a) ** 2).sum(-1)))
    assert torch.allclose(loss(model, x, stage="joint"), -elbo_joint, atol=1e-4)
    assert torch.allclose(loss(model, x, stage="bridge"), -bridge, atol=1e-4)
    assert torch.allclose(loss(model, x), -(elbo_joint + bridge), atol=1e-4)
    # inference from one modality is the joint encoder fed the bridged encoding
    mask = torch.tensor([[True, False]] * 3)
    mu, logvar = model.experts(model.complete(x, mask), mask)
    assert torch.allclose(model.posterior_summary(mu, logvar, mask)[0], q_a[0], atol=1e-5)
