"""PolyDigits: the PolyMNIST protocol (Sutter et al. 2021) built offline from scikit-learn's digits.

M modalities (default 5). Each is the 8x8 digit upsampled to 12x12 and drawn, at a random shift, onto
a random 16x16 crop of that modality's own seeded colour texture (each digit pixel takes the inverted
background colour at full contrast, 1 where the background is below 0.5 and 0 elsewhere, so the digit
shows on any colour): images 3x16x16 in [0, 1]. A tuple shares one label but uses a
different digit instance in every modality. The 1,797 instances are split train/test *before* tuples
are formed, so no test tuple reuses a training instance. ``load_digits`` ships inside the
scikit-learn wheel: nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.model.modalities import ModalitySpec

SIZE = 16
DIGIT = 12
TEXTURE = 48


@dataclass
class PolyDigits:
    """``images[name]``: (N, 3, 16, 16) float32 in [0, 1]; ``labels``: (N,); ``instances``: (N, M)
    indices into sklearn's digits (for checks)."""

    images: dict[str, np.ndarray]
    labels: np.ndarray
    instances: np.ndarray

    @property
    def names(self) -> list[str]:
        return list(self.images)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def modality_names(n_modalities: int) -> list[str]:
    return [f"m{j}" for j in range(n_modalities)]


def specs(n_modalities: int = 5, hidden: tuple[int, ...] = ()) -> tuple[ModalitySpec, ...]:
    """Image modalities with a Laplace likelihood (as the PolyMNIST reference code)."""
    return tuple(ModalitySpec(name, "image", (3, SIZE, SIZE), likelihood="laplace", scale=0.75, hidden=hidden)
                 for name in modality_names(n_modalities))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(images, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)
    return big[:, 0].clamp(0, 1).numpy(), data.target.astype(np.int64)


def _texture(seed: int) -> np.ndarray:
    """A smooth colour texture (3, 48, 48) in [0.1, 0.9], one per modality."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, 6, 6), dtype=np.float32))
    fine = torch.from_numpy(rng.random((1, 3, 24, 24), dtype=np.float32))
    smooth = (0.7 * F.interpolate(coarse, size=(TEXTURE, TEXTURE), mode="bicubic", align_corners=False)
              + 0.3 * F.interpolate(fine, size=(TEXTURE, TEXTURE), mode="bilinear", align_corners=False))
    tint = torch.from_numpy(rng.uniform(0.3, 1.0, (1, 3, 1, 1)).astype(np.float32))
    return (0.1 + 0.8 * (smooth * tint).clamp(0, 1))[0].numpy()


def split_instances(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of the digit instances (indices) into train and test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _tuples(pool: np.ndarray, labels: np.ndarray, n: int, n_modalities: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n tuples: a uniform label, then distinct instances of it from ``pool`` for the modalities."""
    by_label = {int(c): pool[labels[pool] == c] for c in np.unique(labels[pool])}
    classes = np.array(sorted(by_label))
    tuple_labels = rng.choice(classes, size=n)
    instances = np.empty((n, n_modalities), np.int64)
    for c in classes:
        rows = np.flatnonzero(tuple_labels == c)
        keys = rng.random((len(rows), len(by_label[c])))
        instances[rows] = by_label[c][np.argsort(keys, axis=1)[:, :n_modalities]]
    return tuple_labels, instances


def _render(digits: np.ndarray, instances: np.ndarray, textures: list[np.ndarray],
            rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, n_mod = instances.shape
    out = {}
    span = SIZE - DIGIT
    for j, texture in enumerate(textures):
        crop_y, crop_x = rng.integers(0, TEXTURE - SIZE + 1, (2, n))
        shift_y, shift_x = rng.integers(0, span + 1, (2, n))
        rows = np.arange(SIZE)
        ys = (crop_y[:, None] + rows[None]) % TEXTURE
        xs = (crop_x[:, None] + rows[None]) % TEXTURE
        background = texture[:, ys[:, :, None], xs[:, None, :]].transpose(1, 0, 2, 3)   # (n, 3, S, S)
        alpha = np.zeros((n, SIZE, SIZE), np.float32)
        for i in range(n):
            alpha[i, shift_y[i]:shift_y[i] + DIGIT, shift_x[i]:shift_x[i] + DIGIT] = digits[instances[i, j]]
        alpha = alpha[:, None]
        ink = (background < 0.5).astype(np.float32)          # the digit inverts the background, full contrast
        out[modality_names(n_mod)[j]] = (background * (1 - alpha) + ink * alpha).astype(np.float32)
    return out


def make_polydigits(n_train: int = 10000, n_test: int = 2000, n_modalities: int = 5, seed: int = 0,
                    test_fraction: float = 0.25) -> tuple[PolyDigits, PolyDigits]:
    """(train, test) PolyDigits sets; the same seed gives the same sets and textures."""
    if not 2 <= n_modalities <= 8:
        raise ValueError(f"n_modalities must be in [2, 8], got {n_modalities}")
    digits, labels = _digits()
    train_pool, test_pool = split_instances(labels, test_fraction, seed)
    textures = [_texture(1000 * seed + 17 * j + 1) for j in range(n_modalities)]
    rng = np.random.default_rng(seed + 1)
    sets = []
    for pool, n in ((train_pool, n_train), (test_pool, n_test)):
        tuple_labels, instances = _tuples(pool, labels, n, n_modalities, rng)
        sets.append(PolyDigits(_render(digits, instances, textures, rng), tuple_labels, instances))
    return sets[0], sets[1]
