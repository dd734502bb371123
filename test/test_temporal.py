"""Temporal family: the filter's maths (prior, Kalman, RTS), the live state, actions, bundles."""
import math

import pytest
import torch
from conftest import LinearDecoder, LinearExpert
from torch import nn

from mdgm_ros.core import (
    ModalitySpec,
    ModelConfig,
    MultimodalVAE,
    SpecError,
    compute_objective,
    load_bundle,
    save_bundle,
)
from mdgm_ros.core.engine import filter as tp
from mdgm_ros.core.families import FamilyError
from mdgm_ros.core.families.temporal import TRANSITION, sequence_objective


def vector_specs(n_mod=3, dim=6):
    return tuple(ModalitySpec(f"m{j}", "vector", (dim,), scale=0.3, hidden=(16,)) for j in range(n_mod))


def temporal_model(n_mod=3, latent_dim=4, private_dim=0, **options):
    """The temporal family; with ``private_dim`` the temporal_ms family (a private state per modality)."""
    torch.manual_seed(0)
    objective = "temporal_ms" if private_dim else "temporal"
    return MultimodalVAE(ModelConfig(vector_specs(n_mod), latent_dim=latent_dim, family=objective,
                                     family_options=options, private_dim=private_dim or None)).eval()


def random_sequences(model, batch=3, steps=6, p_present=0.6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = {n: torch.randn(batch, steps, *model.specs[n].feature_shape, generator=gen) for n in model.names}
    mask = torch.rand(batch, steps, len(model.names), generator=gen) < p_present
    return feats, mask


# ----------------------------------------------------------------------------- the filter with no expert
def test_filter_without_experts_is_the_transition_prior():
    model = temporal_model()
    with torch.no_grad():
        for p in model.extra[TRANSITION].parameters():        # a transition that is not the identity
            p.add_(0.3 * torch.randn_like(p))
        feats, mask = random_sequences(model, steps=8)
        mask[:, 3:6] = False                                    # three steps with nothing observed
        mask[1, 0] = False                                      # a first step with nothing observed
        seq = tp.filter_sequence(model, feats, mask)
        none = ~mask.any(2)
        assert torch.equal(seq.mean[none], seq.prior_mean[none])
        assert torch.allclose(seq.logvar[none], seq.prior_logvar[none], atol=1e-6)
        assert torch.equal(seq.mean[1, 0], torch.zeros(4)) and torch.equal(seq.logvar[1, 0], torch.zeros(4))
        # the live step: the empty set gives the prediction p(z_t | past)
        state = seq.state
        step = tp.filter_step(model, state, {}, torch.zeros(3, 3, dtype=torch.bool))
        prior = tp.predict(model, state)
        assert torch.equal(step.mean, prior.mean) and torch.allclose(step.logvar, prior.logvar, atol=1e-6)
        assert not torch.equal(prior.mean, state.mean)          # the transition moved it


def test_a_single_frame_is_the_per_frame_poe_with_the_standard_prior():
    model = temporal_model()
    feats, mask = random_sequences(model, steps=1)
    frame = {n: x[:, 0] for n, x in feats.items()}
    with torch.no_grad():
        seq = tp.filter_sequence(model, feats, mask)
        mu, logvar = model.experts(model.complete(frame, mask[:, 0]), mask[:, 0])
        q_mu, q_lv = model.posterior_summary(mu, logvar, mask[:, 0])
    assert torch.allclose(seq.mean[:, 0], q_mu, atol=1e-6) and torch.allclose(seq.logvar[:, 0], q_lv, atol=1e-6)


# ----------------------------------------------------------------------------- linear-Gaussian = Kalman
class LinearTransition(nn.Module):
    """z_t = a * z_{t-1} + g * u_t + c + N(0, diag(q))."""

    def __init__(self, a, g, c, q):
        super().__init__()
        self.a, self.g, self.c, self.q = a, g, c, q

    def forward(self, z, action=None):
        mean = self.a * z + self.c + (0 if action is None else self.g * action)
        return mean, torch.log(self.q).expand_as(mean)


class LinearStateSpace:
    """Two 3-d modalities x_m = w_m * z + b_m + N(0, s_m^2) over a 3-d linear-Gaussian state with a 3-d
    action input; the temporal model built from the same numbers."""

    scales = {"a": 0.5, "b": 0.8}

    def __init__(self, seed=5):
        gen = torch.Generator().manual_seed(seed)
        rand = lambda lo, hi: lo + (hi - lo) * torch.rand(3, dtype=torch.float64, generator=gen)  # noqa: E731
        specs = tuple(ModalitySpec(n, "vector", (3,), scale=s) for n, s in self.scales.items())
        config = ModelConfig(specs, latent_dim=3, family="temporal", family_options={"action_dim": 3})
        self.model = MultimodalVAE(config).double().eval()
        self.obs = {}
        for name, s in self.scales.items():
            w, b = rand(0.5, 1.5), rand(-1, 1)
            expert = LinearExpert(w, b, s)
            self.model.encoders[name], self.model.decoders[name] = expert, LinearDecoder(expert)
            self.model.log_scales[name].data = torch.tensor(math.log(s), dtype=torch.float64)
            self.obs[name] = (w, b, s)
        self.a, self.g, self.c, self.q = rand(-1.1, 1.1), rand(-1, 1), rand(-0.5, 0.5), rand(0.05, 0.5)
        self.model.extra[TRANSITION] = LinearTransition(self.a, self.g, self.c, self.q)

    def sample(self, batch, steps, gen):
        randn = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen)  # noqa: E731
        actions = randn(batch, steps, 3)
        z = [randn(batch, 3)]
        for t in range(1, steps):
            z.append(self.a * z[-1] + self.g * actions[:, t] + self.c + self.q.sqrt() * randn(batch, 3))
        z = torch.stack(z, 1)
        feats = {n: w * z + b + s * randn(batch, steps, 3) for n, (w, b, s) in self.obs.items()}
        return feats, actions

    def kalman(self, x, u, observed):
        """Textbook Kalman filter with full matrices, one sequence: predictions and posteriors."""
        eye = torch.eye(3, dtype=torch.float64)
        m, P = torch.zeros(3, dtype=torch.float64), eye.clone()
        A, G, Q = torch.diag(self.a), torch.diag(self.g), torch.diag(self.q)
        out = []
        for t in range(len(u)):
            if t > 0:
                m, P = A @ m + G @ u[t] + self.c, A @ P @ A.T + Q
            pred = (m, P)
            m, P = self.update(m, P, x, t, observed[t])
            out.append((pred, (m, P)))
        return out

    def update(self, m, P, x, t, observed):
        names = [n for j, n in enumerate(self.obs) if observed[j]]
        if not names:
            return m, P
        H = torch.cat([torch.diag(self.obs[n][0]) for n in names])
        R = torch.diag(torch.cat([torch.full((3,), self.obs[n][2] ** 2, dtype=torch.float64) for n in names]))
        y = torch.cat([x[n][t] - self.obs[n][1] for n in names])
        K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + R)
        return m + K @ (y - H @ m), (torch.eye(3, dtype=torch.float64) - K @ H) @ P

    def rts(self, run, lag, t_end):
        """Smoothed (mean, cov) of every step <= t_end from the filter run, given observations <= t_end."""
        m, P = run[t_end][1]
        out = {t_end: (m, P)}
        A = torch.diag(self.a)
        for t in range(t_end - 1, -1, -1):
            mf, Pf = run[t][1]
            mp, Pp = run[t + 1][0]
            J = Pf @ A.T @ torch.linalg.inv(Pp)
            m, P = mf + J @ (m - mp), Pf + J @ (P - Pp) @ J.T
            out[t] = (m, P)
        return out


