"""Coordinated models: each objective against the survey's two-modality formula on a tiny
batch (z at the posterior mean, the hand computation with torch.distributions), the pairwise rule
for M > 2, the stages of the multi-stage families and their Table 1 rows.

The registry-wide checks (inference from every subset, parameter growth, stages training only their
parameters and resuming bit for bit, short training beating the mean predictor and the prior, bundles)
run on these families too, from test/test_families.py's parametrisation."""
import itertools
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, compute_objective
from mdgm_ros.core.families import FAMILIES
from mdgm_ros.core.model import posterior as post

BETA = 0.7
COORDINATED = ["yin", "bivcca", "cadavae", "scan", "avae", "tian"]


@pytest.fixture(autouse=True)
def mean_z(monkeypatch):
    monkeypatch.setattr(post, "reparameterize", lambda mu, logvar, n_samples=None, generator=None: mu)


def build(name: str, n_mod: int = 2, **options):
    torch.manual_seed(1)
    specs = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
             ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)),
             ModalitySpec("c", "vector", (2,), scale=0.5, hidden=(8,)))[:n_mod]
    model = MultimodalVAE(ModelConfig(specs, latent_dim=2, family=name, family_options=options))
    x = {"a": torch.randn(3, 3), "b": torch.randn(3, 4), "c": torch.randn(3, 2)}
    return model, {n: x[n] for n in model.names}


def encoder(model, name):
    return model.family.unimodal_encoder(model, name)


def q(model, x, name):
    mu, logvar = encoder(model, name)(x[name])
    return Normal(mu, torch.exp(0.5 * logvar))


def loglik(model, name, x, z):
    scale = math.exp(float(model.log_scales[name]))
    return Normal(model.decoders[name](z), scale).log_prob(x[name]).sum(-1) * model.specs[name].weight


def elbo(model, x, name):
    qm = q(model, x, name)
    prior = Normal(torch.zeros(2), torch.ones(2))
    return loglik(model, name, x, qm.mean) - BETA * kl_divergence(qm, prior).sum(-1)


def loss(model, x, mask=None, **kw):
    mask = torch.ones(3, len(model.names), dtype=torch.bool) if mask is None else mask
    return compute_objective(model, x, mask, beta=BETA, **kw).loss


def yin_pair(model, x, i, j, alpha):
    qi, qj = q(model, x, i), q(model, x, j)
    kl = kl_divergence(qi, qj).sum(-1) + kl_divergence(qj, qi).sum(-1)
    return elbo(model, x, i) + elbo(model, x, j) - alpha * kl


# ----------------------------------------------------------------------------- M = 2 against the paper
def test_yin_eq6():
    model, x = build("yin", alpha=0.4)
    assert torch.allclose(loss(model, x), -yin_pair(model, x, "a", "b", 0.4), atol=1e-4)


def test_bivcca_eq8():
    mu = 0.3
    model, x = build("bivcca", mu=mu)
    prior = Normal(torch.zeros(2), torch.ones(2))
    qa, qb = q(model, x, "a"), q(model, x, "b")
    both = lambda z: loglik(model, "a", x, z) + loglik(model, "b", x, z)        # noqa: E731
    expected = (mu * (both(qa.mean) - BETA * kl_divergence(qa, prior).sum(-1))
                + (1 - mu) * (both(qb.mean) - BETA * kl_divergence(qb, prior).sum(-1)))
    assert torch.allclose(loss(model, x), -expected, atol=1e-4)
    with pytest.raises(ValueError, match="mu must be in"):
        loss(model, x, mu=1.5)


def test_cadavae_eq9():
    gamma, delta = 0.3, 0.6
    model, x = build("cadavae", gamma=gamma, delta=delta)
    qa, qb = q(model, x, "a"), q(model, x, "b")
    cross = ((x["b"] - model.decoders["b"](qa.mean)).abs().sum(-1)
             + (x["a"] - model.decoders["a"](qb.mean)).abs().sum(-1))
    w2 = torch.sqrt(((qa.mean - qb.mean) ** 2).sum(-1) + ((qa.stddev - qb.stddev) ** 2).sum(-1))
    expected = elbo(model, x, "a") + elbo(model, x, "b") - gamma * cross - delta * w2
    assert torch.allclose(loss(model, x), -expected, atol=1e-4)


