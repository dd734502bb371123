"""PVAE, both DMVAEs and MFM (modality-specific latents): each objective's terms against a hand
computation with torch.distributions on a tiny batch, and what each adds beyond the objective (the joint
private encoder's export, the adversarial discriminator step, labels). Generation rules, the use of s_m,
short training, bundles and ONNX run for every private-latent family in test_private_latents.py."""
import math

import numpy as np
import pytest
import torch
from test_private_latents import BETA, experts, gaussian, loglik, std_kl
from torch.distributions import Normal, kl_divergence

from mdgm_ros.core import Fuser, ModalitySpec, ModelConfig, MultimodalVAE, compute_objective, iwae_log_likelihood
from mdgm_ros.core.engine.export import export_parts
from mdgm_ros.core.model import posterior as post


@pytest.fixture
def mean_z(monkeypatch):
    monkeypatch.setattr(post, "reparameterize", lambda mu, logvar, n_samples=None, generator=None:
                        mu if n_samples is None else mu.expand(n_samples, *mu.shape))


def build(name, **options):
    torch.manual_seed(2)
    two = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
           ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)))
    model = MultimodalVAE(ModelConfig(two, latent_dim=2, family=name, private_dim=3, family_options=options))
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
    js_mu, js_lv = (v.transpose(0, 1) for v in model.extra["joint_private"](x["a"], x["b"]))   # (B, M, P)
    c_lv = post.clamp_logvar(c_lv)
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
    expected = (loglik(model, "a", x["a"], shared["a"][0], private["a"][0])
                - BETA * (std_kl(shared["a"]) + std_kl(private["a"])))
    assert torch.allclose(out.loss, -expected, atol=1e-4)


def test_pvae_private_latents_come_from_the_joint_encoder_on_complete_rows_only():
    model, x = build("pvae")
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    with torch.no_grad():
        s_mu, _ = model.private_experts(x, mask)
        js_mu = model.extra["joint_private"](x["a"], x["b"])[0].transpose(0, 1)
        own = model.private_encoders["a"](x["a"])[0]
    assert torch.allclose(s_mu[:, [0, 2]], js_mu[:, [0, 2]]) and torch.allclose(s_mu[0, 1], own[1])
    assert not torch.allclose(js_mu[0, 1], own[1])


def test_pvae_exports_its_joint_private_encoder():
    model, _ = build("pvae")
    stems = {p.stem for p in export_parts(model)}
    assert {"onnx_joint_private_encoder", "onnx_subset_a__b_encoder", "onnx_a_private_encoder"} <= stems


# ----------------------------------------------------------------------------- DMVAE, Lee & Pavlovic
def tc_parts_by_hand(z, mu, logvar, n_data):
    """(MI, TC, dimension-wise KL) with minibatch-weighted sampling, every row of the batch."""
    pairs = Normal(mu[None], torch.exp(0.5 * logvar[None])).log_prob(z[:, None])       # (i, j, d)
    norm = math.log(z.shape[0] * n_data)
    log_qz = torch.logsumexp(pairs.sum(-1), 1) - norm
    log_marg = (torch.logsumexp(pairs, 1) - norm).sum(-1)
    log_q = gaussian(mu, logvar).log_prob(z).sum(-1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    return log_q - log_qz, log_qz - log_marg, log_marg - log_p


def test_dmvae_lee_objective_by_hand(mean_z):
    from test_private_latents import full_poe
    model, x = build("dmvae_lee", tc_weight=4.0, mi_weight=0.5, dim_kl_weight=1.5, dataset_size=50)
    shared, private = experts(model, x)
    poe = full_poe(shared)
    recon, reg = 0.0, 0.0
    for c_mu, c_lv in (poe, shared["a"], shared["b"]):          # every expert reconstructs both modalities
        recon = recon + sum(loglik(model, n, x[n], c_mu, private[n][0]) for n in "ab")
        mi, tc, dkl = tc_parts_by_hand(c_mu, c_mu, c_lv, 50)
        reg = reg + 0.5 * mi + 4.0 * tc + 1.5 * dkl
    for n in "ab":                                             # in each of the 3 experts' ELBOs
        mi, tc, dkl = tc_parts_by_hand(private[n][0], *private[n], 50)
        reg = reg + 3 * (0.5 * mi + 4.0 * tc + 1.5 * dkl)
    out = compute_objective(model, x, ALL, beta=BETA)
    assert torch.allclose(out.loss, -(recon - BETA * reg), atol=1e-3)
    assert float(out.terms["tc_c_poe"].abs().sum()) > 0


def test_dmvae_lee_unit_weights_give_the_one_sample_kl_and_the_tc_weight_adds_the_total_correlation():
    from mdgm_ros.core.families.dmvae_lee import tc_decomposition
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 3) * torch.tensor([1.0, 0.2, 1.0]), torch.randn(6, 3) * 0.3 - 1.0
    z = mu + torch.randn(6, 3) * torch.exp(0.5 * logvar)
    rows = torch.tensor([True, True, False, True, True, True])
    mi, tc, dkl = tc_decomposition(z, mu, logvar, rows)
    one_sample_kl = post.gaussian_log_prob(z, mu, logvar) - post.standard_normal_log_prob(z)
    assert torch.allclose(mi + tc + dkl, torch.where(rows, one_sample_kl, torch.zeros(())), atol=1e-5)
    keep = rows.nonzero()[:, 0]                  # a missing row is left out of the aggregate estimate
    by_hand = tc_parts_by_hand(z[keep], mu[keep], logvar[keep], 1)
    assert all(torch.allclose(a[keep], b, atol=1e-5) for a, b in zip((mi, tc, dkl), by_hand))
    assert float(mi[2]) == float(tc[2]) == 0.0