def close(actual, expected, tol=1e-5):
    assert float((actual - expected).abs().max()) < tol, float((actual - expected).abs().max())


def test_linear_gaussian_filter_and_smoother_match_a_kalman_filter_with_random_missing_modalities():
    lgs = LinearStateSpace()
    gen = torch.Generator().manual_seed(11)
    batch, steps = 4, 20
    feats, actions = lgs.sample(batch, steps, gen)
    mask = torch.rand(batch, steps, 2, generator=gen) < 0.6
    mask[0, 5:9] = False                                               # an outage of everything
    mask[2, 0] = False
    with torch.no_grad():
        seq = tp.filter_sequence(lgs.model, feats, mask, actions)
        smoothed = {lag: tp.smooth_fixed_lag(seq, lag) for lag in (0, 2, steps)}
    for i in range(batch):
        run = lgs.kalman({n: x[i] for n, x in feats.items()}, actions[i], mask[i])
        for t, ((mp, Pp), (m, P)) in enumerate(run):
            close(seq.prior_mean[i, t], mp)
            close(seq.prior_logvar[i, t].exp(), torch.diagonal(Pp))
            close(seq.mean[i, t], m)
            close(seq.logvar[i, t].exp(), torch.diagonal(P))
            close(P - torch.diag(torch.diagonal(P)), torch.zeros(3, 3))   # diagonal: nothing dropped
        full = lgs.rts(run, steps, steps - 1)
        for lag, (s_mean, s_logvar) in smoothed.items():
            for t in range(steps):
                m, P = (lgs.rts(run, lag, min(t + lag, steps - 1))[t] if lag < steps else full[t])
                close(s_mean[i, t], m)
                close(s_logvar[i, t].exp(), torch.diagonal(P))