@pytest.mark.parametrize("pivot", ["a", "b"])
def test_scan_eq7_stages_against_the_pivot(pivot):
    lam = 2.5
    model, x = build("scan", lam=lam, pivot=pivot)
    other = "b" if pivot == "a" else "a"
    stage1 = elbo(model, x, pivot)
    stage2 = elbo(model, x, other) - lam * kl_divergence(q(model, x, pivot), q(model, x, other)).sum(-1)
    assert torch.allclose(loss(model, x, stage="pivot"), -stage1, atol=1e-4)
    assert torch.allclose(loss(model, x, stage="coordinated"), -stage2, atol=1e-4)
    assert torch.allclose(loss(model, x), -(stage1 + stage2), atol=1e-4)
    assert model.extra["pivot"] is encoder(model, pivot)
    with pytest.raises(ValueError, match="stages"):
        loss(model, x, stage="joint")


def test_scan_refuses_an_unknown_pivot():
    with pytest.raises(ValueError, match="'pivot' 'z' is not a modality"):
        build("scan", pivot="z")


def own_q(model, x, name):
    mu, logvar = model.encoders[name](x[name])
    return Normal(mu, torch.exp(0.5 * logvar))


@pytest.mark.parametrize("pivot", ["a", "b"])
def test_avae_eqs10_11_stages(pivot):
    model, x = build("avae", pivot=pivot)
    other = "b" if pivot == "a" else "a"
    prior = Normal(torch.zeros(2), torch.ones(2))

    def elbo_own(name):
        qm = own_q(model, x, name)
        return loglik(model, name, x, qm.mean) - BETA * kl_divergence(qm, prior).sum(-1)

    def associate(source, target):
        mu, logvar = model.extra["associators"][f"{source}_to_{target}"](own_q(model, x, source).mean)
        a = Normal(mu, torch.exp(0.5 * logvar))
        return loglik(model, target, x, a.mean) - BETA * kl_divergence(a, prior).sum(-1)

    stage1 = elbo_own("a") + elbo_own("b")
    stage2 = associate(pivot, other) + associate(other, pivot)
    assert torch.allclose(loss(model, x, stage="unimodal"), -stage1, atol=1e-4)
    assert torch.allclose(loss(model, x, stage="associators"), -stage2, atol=1e-4)
    assert torch.allclose(loss(model, x), -(stage1 + stage2), atol=1e-4)
    assert sorted(model.extra["associators"]) == sorted([f"{pivot}_to_{other}", f"{other}_to_{pivot}"])
    # the model's space is the pivot's: the other modality is encoded through its associator and
    # decoded through the pivot's associator to it
    with torch.no_grad():
        z = torch.randn(3, 2)
        to_other = model.extra["associators"][f"{pivot}_to_{other}"](z)[0]
        assert torch.allclose(model.decode(other, z), model.decoders[other](to_other))
        assert torch.allclose(model.decode(pivot, z), model.decoders[pivot](z))
        via = model.extra["associators"][f"{other}_to_{pivot}"](model.encoders[other](x[other])[0])
        assert torch.allclose(encoder(model, other)(x[other])[0], via[0])
    with pytest.raises(ValueError, match="stages"):
        loss(model, x, stage="pivot")


def test_avae_with_three_modalities_has_associators_to_and_from_the_pivot_only():
    model, x = build("avae", n_mod=3)
    assert sorted(model.extra["associators"]) == ["a_to_b", "a_to_c", "b_to_a", "c_to_a"]
    mask = torch.tensor([[False, True, True]] * 3)             # no pivot: no association term
    out = compute_objective(model, x, mask, beta=BETA, stage="associators")
    assert (out.loss == 0).all() and not out.terms


def test_sliced_wasserstein_is_the_mean_over_directions_of_the_sorted_projections_w2():
    from mdgm_ros.core.families.tian import sliced_wasserstein2

    a, b = torch.randn(5, 2), torch.randn(5, 2) + torch.tensor([3.0, 0.0])
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    by_hand = sum(((a[:, d].sort().values - b[:, d].sort().values) ** 2).mean() for d in range(2)) / 2
    assert torch.allclose(sliced_wasserstein2(a, b, directions), by_hand)
    assert sliced_wasserstein2(a, a[[3, 1, 0, 4, 2]], directions) == 0          # order does not matter
    # unequal sizes: compared at common quantiles, still 0 between a set and itself repeated
    assert torch.allclose(sliced_wasserstein2(a, torch.cat([a, a]), directions), torch.zeros(()), atol=0.05)


