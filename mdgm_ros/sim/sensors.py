"""Sensor models of the simulators: contact-impulse + motor-hum audio, fingertip taxel grids, camera faults,
a link-mounted IMU and a depth buffer in millimetres."""
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


GRAVITY = np.array([0.0, 0.0, -9.81])


def quaternion_matrix(xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrix (body -> world) of a unit quaternion in PyBullet's (x, y, z, w) order."""
    x, y, z, w = np.asarray(xyzw, np.float64) / np.linalg.norm(xyzw)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


class LinkImu:
    """A 6-axis IMU fixed to a link. ``sample`` takes the link's world velocities and orientation and
    returns (orientation xyzw, angular velocity, linear acceleration), both in the link frame; the
    acceleration is the specific force: the velocity's finite difference since the last sample minus
    gravity (+9.81 m/s^2 up at rest), with white noise of ``accel_noise`` and ``gyro_noise``."""

    def __init__(self, rng: np.random.Generator, accel_noise: float = 0.02, gyro_noise: float = 0.002):
        self.rng = rng
        self.accel_noise = accel_noise
        self.gyro_noise = gyro_noise
        self._velocity: np.ndarray | None = None

    def sample(self, linear_velocity, angular_velocity, orientation, dt: float):
        velocity = np.asarray(linear_velocity, np.float64)
        accel = np.zeros(3) if self._velocity is None else (velocity - self._velocity) / dt
        self._velocity = velocity
        to_link = quaternion_matrix(orientation).T
        specific = to_link @ (accel - GRAVITY) + self.rng.normal(0.0, self.accel_noise, 3)
        gyro = to_link @ np.asarray(angular_velocity, np.float64) + self.rng.normal(0.0, self.gyro_noise, 3)
        return np.asarray(orientation, np.float64), gyro, specific


def depth_millimetres(zbuffer: np.ndarray, near: float, far: float, rng: np.random.Generator | None = None,
                      noise_per_m2: float = 0.0015) -> np.ndarray:
    """An OpenGL depth buffer in [0, 1] -> uint16 millimetres (0: no return at or past ``far``), with
    noise growing with the square of the range as a structured-light camera's does."""
    z = np.asarray(zbuffer, np.float64)
    metres = far * near / (far - (far - near) * z)
    if rng is not None:
        metres = metres + rng.normal(0.0, 1.0, metres.shape) * noise_per_m2 * metres ** 2
    mm = np.where(z < 1.0 - 1e-6, np.rint(metres * 1000.0), 0.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)
