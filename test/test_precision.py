"""training.precision: mixed precision through the trainer's own step (bf16 autocast runs on CPU too)."""
from __future__ import annotations

import pytest
import torch
from conftest import prepared

from mdgm_ros.core import TrainConfig, Trainer
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.families import FAMILIES
from mdgm_ros.training.config import TrainError
from mdgm_ros.training.distributed import amp_dtype


def test_precision_names_resolve_per_device():
    cpu = torch.device("cpu")
    assert amp_dtype("fp32", cpu) is None and amp_dtype("auto", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(TrainError, match="fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)
    with pytest.raises(TrainError, match="training.precision"):
        amp_dtype("fp8", cpu)


def test_bf16_steps_train_and_stay_close_to_fp32(small_model_factory):
    losses = {}
    for amp in (None, torch.bfloat16):
        model = small_model_factory("mopoe")      # the default family; see the README for the others
        feats, mask, _ = prepared(model, 64, seed=0)
        training.fit_normalization(model, feats, mask)
        feats = training.normalize_features(model, feats)
        trainer = Trainer(model, TrainConfig(batch_size=64, lr=1e-2))
        trainer.amp = amp
        first = [p.detach().clone() for p in model.parameters()]
        losses[amp] = [float(trainer.train_step(feats, mask, None).loss.detach().float().mean()) for _ in range(5)]
        assert any(not torch.equal(a, b) for a, b in zip(first, model.parameters()))     # it trained
        assert all(p.dtype == torch.float32 for p in model.parameters())                # master weights
    fp32, bf16 = losses[None], losses[torch.bfloat16]
    assert bf16[-1] < bf16[0]
    assert abs(bf16[0] - fp32[0]) / abs(fp32[0]) < 0.05          # the same first step, to bf16 precision


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_takes_bf16_steps_with_and_without_missing_modalities(small_model_factory, family):
    """Samples come out of autocast in bf16: the likelihood sums, IWAE gradient hooks and subset
    bookkeeping must accept them (mvae on complete batches and the mmvae hooks did not)."""
    for missing_rate in (0.0, 0.3):
        model = small_model_factory(family)
        feats, mask, _ = prepared(model, 32, seed=1, missing_rate=missing_rate)
        training.fit_normalization(model, feats, mask)
        trainer = Trainer(model, TrainConfig(batch_size=32, lr=1e-3))
        trainer.amp = torch.bfloat16
        loss = trainer.train_step(training.normalize_features(model, feats), mask, None).loss
        assert bool(torch.isfinite(loss.detach().float()).all()), (family, missing_rate)
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_sequence_trainer_steps_through_the_same_mixed_precision_step():
    """The temporal family's windows go through Trainer.train_step (autocast, scaler, clipping), as the
    per-frame families do: a bf16 epoch trains, keeps fp32 weights and lands near the fp32 epoch."""
    from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE
    from mdgm_ros.core.engine.sequence import SequenceTrainer
    from mdgm_ros.core.engine.synthetic_sequences import make_sequences
    specs = (ModalitySpec("joints", "vector", (8,), hidden=(16,)),
             ModalitySpec("tactile", "tactile", (2, 4, 4), hidden=(8, 16)))
    losses = {}
    for amp in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = MultimodalVAE(ModelConfig(specs, latent_dim=4, family="temporal"))
        data = make_sequences(specs, 16, 8, seed=0, missing_rate=0.2)
        raw = {k: v.reshape(16 * 8, *v.shape[2:]) for k, v in data.raw.items()}
        feats = training.raw_to_features(model, raw)
        mask = torch.from_numpy(data.mask.reshape(16 * 8, -1))
        training.fit_normalization(model, feats, mask)
        trainer = SequenceTrainer(model, TrainConfig(batch_size=4, lr=1e-2, seed=0),
                                     torch.arange(16 * 8).reshape(16, 8))
        trainer.amp = amp
        losses[amp] = [trainer.run_epoch(training.normalize_features(model, feats), mask).train_loss
                       for _ in range(3)]
        assert trainer.step == 12 and all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[torch.bfloat16][-1] < losses[torch.bfloat16][0]
    assert abs(losses[torch.bfloat16][0] - losses[None][0]) / abs(losses[None][0]) < 0.05
    assert losses[torch.bfloat16][0] != losses[None][0]           # autocast did run (bf16 rounding)


def _close_in_bf16(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == torch.float32 and b.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=0.1, rtol=0.1, equal_nan=True)     # bf16 keeps ~3 digits


def test_the_fusion_step_runs_in_bf16_and_hands_back_float32(small_model_factory):
    """Fuser(amp=bfloat16), as fusion_node's precision parameter sets it: the networks run under
    autocast, the latent hook and the result see float32, and the numbers stay near the fp32 step."""
    from mdgm_ros.core import Fuser
    model = small_model_factory("mopoe")
    feats, mask, data = prepared(model, 4, seed=2)
    training.fit_normalization(model, feats, mask)
    raw = {n: torch.as_tensor(data.raw[n][:1]) for n in model.names[1:]}
    present = torch.tensor([[False] + [True] * (len(model.names) - 1)])
    hooked = []
    full = Fuser(model)(raw, present)
    half = Fuser(model, amp=torch.bfloat16)(raw, present, on_latent=lambda r: hooked.append(r.latent_mean.dtype))
    assert hooked == [torch.float32]
    for a, b in [(half.latent_mean, full.latent_mean), (half.latent_std, full.latent_std),
                 (half.scores, full.scores), (half.imputed[model.names[0]].mean, full.imputed[model.names[0]].mean)]:
        _close_in_bf16(a, b)
    assert not torch.equal(half.latent_mean, full.latent_mean)               # autocast did run


def test_the_temporal_filter_runs_in_bf16_and_keeps_its_memory_in_float32():
    from test_temporal import random_sequences, temporal_model

    from mdgm_ros.core.engine import filter as tp
    model = temporal_model()
    feats, mask = random_sequences(model, batch=1, steps=6, p_present=0.7, seed=4)
    full, half = tp.TemporalFilter(model, horizon=2), tp.TemporalFilter(model, horizon=2, amp=torch.bfloat16)
    for t in range(6):
        raw = {n: x[:, t] for n, x in feats.items() if bool(mask[0, t, model.names.index(n)])}
        a, b = half(raw, mask[:, t]), full(raw, mask[:, t])
        assert half.state.mean.dtype == half.state.logvar.dtype == torch.float32
        for x, y in [(a.latent_mean, b.latent_mean), (a.latent_std, b.latent_std),
                     (a.predicted_mean, b.predicted_mean)]:
            _close_in_bf16(x, y)