def test_predictive_nll_is_the_leave_one_out_kalman_update_from_the_prediction():
    lgs = LinearStateSpace(seed=6)
    gen = torch.Generator().manual_seed(12)
    feats, actions = lgs.sample(2, 10, gen)
    mask = torch.rand(2, 10, 2, generator=gen) < 0.7
    with torch.no_grad():
        nll = tp.predictive_nll_sequence(lgs.model, feats, mask, actions)
    for i in range(2):
        x = {n: v[i] for n, v in feats.items()}
        run = lgs.kalman(x, actions[i], mask[i])
        for t, ((mp, Pp), _) in enumerate(run):
            for j, name in enumerate(lgs.obs):
                if not mask[i, t, j]:
                    assert math.isnan(float(nll[i, t, j]))
                    continue
                others = mask[i, t].clone()
                others[j] = False
                z, _ = lgs.update(mp, Pp, x, t, others)
                w, b, s = lgs.obs[name]
                expected = -torch.distributions.Normal(w * z + b, s).log_prob(x[name][t]).sum()
                close(nll[i, t, j], expected)


# ----------------------------------------------------------------------------- the live state
def test_the_live_filter_keeps_its_state_and_matches_the_offline_filter():
    model = temporal_model(action_dim=2)
    feats, mask = random_sequences(model, batch=2, steps=7)
    actions = torch.randn(2, 7, 2)
    live = tp.TemporalFilter(model, anomaly=True, horizon=3, batch=2)
    with torch.no_grad():
        offline = tp.filter_sequence(model, feats, mask, actions)
        for t in range(7):
            raw = {n: x[:, t] for n, x in feats.items()}           # no normalisation: raw = features
            result = live(raw, mask[:, t], actions[:, t], future_actions=torch.zeros(2, 3, 2))
            close(result.latent_mean, offline.mean[:, t], 1e-5)
            close(result.latent_std, torch.exp(0.5 * offline.logvar[:, t]), 1e-5)
        assert result.predicted_mean.shape == (2, 3, 4) and torch.isfinite(result.predicted_std).all()
        # a stateless step (fresh state) gives another answer: the state carries the past
        fresh = tp.filter_step(model, tp.initial_state(model, 2), {n: x[:, 6] for n, x in feats.items()},
                               mask[:, 6], actions[:, 6])
        assert not torch.allclose(fresh.mean, offline.mean[:, 6], atol=1e-3)


@pytest.mark.parametrize("private_dim", [0, 2])
def test_a_filter_that_predicts_ahead_filters_exactly_as_one_that_does_not(private_dim):
    """The horizon's first step is the next step's prediction and is reused there: the filtered beliefs,
    scores and imputations are the same numbers with and without the horizon, also across a reset and
    where a step brings an action (then the prediction is made afresh)."""
    model = temporal_model(private_dim=private_dim)
    with torch.no_grad():
        for p in model.extra[TRANSITION].parameters():
            p.add_(0.2 * torch.randn_like(p))
    feats, mask = random_sequences(model, batch=1, steps=8, p_present=0.7)
    plain, ahead = tp.TemporalFilter(model), tp.TemporalFilter(model, horizon=4)
    for t in range(8):
        if t == 5:
            plain.reset()
            ahead.reset()
        raw = {n: x[:, t] for n, x in feats.items()}
        a, b = plain(raw, mask[:, t]), ahead(raw, mask[:, t])
        assert torch.equal(a.latent_mean, b.latent_mean) and torch.equal(a.latent_std, b.latent_std)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0, equal_nan=True)
        assert set(a.imputed) == set(b.imputed)
        assert all(torch.equal(a.imputed[n].mean, b.imputed[n].mean) for n in a.imputed)
        first = tp.propagate(model, ahead.state.mean, ahead.state.logvar)
        assert torch.equal(b.predicted_mean[:, 0], first.mean[:, :model.latent_dim])


