"""The temporal family with private states (temporal_ms): the state layout, the per-dimension product,
the memory of a withheld stream, the objective by hand, the live filter, bundles and warm starts."""
import torch

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, load_bundle, save_bundle
from mdgm_ros.core.engine import filter as tp
from mdgm_ros.core.engine.export import export_parts
from mdgm_ros.core.engine.inference import Fuser
from mdgm_ros.core.families.temporal import TRANSITION, sequence_objective, state_dim
from mdgm_ros.core.model import posterior as post
from mdgm_ros.training.trainer import widened_inputs

D, P, M = 4, 2, 3


def private_model(**options):
    torch.manual_seed(0)
    specs = tuple(ModalitySpec(f"m{j}", "vector", (6,), scale=0.3, hidden=(16,)) for j in range(M))
    return MultimodalVAE(ModelConfig(specs, latent_dim=D, family="temporal_ms", private_dim=P,
                                     family_options=options)).eval()


def sequences(batch=2, steps=6, p_present=0.6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = {f"m{j}": torch.randn(batch, steps, 6, generator=gen) for j in range(M)}
    return feats, torch.rand(batch, steps, M, generator=gen) < p_present


def block(j):
    return slice(D + j * P, D + (j + 1) * P)


def raw_experts(model, feats, mask):
    """Shared experts (M, B, D) and the private encoders' q(s_m | x_m) (M, B, P), straight from the nets."""
    mu, lv = model.experts(feats, mask)
    s = [model.private_encoders[n](feats[n]) for n in model.names]
    return mu[:M], lv[:M], torch.stack([a for a, _ in s]), torch.stack([b for _, b in s])


def test_the_state_is_the_shared_latent_then_one_private_block_per_modality():
    model = private_model()
    assert state_dim(model) == D + M * P and model.extra[TRANSITION].latent_dim == D + M * P
    state = tp.initial_state(model, 3)
    assert state.mean.shape == (3, D + M * P)
    parts = {part.stem: part for part in export_parts(model)}
    assert parts["onnx_transition"].args[0].shape[-1] == D + M * P      # ONNX: z -> the whole state


def test_an_expert_informs_the_shared_latent_and_only_its_own_private_block():
    model = private_model()
    feats, mask = sequences(batch=1, steps=1)
    only = torch.tensor([[[False, True, False]]])                       # m1 alone
    with torch.no_grad():
        step = tp.filter_sequence(model, feats, only)
        mu, lv, s_mu, s_lv = raw_experts(model, {n: x[:, 0] for n, x in feats.items()}, only[:, 0])
    prec = 1.0 + torch.exp(-s_lv[1])                                    # q(s_1 | x_1) times N(0, I)
    torch.testing.assert_close(step.mean[0, 0, block(1)], (torch.exp(-s_lv[1]) * s_mu[1] / prec)[0])
    torch.testing.assert_close(step.logvar[0, 0, block(1)], -torch.log(prec)[0])
    for j in (0, 2):                                                    # untouched: the prior N(0, I)
        assert torch.equal(step.mean[0, 0, block(j)], torch.zeros(P))
        assert torch.equal(step.logvar[0, 0, block(j)], torch.zeros(P))
    shared_prec = 1.0 + torch.exp(-lv[1])
    torch.testing.assert_close(step.mean[0, 0, :D], (torch.exp(-lv[1]) * mu[1] / shared_prec)[0])


def test_a_withheld_stream_keeps_its_private_state_while_the_others_move_the_shared_one():
    model = private_model()
    with torch.no_grad():                                               # a near-identity transition
        last = model.extra[TRANSITION].net[-1]
        last.bias[state_dim(model):] = -12.0
    feats, mask = sequences(batch=1, steps=8, p_present=1.0)
    mask[:, 3:, 0] = False                                              # m0 out from step 3 on
    with torch.no_grad():
        seq = tp.filter_sequence(model, feats, mask)
    remembered = seq.mean[0, 3:, block(0)]
    torch.testing.assert_close(remembered, seq.mean[0, 2, block(0)].expand_as(remembered), atol=1e-4, rtol=0)
    assert float((seq.mean[0, 3:, :D] - seq.mean[0, 2, :D]).abs().max()) > 1e-2    # the shared z moves on
    decoded = tp.decode_latents(model, seq.mean[0, 3:], ["m0"])["m0"].mean
    with torch.no_grad():
        direct = model.decode("m0", seq.mean[0, 3:, :D], seq.mean[0, 3:, block(0)])
    torch.testing.assert_close(decoded, direct)                         # m0 decoded from [z, s_0]


def test_the_one_step_objective_by_hand():
    model = private_model()
    feats, _ = sequences(batch=2, steps=1, p_present=1.0)
    mask = torch.tensor([[[True, False, True]], [[True, True, True]]])
    out = sequence_objective(model, feats, mask, beta=0.7, generator=torch.Generator().manual_seed(3),
                             p_full=1.0, p_empty=0.0, p_outage=0.0)
    frame = {n: x[:, 0] for n, x in feats.items()}
    with torch.no_grad():
        mu, lv, s_mu, s_lv = raw_experts(model, frame, mask[:, 0])
    expected = []
    for b in range(2):
        seen = [j for j in range(M) if mask[b, 0, j]]
        prec = 1.0 + sum(torch.exp(-lv[j, b]) for j in seen)
        q_mu = [sum(torch.exp(-lv[j, b]) * mu[j, b] for j in seen) / prec]
        q_prec = [prec]
        for j in range(M):
            p_j = 1.0 + (torch.exp(-s_lv[j, b]) if j in seen else 0.0)
            q_mu.append((torch.exp(-s_lv[j, b]) * s_mu[j, b] if j in seen else torch.zeros(P)) / p_j)
            q_prec.append(p_j * torch.ones(P))
        q_mu, q_prec = torch.cat(q_mu), torch.cat(q_prec)
        expected.append((q_mu, q_prec))
    gen = torch.Generator().manual_seed(3)
    q_mu = torch.stack([e[0] for e in expected])
    q_lv = -torch.log(torch.stack([e[1] for e in expected]))
    _ = torch.rand(2, generator=gen)                                   # the subset draw (p_full = 1)
    _ = post.sample_present_subsets(mask[:, 0], gen)
    z = post.reparameterize(q_mu, q_lv, generator=gen)
    kl = post.kl_to_standard_normal(q_mu, q_lv)
    recon = torch.zeros(2)
    with torch.no_grad():
        for j, name in enumerate(model.names):
            loglik = model.log_likelihood(name, frame[name], model.decode(name, z[:, :D], z[:, block(j)]))
            recon += torch.where(mask[:, 0, j], loglik * model.specs[name].weight, torch.zeros(2))
    torch.testing.assert_close(out.terms["kl"], kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.terms["recon"], recon, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.loss.detach(), -(recon - 0.7 * kl), rtol=1e-5, atol=1e-3)


def test_one_frame_through_the_fuser_is_the_first_filter_step():
    model = private_model()
    feats, mask = sequences(batch=1, steps=1)
    mask[0, 0] = torch.tensor([True, False, True])
    with torch.no_grad():
        seq = tp.filter_sequence(model, feats, mask)
    result = Fuser(model)({n: x[:, 0] for n, x in feats.items()}, mask[:, 0])
    torch.testing.assert_close(result.latent_mean, seq.mean[:, 0, :D])
    for j in (0, 2):
        torch.testing.assert_close(result.private_mean[f"m{j}"], seq.mean[:, 0, block(j)])


def test_the_live_filter_reports_every_private_state_on_every_step_and_matches_the_offline_filter():
    model = private_model()
    feats, mask = sequences(batch=1, steps=7)
    live = tp.TemporalFilter(model, anomaly=True, horizon=3)
    with torch.no_grad():
        offline = tp.filter_sequence(model, feats, mask)
        nll = tp.predictive_nll_sequence(model, feats, mask)
    for t in range(7):
        result = live({n: x[:, t] for n, x in feats.items()}, mask[:, t])
        torch.testing.assert_close(result.latent_mean, offline.mean[:, t, :D])
        assert set(result.private_mean) == set(model.names)              # missing ones: the remembered state
        for j, name in enumerate(model.names):
            torch.testing.assert_close(result.private_mean[name], offline.mean[:, t, block(j)])
        assert set(result.imputed) == {n for j, n in enumerate(model.names) if not mask[0, t, j]}
        assert torch.equal(torch.isnan(result.scores), ~mask[:, t])
        torch.testing.assert_close(result.scores[~torch.isnan(result.scores)], nll[:, t][mask[:, t]])
    assert result.predicted_mean.shape == (1, 3, D)                     # the shared latent's prediction


def test_bundle_round_trip_is_bit_identical(tmp_path):
    model = private_model(transition="gru")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loaded = load_bundle(save_bundle(tmp_path / "temporal_ms", model)).model
    assert loaded.config == model.config and loaded.private_dim == P
    original, again = model.state_dict(), loaded.state_dict()
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    feats, mask = sequences()
    with torch.no_grad():
        a, b = tp.filter_sequence(model, feats, mask), tp.filter_sequence(loaded, feats, mask)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.logvar, b.logvar)


def test_a_warm_start_widens_the_decoders_inputs_with_zeros():
    source = {"decoders.x.net.0.weight": torch.randn(5, D), "decoders.x.net.0.bias": torch.randn(5),
              "encoders.x.net.0.weight": torch.randn(5, 6)}
    own = {"decoders.x.net.0.weight": torch.randn(5, D + P), "decoders.x.net.0.bias": torch.randn(5),
           "encoders.x.net.0.weight": torch.randn(7, 6)}
    grown = widened_inputs(source, own)
    assert set(grown) == {"decoders.x.net.0.weight"}                    # only a layer that gained inputs
    assert torch.equal(grown["decoders.x.net.0.weight"][:, :D], source["decoders.x.net.0.weight"])
    assert torch.equal(grown["decoders.x.net.0.weight"][:, D:], torch.zeros(5, P))
