"""A short training of the temporal family on synthetic sequences with a slow hidden factor: imputation
with memory beats "repeat the last value" and the per-frame MoPoE model; prediction beats "nothing
changes"."""
import pytest
import torch

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, impute, train_sequences
from mdgm_ros.core.engine import filter as tp
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine.synthetic_sequences import make_sequences

SPECS = (ModalitySpec("joints", "vector", (8,), scale=0.3, learn_scale=True, hidden=(32, 32)),
         ModalitySpec("pose", "vector", (6,), scale=0.3, learn_scale=True, hidden=(32, 32)),
         ModalitySpec("tactile", "tactile", (2, 4, 4), scale=0.3, learn_scale=True, hidden=(8, 32)))
STEPS, EPOCHS = 24, 30


def build(objective, **kw):
    torch.manual_seed(0)
    return MultimodalVAE(ModelConfig(SPECS, latent_dim=6, family=objective, **kw))


def frames(model, data):
    n, steps = data.mask.shape[:2]
    raw = {k: v.reshape(n * steps, *v.shape[2:]) for k, v in data.raw.items()}
    return training.raw_to_features(model, raw), torch.from_numpy(data.mask.reshape(n * steps, -1))


def as_sequences(flat, n):
    return {k: v.reshape(n, STEPS, *v.shape[1:]) for k, v in flat.items()}


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    temporal = build("temporal", family_options={"transition_hidden": 64})
    per_frame = build("mopoe")
    data = make_sequences(SPECS, 128, STEPS, seed=0, missing_rate=0.1, outage_prob=0.3, max_outage=10)
    feats, mask = frames(temporal, data)
    training.fit_normalization(temporal, feats, mask)
    for name in temporal.names:
        per_frame.set_normalization(name, temporal.specs[name].normalization)
    feats = training.normalize_features(temporal, feats)
    beta = training.BetaSchedule("linear", 0.0, 1.0, 200)
    history = train_sequences(temporal, as_sequences(feats, 128), mask.reshape(128, STEPS, -1),
                                 training.TrainConfig(epochs=EPOCHS, batch_size=32, lr=3e-3, beta=beta, seed=0))
    training.train(per_frame, feats, mask,
                   training.TrainConfig(epochs=EPOCHS, batch_size=128, lr=3e-3, beta=beta, seed=0))
    test = make_sequences(SPECS, 64, STEPS, seed=1)
    test_feats, _ = frames(temporal, test)
    return temporal, per_frame, training.normalize_features(temporal, test_feats), history


def mse(a, b):
    return float(((a - b) ** 2).mean())


def test_imputation_with_memory_beats_the_last_value_and_the_per_frame_model_on_the_slow_modality(trained):
    temporal, per_frame, flat, history = trained
    assert history[-1].train_loss < history[0].train_loss
    seq = as_sequences(flat, 64)
    j, start, stop = temporal.names.index("tactile"), STEPS // 2 - 4, STEPS // 2 + 4
    mask = torch.ones(64, STEPS, 3, dtype=torch.bool)
    mask[:, start:stop, j] = False                                   # an 8-step tactile outage
    truth = seq["tactile"][:, start:stop]
    with torch.no_grad():
        filtered = tp.impute_sequence(temporal, seq, mask, ["tactile"])["tactile"].mean[:, start:stop]
        smoothed = tp.impute_sequence(temporal, seq, mask, ["tactile"], lag=3)["tactile"].mean[:, start:stop]
        frame = impute(per_frame, flat, mask.reshape(-1, 3), ["tactile"])["tactile"].mean
    frame = frame.reshape(64, STEPS, 2, 4, 4)[:, start:stop]
    last = seq["tactile"][:, start - 1:start].expand_as(truth)
    errors = {"filtered": mse(filtered, truth), "smoothed": mse(smoothed, truth), "last": mse(last, truth),
              "per_frame": mse(frame, truth)}
    assert errors["filtered"] < 0.8 * min(errors["last"], errors["per_frame"]), errors
    assert errors["smoothed"] < 0.8 * min(errors["last"], errors["per_frame"]), errors


def test_one_step_latent_and_ten_step_joint_predictions_beat_nothing_changes(trained):
    temporal, _, flat, _ = trained
    seq = as_sequences(flat, 64)
    full = torch.ones(64, STEPS, 3, dtype=torch.bool)
    half = STEPS // 2
    with torch.no_grad():
        filtered = tp.filter_sequence(temporal, seq, full)
        predicted = mse(filtered.prior_mean[:, 1:], filtered.mean[:, 1:])
        unchanged = mse(filtered.mean[:, :-1], filtered.mean[:, 1:])
        state = tp.filter_sequence(temporal, {k: v[:, :half] for k, v in seq.items()}, full[:, :half]).state
        ahead, _ = tp.predict_ahead(temporal, state, 10)
        joints = tp.decode_latents(temporal, ahead[:, -1], ["joints"])["joints"].mean
    assert predicted < 0.7 * unchanged, (predicted, unchanged)
    truth = seq["joints"][:, half + 9]
    assert mse(joints, truth) < 0.5 * mse(seq["joints"][:, half - 1], truth)
