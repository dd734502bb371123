"""Shared fixtures: small models, synthetic data and an exactly solvable linear-Gaussian model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mdgm_ros.core import AudioOptions, ModalitySpec, ModelConfig, MultimodalVAE
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine import synthetic


def small_specs() -> list[ModalitySpec]:
    """The four robot kinds at test-friendly sizes."""
    return [
        ModalitySpec("camera", "image", (3, 16, 16), scale=0.5, learn_scale=True),
        ModalitySpec("joints", "vector", (27,), scale=0.5, learn_scale=True),
        ModalitySpec("audio", "audio", (2048,), scale=0.5, learn_scale=True,
                     audio=AudioOptions(sample_rate=16000, n_fft=256, hop_length=128, n_mels=16)),
        ModalitySpec("tactile", "tactile", (2, 4, 4), scale=0.5, learn_scale=True),
    ]


def prepared(model: MultimodalVAE, n: int, seed: int, missing_rate: float = 0.0):
    """Synthetic data for ``model``: (normalised features, mask) after fitting normalisation."""
    data = synthetic.make_dataset(model.config.modalities, n, seed=seed, missing_rate=missing_rate)
    feats = training.raw_to_features(model, data.raw)
    mask = torch.from_numpy(data.mask)
    return feats, mask, data


@pytest.fixture
def small_model_factory():
    def make(family: str = "mvae", latent_dim: int = 8, **kw) -> MultimodalVAE:
        torch.manual_seed(0)
        return MultimodalVAE(ModelConfig(tuple(small_specs()), latent_dim=latent_dim, family=family, **kw))
    return make


class LinearExpert(nn.Module):
    """Exact likelihood factor of x = w * z + b + N(0, s^2) as a Gaussian in z: mean (x - b)/w,
    variance s^2 / w^2 (so the PoE with the prior is the exact posterior)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, s: float):
        super().__init__()
        self.w, self.b, self.s = nn.Parameter(w), nn.Parameter(b), s

    def forward(self, x):
        mu = (x - self.b) / self.w
        logvar = torch.log(self.s ** 2 / self.w ** 2).expand_as(mu)
        return mu, logvar


class LinearDecoder(nn.Module):
    def __init__(self, expert: LinearExpert):
        super().__init__()
        self.expert = expert

    def forward(self, z):
        return self.expert.w * z + self.expert.b


class LinearGaussian:
    """Two 3-d vector modalities x_m = w_m * z + b_m + N(0, s_m^2), z ~ N(0, I_3)."""

    def __init__(self, fusion_objective: str = "mvae"):
        torch.manual_seed(3)
        self.dim = 3
        self.scales = {"a": 0.5, "b": 0.8}
        specs = [ModalitySpec(n, "vector", (3,), scale=s) for n, s in self.scales.items()]
        self.model = MultimodalVAE(ModelConfig(tuple(specs), latent_dim=3, family=fusion_objective)).double()
        self.params = {}
        for name, s in self.scales.items():
            w = torch.rand(3, dtype=torch.float64) + 0.5
            b = torch.randn(3, dtype=torch.float64)
            expert = LinearExpert(w, b, s)
            self.model.encoders[name] = expert
            self.model.decoders[name] = LinearDecoder(expert)
            self.params[name] = (w.detach(), b.detach())
        self.model.log_scales["a"].data = torch.tensor(math.log(0.5), dtype=torch.float64)
        self.model.log_scales["b"].data = torch.tensor(math.log(0.8), dtype=torch.float64)

    def joint(self, names):
        ws = torch.cat([torch.diag(self.params[n][0]) for n in names])
        mean = torch.cat([self.params[n][1] for n in names])
        noise = torch.cat([torch.full((3,), self.scales[n] ** 2, dtype=torch.float64) for n in names])
        return torch.distributions.MultivariateNormal(mean, ws @ ws.T + torch.diag(noise))

    def sample(self, n: int):
        z = torch.randn(n, 3, dtype=torch.float64)
        return {name: self.params[name][0] * z + self.params[name][1]
                + self.scales[name] * torch.randn(n, 3, dtype=torch.float64) for name in self.scales}


@pytest.fixture
def linear_gaussian():
    return LinearGaussian()


@pytest.fixture(scope="session")
def sim_bag(tmp_path_factory):
    """A 16 s simulated bag (MCAP) with a camera blackout and a stream dropout, shared by the session."""
    from mdgm_ros.sim.record import simulate_to_bag

    path = tmp_path_factory.mktemp("bags") / "sim16"
    result = simulate_to_bag(path, 16.0, seed=3, faults="camera_blackout,stream_dropout", per_kind=1)
    return path, result


@pytest.fixture(scope="session")
def trained_bundle(sim_bag, tmp_path_factory):
    """A bundle trained for 2 epochs on ``sim_bag`` with the project's train command."""
    from mdgm_ros.training.trainer import run_training

    out = tmp_path_factory.mktemp("models") / "tiny"
    result = run_training([str(sim_bag[0])], "config/train.yaml", out, device="cpu",
                          overrides={"training.epochs": 2, "data.cache": False, "data.block_s": 3.0},
                          log=lambda m: None, show_bar=False)
    return out, result


@pytest.fixture
def ros_node():
    """(an rclpy node in this process, the environment of a private ROS domain for child processes)."""
    import rclpy

    from mdgm_ros.ros.processes import private_ros_env
    env = private_ros_env()
    rclpy.init()
    node = rclpy.create_node("test_client")
    try:
        yield node, env
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def assert_onnx_round_trip(parts, folder) -> None:
    """Export every part (:func:`mdgm_ros.core.engine.export.export_parts`) to ONNX in ``folder``, run it
    in onnxruntime on a batch of 3 and compare with the module's own output."""
    import warnings

    import numpy as np
    import onnxruntime

    for part in parts:
        file = folder / f"{part.stem}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(part.module, part.args, str(file), input_names=part.inputs, output_names=part.outputs,
                              dynamo=False, opset_version=17,
                              dynamic_axes={n: {0: "batch"} for n in part.inputs + part.outputs})
        args = tuple(torch.randn(3, *a.shape[1:]) for a in part.args)
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: a.numpy() for n, a in zip(part.inputs, args)})
        with torch.no_grad():
            want = part.module(*args)
        want = want if isinstance(want, tuple) else (want,)
        assert all(np.allclose(g, w.numpy(), atol=1e-4) for g, w in zip(got, want)), part.stem