# ----------------------------------------------------------------------------- DMVAE, Daunhawer et al.
def test_dmvae_daunhawer_objective_by_hand(mean_z):
    from test_private_latents import full_poe
    model, x = build("dmvae_daunhawer", omega=0.7, temperature=0.4, kappa=1.3)
    shared, private = experts(model, x)
    c, c_lv = full_poe(shared)
    recon = sum(loglik(model, n, x[n], c, private[n][0]) for n in "ab")
    elbo = recon - BETA * std_kl((c, c_lv)) - BETA * (std_kl(private["a"]) + std_kl(private["b"]))
    nce = 0.0
    for m, n in (("a", "b"), ("b", "a")):                      # the paired modalities' shared means
        u, v = shared[m][0], shared[n][0]
        scores = torch.stack([torch.stack([torch.dot(u[i], v[j]) / (u[i].norm() * v[j].norm())
                                           for j in range(4)]) for i in range(4)]) / 0.4
        nce = nce + scores.diagonal() - torch.logsumexp(scores, 1) + math.log(4)
    logit = model.extra["tc_discriminator"](torch.cat([c, private["a"][0], private["b"][0]], -1))
    out = compute_objective(model, x, ALL, beta=BETA)
    assert torch.allclose(out.loss, -(elbo + 0.7 * nce - 1.3 * logit), atol=1e-4)
    # rows missing a modality: no TC term there, and its InfoNCE term runs over the rows observing it
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    part = compute_objective(model, x, mask, beta=BETA)
    assert float(part.terms["tc_estimate"][1]) == 0.0 and float(part.terms["tc_estimate"][0]) != 0.0