def test_tian_stages_against_the_formula_with_labels(monkeypatch):
    from mdgm_ros.core.families import tian
    from mdgm_ros.core.model.family import LABELS

    directions = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
    monkeypatch.setattr(tian, "random_directions", lambda dim, count, generator, device: directions)
    omega, kappa = 0.3, 0.8
    model, x = build("tian", omega=omega, kappa=kappa, n_labels=4)
    labels = torch.tensor([2, -1, 0])
    prior = Normal(torch.zeros(2), torch.ones(2))
    stage1 = sum(loglik(model, n, x, own_q(model, x, n).mean)
                 - BETA * kl_divergence(own_q(model, x, n), prior).sum(-1) for n in ("a", "b"))
    bridge, codes, stage2 = model.extra["bridge"], {}, 0
    for m, name in enumerate(("a", "b")):
        target = own_q(model, x, name).mean
        mu, logvar = bridge.encode(target, m)
        codes[m] = mu
        recon = Normal(bridge.decode(mu, m), 1.0).log_prob(target).sum(-1)
        kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), prior).sum(-1)
        logp = torch.log_softmax(model.extra["label_head"](mu), -1)[torch.arange(3), labels.clamp_min(0)]
        stage2 = stage2 + recon - BETA * kl + kappa * torch.where(labels >= 0, logp, torch.zeros(()))
    pa, pb = (codes[0] @ directions.t()).sort(0).values, (codes[1] @ directions.t()).sort(0).values
    stage2 = stage2 - omega * ((pa - pb) ** 2).mean()
    feats = {**x, LABELS: labels}
    assert torch.allclose(loss(model, feats, stage="unimodal"), -stage1, atol=1e-4)
    assert torch.allclose(loss(model, feats, stage="shared"), -stage2, atol=1e-4)
    assert torch.allclose(loss(model, feats), -(stage1 + stage2), atol=1e-4)
    # without labels the label term is absent; the shared space decodes through g(u, m)
    no_labels = loss(model, x, stage="shared")
    assert not torch.allclose(no_labels, loss(model, feats, stage="shared"))
    with torch.no_grad():
        u = torch.randn(3, 2)
        assert torch.allclose(model.decode("b", u), model.decoders["b"](bridge.decode(u, 1)))
        assert torch.allclose(encoder(model, "a")(x["a"])[0], bridge.encode(model.encoders["a"](x["a"])[0], 0)[0])


# ----------------------------------------------------------------------------- rows and M > 2
@pytest.mark.parametrize("name", ["yin", "bivcca", "cadavae"])
def test_a_row_with_one_modality_trains_its_elbo_and_a_row_with_none_nothing(name):
    model, x = build(name)
    mask = torch.tensor([[True, False], [False, True], [False, False]])
    out = loss(model, x, mask)
    assert torch.allclose(out[0], -elbo(model, x, "a")[0], atol=1e-4)
    assert torch.allclose(out[1], -elbo(model, x, "b")[1], atol=1e-4)
    assert out[2] == 0


def test_three_modalities_sum_the_two_modality_objective_over_every_observed_pair():
    model, x = build("yin", n_mod=3, alpha=0.4)
    expected = sum(yin_pair(model, x, i, j, 0.4) for i, j in itertools.combinations(model.names, 2))
    assert torch.allclose(loss(model, x), -expected, atol=1e-4)
    mask = torch.tensor([[True, False, True]] * 3)           # one pair observed
    assert torch.allclose(loss(model, x, mask), -yin_pair(model, x, "a", "c", 0.4), atol=1e-4)


def test_scan_with_three_modalities_puts_every_other_modality_against_the_pivot():
    model, x = build("scan", n_mod=3, pivot="b")
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    out = loss(model, x, mask, stage="coordinated")
    kl = lambda m: kl_divergence(q(model, x, "b"), q(model, x, m)).sum(-1)      # noqa: E731
    full = elbo(model, x, "a") - kl("a") + elbo(model, x, "c") - kl("c")
    assert torch.allclose(out[0], -full[0], atol=1e-4)
    assert torch.allclose(out[1], -(elbo(model, x, "a") + elbo(model, x, "c"))[1], atol=1e-4)   # no pivot
    assert out[2] == 0                                                           # the pivot alone: stage 1


