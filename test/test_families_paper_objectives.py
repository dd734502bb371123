"""MVAE, MoPoE, MMVAE, MMVAE+ and DMVAE (Lee & Pavlovic): each family's training loss on a tiny batch
(seeded weights, one row without b and one without a, modality weights and likelihood scales != 1,
beta != 1) against the paper's formula written out here with torch.distributions and plain torch, never
with the package's posterior or objective helpers.

The noise is the family's own: the objective gets a seeded torch.Generator and the reference draws the
same standard normals (uniforms for Laplace latents) from a generator seeded alike, in the order the
family's module draws them, so the samples are real ones (K distinct samples per expert), not the means."""
import itertools
import math

import pytest
import torch
from torch.distributions import Laplace, Normal, kl_divergence

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, compute_objective
from mdgm_ros.core.model import posterior as post

BETA = 0.7
SEED = 11
K = 3                                     # samples per expert (MMVAE, MMVAE+)
D, P = 2, 3                               # shared and private latent sizes
NAMES = ("a", "b", "c")
M, B = len(NAMES), 4
# rows: all observed, b missing, all observed, a missing
MASK = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
TOL = {"rtol": 1e-5, "atol": 1e-4}


def build(family: str, private_dim: int | None = None, prior_rule: bool | None = None, **options):
    torch.manual_seed(1)
    specs = (ModalitySpec("a", "vector", (3,), scale=0.6, weight=2.0, hidden=(8,)),
             ModalitySpec("b", "vector", (4,), scale=0.9, hidden=(8,)),
             ModalitySpec("c", "vector", (2,), scale=1.3, weight=0.5, hidden=(8,)))
    model = MultimodalVAE(ModelConfig(specs, latent_dim=D, family=family, family_options=options,
                                      private_dim=private_dim, proper_subsets_include_prior=prior_rule))
    with torch.no_grad():                   # experts away from the prior, so every KL is clearly non-zero
        for enc in (*model.encoders.values(), *model.private_encoders.values()):
            enc.head.bias.add_(0.3)
    x = {n: torch.randn(B, s.shape[0]) for n, s in model.specs.items()}
    return model, x


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def run(model, x, **options):
    return compute_objective(model, x, MASK, beta=BETA, generator=generator(), **options)


def observed(b: int) -> list[str]:
    return [n for j, n in enumerate(NAMES) if MASK[b, j]]


def close(got, want) -> bool:
    return torch.allclose(got, want, **TOL)


# ----------------------------------------------------------------------------- the paper's pieces
def loglik(model, name, x, z, s=None):
    """lambda_m log N(x_m; dec_m(z [, s]), sigma_m^2 I), summed over the features: (...)."""
    code = z if s is None else torch.cat([z, s], -1)
    sigma = math.exp(float(model.log_scales[name]))
    return model.specs[name].weight * Normal(model.decoders[name](code), sigma).log_prob(x).sum(-1)


def masked_loglik(model, name, x, z, s=None):
    """loglik on the rows that observe ``name``, 0 on the others: (..., B)."""
    return torch.where(MASK[:, NAMES.index(name)], loglik(model, name, x[name], z, s), torch.zeros(()))


def gaussian_experts(encoders, x) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for n in NAMES:
        mu, logvar = encoders[n](x[n])
        assert float(logvar.detach().abs().max()) < 10          # the package clamps log-variances to [-10, 10]: a no-op
        out[n] = (mu, logvar)
    return out


def normal(mu, logvar) -> Normal:
    return Normal(mu, torch.exp(0.5 * logvar))


def kl_std(mu, logvar):
    return kl_divergence(normal(mu, logvar), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)


def poe(experts, with_prior: bool):
    """Product of the Gaussian experts [(mu, logvar)] (times the N(0, I) expert): precisions add, the mean
    is the precision-weighted mean."""
    precisions = [torch.exp(-lv) for _, lv in experts]
    total = sum(precisions) + (1.0 if with_prior else 0.0)
    return sum(p * mu for p, (mu, _) in zip(precisions, experts)) / total, -torch.log(total)


def row_experts(q, b, subset):
    return [(q[n][0][b], q[n][1][b]) for n in subset]


