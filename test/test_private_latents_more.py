"""PVAE, both DMVAEs and MFM (issue 12, modality-specific latents): each objective's terms against a hand
computation with torch.distributions on a tiny batch, and what each adds beyond the objective (the joint
private encoder's export, the adversarial discriminator step, labels). Generation rules, the use of s_m,
short training, bundles and ONNX run for every private-latent family in test_private_latents.py."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, compute_objective
from mdgm_ros.core import posterior as post
from mdgm_ros.core.export import export_parts

from test_private_latents import BETA, experts, gaussian, loglik, std_kl


@pytest.fixture
def mean_z(monkeypatch):
    monkeypatch.setattr(post, "reparameterize", lambda mu, logvar, n_samples=None, generator=None:
                        mu if n_samples is None else mu.expand(n_samples, *mu.shape))


def build(name, **options):
    torch.manual_seed(2)
    two = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
           ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)))
    model = MultimodalVAE(ModelConfig(two, latent_dim=2, objective=name, private_dim=3, objective_options=options))
    with torch.no_grad():                   # experts away from N(0, I), so every KL term is non-zero
        for enc in (*model.encoders.values(), *model.private_encoders.values()):
            enc.head.bias.add_(0.3)
    return model, {"a": torch.randn(4, 3), "b": torch.randn(4, 4)}


ALL = torch.ones(4, 2, dtype=torch.bool)


# ----------------------------------------------------------------------------- PVAE (eqs. 29-30)
def test_pvae_objective_eqs_29_30_by_hand(mean_z):
    model, x = build("pvae", alpha=0.6, gamma=0.8, margin=0.5)
    shared, private = experts(model, x)
    c_mu, c_lv = model.subset_encoders["a__b"](x["a"], x["b"])
    js_mu, js_lv = model.extra["joint_private"](x["a"], x["b"])
    c_lv, js_lv = post.clamp_logvar(c_lv), js_lv
    joint = (sum(loglik(model, n, x[n], c_mu, js_mu[j]) for j, n in enumerate("ab"))
             - BETA * (std_kl((c_mu, c_lv)) + std_kl((js_mu[0], js_lv[0])) + std_kl((js_mu[1], js_lv[1]))))
    unimodal = sum(loglik(model, n, x[n], shared[n][0], private[n][0])
                   - BETA * (std_kl(shared[n]) + std_kl(private[n])) for n in "ab")
    coherence = sum(kl_divergence(gaussian(c_mu, c_lv), gaussian(*shared[n])).sum(-1)
                    + kl_divergence(gaussian(js_mu[j], js_lv[j]), gaussian(*private[n])).sum(-1)
                    for j, n in enumerate("ab"))
    hinge = 0.0
    for m, n in (("a", "b"), ("b", "a")):
        mu_m, mu_n = shared[m][0], shared[n][0]
        pos = ((mu_m - mu_n) ** 2).sum(-1)
        neg = ((mu_m - torch.cat([mu_n[1:], mu_n[:1]])) ** 2).sum(-1)
        hinge = hinge + torch.clamp(0.5 + pos - neg, min=0)
    out = compute_objective(model, x, ALL, beta=BETA)
    expected = joint + unimodal - BETA * 0.6 * coherence - 0.8 * hinge
    assert torch.allclose(out.loss, -expected, atol=1e-4)
    assert float(coherence.detach().min()) > 0 and float(out.terms["hinge"].sum()) > 0
    assert torch.allclose(out.terms["hinge"], hinge, atol=1e-5)


def test_pvae_rows_without_a_modality_keep_only_the_unimodal_terms(mean_z):
    model, x = build("pvae")
    shared, private = experts(model, x)
    mask = torch.tensor([[True, False]] * 4)
    out = compute_objective(model, x, mask, beta=BETA)
    expected = loglik(model, "a", x["a"], shared["a"][0], private["a"][0]) - BETA * (std_kl(shared["a"]) + std_kl(private["a"]))
    assert torch.allclose(out.loss, -expected, atol=1e-4)


def test_pvae_private_latents_come_from_the_joint_encoder_on_complete_rows_only():
    model, x = build("pvae")
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    with torch.no_grad():
        s_mu, _ = model.private_experts(x, mask)
        js_mu, _ = model.extra["joint_private"](x["a"], x["b"])
        own = model.private_encoders["a"](x["a"])[0]
    assert torch.allclose(s_mu[:, [0, 2]], js_mu[:, [0, 2]]) and torch.allclose(s_mu[0, 1], own[1])
    assert not torch.allclose(js_mu[0, 1], own[1])


def test_pvae_exports_its_joint_private_encoder():
    model, _ = build("pvae")
    stems = {p.stem for p in export_parts(model)}
    assert {"onnx_joint_private_encoder", "onnx_subset_a__b_encoder", "onnx_a_private_encoder"} <= stems
