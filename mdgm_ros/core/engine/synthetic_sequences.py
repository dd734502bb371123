"""Synthetic multimodal sequences with a slow hidden factor, for the temporal family's tests and examples.

Per sequence, a fast factor c_t = 0.8 (cos θ_t, sin θ_t) (an oscillator, θ_{t+1} = θ_t + ω + noise, ω
drawn per sequence) drives the image, vector and audio modalities, as in :mod:`.synthetic`. A slow
factor g_t (piecewise constant in [-1, 1], switching to a new value with probability ``p_switch`` per
step: a grasp's taxel pattern) is seen only by the ``slow`` modalities, which render (c_t[0], g_t):
during an outage of a slow modality, only a memory of g (and the present streams for c) can predict it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..model.modalities import ModalitySpec
from . import synthetic


@dataclass
class SequenceData:
    raw: dict[str, np.ndarray]      # (N, T, *shape); NaN where missing
    mask: np.ndarray                # (N, T, M) bool
    fast: np.ndarray                # (N, T, 2)
    slow: np.ndarray                # (N, T)


def latent_paths(n: int, steps: int, rng: np.random.Generator, p_switch: float = 0.05
                 ) -> tuple[np.ndarray, np.ndarray]:
    omega = rng.uniform(0.15, 0.35, (n, 1))
    theta = rng.uniform(0, 2 * np.pi, (n, 1)) + np.cumsum(omega + rng.normal(0, 0.03, (n, steps)), axis=1)
    fast = 0.8 * np.stack([np.cos(theta), np.sin(theta)], -1)
    slow = np.empty((n, steps))
    slow[:, 0] = rng.uniform(-1, 1, n)
    for t in range(1, steps):
        switch = rng.random(n) < p_switch
        slow[:, t] = np.where(switch, rng.uniform(-1, 1, n), slow[:, t - 1])
    return fast, slow


def render(spec: ModalitySpec, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One modality for factors (K, 2) (the renderers of :mod:`.synthetic`)."""
    if spec.kind == "image":
        return synthetic.image(factors, spec.shape, rng)
    if spec.kind == "vector":
        return synthetic.vector(factors, spec.shape[0], rng, seed=synthetic.vector_seed(spec.name))
    if spec.kind == "audio":
        return synthetic._audio(factors, spec, rng)
    return synthetic.tactile(factors, spec.shape, rng).astype(np.float32)


def outage_mask(n: int, steps: int, n_mod: int, rng: np.random.Generator, missing_rate: float,
                outage_prob: float, max_outage: int) -> np.ndarray:
    """Presence (N, T, M): independent drops at ``missing_rate`` plus, per sequence and modality with
    probability ``outage_prob``, one contiguous outage of 1..``max_outage`` steps."""
    mask = rng.random((n, steps, n_mod)) >= missing_rate
    for i, j in zip(*np.nonzero(rng.random((n, n_mod)) < outage_prob)):
        length = int(rng.integers(1, max_outage + 1))
        start = int(rng.integers(0, max(steps - length, 0) + 1))
        mask[i, start:start + length, j] = False
    return mask


def make_sequences(specs: Sequence[ModalitySpec], n: int, steps: int, seed: int = 0,
                   slow: Sequence[str] = ("tactile",), missing_rate: float = 0.0, outage_prob: float = 0.0,
                   max_outage: int = 10, p_switch: float = 0.05) -> SequenceData:
    rng = np.random.default_rng(seed)
    fast, slow_path = latent_paths(n, steps, rng, p_switch)
    raw = {}
    for spec in specs:
        factors = fast.copy()
        if spec.name in slow:
            factors[..., 1] = slow_path
        values = render(spec, factors.reshape(n * steps, 2), rng)
        raw[spec.name] = values.reshape(n, steps, *values.shape[1:]).astype(np.float32)
    mask = outage_mask(n, steps, len(specs), rng, missing_rate, outage_prob, max_outage)
    for j, spec in enumerate(specs):
        raw[spec.name][~mask[..., j]] = np.nan
    return SequenceData(raw, mask, fast.astype(np.float32), slow_path.astype(np.float32))