def test_dmvae_daunhawer_discriminator_has_its_own_optimiser_step_and_learns_the_dependence():
    """The trainer leaves D out of the VAE's optimiser and lets the family step it after each VAE step;
    on codes where c and the s_m are functions of one factor, D's own steps tell joint from permuted
    samples (the BCE falls well below chance, 2 log 2)."""
    from mdgm_ros.core.engine import loop as training
    from mdgm_ros.core.families.dmvae_daunhawer import discriminator_loss
    torch.set_num_threads(1)
    model, _ = build("dmvae_daunhawer", disc_lr=1e-2)
    disc = model.extra["tc_discriminator"]
    trainer = training.Trainer(model, training.TrainConfig(epochs=1, batch_size=64, lr=1e-3, seed=0))
    main_ids = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not main_ids & {id(p) for p in disc.parameters()} and trainer.family_optimizer is not None
    a = torch.randn(128, 3)
    feats = {"a": a, "b": torch.cat([a, a[:, :1]], -1)}
    mask = torch.ones(128, 2, dtype=torch.bool)
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    out = trainer.train_step(feats, mask, None)
    assert any(not torch.equal(before[k], v) for k, v in disc.state_dict().items())
    assert "discriminator_bce" in out.terms and "family_optimizer" in trainer.state_dict()
    with torch.no_grad():                       # near-deterministic codes: the dependence is visible
        for enc in (*model.encoders.values(), *model.private_encoders.values()):
            enc.head.bias[enc.head.bias.shape[0] // 2:] -= 6.0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = float(discriminator_loss(model, feats, mask, gen))
    trainer.dev_gen = gen
    for _ in range(100):
        trainer._family_step(feats, mask)
    with torch.no_grad():
        end = float(discriminator_loss(model, feats, mask, gen))
    assert start > 1.3 and end < 1.0, (start, end)


def test_dmvae_daunhawer_exports_its_discriminator():
    model, _ = build("dmvae_daunhawer")
    part = next(p for p in export_parts(model) if p.stem == "onnx_tc_discriminator")
    assert part.args[0].shape[-1] == 2 + 2 * 3


# ----------------------------------------------------------------------------- MFM (eq. 32)
def mmd_by_hand(a, b):
    n, scale = a.shape[0], 2.0 * a.shape[1]
    k = lambda u, v: scale / (scale + ((u - v) ** 2).sum())                     # noqa: E731
    within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return within - 2.0 * sum(k(a[i], b[j]) for i in range(n) for j in range(n)) / n ** 2


def test_mfm_objective_eq32_by_hand(mean_z, monkeypatch):
    from mdgm_ros.core.families import mfm
    from mdgm_ros.core.model.family import LABELS
    torch.manual_seed(5)
    priors = iter([torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 3)])
    drawn = []
    monkeypatch.setattr(mfm, "prior_samples", lambda n, d, like, generator: drawn.append(next(priors)) or drawn[-1])
    model, x = build("mfm", mmd_weight=3.0, kappa=0.8, eta=0.6, n_labels=5)
    shared, private = experts(model, x)
    c_mu, c_lv = model.subset_encoders["a__b"](x["a"], x["b"])
    labels = torch.tensor([1, -1, 4, 0])
    recon = sum(loglik(model, n, x[n], c_mu, private[n][0]) for n in "ab")
    logits = model.extra["label_head"](c_mu)
    label = torch.where(labels >= 0, torch.log_softmax(logits, -1)[torch.arange(4), labels.clamp(min=0)],
                        torch.zeros(()))
    surrogate = sum(gaussian(*shared[n]).log_prob(c_mu.detach()).sum(-1) for n in "ab")
    out = compute_objective(model, {**x, LABELS: labels}, ALL, beta=BETA)
    divergence = (mmd_by_hand(c_mu, drawn[0]) + mmd_by_hand(private["a"][0], drawn[1])
                  + mmd_by_hand(private["b"][0], drawn[2]))
    expected = recon + 0.8 * label + 0.6 * surrogate - BETA * 3.0 * divergence
    assert torch.allclose(out.loss, -expected, atol=1e-4)
    assert float(out.terms["label_loglik"][1]) == 0.0 and float(out.terms["label_loglik"][0]) < 0
    # without labels (a bag without task phases) the label term is off, the rest unchanged
    priors = iter(drawn[:3])
    drawn.clear()
    unlabelled = compute_objective(model, x, ALL, beta=BETA)
    assert torch.allclose(unlabelled.loss, -(expected - 0.8 * label), atol=1e-4)
    assert "label_loglik" not in unlabelled.terms


def test_mfm_missing_modalities_take_c_from_the_product_of_the_surrogates(mean_z):
    model, x = build("mfm")
    shared, _ = experts(model, x)
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    with torch.no_grad():
        mu, logvar = model.experts(model.complete(x, mask), mask)
        c = model.posterior_summary(mu, logvar, mask)[0]
        joint = model.subset_encoders["a__b"](x["a"], x["b"])[0]
    assert torch.allclose(c[[0, 3]], joint[[0, 3]], atol=1e-6)
    assert torch.allclose(c[1], shared["a"][0][1], atol=1e-6) and torch.allclose(c[2], shared["b"][0][2], atol=1e-6)


def test_mfm_labels_reach_the_head_through_the_family_flag_and_the_head_exports():
    from mdgm_ros.core.families import FAMILIES
    assert FAMILIES["mfm"].uses_labels and "label term off" in FAMILIES["mfm"].properties.notes
    model, _ = build("mfm")
    assert "onnx_label_head" in {p.stem for p in export_parts(model)}


