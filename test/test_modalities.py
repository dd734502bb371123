"""Modality specs, the audio front end and the encoder/decoder factories."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mdgm_ros.core import AudioOptions, ModalitySpec, ModelConfig, Normalization, SpecError, default_robot_modalities
from mdgm_ros.core.model.networks import LogMelFrontEnd, build_decoder, build_encoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Cam", "kind": "image", "shape": (3, 8, 8)}, "name"),
    ({"name": "cam", "kind": "lidar", "shape": (3, 8, 8)}, "kind"),
    ({"name": "cam", "kind": "image", "shape": (3, 10, 8)}, "multiples of 8"),
    ({"name": "cam", "kind": "image", "shape": (8, 8)}, "3 dims"),
    ({"name": "j", "kind": "vector", "shape": (4,), "likelihood": "poisson"}, "likelihood"),
    ({"name": "j", "kind": "vector", "shape": (4,), "scale": 0.0}, "scale"),
    ({"name": "j", "kind": "vector", "shape": (4,), "weight": -1.0}, "weight"),
    ({"name": "a", "kind": "audio", "shape": (800,), "likelihood": "bernoulli"}, "log-mel"),
    ({"name": "j", "kind": "vector", "shape": (4,), "audio": AudioOptions()}, "audio options"),
])
def test_invalid_specs_name_the_problem(kwargs, message):
    with pytest.raises(SpecError, match=message):
        ModalitySpec(**kwargs)


def test_spec_round_trip_and_unknown_fields():
    for spec in default_robot_modalities():
        assert ModalitySpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="unknown field 'colour'"):
        ModalitySpec.from_dict({"name": "j", "kind": "vector", "shape": [3], "colour": "red"})
    with pytest.raises(SpecError, match="unique"):
        ModelConfig(tuple(default_robot_modalities()) * 2)


def test_normalization_must_broadcast_and_be_positive():
    spec = ModalitySpec("j", "vector", (4,))
    spec.with_normalization(Normalization(np.zeros(4), np.ones(4)))
    with pytest.raises(SpecError, match="broadcast"):
        spec.with_normalization(Normalization(np.zeros(5), np.ones(5)))
    with pytest.raises(SpecError, match="std > 0"):
        Normalization(np.zeros(4), np.zeros(4))


def test_shipped_model_config_is_the_default_robot_model():
    config = ModelConfig.from_dict(yaml.safe_load((ROOT / "config" / "model.yaml").read_text()))
    assert config.modalities == tuple(default_robot_modalities())
    assert config.fusion == "poe" and config.latent_dim == 16


def test_log_mel_front_end_finds_the_tone():
    opts = AudioOptions(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32)
    front = LogMelFrontEnd(opts)
    t = torch.arange(8000) / 16000
    low = front(torch.sin(2 * torch.pi * 300 * t))
    high = front(torch.sin(2 * torch.pi * 3000 * t))
    assert low.shape == (32, opts.frames(8000)) == (32, 32)
    assert int(low.mean(1).argmax()) < int(high.mean(1).argmax())
    loud = front(0.5 * torch.sin(2 * torch.pi * 300 * t))
    quiet = front(0.05 * torch.sin(2 * torch.pi * 300 * t))
    assert float((loud - quiet).mean(1).max()) == pytest.approx(2 * np.log(10), rel=0.05)  # power ratio 100
    batched = front(torch.stack([torch.sin(2 * torch.pi * 300 * t)] * 2).unsqueeze(0))
    assert batched.shape == (1, 2, 32, 32)


@pytest.mark.parametrize("spec", default_robot_modalities() + [
    ModalitySpec("small_cam", "image", (1, 8, 8), likelihood="bernoulli"),
    ModalitySpec("wide_cam", "image", (3, 48, 64), likelihood="laplace"),
], ids=lambda s: s.name)
def test_encoders_and_decoders_shapes_with_leading_dims(spec):
    encoder, decoder = build_encoder(spec, 6), build_decoder(spec, 6)
    feats = torch.randn(5, *spec.feature_shape)
    mu, logvar = encoder(feats)
    assert mu.shape == logvar.shape == (5, 6)
    assert decoder(torch.randn(5, 6)).shape == (5, *spec.feature_shape)
    assert decoder(torch.randn(3, 5, 6)).shape == (3, 5, *spec.feature_shape)
    assert decoder(torch.randn(2, 3, 5, 6)).shape == (2, 3, 5, *spec.feature_shape)
