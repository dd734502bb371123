"""Typed modality specifications.

A :class:`ModalitySpec` says what one sensor stream looks like to the model: its raw per-sample shape,
the kind of network that encodes it, the likelihood of its decoder, the weight of its reconstruction
term and the statistics that normalise its features.

Raw shapes (per sample, no batch dimension):

* ``image``   ``(C, H, W)`` floats in [0, 1] (H and W divisible by 8)
* ``vector``  ``(D,)`` e.g. 9 joints x (position, velocity, effort) = 27
* ``audio``   ``(S,)`` mono PCM samples in [-1, 1]; the model works on its log-mel spectrogram
* ``tactile`` ``(P, H, W)`` taxel grids, one channel per pad
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

KINDS = ("image", "vector", "audio", "tactile")
LIKELIHOODS = ("gaussian", "laplace", "bernoulli")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class SpecError(ValueError):
    """A modality or model specification is invalid; the message names the field."""


@dataclass(frozen=True)
class AudioOptions:
    """Log-mel front end of an audio modality (computed in torch, no torchaudio)."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256
    n_mels: int = 32
    f_min: float = 30.0
    f_max: float | None = None  # None: Nyquist

    def frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length


@dataclass(frozen=True)
class Normalization:
    """Feature statistics; shapes broadcast against the modality's feature shape. ``low``/``high``
    (optional, the same shape as ``mean``): the range of the training features widened by a margin
    (:func:`range_bounds`); a value outside it is out of the model's depth (:mod:`mdgm_ros.core.engine.ranges`)."""

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if mean.shape != std.shape:
            raise SpecError(f"normalization mean shape {mean.shape} != std shape {std.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise SpecError("normalization statistics must be finite with std > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if (self.low is None) != (self.high is None):
            raise SpecError("normalization bounds need both low and high")
        if self.low is not None:
            low, high = np.asarray(self.low, dtype=np.float32), np.asarray(self.high, dtype=np.float32)
            if low.shape != mean.shape or high.shape != mean.shape:
                raise SpecError(f"normalization bounds of shape {low.shape} / {high.shape}, expected {mean.shape}")
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
                raise SpecError("normalization bounds must be finite with high > low")
            object.__setattr__(self, "low", low)
            object.__setattr__(self, "high", high)

    @property
    def bounded(self) -> bool:
        return self.low is not None

    def to_dict(self) -> dict[str, Any]:
        out = {"shape": list(self.mean.shape), "mean": self.mean.ravel().tolist(), "std": self.std.ravel().tolist()}
        if self.low is not None and self.high is not None:
            out["low"], out["high"] = self.low.ravel().tolist(), self.high.ravel().tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        shape = tuple(int(s) for s in data["shape"])
        bounds = [None if data.get(k) is None else np.asarray(data[k], np.float32).reshape(shape)
                  for k in ("low", "high")]
        return cls(np.asarray(data["mean"], np.float32).reshape(shape),
                   np.asarray(data["std"], np.float32).reshape(shape), *bounds)


# the training range of a bounded feature, widened on each side by RANGE_MARGIN times its width; on a
# taxel grid (one unit for every feature) the width is at least RANGE_WIDTH_FLOOR times the widest taxel's,
# so that a taxel that rarely touched in training does not trip on its first normal contact
RANGE_MARGIN = 0.5
RANGE_WIDTH_FLOOR = 0.25
BOUNDED_KINDS = ("vector", "tactile")         # images and audio are bounded by their encodings


def range_bounds(minimum: np.ndarray, maximum: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) around the training features' element-wise ``minimum``/``maximum`` of a ``kind``
    modality (a vector's features may each have their own unit: each keeps its own width)."""
    minimum, maximum = np.asarray(minimum, np.float64), np.asarray(maximum, np.float64)
    width = maximum - minimum
    floor = 1e-6 * (1.0 + np.maximum(np.abs(minimum), np.abs(maximum)))
    if kind == "tactile":
        floor = np.maximum(floor, RANGE_WIDTH_FLOOR * float(width.max(initial=0.0)))
    margin = RANGE_MARGIN * np.maximum(width, floor)
    return (minimum - margin).astype(np.float32), (maximum + margin).astype(np.float32)


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    kind: str
    shape: tuple[int, ...]
    likelihood: str = "gaussian"
    scale: float = 1.0           # initial (or fixed) decoder scale, in normalised feature units
    learn_scale: bool = False    # learn one scale per modality
    weight: float = 1.0          # lambda: weight of this modality's reconstruction term
    hidden: tuple[int, ...] = ()  # network widths; () = the kind's default
    audio: AudioOptions | None = None
    normalization: Normalization | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not _NAME_RE.match(self.name):
            raise SpecError(f"modality name {self.name!r} must match {_NAME_RE.pattern}")
        if self.kind not in KINDS:
            raise SpecError(f"modality {self.name!r}: kind {self.kind!r} not in {KINDS}")
        if self.likelihood not in LIKELIHOODS:
            raise SpecError(f"modality {self.name!r}: likelihood {self.likelihood!r} not in {LIKELIHOODS}")
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise SpecError(f"modality {self.name!r}: scale must be positive, got {self.scale}")
        if not (self.weight >= 0 and np.isfinite(self.weight)):
            raise SpecError(f"modality {self.name!r}: weight must be >= 0, got {self.weight}")
        if any(h <= 0 for h in self.hidden):
            raise SpecError(f"modality {self.name!r}: hidden widths must be positive")
        self._check_shape()
        if self.kind == "audio" and self.audio is None:
            object.__setattr__(self, "audio", AudioOptions())
        if self.kind != "audio" and self.audio is not None:
            raise SpecError(f"modality {self.name!r}: audio options given for kind {self.kind!r}")
        if self.likelihood == "bernoulli" and self.kind == "audio":
            raise SpecError(f"modality {self.name!r}: log-mel features are not binary; use gaussian/laplace")
        if self.normalization is not None:
            try:
                np.broadcast_shapes(self.normalization.mean.shape, self.feature_shape)
            except ValueError:
                raise SpecError(f"modality {self.name!r}: normalization shape {self.normalization.mean.shape}"
                                f" does not broadcast to features {self.feature_shape}") from None

    def _check_shape(self) -> None:
        expected = {"image": 3, "vector": 1, "audio": 1, "tactile": 3}[self.kind]
        if len(self.shape) != expected or any(s <= 0 for s in self.shape):
            raise SpecError(f"modality {self.name!r}: kind {self.kind} needs a positive shape of "
                            f"{expected} dims, got {self.shape}")
        if self.kind == "image" and (self.shape[1] % 8 or self.shape[2] % 8 or min(self.shape[1:]) < 8):
            raise SpecError(f"modality {self.name!r}: image height/width must be multiples of 8 and >= 8")

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape the networks see (the audio front end turns PCM into a log-mel spectrogram)."""
        if self.kind == "audio":
            assert self.audio is not None
            return (self.audio.n_mels, self.audio.frames(self.shape[0]))
        return self.shape

    @property
    def normalized(self) -> bool:
        return self.likelihood != "bernoulli"

    def with_normalization(self, normalization: Normalization | None) -> "ModalitySpec":
        return dataclasses.replace(self, normalization=normalization)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "shape": list(self.shape),
                               "likelihood": self.likelihood, "scale": self.scale,
                               "learn_scale": self.learn_scale, "weight": self.weight,
                               "hidden": list(self.hidden)}
        if self.audio is not None:
            out["audio"] = dataclasses.asdict(self.audio)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModalitySpec":
        kwargs = checked_fields(cls, data, ("name", "kind", "shape"), "modality entry")
        if kwargs.get("audio") is not None:
            kwargs["audio"] = AudioOptions(**kwargs["audio"])
        if kwargs.get("normalization") is not None:
            kwargs["normalization"] = Normalization.from_dict(kwargs["normalization"])
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise SpecError(f"modality {data.get('name')!r}: {err}") from None


def checked_fields(cls: type, data: Any, required: tuple[str, ...], label: str) -> dict[str, Any]:
    """``data`` as keyword arguments for dataclass ``cls``: a mapping with no unknown and no missing field."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{label} must be a mapping, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        where = f"{label} {data['name']!r}" if "name" in data else label
        raise SpecError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} "
                        + ", ".join(_with_suggestion(str(u), valid) for u in unknown)
                        + f" (valid: {', '.join(valid)})")
    missing = [name for name in required if name not in data]
    if missing:
        raise SpecError(f"{label} {dict(data)!r} lacks {missing}")
    return dict(data)


def _with_suggestion(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def check_unique(specs: Sequence[ModalitySpec]) -> None:
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpecError(f"modality names must be unique, got {names}")
    if not specs:
        raise SpecError("a model needs at least one modality")


def default_robot_modalities() -> list[ModalitySpec]:
    """The four robot streams of the design card: camera, joints, audio, tactile."""
    return [
        ModalitySpec("camera", "image", (3, 64, 64), likelihood="gaussian", scale=0.5, learn_scale=True),
        ModalitySpec("joints", "vector", (27,), likelihood="gaussian", scale=0.5, learn_scale=True),
        ModalitySpec("audio", "audio", (8000,), likelihood="gaussian", scale=0.5, learn_scale=True,
                     audio=AudioOptions(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32)),
        ModalitySpec("tactile", "tactile", (2, 4, 4), likelihood="gaussian", scale=0.5, learn_scale=True),
    ]