def test_dmvae_daunhawer_training_resumes_bit_for_bit_with_the_discriminator_optimiser():
    from mdgm_ros.core.engine import loop as training
    torch.set_num_threads(1)
    feats = {"a": torch.randn(96, 3), "b": torch.randn(96, 4)}
    mask = torch.ones(96, 2, dtype=torch.bool)
    mask[::5, 1] = False
    config = training.TrainConfig(epochs=2, batch_size=32, lr=1e-3, seed=0, grad_clip=1.0)
    straight, _ = build("dmvae_daunhawer")
    training.train(straight, feats, mask, config)
    resumed, _ = build("dmvae_daunhawer")
    first = training.Trainer(resumed, config)
    first.run_epoch(feats, mask)
    state, weights = first.state_dict(), {k: v.clone() for k, v in resumed.state_dict().items()}
    again, _ = build("dmvae_daunhawer")
    again.load_state_dict(weights)
    second = training.Trainer(again, config)
    second.load_state_dict(state)
    second.run_epoch(feats, mask)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_mfm_takes_task_phases_as_labels_and_a_bag_without_phases_trains_without_the_label_term():
    from types import SimpleNamespace

    import numpy as np

    from mdgm_ros.core.model.family import LABELS
    from mdgm_ros.training.trainer import with_phase_labels
    model, x = build("mfm", n_labels=3)
    phased = SimpleNamespace(train=SimpleNamespace(phase=np.array(["reach", "", "push", "grasp"])),
                             val=SimpleNamespace(phase=np.array(["push"])))
    labelled = with_phase_labels(model, x, phased)
    assert labelled[LABELS].tolist() == [2, -1, 1, 0]
    assert float(compute_objective(model, labelled, ALL).terms["label_loglik"].abs().sum()) > 0
    bare = SimpleNamespace(train=SimpleNamespace(phase=np.array([""] * 4)), val=SimpleNamespace(phase=np.array([""])))
    unlabelled = with_phase_labels(model, x, bare)
    assert unlabelled[LABELS].tolist() == [-1] * 4
    assert float(compute_objective(model, unlabelled, ALL).terms["label_loglik"].abs().sum()) == 0.0


# ----------------------------------------------------------------------------- DMVAE-Lee, concrete c
CONCRETE = {"shared": "concrete", "categories": 3, "temperature": 0.5}


def test_concrete_samples_relaxed_for_training_and_exact_one_hot_categoricals_for_inference():
    from mdgm_ros.core.model import concrete
    torch.manual_seed(0)
    logits = torch.randn(5, 6) * 2                                     # 2 groups of 3 categories
    relaxed = concrete.sample(logits, 0.5, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(relaxed.unflatten(-1, (2, 3)).sum(-1), torch.ones(5, 2), atol=1e-6)
    assert bool(((relaxed > 0) & (relaxed < 1)).all())
    hard = concrete.hard_sample(logits, 3, n_samples=20000, generator=torch.Generator().manual_seed(2))
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hard.unflatten(-1, (2, 3)).sum(-1), torch.ones(20000, 5, 2))
    frequencies = hard.mean(0)                                         # Gumbel-max: the categorical's own
    assert torch.allclose(frequencies, concrete.probabilities(logits, 3), atol=0.015)
    pmf = concrete.soft_log_pmf(hard[:3], logits, 3)                   # at a one-hot: log q(category)
    picked = (hard[:3].unflatten(-1, (2, 3)) * torch.log_softmax(logits.unflatten(-1, (2, 3)), -1)).sum(-1)
    assert torch.allclose(pmf, picked) and torch.allclose(concrete.prior_log_pmf(hard[:3], 3),
                                                          torch.full((3, 5), 2 * math.log(1 / 3)))


