"""Encoder and decoder factories per modality kind, and the torch log-mel audio front end.

Encoders map a batch of features ``(B, *feature_shape)`` to ``(mu, logvar)`` of shape ``(B, D)``.
Decoders map latents with any leading dimensions ``(..., D)`` to the likelihood location
``(..., *feature_shape)``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .modalities import AudioOptions, ModalitySpec, SpecError

DEFAULT_HIDDEN = {
    "image": (32, 32, 64),       # conv channels: a stride-4 patchify stem, then stride-2 layers
    "vector": (128, 128),
    "audio": (256, 128),
    "tactile": (16, 64),         # conv channels, then MLP width
}


def mel_filterbank(opts: AudioOptions) -> np.ndarray:
    """Triangular HTK-mel filters, shape (n_mels, n_fft // 2 + 1), area-normalised (Slaney style)."""
    n_bins = opts.n_fft // 2 + 1
    f_max = opts.f_max if opts.f_max is not None else opts.sample_rate / 2.0

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(opts.f_min), hz_to_mel(f_max), opts.n_mels + 2))
    freqs = np.linspace(0.0, opts.sample_rate / 2.0, n_bins)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (upper - lower))
    return filters.astype(np.float32)


class LogMelFrontEnd(nn.Module):
    """PCM window (..., S) in [-1, 1] -> log-mel spectrogram (..., n_mels, frames)."""

    def __init__(self, opts: AudioOptions):
        super().__init__()
        self.opts = opts
        self.register_buffer("window", torch.hann_window(opts.n_fft), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filterbank(opts)), persistent=False)

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        lead = pcm.shape[:-1]
        spec = torch.stft(pcm.reshape(-1, pcm.shape[-1]), n_fft=self.opts.n_fft,
                          hop_length=self.opts.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2
        mel = torch.matmul(self.filters, power)
        return torch.log(mel + 1e-6).reshape(*lead, *mel.shape[-2:])


def _mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Features -> (mu, logvar)."""

    def __init__(self, body: nn.Module, body_out: int, latent_dim: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body_out, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class LeadingDims(nn.Module):
    """Runs a (N, D) -> (N, *out_shape) network on inputs with any leading dimensions."""

    def __init__(self, net: nn.Module, out_shape: tuple[int, ...]):
        super().__init__()
        self.net = net
        self.out_shape = tuple(out_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        return self.net(z.reshape(-1, z.shape[-1])).reshape(*lead, *self.out_shape)


def image_strides(height: int, width: int) -> list[int]:
    """Down-sampling plan to a ~4 px map: a stride-4 patchify stem when the image is >= 16 px,
    then stride-2 layers (exact halving only)."""
    strides: list[int] = []
    h, w = height, width
    if min(h, w) >= 16 and h % 4 == 0 and w % 4 == 0:
        strides.append(4)
        h, w = h // 4, w // 4
    while h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= 4:
        strides.append(2)
        h, w = h // 2, w // 2
    return strides or [1]


def _channel(channels: tuple[int, ...], i: int) -> int:
    return channels[min(i, len(channels) - 1)]


def _conv_encoder(in_ch: int, size: tuple[int, int], channels: tuple[int, ...]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    h, w = size
    for i, stride in enumerate(image_strides(h, w)):
        ch = _channel(channels, i)
        kernel, pad = (4, 0) if stride == 4 else ((4, 1) if stride == 2 else (3, 1))
        layers += [nn.Conv2d(in_ch, ch, kernel, stride=stride, padding=pad), nn.SiLU()]
        in_ch, h, w = ch, h // stride, w // stride
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), in_ch * h * w


def _conv_decoder(latent_dim: int, out_ch: int, size: tuple[int, int], channels: tuple[int, ...]) -> nn.Module:
    """Mirror of the encoder; each up-sampling by s is a 3x3 conv to s^2 x channels + pixel shuffle
    (cheaper than transposed convs on CPU and free of their checkerboard artefacts)."""
    strides = image_strides(*size)
    n = len(strides)
    chans = [_channel(channels, i) for i in range(n)]
    h, w = size
    for stride in strides:
        h, w = h // stride, w // stride
    layers: list[nn.Module] = [nn.Linear(latent_dim, chans[-1] * h * w), nn.SiLU(),
                               nn.Unflatten(1, (chans[-1], h, w))]
    for i in reversed(range(n)):
        nxt = chans[i - 1] if i > 0 else out_ch
        layers += [nn.Conv2d(chans[i], strides[i] ** 2 * nxt, 3, padding=1), nn.PixelShuffle(strides[i])]
        if i > 0:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def encoder_body(spec: ModalitySpec) -> tuple[nn.Module, int]:
    """The default feature extractor of one modality: (B, *feature_shape) -> (B, width)."""
    hidden = spec.hidden or DEFAULT_HIDDEN[spec.kind]
    if spec.kind == "image":
        return _conv_encoder(spec.shape[0], spec.shape[1:], hidden)
    if spec.kind == "tactile":
        conv_ch, width = hidden[0], hidden[-1]
        pads, h, w = spec.shape
        body = nn.Sequential(nn.Conv2d(pads, conv_ch, 3, padding=1), nn.SiLU(), nn.Flatten(),
                             nn.Linear(conv_ch * h * w, width), nn.SiLU())
        return body, width
    n_in = int(math.prod(spec.feature_shape))
    return nn.Sequential(nn.Flatten(), _mlp([n_in, *hidden], final_activation=True)), hidden[-1]


def build_encoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    body, out = encoder_body(spec)
    return GaussianHead(body, out, latent_dim)


class SubsetEncoder(nn.Module):
    """q(z | X_S) from the features of the modalities of S (in model order): one default body per
    modality, their features concatenated, an MLP and a Gaussian head. Size grows linearly in |S|."""

    def __init__(self, specs: list[ModalitySpec], latent_dim: int, width: int = 128):
        super().__init__()
        bodies = [encoder_body(spec) for spec in specs]
        self.bodies = nn.ModuleList(body for body, _ in bodies)
        total = sum(out for _, out in bodies)
        self.head = GaussianHead(_mlp([total, width], final_activation=True), width, latent_dim)

    def features(self, *feats: torch.Tensor) -> list[torch.Tensor]:
        """Each modality's body output (the encodings a bridge maps between)."""
        return [body(x) for body, x in zip(self.bodies, feats)]

    def from_features(self, encodings: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(torch.cat(encodings, dim=-1))

    def forward(self, *feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_features(self.features(*feats))


def build_decoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    hidden = spec.hidden or DEFAULT_HIDDEN[spec.kind]
    fshape = spec.feature_shape
    if spec.kind == "image":
        net = _conv_decoder(latent_dim, spec.shape[0], spec.shape[1:], hidden)
        return LeadingDims(net, fshape)
    if spec.kind == "tactile":
        width = hidden[-1]
        net = nn.Sequential(nn.Linear(latent_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                            nn.Linear(width, int(math.prod(fshape))))
        return LeadingDims(net, fshape)
    net = _mlp([latent_dim, *reversed(hidden), int(math.prod(fshape))])
    return LeadingDims(net, fshape)


# --------------------------------------------------------------------------- network registry
# Builders by role and name. ``encoder``/``decoder``: builder(spec, latent_dim, **options);
# ``subset``: builder(specs, latent_dim, **options) for encoders over several modalities (their
# forward takes one feature tensor per modality, in model order). A model config names builders
# (``ModelConfig.networks``), so bundles of custom networks load without pickle as long as the
# process that loads them has registered the same names.
NETWORK_ROLES = ("encoder", "decoder", "subset")
_BUILDERS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "encoder": {"default": build_encoder},
    "decoder": {"default": build_decoder},
    "subset": {"default": SubsetEncoder},
}


def register_network(role: str, name: str, builder: Callable[..., nn.Module], replace: bool = False) -> None:
    """Make ``builder`` available to model configs as ``{"name": name, **options}`` for ``role``."""
    if role not in NETWORK_ROLES:
        raise ValueError(f"network role {role!r} not in {NETWORK_ROLES}")
    if name in _BUILDERS[role] and not replace:
        raise ValueError(f"a {role} network named {name!r} is already registered")
    _BUILDERS[role][name] = builder


def network_names(role: str) -> list[str]:
    return sorted(_BUILDERS[role])


def build_network(role: str, choice: Mapping[str, Any] | None, *args: Any) -> nn.Module:
    """Build ``role``'s network from a config entry ``{"name": ..., **options}`` (None: default)."""
    choice = dict(choice or {})
    name = choice.pop("name", "default")
    if name not in _BUILDERS[role]:
        raise SpecError(f"unknown {role} network {name!r} (registered: {', '.join(network_names(role))}; "
                        "register custom ones with mdgm_ros.core.networks.register_network)")
    return _BUILDERS[role][name](*args, **choice)
