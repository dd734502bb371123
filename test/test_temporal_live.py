"""The live temporal step at batch 1: the closed-form path equals the generic masked filter."""
import pytest
import torch
from test_temporal import random_sequences, temporal_model

from mdgm_ros.core.engine import filter as tp
from mdgm_ros.core.families.temporal import TRANSITION


def _calibration(model):
    names = model.names
    return tp.AnomalyCalibration({n: 0.5 for n in names}, {n: 2.0 for n in names},
                                 {**{n: 1.0 for n in names}, "total": 1.5})


@pytest.mark.parametrize("transition, private_dim", [("mlp", 0), ("gru", 0), ("mlp", 3)])
def test_closed_form_step_equals_the_generic_filter_step(transition, private_dim):
    model = temporal_model(n_mod=4, action_dim=2, transition=transition, private_dim=private_dim).double()
    with torch.no_grad():
        for p in model.extra[TRANSITION].parameters():          # a transition that is not the identity
            p.add_(0.3 * torch.randn_like(p))
    feats, mask = random_sequences(model, batch=1, steps=12, p_present=0.6, seed=3)
    feats = {n: x.double() for n, x in feats.items()}
    mask[0, 0] = False                                          # a first step with nothing observed
    mask[0, 5:7] = False                                        # an outage of everything
    actions, future = torch.randn(1, 12, 2).double(), torch.randn(1, 3, 2).double()
    fast = tp.TemporalFilter(model, _calibration(model), horizon=3)
    generic = tp.TemporalFilter(model, _calibration(model), horizon=3)
    generic.closed_form = False
    for t in range(12):
        raw = {n: x[:, t] for n, x in feats.items() if bool(mask[0, t, model.names.index(n)])}
        a = fast(raw, mask[:, t], actions[:, t], future)
        b = generic(raw, mask[:, t], actions[:, t], future)
        assert set(a.private_mean) == set(b.private_mean) == (set(model.names) if private_dim else set())
        for name in a.private_mean:
            torch.testing.assert_close(a.private_mean[name], b.private_mean[name], atol=1e-6, rtol=1e-6)
        for x, y in [(a.latent_mean, b.latent_mean), (a.latent_std, b.latent_std),
                     (a.predicted_mean, b.predicted_mean), (a.predicted_std, b.predicted_std),
                     (fast.state.mean, generic.state.mean), (fast.state.logvar, generic.state.logvar)]:
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-6, equal_nan=True)
        torch.testing.assert_close(a.total_score, b.total_score, atol=1e-6, rtol=1e-6, equal_nan=True)
        assert set(a.imputed) == set(b.imputed)
        for name in a.imputed:
            torch.testing.assert_close(a.imputed[name].mean, b.imputed[name].mean, atol=1e-6, rtol=1e-6)
    assert fast.steps == 12


def test_the_latent_hook_runs_before_the_decoders_and_can_stop_the_step():
    model = temporal_model()
    feats, mask = random_sequences(model, batch=1, steps=2, p_present=1.0)
    live = tp.TemporalFilter(model, horizon=2)
    seen = []
    out = live({n: x[:, 0] for n, x in feats.items()}, mask[:, 0],
               on_latent=lambda r: seen.append((r.latent_mean.clone(), dict(r.imputed), r.scores)) or False)
    assert out is None and len(seen) == 1
    assert seen[0][1] == {} and seen[0][2] is None               # nothing decoded yet when the hook ran
    assert bool(live.state.started.all())                        # the state still advanced
    torch.testing.assert_close(live.state.mean, seen[0][0])
    live.reset()
    assert live.steps == 0 and not bool(live.state.started.any())


@pytest.mark.parametrize("private_dim", [0, 3])
def test_an_expert_far_more_precise_than_the_prediction_leaves_finite_scores_in_float32(private_dim):
    """Experts at the largest precision (log-variance -10) after a prediction at the smallest (+10):
    leaving one expert out must not subtract it from the total (in float32 that is 0 / 0); the scores
    are finite and equal the generic masked filter's."""
    model = temporal_model(n_mod=3, private_dim=private_dim)
    with torch.no_grad():
        heads = [model.encoders[n].head for n in model.names]
        heads += [model.private_encoders[n].head for n in model.names] if private_dim else []
        for head in heads:
            head.bias[head.bias.shape[0] // 2:] = -30.0                    # log-variances clamp at -10
    feats, mask = random_sequences(model, batch=1, steps=3, p_present=1.0, seed=5)
    fast = tp.TemporalFilter(model, _calibration(model))
    generic = tp.TemporalFilter(model, _calibration(model))
    generic.closed_form = False
    wide = tp.FilterState(torch.zeros_like(fast.state.mean), torch.full_like(fast.state.logvar, 10.0),
                          torch.ones_like(fast.state.started))
    fast.state = generic.state = wide
    for t in range(3):
        raw = {n: x[:, t] for n, x in feats.items()}
        a, b = fast(raw, mask[:, t]), generic(raw, mask[:, t])
        assert torch.isfinite(a.scores).all() and torch.isfinite(a.total_score).all(), a.scores
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-3, atol=1e-3)


def test_with_private_states_the_latent_is_out_before_any_private_encoder_runs():
    """The shared z goes to the hook from the shared experts alone (the same numbers as the whole
    state's first dimensions); the private encoders run after it, also when the hook stops the step."""
    model = temporal_model(n_mod=3, private_dim=2)
    feats, mask = random_sequences(model, batch=1, steps=3, p_present=1.0, seed=2)
    calls: list[str] = []
    for name in model.names:
        model.private_encoders[name].register_forward_hook(lambda *_, n=name: calls.append(n))
    live = tp.TemporalFilter(model, _calibration(model))
    seen = []

    def hook(result):
        seen.append((list(calls), result.latent_mean.clone(), result.latent_std.clone(), dict(result.private_mean)))

    for t in range(2):
        calls.clear()
        out = live({n: x[:, t] for n, x in feats.items()}, mask[:, t], on_latent=hook)
        before, z_mean, z_std, private = seen[-1]
        assert before == [] and private == {} and sorted(calls) == sorted(model.names)
        assert torch.equal(z_mean, out.latent_mean) and torch.equal(z_std, out.latent_std)
        assert torch.equal(out.latent_mean, live.state.mean[:, :model.latent_dim])
        assert set(out.private_mean) == set(model.names)
    calls.clear()
    stopped = live({n: x[:, 2] for n, x in feats.items()}, mask[:, 2], on_latent=lambda r: False)
    assert stopped is None and sorted(calls) == sorted(model.names)     # the state still advanced whole
    assert live.steps == 3