def test_the_product_of_categorical_experts_is_the_normalised_product_of_their_probabilities():
    from mdgm_ros.core.model import concrete
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6)                                      # (M, B, D): 2 groups of 3
    mask = torch.tensor([[True, True, True], [True, False, True], [False, False, False], [False, True, False]])
    product = concrete.probabilities(concrete.product_logits(logits, mask, 3), 3).unflatten(-1, (2, 3))
    probs = torch.softmax(logits.unflatten(-1, (2, 3)), -1)
    for b in range(4):
        by_hand = torch.ones(2, 3)
        for m in range(3):
            if mask[b, m]:
                by_hand = by_hand * probs[m, b]
        assert torch.allclose(product[b], by_hand / by_hand.sum(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(product[2], torch.full((2, 3), 1 / 3))          # nothing observed: the uniform prior


@pytest.fixture
def mean_c(monkeypatch):
    from mdgm_ros.core.model import concrete
    monkeypatch.setattr(concrete, "sample", lambda logits, temperature, categories, n_samples=None, generator=None:
                        concrete.probabilities(logits, categories))


def test_dmvae_lee_concrete_objective_by_hand(mean_z, mean_c):
    from torch.distributions import Categorical
    torch.manual_seed(2)
    two = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
           ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)))
    model = MultimodalVAE(ModelConfig(two, latent_dim=6, family="dmvae_lee", private_dim=3,
                                      family_options={**CONCRETE, "tc_weight": 4.0, "mi_weight": 0.5,
                                                         "dim_kl_weight": 1.5, "dataset_size": 50}))
    x = {"a": torch.randn(4, 3), "b": torch.randn(4, 4)}
    shared, private = experts(model, x)
    probs = {n: Categorical(logits=shared[n][0].unflatten(-1, (2, 3))).probs for n in "ab"}
    poe = probs["a"] * probs["b"]                                   # the uniform prior: a constant
    poe_logits = torch.log(poe / poe.sum(-1, keepdim=True)).flatten(-2)
    recon, reg = 0.0, 0.0
    for logits in (poe_logits, shared["a"][0], shared["b"][0]):
        log_pmf = Categorical(logits=logits.unflatten(-1, (2, 3))).logits                 # (j, group, k)
        c = log_pmf.exp()                                           # the sample is the mean (patched)
        recon = recon + sum(loglik(model, n, x[n], c.flatten(-2), private[n][0]) for n in "ab")
        pairs = torch.stack([torch.stack([(c[i] * log_pmf[j]).sum(-1) for j in range(4)]) for i in range(4)])
        norm = math.log(4 * 50)
        log_qc = torch.logsumexp(pairs.sum(-1), 1) - norm
        log_marg = (torch.logsumexp(pairs, 1) - norm).sum(-1)
        log_q = (c * log_pmf).sum((-1, -2))
        log_p = 2 * math.log(1 / 3)
        reg = reg + 0.5 * (log_q - log_qc) + 4.0 * (log_qc - log_marg) + 1.5 * (log_marg - log_p)
    for n in "ab":                                             # in each of the 3 experts' ELBOs
        mi, tc, dkl = tc_parts_by_hand(private[n][0], *private[n], 50)
        reg = reg + 3 * (0.5 * mi + 4.0 * tc + 1.5 * dkl)
    out = compute_objective(model, x, ALL, beta=BETA)
    assert torch.allclose(out.loss, -(recon - BETA * reg), atol=1e-3)


def test_dmvae_lee_concrete_unit_weights_give_the_one_sample_kl_of_the_categorical():
    """With unit weights R is log q(c|x) - log p(c) with the categorical pmf at the relaxed sample; at a
    one-hot c that is the log-ratio of the pmfs at that category, at the mean its KL to the uniform."""
    from mdgm_ros.core.families.dmvae_lee import SharedLatent, concrete_tc_decomposition
    from mdgm_ros.core.model import concrete
    torch.manual_seed(0)
    latent = SharedLatent.from_options(CONCRETE, 6)
    logits = torch.randn(6, 6) * 2
    rows = torch.tensor([True, True, False, True, True, True])
    c = concrete.sample(logits, 0.5, 3, generator=torch.Generator().manual_seed(3))
    mi, tc, dkl = concrete_tc_decomposition(c, logits, rows, latent)
    one_sample = concrete.soft_log_pmf(c, logits, 3).sum(-1) + 2 * math.log(3)
    assert torch.allclose(mi + tc + dkl, torch.where(rows, one_sample, torch.zeros(())), atol=1e-5)
    assert float(mi[2]) == float(tc[2]) == float(dkl[2]) == 0.0
    mean = concrete.probabilities(logits, 3)
    mi, tc, dkl = concrete_tc_decomposition(mean, logits, rows, latent)
    assert torch.allclose((mi + tc + dkl)[rows], concrete.kl_to_uniform(logits, 3)[rows], atol=1e-5)