def test_reset_forgets_the_past_of_the_chosen_rows_only():
    model = temporal_model()
    feats, mask = random_sequences(model, batch=2, steps=5, p_present=1.0)
    with torch.no_grad():
        state = tp.filter_sequence(model, feats, mask).state
        after = tp.predict(model, tp.reset_state(state, torch.tensor([True, False])))
        before = tp.predict(model, state)
    assert torch.equal(after.mean[0], torch.zeros(4)) and torch.equal(after.logvar[0], torch.zeros(4))
    assert torch.equal(after.mean[1], before.mean[1]) and not torch.equal(before.mean[0], after.mean[0])
    live = tp.TemporalFilter(model)
    live({n: x[:1, 0] for n, x in feats.items()}, mask[:1, 0])
    assert bool(live.state.started.all())
    live.reset()
    assert not bool(live.state.started.any())


def test_k_step_prediction_follows_the_transition():
    model = temporal_model()
    with torch.no_grad():
        for p in model.extra[TRANSITION].parameters():
            p.add_(0.2 * torch.randn_like(p))
        state = tp.FilterState(torch.randn(2, 4), torch.full((2, 4), -20.0), torch.ones(2, dtype=torch.bool))
        mean, logvar = tp.predict_ahead(model, state, 3)
        close(mean[:, 0], model.extra[TRANSITION](state.mean)[0], 1e-3)    # from a near-point belief
        for k in range(1, 3):                   # then each step propagates the previous prediction
            step = tp.propagate(model, mean[:, k - 1], logvar[:, k - 1])
            assert torch.equal(mean[:, k], step.mean) and torch.equal(logvar[:, k], step.logvar)
        assert (logvar[:, 1:] >= logvar[:, :-1] - 1e-6).all()       # uncertainty grows here
        decoded = tp.decode_latents(model, mean, ["m0"])["m0"]
    assert decoded.mean.shape == (2, 3, 6) and decoded.std.shape == (2, 3, 6)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        tp.predict_ahead(model, state, 0)


# ----------------------------------------------------------------------------- options, actions, errors
def test_actions_are_required_exactly_when_the_model_has_an_action_input():
    with_actions = temporal_model(action_dim=2)
    feats, mask = random_sequences(with_actions)
    with pytest.raises(ValueError, match=r"needs actions of shape \(3, 6, 2\), got None"):
        tp.filter_sequence(with_actions, feats, mask)
    without = temporal_model()
    with pytest.raises(ValueError, match="has no action input"):
        tp.filter_sequence(without, feats, mask, torch.zeros(3, 6, 2))
    with pytest.raises(SpecError, match="unknown"):
        temporal_model(horizon=3)
    with pytest.raises(SpecError, match="p_full and p_empty"):
        temporal_model(p_full=0.8, p_empty=0.5)
    per_frame = MultimodalVAE(ModelConfig(vector_specs(), latent_dim=4, family="mvae"))
    with pytest.raises(FamilyError, match="not a temporal model"):
        tp.TemporalFilter(per_frame)


def test_sequence_objective_is_finite_with_missing_steps_and_trains_the_transition():
    model = temporal_model(action_dim=1)
    model.train()
    feats, mask = random_sequences(model, batch=4, steps=6, p_present=0.5)
    mask[0] = False                                                    # a sequence with nothing observed
    out = sequence_objective(model, feats, mask, torch.randn(4, 6, 1), beta=0.5,
                             generator=torch.Generator().manual_seed(0))
    assert out.loss.shape == (4,) and torch.isfinite(out.loss).all() and float(out.loss[0].detach()) == 0.0
    out.loss.mean().backward()
    grads = [p.grad for p in model.extra[TRANSITION].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # the per-frame objective (sequences of length one) runs through the family registry
    frame = compute_objective(model, {n: x[:, 0] for n, x in feats.items()}, mask[:, 0])
    assert frame.loss.shape == (4,) and torch.isfinite(frame.loss).all()


# ----------------------------------------------------------------------------- bundles
def test_bundle_round_trip_is_bit_identical_and_keeps_the_transition(tmp_path):
    model = temporal_model(action_dim=2, transition_hidden=24)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loaded = load_bundle(save_bundle(tmp_path / "temporal", model)).model
    assert loaded.config == model.config and loaded.extra[TRANSITION].net[0].in_features == 6
    original, again = model.state_dict(), loaded.state_dict()
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    feats, mask = random_sequences(model)
    actions = torch.randn(3, 6, 2)
    with torch.no_grad():
        a, b = tp.filter_sequence(model, feats, mask, actions), tp.filter_sequence(loaded, feats, mask, actions)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.logvar, b.logvar)