# ----------------------------------------------------------------------------- MVAE (Wu & Goodman 2018)
FIXED_SUBSETS = (torch.tensor([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.bool),
                 torch.tensor([[0, 1, 1], [0, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool))


@pytest.mark.parametrize("k", [0, 2])
def test_mvae_is_the_joint_elbo_plus_the_unimodal_and_subset_elbos_of_prior_products(k, monkeypatch):
    """ELBO(X_O) + sum_{m in O} ELBO(x_m) + sum_j ELBO(X_Sj), q(z|X_S) = p(z) prod_{m in S} q(z|x_m), each
    term reconstructing its own modalities; the k random subsets are replaced by a fixed list."""
    draws = iter(FIXED_SUBSETS[:k])

    def fixed(mask, generator=None):
        subset = next(draws)
        assert not bool((subset & ~mask).any())         # subsets of the observed modalities only
        return subset

    monkeypatch.setattr(post, "sample_present_subsets", fixed)
    model, x = build("mvae", k=k)
    out = run(model, x)
    assert next(draws, None) is None                    # every subset term was drawn
    g = generator()                                     # noise: the joint, a, b, c, then each subset term
    eps = [torch.randn(B, D, generator=g) for _ in range(1 + M + k)]
    q = gaussian_experts(model.encoders, x)

    def elbo(b, subset, noise):
        mu, logvar = poe(row_experts(q, b, subset), with_prior=True)
        z = mu + torch.exp(0.5 * logvar) * noise[b]
        return sum(loglik(model, n, x[n][b], z) for n in subset) - BETA * kl_std(mu, logvar)

    joint = torch.stack([elbo(b, observed(b), eps[0]) for b in range(B)])
    unimodal = {n: torch.stack([elbo(b, [n], eps[1 + j]) if MASK[b, j] else torch.zeros(()) for b in range(B)])
                for j, n in enumerate(NAMES)}
    subsets = [torch.stack([elbo(b, [n for j, n in enumerate(NAMES) if s[b, j]], eps[1 + M + i]) for b in range(B)])
               for i, s in enumerate(FIXED_SUBSETS[:k])]
    assert close(out.terms["elbo_joint"], joint)
    assert all(close(out.terms[f"elbo_{n}"], unimodal[n]) for n in NAMES)
    assert all(close(out.terms[f"elbo_subset{i}"], s) for i, s in enumerate(subsets))
    assert close(out.loss, -(joint + sum(unimodal.values()) + sum(subsets, torch.zeros(B))))


# ----------------------------------------------------------------------------- MoPoE (Sutter et al. 2021)
ALL_SUBSETS = [s for r in range(1, M + 1) for s in itertools.combinations(NAMES, r)]


@pytest.mark.parametrize("kl_estimator, fast", [("exact", True), ("exact", False), ("sampled", True)])
@pytest.mark.parametrize("prior_rule", [None, True], ids=["prior-only-in-full-product", "prior-in-every-product"])
def test_mopoe_is_the_mixture_of_subset_products_with_the_average_kl_bound(kl_estimator, fast, prior_rule,
                                                                         monkeypatch):
    """sum_S w_S E_{q~_S}[sum_{n in O} lambda_n log p(x_n|z)] - beta sum_S w_S KL(q~_S || p), S over the
    non-empty subsets of the row's observed set O, w_S = 1 / (2^|O| - 1), q~_S the PoE of S's experts. The
    family estimates the mixture's expectation with one subset per row: each subset is forced in turn here,
    so every run is checked, and their average is the mixture objective. Prior expert as the docstring
    states (the reference code's rule, not the paper's prior-free products): only in the product of all the
    model's modalities (a row without b never has it), unless proper_subsets_include_prior."""
    model, x = build("mopoe", prior_rule=prior_rule, kl_estimator=kl_estimator, fast=fast)
    q = gaussian_experts(model.encoders, x)
    eps = torch.randn(B, D, generator=generator())      # the same noise in every run (the sampler is patched)
    inside = {s: torch.tensor([set(s) <= set(observed(b)) for b in range(B)]) for s in ALL_SUBSETS}
    losses = {}
    for subset in ALL_SUBSETS:
        forced = torch.tensor([[n in subset for n in NAMES]]).expand(B, M)
        forced = torch.where(inside[subset][:, None], forced, MASK)      # another valid subset elsewhere
        monkeypatch.setattr(post, "sample_present_subsets", lambda mask, generator=None, s=forced: s)
        losses[subset] = run(model, x)

    for b in range(B):
        mine = [s for s in ALL_SUBSETS if inside[s][b]]
        assert len(mine) == 2 ** len(observed(b)) - 1
        products = {s: poe(row_experts(q, b, s), with_prior=len(s) == M or bool(prior_rule)) for s in mine}
        kl = {s: kl_std(*products[s]) for s in mine}
        bound = sum(kl.values()) / len(mine)
        recon = {}
        for s, (mu, logvar) in products.items():
            z = mu + torch.exp(0.5 * logvar) * eps[b]
            recon[s] = sum(loglik(model, n, x[n][b], z) for n in observed(b))
            kl_term = bound if kl_estimator == "exact" else kl[s]           # "sampled": the drawn subset's KL
            assert close(losses[s].terms["recon"][b], recon[s]), (b, s)
            assert close(losses[s].loss[b], -(recon[s] - BETA * kl_term)), (b, s)
        mixture = sum(recon.values()) / len(mine) - BETA * bound         # the paper's objective for row b
        assert close(sum(-losses[s].loss[b] for s in mine) / len(mine), mixture)


# ----------------------------------------------------------------------------- MMVAE (Shi et al. 2019)
def latent(kind: str, loc, second):
    """A latent distribution from a mean and an encoder's second output: N(loc, exp(second)), or
    Laplace(loc, softmax(second) * dim + 1e-6), the reference code's softmax-normalised scales."""
    if kind == "gaussian":
        return normal(loc, second)
    return Laplace(loc, torch.softmax(second, -1) * second.shape[-1] + 1e-6)


def unit_noise(kind: str, shape, g):
    return torch.randn(shape, generator=g) if kind == "gaussian" else torch.rand(shape, generator=g)


def sample(kind: str, dist, noise):
    """Reparameterised: loc + scale * eps (Gaussian), the inverse CDF at a uniform (Laplace)."""
    if kind == "gaussian":
        return dist.loc + dist.scale * noise
    return dist.icdf(noise.clamp(5e-7, 1 - 5e-7))


def unit_prior(kind: str, dim: int):
    zeros = torch.zeros(dim)
    return Normal(zeros, 1.0) if kind == "gaussian" else Laplace(zeros, 1.0)


def experts_of(kind, encoders, x, detach=False):
    out = {}
    for n in NAMES:
        loc, second = encoders[n](x[n])
        assert float(second.detach().abs().max()) < 10               # the package's clamp to [-10, 10]: a no-op
        out[n] = latent(kind, loc.detach(), second.detach()) if detach else latent(kind, loc, second)
    return out


def log_mixture(q, z):
    """log (1/|O|) sum_{e in O} q(z|x_e) for z (K, B, D): (K, B)."""
    comps = torch.stack([q[e].log_prob(z).sum(-1) for e in NAMES])             # (M, K, B)
    comps = torch.where(MASK.t()[:, None, :], comps, torch.full((), -math.inf))
    return torch.logsumexp(comps, 0) - torch.log(MASK.sum(1).float())


def stratified_bound(lw):
    """(1/|O|) sum_{m in O} [log (1/K) sum_k w_mk], lw (M, K, B): (B,)."""
    each = torch.logsumexp(lw, 1) - math.log(K)
    return torch.where(MASK.t(), each, torch.zeros(())).sum(0) / MASK.sum(1)


RHO_SHARED = torch.tensor([[0.4, -0.3]])


def mmvae_prior(kind, model, learn_prior):
    if not learn_prior:
        return unit_prior(kind, D)
    return latent(kind, torch.zeros(D), model.extra["prior"].logvar[0])


def mmvae_log_weights(model, x, kind, learn_prior, q_density, z):
    """log w = sum_{n in O} lambda_n log p(x_n|z) + beta (log p(z) - log q(z|X_O)): (M, K, B)."""
    prior = mmvae_prior(kind, model, learn_prior)
    lws = []
    for m in NAMES:
        recon = sum(masked_loglik(model, n, x, z[m]) for n in NAMES)
        lws.append(recon + BETA * (prior.log_prob(z[m]).sum(-1) - log_mixture(q_density, z[m])))
    return torch.stack(lws)


def mmvae_model(kind, learn_prior):
    model, x = build("mmvae", K=K, posterior=kind, learn_prior=learn_prior)
    if learn_prior:
        with torch.no_grad():
            model.extra["prior"].logvar.copy_(RHO_SHARED)
    return model, x


@pytest.mark.parametrize("estimator, fast", [("iwae", True), ("dreg", True), ("dreg", False)])
@pytest.mark.parametrize("kind, learn_prior", [("gaussian", False), ("gaussian", True), ("laplace", False),
                                               ("laplace", True)])
def test_mmvae_value_is_the_stratified_iwae_bound_of_the_mixture(kind, learn_prior, estimator, fast):
    """(1/|O|) sum_{m in O} log (1/K) sum_k p(z_mk)^beta prod_{n in O} p(x_n|z_mk)^lambda_n / q(z_mk|X_O)^beta,
    z_mk ~ q(z|x_m), q(z|X_O) = (1/|O|) sum_{m in O} q(z|x_m); DReG changes the gradients, not the value."""
    model, x = mmvae_model(kind, learn_prior)
    with torch.set_grad_enabled(estimator == "dreg"):
        out = run(model, x, estimator=estimator, fast=fast)
    noise = unit_noise(kind, (M, K, B, D), generator())          # every expert's K samples, missing ones too
    q = experts_of(kind, model.encoders, x)
    z = {m: sample(kind, q[m], noise[j]) for j, m in enumerate(NAMES)}
    bound = stratified_bound(mmvae_log_weights(model, x, kind, learn_prior, q, z))
    assert close(out.terms["iwae"], bound)
    if estimator == "iwae":
        assert close(out.loss, -bound)


def dreg_gradients(model, draw, log_weights, n_from_q):
    """Gradients of -mean_b(bound) by DReG (Tucker et al. 2019) as the families' docstrings state it: with
    w~ the normalised weights (over k) and q's parameters held fixed in log w, the paths through the samples
    of q get (1/|O|) sum_m sum_k w~_mk^2 dlog w_mk/dz dz_mk/dphi, every other parameter and path the
    importance-weighted (1/|O|) sum_m sum_k w~_mk dlog w_mk/dtheta. ``draw()`` gives the samples [(M, K, B,
    ...)] with their graph (the first ``n_from_q`` drawn from q), ``log_weights(samples)`` log w (M, K, B)."""
    params = [p for p in model.parameters() if p.requires_grad]
    samples = draw()
    leaves = [s.detach().requires_grad_() for s in samples]
    lw = log_weights(leaves)
    wt = torch.softmax(lw, 1).detach()
    surrogate = torch.where(MASK.t()[:, None, :], wt * lw, torch.zeros(())).sum((0, 1)) / MASK.sum(1)
    direct = torch.autograd.grad(-surrogate.mean(), params + leaves, allow_unused=True)
    by_sample = [wt[..., None] * g if i < n_from_q else g for i, g in enumerate(direct[len(params):])]
    through_samples = torch.autograd.grad(samples, params, grad_outputs=by_sample, allow_unused=True)
    return [sum((g for g in pair if g is not None), torch.zeros_like(p))
            for p, pair in zip(params, zip(direct[:len(params)], through_samples))]


def package_gradients(model, x, **options):
    model.zero_grad()
    run(model, x, **options).loss.mean().backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("kind, learn_prior", [("gaussian", False), ("gaussian", True), ("laplace", True)])
def test_mmvae_dreg_gradients_are_the_doubly_reparameterised_ones(kind, learn_prior):
    model, x = mmvae_model(kind, learn_prior)
    got = package_gradients(model, x)
    noise = unit_noise(kind, (M, K, B, D), generator())

    def draw():
        q = experts_of(kind, model.encoders, x)
        return [torch.stack([sample(kind, q[m], noise[j]) for j, m in enumerate(NAMES)])]

    def log_weights(leaves):
        z = dict(zip(NAMES, leaves[0]))
        return mmvae_log_weights(model, x, kind, learn_prior, experts_of(kind, model.encoders, x, detach=True), z)

    want = dreg_gradients(model, draw, log_weights, n_from_q=1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(float(g.abs().sum()) > 0 for n, g in zip(names, want) if n.startswith("encoders."))
    assert ("extra.prior.logvar" in names) == learn_prior                    # the learned prior trains
    for name, a, b in zip(names, got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


# ----------------------------------------------------------------------------- MMVAE+ (Palumbo et al. 2023)
RHO_AUX = torch.linspace(-0.5, 0.6, M * P).reshape(M, P)


def mmvae_plus_model(kind, learn_prior):
    model, x = build("mmvae_plus", private_dim=P, K=K, posterior=kind, learn_prior=learn_prior)
    with torch.no_grad():
        model.extra["aux_prior"].logvar.copy_(RHO_AUX)
        if learn_prior:
            model.extra["prior"].logvar.copy_(torch.tensor([[0.4, -0.3, 0.2, -0.1, 0.5]]))
    return model, x


def mmvae_plus_reference(model, x, kind, learn_prior, noise, detach_q=False, samples=None):
    """(samples [c, w, w_aux], log weights (M, K, B)). For the K samples of modality m:
    c ~ q(c|x_m), w_m ~ q(w_m|x_m), w~_n ~ r_n for n != m, and
    log w = sum_{n in O} lambda_n log p(x_n | c, w_m if n == m else w~_n)
            + beta [log p(c) + log p(w_m) - log q(c|X_O) - log q(w_m|x_m)], q(c|X_O) the mixture over O."""
    q_c = experts_of(kind, model.encoders, x)
    q_w = experts_of(kind, model.private_encoders, x)
    rho = model.extra["aux_prior"].logvar
    r = {n: latent(kind, torch.zeros(P), rho[j]) for j, n in enumerate(NAMES)}
    if samples is None:
        c = torch.stack([sample(kind, q_c[m], noise[0][j]) for j, m in enumerate(NAMES)])
        w = torch.stack([sample(kind, q_w[m], noise[1][j]) for j, m in enumerate(NAMES)])
        w_aux = torch.stack([sample(kind, r[n], noise[2][j]) for j, n in enumerate(NAMES)])
        samples = [c, w, w_aux]
    c, w, w_aux = samples
    if detach_q:
        q_c = experts_of(kind, model.encoders, x, detach=True)
        q_w = experts_of(kind, model.private_encoders, x, detach=True)
    lws = []
    for j, m in enumerate(NAMES):
        recon = sum(masked_loglik(model, n, x, c[j], w[j] if n == m else w_aux[i]) for i, n in enumerate(NAMES))
        if learn_prior:
            log_p = latent(kind, torch.zeros(D + P), model.extra["prior"].logvar[0]).log_prob(
                torch.cat([c[j], w[j]], -1)).sum(-1)
        else:
            log_p = unit_prior(kind, D).log_prob(c[j]).sum(-1) + unit_prior(kind, P).log_prob(w[j]).sum(-1)
        log_q = log_mixture(q_c, c[j]) + q_w[m].log_prob(w[j]).sum(-1)
        lws.append(recon + BETA * (log_p - log_q))
    return samples, torch.stack(lws)


def mmvae_plus_noise(kind):
    g = generator()                                  # c of every expert, then w of every expert, then r_n's draws
    return [unit_noise(kind, (M, K, B, d), g) for d in (D, P, P)]


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
@pytest.mark.parametrize("kind, learn_prior", [("gaussian", False), ("gaussian", True), ("laplace", False),
                                               ("laplace", True)])
def test_mmvae_plus_value_is_the_stratified_bound_with_private_latents_and_auxiliary_priors(kind, learn_prior,
                                                                                           estimator):
    model, x = mmvae_plus_model(kind, learn_prior)
    with torch.set_grad_enabled(estimator == "dreg"):
        out = run(model, x, estimator=estimator)
    _, lw = mmvae_plus_reference(model, x, kind, learn_prior, mmvae_plus_noise(kind))
    bound = stratified_bound(lw)
    assert close(out.terms["iwae"], bound)
    if estimator == "iwae":
        assert close(out.loss, -bound)


@pytest.mark.parametrize("kind, learn_prior", [("gaussian", False), ("laplace", True)])
def test_mmvae_plus_dreg_gradients_are_the_doubly_reparameterised_ones(kind, learn_prior):
    """DReG's w~^2 on the paths through the samples of q (c and w_m); r_n's samples w~_n are not drawn from q
    (they are in no density ratio): their path gets the plain importance weight w~, as a decoder's."""
    model, x = mmvae_plus_model(kind, learn_prior)
    got = package_gradients(model, x)
    noise = mmvae_plus_noise(kind)

    def draw():
        return mmvae_plus_reference(model, x, kind, learn_prior, noise)[0]

    def log_weights(leaves):
        return mmvae_plus_reference(model, x, kind, learn_prior, noise, detach_q=True, samples=leaves)[1]

    want = dreg_gradients(model, draw, log_weights, n_from_q=2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(float(g.abs().sum()) > 0 for n, g in zip(names, want) if n.startswith("extra.aux_prior"))
    for name, a, b in zip(names, got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


# ----------------------------------------------------------------------------- DMVAE (Lee & Pavlovic 2021)
def one_sample_kl(z, mu, logvar):
    """log q(z|x) - log p(z) at the sample: the one-sample estimate of KL(q || N(0, I)), (B,)."""
    return normal(mu, logvar).log_prob(z).sum(-1) - Normal(0.0, 1.0).log_prob(z).sum(-1)


def tc_regulariser(z, mu, logvar, rows, weights, dataset_size):
    """alpha MI + beta_tc TC + gamma dimension-wise KL (beta-TCVAE, Chen et al. 2018) at each row's sample,
    log q(z_i) and log q(z_id) by minibatch-weighted sampling over the rows R that have the expert:
    log q(z_i) ~ logsumexp_{j in R} log q(z_i|x_j) - log(N |R|); 0 on the other rows."""
    alpha, beta_tc, gamma = weights
    idx = rows.nonzero()[:, 0].tolist()
    norm = math.log(len(idx) * (dataset_size or 1))      # no data-set size: the batch is the data set (docstring)
    out = []
    for i in range(z.shape[0]):
        if i not in idx:
            out.append(torch.zeros(()))
            continue
        per_dim = normal(mu[idx], logvar[idx]).log_prob(z[i])           # log q(z_id | x_j): (|R|, D)
        log_qz = torch.logsumexp(per_dim.sum(-1), 0) - norm
        log_marginals = (torch.logsumexp(per_dim, 0) - norm).sum()
        log_q = normal(mu[i], logvar[i]).log_prob(z[i]).sum()
        log_p = Normal(0.0, 1.0).log_prob(z[i]).sum()
        out.append(alpha * (log_q - log_qz) + beta_tc * (log_qz - log_marginals) + gamma * (log_marginals - log_p))
    return torch.stack(out)


@pytest.mark.parametrize("weights, dataset_size", [((1.0, 1.0, 1.0), None), ((1.0, 1.0, 1.0), 50),
                                                   ((1.0, 2.0, 1.0), 50), ((1.0, 2.0, 1.0), None),
                                                   ((0.5, 2.0, 1.5), 50)])
def test_dmvae_lee_elbos_of_the_poe_and_every_expert_with_the_tc_decomposition(weights, dataset_size):
    """sum over the experts e in {O} u O of the ELBO
    E[sum_{n in O} lambda_n log p(x_n | c_e, s_n)] - beta R(q_e(c)) - beta sum_{n in O} R(q(s_n|x_n)),
    q_{O} = PoE(p(c), q(c|x_m) for m in O): every expert's ELBO holds the private terms of the modalities
    it reconstructs, as the paper's per-expert ELBOs (and the reference code, MultiVae), so each R(q(s_n|x_n))
    counts |O| + 1 times. One draw of each s_n serves every expert. With unit weights R is the one-sample
    log q(z|x) - log p(z)."""
    alpha, beta_tc, gamma = weights
    model, x = build("dmvae_lee", private_dim=P, mi_weight=alpha, tc_weight=beta_tc, dim_kl_weight=gamma,
                     dataset_size=dataset_size)
    out = run(model, x)
    g = generator()                                     # s of every modality, then c of the PoE, a, b, c
    s_noise = torch.randn(M, B, P, generator=g)
    c_noise = [torch.randn(B, D, generator=g) for _ in range(1 + M)]
    q = gaussian_experts(model.encoders, x)
    q_s = gaussian_experts(model.private_encoders, x)
    s = {n: q_s[n][0] + torch.exp(0.5 * q_s[n][1]) * s_noise[j] for j, n in enumerate(NAMES)}
    joint = [poe(row_experts(q, b, observed(b)), with_prior=True) for b in range(B)]
    shared = [(torch.stack([p[0] for p in joint]), torch.stack([p[1] for p in joint]), MASK.any(1))]
    shared += [(*q[n], MASK[:, j]) for j, n in enumerate(NAMES)]

    def regulariser(z, mu, logvar, rows):
        if weights == (1.0, 1.0, 1.0):
            return torch.where(rows, one_sample_kl(z, mu, logvar), torch.zeros(()))
        return tc_regulariser(z, mu, logvar, rows, weights, dataset_size)

    private = sum(regulariser(s[n], *q_s[n], MASK[:, j]) for j, n in enumerate(NAMES))   # sum_{n in O} R(q(s_n|x_n))
    recon, reg = torch.zeros(B), torch.zeros(B)
    for (mu, logvar, rows), noise in zip(shared, c_noise):
        c = mu + torch.exp(0.5 * logvar) * noise
        from_e = sum(masked_loglik(model, n, x, c, s[n]) for n in NAMES)
        recon = recon + torch.where(rows, from_e, torch.zeros(()))
        reg = reg + regulariser(c, mu, logvar, rows) + torch.where(rows, private, torch.zeros(()))
    assert close(out.terms["recon"], recon)
    assert close(out.terms["regulariser"], reg)
    assert close(out.loss, -(recon - BETA * reg))