def categorical_factor_data(n, seed, n_mod=3, dim=5):
    """x_m = tanh(A_m c + B_m s_m) + noise with a shared c that is one of 4 classes (the corners of a
    square) and a private 1-d s_m: the labels to recover."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(11)
    label = rng.integers(0, 4, n)
    c = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])[label]
    feats = {}
    for j in range(n_mod):
        a, b = fixed.normal(0, 1.2, (2, dim)), fixed.normal(0, 0.7, (1, dim))
        s = rng.uniform(-1, 1, (n, 1))
        feats[f"m{j}"] = torch.from_numpy(np.tanh(c @ a + s @ b) + rng.normal(0, 0.05, (n, dim))).float()
    return feats, torch.ones((n, n_mod), dtype=torch.bool), label


def test_dmvae_lee_concrete_c_recovers_a_categorical_shared_factor_from_every_single_modality():
    """Would fail for a c unused (uniform) or not shared: the class read off q(c | x_m) of every single
    modality must be nearly pure, and cross-modal generation must beat the mean predictor."""
    from mdgm_ros.core import impute
    from mdgm_ros.core.engine import loop as training
    torch.set_num_threads(1)
    torch.manual_seed(0)
    specs = tuple(ModalitySpec(f"m{j}", "vector", (5,), scale=0.3, learn_scale=True, hidden=(16,)) for j in range(3))
    model = MultimodalVAE(ModelConfig(specs, latent_dim=4, family="dmvae_lee", private_dim=2,
                                      family_options={"shared": "concrete"}))
    raw, mask, _ = categorical_factor_data(768, 0)
    training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    training.train(model, feats, mask, training.TrainConfig(
        epochs=25, batch_size=64, lr=3e-3, beta=training.BetaSchedule("linear", 0.0, 1.0, 200), seed=0))
    test_raw, test_mask, label = categorical_factor_data(300, 1)
    test = training.normalize_features(model, test_raw)
    model.eval()
    with torch.no_grad():
        mu, logvar = model.experts(test, test_mask)
        for j, source in enumerate(model.names):
            alone = torch.zeros_like(test_mask)
            alone[:, j] = True
            pick = model.posterior_summary(mu, logvar, alone)[0].argmax(-1).numpy()
            purity = sum(np.bincount(label[pick == k]).max() for k in set(pick)) / len(label)
            assert purity > 0.85, (source, purity)
            targets = [n for n in model.names if n != source]
            imputed = impute(model, test, alone, targets)
            for n in targets:
                baseline = float(((test[n] - feats[n].mean(0)) ** 2).mean())
                assert float(((imputed[n].mean - test[n]) ** 2).mean()) < 0.8 * baseline, (source, n)


def test_dmvae_lee_refuses_bad_concrete_options():
    from mdgm_ros.core import SpecError
    for options, words in (({"shared": "binary"}, "shared must be"),
                           ({"shared": "concrete", "categories": 4}, "dividing latent_dim 6"),
                           ({"shared": "concrete", "categories": 3, "temperature": 0.0}, "temperature")):
        with pytest.raises(SpecError, match=words):
            MultimodalVAE(ModelConfig((ModalitySpec("a", "vector", (3,)),), latent_dim=6, family="dmvae_lee",
                                      family_options=options))


def test_dmvae_lee_concrete_inference_gives_probabilities_and_a_finite_relaxed_likelihood():
    torch.manual_seed(0)
    specs = tuple(ModalitySpec(f"m{j}", "vector", (5,), hidden=(16,)) for j in range(3))
    model = MultimodalVAE(ModelConfig(specs, latent_dim=6, family="dmvae_lee", family_options=CONCRETE)).eval()
    feats = {n: torch.randn(4, 5) for n in model.names}
    mask = torch.tensor([[True, True, False], [False, True, False], [False, False, False], [True, True, True]])
    with torch.no_grad():
        mean, logvar = model.posterior_summary(*model.experts(feats, mask), mask)
        result = Fuser(model, impute_present=True, anomaly=False)({n: feats[n] for n in model.names}, mask)
        nll = iwae_log_likelihood(model, feats, mask, n_samples=16, generator=torch.Generator().manual_seed(0))
    groups = mean.unflatten(-1, (2, 3))
    assert torch.allclose(groups.sum(-1), torch.ones(4, 2), atol=1e-6) and bool((mean >= 0).all())
    assert torch.allclose(groups[2], torch.full((2, 3), 1 / 3))            # nothing observed: uniform
    assert torch.allclose(torch.exp(logvar), mean * (1 - mean), atol=1e-6)
    assert torch.allclose(result.latent_mean, mean, atol=1e-6)
    assert torch.isfinite(nll[[0, 1, 3]]).all()
    with torch.no_grad():                                 # posterior samples: one-hot categoricals
        samples = model.family.posterior_samples(model, *model.experts(feats, mask), mask, 4)
    assert samples.shape == (4, 4, 6) and torch.equal(samples.unflatten(-1, (2, 3)).sum(-1), torch.ones(4, 4, 2))
    info = model.family.latent_description(model.config)
    assert info["categories"] == 3 and info["groups"] == 2 and "probabilities" in info["mean"]
    assert "concrete" in model.family.inference_rule(model.config)
