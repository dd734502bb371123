"""A synthetic multimodal dataset whose modalities share latent factors.

Two factors ``c`` in [-1, 1]^2 drive every modality (plus modality-specific noise), so each modality
is predictable from the others: a blob's position and colour in the image, a fixed random nonlinear map
for vectors, the pitch and loudness of a tone for audio, the contact location and force on each taxel
pad. Used by the tests, the core example and the fusion benchmark; the robot data comes from the
simulator and from bags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..model.modalities import ModalitySpec


@dataclass
class SyntheticData:
    raw: dict[str, np.ndarray]
    mask: np.ndarray          # (N, M) bool
    factors: np.ndarray       # (N, 2)


def image(c: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    ch, h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    d2 = (xx[None] - 0.7 * c[:, 0, None, None]) ** 2 + (yy[None] - 0.7 * c[:, 1, None, None]) ** 2
    blob = np.exp(-d2 / (2 * 0.18 ** 2))                                          # (N, H, W)
    hue = (c[:, 0] + 1) / 2
    colour = np.stack([hue, 1 - hue, 0.5 + 0.4 * c[:, 1]] + [np.full_like(hue, 0.5)] * max(0, ch - 3))[:ch].T
    img = 0.2 + 0.7 * blob[:, None] * colour[:, :, None, None] + rng.normal(0, 0.02, (len(c), ch, h, w))
    return np.clip(img, 0, 1).astype(np.float32)


def vector(c: np.ndarray, dim: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    fixed = np.random.default_rng(seed + 7919)
    weights, bias = fixed.normal(0, 1.2, (2, dim)), fixed.normal(0, 0.3, dim)
    return (np.tanh(c @ weights + bias) + rng.normal(0, 0.05, (len(c), dim))).astype(np.float32)


def vector_seed(name: str) -> int:
    """Seed of a vector modality's fixed random map (so a live publisher matches the dataset)."""
    return sum(map(ord, name))


def tone(c: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequency (Hz) and amplitude of the audio tone for factors ``c`` (N, 2)."""
    return 300.0 + 0.15 * sample_rate * (c[:, 0] + 1) / 2, 0.05 + 0.4 * (c[:, 1] + 1) / 2


def _audio(c: np.ndarray, spec: ModalitySpec, rng: np.random.Generator) -> np.ndarray:
    assert spec.audio is not None
    n, length, rate = len(c), spec.shape[0], spec.audio.sample_rate
    t = np.arange(length) / rate
    freq, amp = tone(c, rate)
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] + phase[:, None])
    return np.clip(wave + rng.normal(0, 0.01, (n, length)), -1, 1).astype(np.float32)


def tactile(c: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    pads, h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = np.empty((len(c), pads, h, w), np.float32)
    for p in range(pads):
        sign = 1.0 if p % 2 == 0 else -1.0
        d2 = (xx[None] - sign * c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2
        force = 1.0 + 0.5 * c[:, 0, None, None] * sign
        out[:, p] = force * np.exp(-d2 / 0.5) + rng.normal(0, 0.03, (len(c), h, w))
    return out


def make_dataset(specs: Sequence[ModalitySpec], n: int, seed: int = 0,
                 missing_rate: float = 0.0) -> SyntheticData:
    """``n`` samples of every modality in ``specs``; each modality is independently missing with
    probability ``missing_rate`` (at least one stays observed per row). Missing entries hold NaN,
    so nothing can mistake them for data."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, (n, 2))
    raw = {}
    for spec in specs:
        if spec.kind == "image":
            raw[spec.name] = image(c, spec.shape, rng)
        elif spec.kind == "vector":
            raw[spec.name] = vector(c, spec.shape[0], rng, seed=vector_seed(spec.name))
        elif spec.kind == "audio":
            raw[spec.name] = _audio(c, spec, rng)
        else:
            raw[spec.name] = tactile(c, spec.shape, rng)
    mask = rng.random((n, len(specs))) >= missing_rate
    empty = ~mask.any(1)
    mask[empty, rng.integers(0, len(specs), int(empty.sum()))] = True
    for j, spec in enumerate(specs):
        raw[spec.name][~mask[:, j]] = np.nan
    return SyntheticData(raw, mask, c.astype(np.float32))
