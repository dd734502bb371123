"""Sensor models of the simulator: contact-impulse + motor-hum audio, fingertip taxel grids, camera faults."""
from __future__ import annotations

import numpy as np


class AudioSynth:
    """16 kHz microphone: a hum per arm motor whose level follows the joint speed, a damped ring
    for every contact impulse, and a noise floor. ``step`` renders one physics step of samples."""

    def __init__(self, rng: np.random.Generator, sample_rate: int = 16000, motors: int = 7,
                 noise: float = 0.003):
        self.rate = sample_rate
        self.rng = rng
        self.noise = noise
        self.freqs = 90.0 + 35.0 * np.arange(motors)
        self.phases = np.zeros(motors)
        self.pending = np.zeros(sample_rate // 2, np.float64)      # ring-outs not yet played
        self.gain = 1.0
        self.burst = 0.0

    def impact(self, strength: float, freq_hz: float, offset: int = 0, decay_s: float = 0.02) -> None:
        """Add a damped sinusoid of peak ``strength`` starting ``offset`` samples into the next step."""
        n = min(len(self.pending) - offset, int(6 * decay_s * self.rate))
        t = np.arange(n) / self.rate
        ring = strength * np.exp(-t / decay_s) * np.sin(2 * np.pi * freq_hz * t + self.rng.uniform(0, np.pi))
        self.pending[offset:offset + n] += ring

    def step(self, joint_speeds: np.ndarray, samples: int) -> np.ndarray:
        t = np.arange(1, samples + 1) / self.rate
        level = 0.012 * np.clip(np.abs(joint_speeds), 0.0, 2.5)
        angles = self.phases[:, None] + 2 * np.pi * self.freqs[:, None] * t[None, :]
        hum = (level[:, None] * (np.sin(angles) + 0.35 * np.sin(2 * angles))).sum(axis=0)
        self.phases = (self.phases + 2 * np.pi * self.freqs * samples / self.rate) % (2 * np.pi)
        out = hum + self.pending[:samples] + self.rng.normal(0.0, self.noise, samples)
        self.pending = np.concatenate([self.pending[samples:], np.zeros(samples)])
        if self.burst > 0:
            out = out + self.rng.normal(0.0, self.burst, samples)
        return np.clip(out * self.gain, -1.0, 1.0).astype(np.float32)


def taxel_grid(points: list[tuple[float, float, float]], rows: int = 4, cols: int = 4,
               extent_u: tuple[float, float] = (-0.011, 0.011), extent_v: tuple[float, float] = (0.0, 0.045),
               sigma: float = 0.006, full_scale_n: float = 20.0) -> np.ndarray:
    """Contact points (u, v, normal force N) in the pad frame -> (rows, cols) pressure in ~[0, 1]."""
    grid = np.zeros((rows, cols), np.float64)
    if not points:
        return grid.astype(np.float32)
    cu = np.linspace(*extent_u, cols)
    cv = np.linspace(*extent_v, rows)
    for u, v, force in points:
        u = float(np.clip(u, *extent_u))
        v = float(np.clip(v, *extent_v))
        kernel = np.exp(-((cv[:, None] - v) ** 2 + (cu[None, :] - u) ** 2) / (2 * sigma ** 2))
        grid += (force / full_scale_n) * kernel / kernel.sum() * 4.0
    return np.clip(grid, 0.0, 4.0).astype(np.float32)


def occlude(image: np.ndarray, rng_seed: int) -> np.ndarray:
    """A dark, slightly textured patch over 35-60 % of the frame (a hand or cloth at the lens)."""
    rng = np.random.default_rng(rng_seed)
    h, w, _ = image.shape
    ph, pw = int(h * rng.uniform(0.6, 0.9)), int(w * rng.uniform(0.55, 0.75))
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    out = image.copy()
    colour = rng.uniform(10, 60, 3)
    out[y:y + ph, x:x + pw] = np.clip(colour + rng.normal(0, 6, (ph, pw, 3)), 0, 255).astype(np.uint8)
    return out


def blackout(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(3, 2, image.shape), 0, 255).astype(np.uint8)