# ----------------------------------------------------------------------------- Table 1
@pytest.mark.parametrize("name", COORDINATED)
def test_table_row_says_no_aggregated_inference_and_pairwise(name):
    props = FAMILIES[name].properties
    assert props.aggregated_inference.startswith("×") and props.scalability.startswith("pairwise")
    assert props.missing_modalities and not props.modality_specific_latents
    assert props.equations and FAMILIES[name].doc.count("math::") >= 1


@pytest.mark.parametrize("name", COORDINATED)
def test_one_modality_infers_its_own_posterior_and_several_the_poe_without_prior(name):
    model, x = build(name, n_mod=3)
    mask = torch.tensor([[True, False, True]] * 3)
    with torch.no_grad():
        mu, logvar = model.experts(model.complete(x, mask), mask)
        got_mu, got_lv = model.posterior_summary(mu, logvar, mask)
        experts = [encoder(model, n)(x[n]) for n in ("a", "c")]
    precision = sum(torch.exp(-lv) for _, lv in experts)
    expected = sum(m * torch.exp(-lv) for m, lv in experts) / precision
    assert torch.allclose(got_mu, expected, atol=1e-5) and torch.allclose(got_lv, -torch.log(precision), atol=1e-4)
    single = torch.tensor([[False, True, False]] * 3)
    with torch.no_grad():
        mu, logvar = model.experts(model.complete(x, single), single)
        one = model.posterior_summary(mu, logvar, single)
        own = encoder(model, "b")(x["b"])
    assert torch.allclose(one[0], own[0], atol=1e-5) and torch.allclose(one[1], own[1], atol=1e-5)
    assert not model.family.closed_form_poe(model)


# ----------------------------------------------------------------------------- labels from bags
def test_task_phases_become_class_labels_for_a_family_with_a_label_head():
    from types import SimpleNamespace

    import numpy as np

    from mdgm_ros.core.model.family import LABELS
    from mdgm_ros.training.trainer import TrainError, with_phase_labels

    data = SimpleNamespace(train=SimpleNamespace(phase=np.array(["reach", "", "push", "reach"])),
                           val=SimpleNamespace(phase=np.array(["grasp", "push"])))
    model, x = build("tian", n_labels=3)
    assert with_phase_labels(model, x, data)[LABELS].tolist() == [2, -1, 1, 2]       # grasp, push, reach
    assert with_phase_labels(model, x, data, val=True)[LABELS].tolist() == [0, 1]
    plain, _ = build("yin")
    assert LABELS not in with_phase_labels(plain, x, data)
    small, _ = build("tian", n_labels=2)
    with pytest.raises(TrainError, match="3 task phases but the label head has 2 classes"):
        with_phase_labels(small, x, data)


@pytest.mark.parametrize("name", ["scan", "avae", "tian"])
def test_exported_networks_compute_what_inference_computes_and_match_onnx(name, tmp_path):
    """Encoders give q(z|x_m) in the model's space, decoders take that space's z (AVAE/Tian: through
    the map into the modality's own space)."""
    import warnings

    import numpy as np
    onnxruntime = pytest.importorskip("onnxruntime")
    from mdgm_ros.core.engine.export import export_parts

    model, x = build(name)
    model.eval()
    parts = {p.stem: p for p in export_parts(model)}
    z = torch.randn(3, 2)
    for n in model.names:
        enc, dec = parts[f"onnx_{n}_encoder"], parts[f"onnx_{n}_decoder"]
        with torch.no_grad():
            assert torch.allclose(enc.module(x[n])[0], encoder(model, n)(x[n])[0])
            assert torch.allclose(dec.module(z), model.decode(n, z))
        for part, args in ((enc, (x[n],)), (dec, (z,))):
            file = tmp_path / f"{part.stem}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(part.module, part.args, str(file), input_names=part.inputs,
                                  output_names=part.outputs, dynamo=False, opset_version=17,
                                  dynamic_axes={k: {0: "batch"} for k in part.inputs + part.outputs})
            got = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"]).run(
                None, {k: a.numpy() for k, a in zip(part.inputs, args)})
            with torch.no_grad():
                want = part.module(*args)
            want = want if isinstance(want, tuple) else (want,)
            assert all(np.allclose(g, w.numpy(), atol=1e-4) for g, w in zip(got, want)), part.stem
