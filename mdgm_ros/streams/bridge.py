"""All ROS message <-> numpy conversions, in one place (common_interfaces types only).

Inputs raise :class:`ConversionError` with a short ``reason`` key (used for reject counters and
diagnostics) and a specific message. Array conventions match :mod:`mdgm_ros.core.modalities`:

* camera ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) or ``CompressedImage`` (JPEG/PNG)
  -> float32 (C, H, W) in [0, 1], RGB channel order, resized (INTER_AREA) to the model's size.
* joints ``sensor_msgs/JointState`` -> float32 (len(fields) * len(names),), field-major:
  [positions of the configured joints, then velocities, then efforts], in the configured joint order.
* audio ``std_msgs/Float32MultiArray`` ([-1, 1]) or ``Int16MultiArray`` (/32768) PCM chunk, layout
  dims channels x samples (interleaved when the layout is empty) -> float32 mono (samples,).
* tactile ``sensor_msgs/Image`` 32FC1 / 16UC1 / mono8 with the pads stacked vertically
  (height = pads * rows) -> float32 (pads, rows, cols).
* depth ``sensor_msgs/Image`` 16UC1 (mm) / 32FC1 (m) -> float32 (1, H, W): metres over the stream's
  ``max_range``, clipped to [0, 1]; no return (0, NaN) as 0.
* any other message (WrenchStamped, Imu, Odometry, Float64MultiArray, ...) through named numeric
  fields (``wrench.force.x``, ``orientation_covariance``, ``data``, ``data[2]``) found by the message's
  own introspection -> float32 vector, the fields concatenated in order (:class:`FieldCodec`).

Hostile input: header stamps with nanosec >= 1e9 or a negative sec are refused
(``invalid_stamp``), ``frame_id`` is capped at ``MAX_FRAME_ID`` characters, float PCM beyond
``AUDIO_LIMIT`` times full scale is refused (``out_of_range``) and channels are averaged in float64, and
a compressed image's width and height are read from its PNG/JPEG header and refused
(``too_large``) before decoding when over :func:`max_pixels` of the model's input size.

Outputs: the latent and the anomaly scores as ``sensor_msgs/JointState`` (docs/nodes.rst),
imputed modalities in their own message types (a field-mapped vector in its input type, those fields
set); imputed audio is the model's log-mel spectrogram
(``Float32MultiArray`` with dims ``mel`` x ``frame``), since a spectrogram has no phase to play back.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Header, Int16MultiArray, MultiArrayDimension

JOINT_FIELDS = ("position", "velocity", "effort")
MAX_FRAME_ID = 256
AUDIO_LIMIT = 8.0                    # float PCM is [-1, 1]; beyond 8x full scale (+18 dB) it is not audio
MIN_PIXEL_BOUND = 4096 * 4096        # compressed frames up to this size are always decoded
PIXEL_BOUND_FACTOR = 256             # ... and up to this many times the model's input pixels
MAX_SIDE = 16384
_COLOUR_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_TACTILE_ENCODINGS = {"32FC1": np.dtype(np.float32), "16UC1": np.dtype(np.uint16), "mono8": np.dtype(np.uint8)}


class ConversionError(ValueError):
    """A message that cannot become model input; ``reason`` is a short key for counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- stamps
def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_stamp_ns(msg) -> int:
    """A message header's stamp in ns; ConversionError for an invalid stamp (nanosec >= 1e9, sec < 0)."""
    stamp = msg.header.stamp
    if not 0 <= int(stamp.nanosec) < 1_000_000_000 or int(stamp.sec) < 0:
        raise ConversionError("invalid_stamp", f"stamp sec={stamp.sec} nanosec={stamp.nanosec} is not a valid time")
    return stamp_to_ns(stamp)


def frame_id_of(msg, default: str = "") -> str:
    """The message's header frame_id, capped at MAX_FRAME_ID characters."""
    frame = getattr(getattr(msg, "header", None), "frame_id", default) or default
    return frame[:MAX_FRAME_ID]


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _header(stamp_ns: int, frame_id: str = "") -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    if values.size == 0:
        raise ConversionError("empty", f"{what} holds no data")
    if not np.all(np.isfinite(values)):
        raise ConversionError("non_finite", f"{what} holds NaN or inf")
    return values


# --------------------------------------------------------------------------- camera
def _to_model_image(pixels: np.ndarray, order: str, shape: tuple[int, int, int]) -> np.ndarray:
    """(H, W[, C]) uint8 in ``order`` (rgb/bgr/rgba/bgra/mono) -> float32 (C, H, W) RGB in [0, 1]."""
    channels, height, width = shape
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if order in ("bgr", "bgra"):
        pixels = pixels[:, :, [2, 1, 0]]
    elif order in ("rgb", "rgba"):
        pixels = pixels[:, :, :3]
    if channels == 1 and pixels.shape[2] == 3:
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)[:, :, None]
    elif channels == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.shape[:2] != (height, width):
        resized = cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=cv2.INTER_AREA)
        pixels = resized.reshape(height, width, -1)
    return (np.transpose(pixels, (2, 0, 1)).astype(np.float32) / 255.0)


def image_to_array(msg: Image, shape: tuple[int, int, int]) -> np.ndarray:
    """Camera Image -> float32 (C, H, W) in [0, 1] at the model's ``shape``."""
    encoding = msg.encoding.lower()
    if encoding not in _COLOUR_ENCODINGS:
        raise ConversionError("encoding", f"camera encoding {msg.encoding!r} not in {sorted(_COLOUR_ENCODINGS)}")
    depth = _COLOUR_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ConversionError("empty", "camera image is 0 x 0")
    if step < width * depth or len(msg.data) != step * height:
        raise ConversionError("size", f"camera data of {len(msg.data)} bytes does not fit {width}x{height} "
                                      f"{encoding} with step {step}")
    rows = np.frombuffer(msg.data, np.uint8).reshape(height, step)[:, :width * depth]
    pixels = rows.reshape(height, width, depth)
    return _to_model_image(pixels, encoding[:-1], shape)


def max_pixels(shape: tuple[int, int, int]) -> int:
    """Largest compressed frame (width x height) decoded for a model input of ``shape`` (C, H, W)."""
    return max(MIN_PIXEL_BOUND, PIXEL_BOUND_FACTOR * int(shape[1]) * int(shape[2]))


def compressed_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None if neither is recognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                       # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # start of frame
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xDA or length < 2:         # scan data before any frame header: not a valid JPEG
            return None
        i += 2 + length
    return None


def compressed_image_to_array(msg: CompressedImage, shape: tuple[int, int, int]) -> np.ndarray:
    if len(msg.data) == 0:
        raise ConversionError("empty", "compressed image holds no data")
    data = bytes(msg.data)
    size = compressed_size(data)
    if size is None:
        raise ConversionError("decode", f"compressed image (format {msg.format[:40]!r}) is neither PNG nor JPEG")
    width, height = size
    if width == 0 or height == 0 or width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels(shape):
        raise ConversionError("too_large", f"compressed image header claims {width}x{height}, over the bound of "
                                           f"{max_pixels(shape)} pixels for a {shape[2]}x{shape[1]} model input")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ConversionError("decode", f"compressed image (format {msg.format!r}) could not be decoded")
    return _to_model_image(decoded, "bgr", shape)


def array_to_image(array: np.ndarray, stamp_ns: int, frame_id: str = "") -> Image:
    """float (C, H, W) in [0, 1] -> rgb8 (C = 3) or mono8 (C = 1) Image."""
    channels, height, width = array.shape
    pixels = np.clip(np.transpose(array, (1, 2, 0)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    encoding = "rgb8" if channels == 3 else "mono8"
    msg = Image(header=_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
                is_bigendian=0, step=width * channels)
    msg.data = pixels.tobytes()
    return msg


# --------------------------------------------------------------------------- depth camera
_DEPTH_ENCODINGS = {"16UC1": np.dtype(np.uint16), "32FC1": np.dtype(np.float32)}


def depth_to_array(msg: Image, shape: tuple[int, int, int], max_range_m: float) -> np.ndarray:
    """Depth Image (REP 118: 16UC1 in millimetres, 32FC1 in metres; 0 / NaN / inf = no return) ->
    float32 (1, H, W): metres / ``max_range_m``, clipped to [0, 1], no return as 0; resized nearest."""
    dtype = _DEPTH_ENCODINGS.get(msg.encoding)
    if dtype is None:
        raise ConversionError("encoding", f"depth encoding {msg.encoding!r} not in {sorted(_DEPTH_ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ConversionError("empty", "depth image is 0 x 0")
    row_bytes = width * dtype.itemsize
    if step < row_bytes or len(msg.data) != step * height:
        raise ConversionError("size", f"depth data of {len(msg.data)} bytes does not fit {width}x{height} "
                                      f"{msg.encoding} with step {step}")
    raw = np.frombuffer(msg.data, np.uint8).reshape(height, step)[:, :row_bytes]
    values = raw.copy().view(dtype.newbyteorder(">" if msg.is_bigendian else "<")).astype(np.float32)
    metres = values / 1000.0 if dtype == np.uint16 else values
    metres = np.where(np.isfinite(metres) & (metres > 0), metres, 0.0).astype(np.float32)
    scaled = np.clip(metres / float(max_range_m), 0.0, 1.0)
    if scaled.shape != tuple(shape[1:]):
        scaled = cv2.resize(scaled, (shape[2], shape[1]), interpolation=cv2.INTER_NEAREST)
    return scaled.reshape(1, shape[1], shape[2]).astype(np.float32)


def array_to_depth_image(array: np.ndarray, max_range_m: float, stamp_ns: int, frame_id: str = "") -> Image:
    """float (1, H, W) in [0, 1] -> 32FC1 depth Image in metres (0 = no return)."""
    _, height, width = array.shape
    metres = np.clip(np.asarray(array, np.float32)[0], 0.0, 1.0) * float(max_range_m)
    msg = Image(header=_header(stamp_ns, frame_id), height=height, width=width, encoding="32FC1",
                is_bigendian=0, step=width * 4)
    msg.data = np.ascontiguousarray(metres, dtype="<f4").tobytes()
    return msg


# --------------------------------------------------------------------------- joints
def joint_state_to_array(msg: JointState, names: Sequence[str], fields: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(msg.name)}
    if len(index) != len(msg.name):
        raise ConversionError("layout", "joint state repeats a joint name")
    missing = [n for n in names if n not in index]
    if len(missing) == len(names):
        raise ConversionError("unknown_joints", f"none of the configured joints in {list(msg.name)[:6]}")
    if missing:
        raise ConversionError("missing_joints", f"joint state lacks {missing}")
    order = np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))
    parts = []
    for field in fields:
        values = np.asarray(getattr(msg, field), dtype=np.float64)
        if values.size != len(msg.name):
            raise ConversionError("layout", f"joint state has {len(msg.name)} names but {values.size} {field} values")
        parts.append(values[order])
    return _finite(np.concatenate(parts).astype(np.float32), "joint state")


def array_to_joint_state(array: np.ndarray, names: Sequence[str], fields: Sequence[str], stamp_ns: int,
                         frame_id: str = "") -> JointState:
    values = np.asarray(array, dtype=np.float64).reshape(len(fields), len(names))
    msg = JointState(header=_header(stamp_ns, frame_id), name=list(names))
    for i, field in enumerate(fields):
        setattr(msg, field, values[i].tolist())
    return msg


# --------------------------------------------------------------------------- audio
def audio_to_array(msg: Float32MultiArray | Int16MultiArray, channels: int = 1) -> np.ndarray:
    """PCM chunk -> float32 mono samples. Layout dims (channels, samples) are honoured when given."""
    if isinstance(msg, Int16MultiArray):
        data = np.frombuffer(msg.data, np.int16).astype(np.float64) / 32768.0
    else:          # float64: averaging channels near float32's maximum must not overflow to inf
        data = np.frombuffer(msg.data, np.float32).astype(np.float64) if len(msg.data) else np.zeros(0)
    _finite(data, "audio chunk")
    if np.abs(data).max() > AUDIO_LIMIT:
        raise ConversionError("out_of_range",
                              f"audio sample {np.abs(data).max():.3g} beyond {AUDIO_LIMIT} x full scale")
    dims = list(msg.layout.dim)
    if dims:
        channels = int(dims[0].size) if len(dims) >= 2 else 1
        expected = int(np.prod([d.size for d in dims]))
        if expected != data.size - int(msg.layout.data_offset) or channels <= 0:
            raise ConversionError("layout", f"audio layout {[d.size for d in dims]} does not match "
                                            f"{data.size} samples")
        data = data[int(msg.layout.data_offset):].reshape(channels, -1)
        return data.mean(axis=0).astype(np.float32)
    if data.size % channels:
        raise ConversionError("layout", f"{data.size} audio samples do not split into {channels} channels")
    return data.reshape(-1, channels).mean(axis=1).astype(np.float32)


def array_to_multiarray(array: np.ndarray, labels: Sequence[str]) -> Float32MultiArray:
    """float array -> Float32MultiArray with one layout dim per axis (row-major strides)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if len(labels) != array.ndim:
        raise ValueError(f"{len(labels)} labels for a {array.ndim}-d array")
    msg = Float32MultiArray()
    stride = array.size
    for label, size in zip(labels, array.shape):
        msg.layout.dim.append(MultiArrayDimension(label=label, size=int(size), stride=int(stride)))
        stride //= max(int(size), 1)
    msg.data = array.ravel()
    return msg


# --------------------------------------------------------------------------- tactile
def tactile_to_array(msg: Image, shape: tuple[int, int, int], uint16_full_scale: float = 65535.0) -> np.ndarray:
    """Taxel Image (pads stacked vertically) -> float32 (pads, rows, cols). Grids are never resized."""
    pads, rows, cols = shape
    dtype = _TACTILE_ENCODINGS.get(msg.encoding)
    if dtype is None:
        raise ConversionError("encoding", f"tactile encoding {msg.encoding!r} not in {sorted(_TACTILE_ENCODINGS)}")
    if (int(msg.height), int(msg.width)) != (pads * rows, cols):
        raise ConversionError("size", f"tactile image {msg.width}x{msg.height}, expected {cols}x{pads * rows} "
                                      f"({pads} pads of {rows}x{cols})")
    row_bytes = cols * dtype.itemsize
    if int(msg.step) < row_bytes or len(msg.data) != int(msg.step) * int(msg.height):
        raise ConversionError("size", f"tactile data of {len(msg.data)} bytes does not fit step {msg.step}")
    raw = np.frombuffer(msg.data, np.uint8).reshape(int(msg.height), int(msg.step))[:, :row_bytes]
    values = raw.copy().view(dtype.newbyteorder(">" if msg.is_bigendian else "<")).astype(np.float32)
    if dtype == np.uint16:
        values /= uint16_full_scale
    elif dtype == np.uint8:
        values /= 255.0
    return _finite(values.reshape(pads, rows, cols), "tactile image")


def array_to_tactile_image(array: np.ndarray, stamp_ns: int, frame_id: str = "") -> Image:
    pads, rows, cols = array.shape
    msg = Image(header=_header(stamp_ns, frame_id), height=pads * rows, width=cols, encoding="32FC1",
                is_bigendian=0, step=cols * 4)
    msg.data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return msg


# --------------------------------------------------------------------------- named vectors
def named_vector(names: Sequence[str], position: np.ndarray, effort: np.ndarray, stamp_ns: int,
                 frame_id: str = "") -> JointState:
    """A stamped, named vector as JointState (the latent: position = mean, effort = std; anomaly:
    position = score, effort = threshold)."""
    return JointState(header=_header(stamp_ns, frame_id), name=list(names),
                      position=np.asarray(position, dtype=np.float64).tolist(),
                      effort=np.asarray(effort, dtype=np.float64).tolist())


def latent_names(dim: int) -> list[str]:
    return [f"z{i}" for i in range(dim)]


# --------------------------------------------------------------------------- numeric fields of any message
_NUMERIC = {"double": float, "float": float, "int8": int, "uint8": int, "int16": int, "uint16": int,
            "int32": int, "uint32": int, "int64": int, "uint64": int}


@functools.lru_cache(maxsize=None)
def message_class(type_name: str) -> type:
    """'geometry_msgs/msg/WrenchStamped' (or 'geometry_msgs/WrenchStamped') -> the rclpy message class;
    ValueError naming the type when this ROS install does not have it."""
    import importlib

    parts = type_name.strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"message type {type_name!r} is not of the form package/msg/Name")
    try:
        cls = getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError):
        raise ValueError(f"message type {type_name!r} is not installed here (no {parts[0]}.{parts[1]}."
                         f"{parts[2]}): install its package's Python message library") from None
    if not hasattr(cls, "get_fields_and_field_types"):
        raise ValueError(f"{type_name!r} is not a ROS message class")
    return cls


def type_name_of(cls: type) -> str:
    """rclpy message class -> 'pkg/msg/Name'."""
    return f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"


def _field_type(text: str) -> tuple[str, int | None, bool]:
    """'double' -> ('double', None, False); 'double[9]' -> ('double', 9, False); 'sequence<float>' ->
    ('float', None, True); 'geometry_msgs/Vector3' -> ('geometry_msgs/Vector3', None, False)."""
    if text.startswith("sequence<"):
        return text[len("sequence<"):-1].split(",")[0].strip(), None, True
    if text.endswith("]") and "[" in text:
        base, _, size = text[:-1].partition("[")
        return base, (int(size) if size.isdigit() else None), not size.isdigit()
    return text, None, False


@dataclass(frozen=True)
class NumericField:
    """One numeric field path of a message type: ``wrench.force.x``, ``orientation_covariance`` (a fixed
    array: all its values), ``data`` (a sequence: as many values as the message holds) or ``data[3]``."""

    path: str
    attributes: tuple[str, ...]
    index: int | None          # one element of an array / sequence
    size: int | None           # values it gives: 1, the fixed array's length, or None (a sequence)
    python: type               # float or int: how a value is written back

    def read(self, msg: Any) -> np.ndarray:
        value = msg
        for name in self.attributes:
            value = getattr(value, name)
        if self.index is not None:
            if self.index >= len(value):
                raise ConversionError("layout", f"{self.path}: the message holds {len(value)} values")
            value = value[self.index]
        return np.asarray(value, dtype=np.float64).reshape(-1)

    def write(self, msg: Any, values: np.ndarray) -> None:
        parent = msg
        for name in self.attributes[:-1]:
            parent = getattr(parent, name)
        last = self.attributes[-1]
        cast = (lambda v: int(round(float(v)))) if self.python is int else float  # noqa: E731
        if self.index is not None:
            current = getattr(parent, last)
            if isinstance(current, np.ndarray):
                current[self.index] = values[0]
            else:
                items = list(current) + [0] * max(0, self.index + 1 - len(current))
                items[self.index] = cast(values[0])
                setattr(parent, last, items)
        elif self.size == 1 and not isinstance(getattr(parent, last), (np.ndarray, list)) \
                and not hasattr(getattr(parent, last), "typecode"):
            setattr(parent, last, cast(values[0]))
        else:
            current = getattr(parent, last)
            dtype = current.dtype if isinstance(current, np.ndarray) else None
            setattr(parent, last, np.asarray(values, dtype=dtype) if dtype is not None else [cast(v) for v in values])


def numeric_fields(cls: type, prefix: str = "", skip: tuple[str, ...] = ("header",)) -> list[str]:
    """Every numeric field path of a message type (nested messages expanded, arrays whole), in
    declaration order; ``header`` and strings left out."""
    out = []
    for name, text in cls.get_fields_and_field_types().items():
        if name in skip and not prefix:
            continue
        base, size, sequence = _field_type(text)
        if base in _NUMERIC:
            out.append(prefix + name)
        elif "/" in base and size is None and not sequence:
            out += numeric_fields(message_class(base), f"{prefix}{name}.", ())
    return out


def resolve_field(cls: type, path: str) -> NumericField:
    """A field path of ``cls`` -> its :class:`NumericField`; ValueError naming the message's numeric fields."""
    import re

    match = re.fullmatch(r"([A-Za-z_][\w.]*?)(?:\[(\d+)\])?", path.strip())
    if match is None:
        raise ValueError(f"field {path!r} is not a dotted field path (e.g. wrench.force.x or data[2])")
    names, index = match.group(1).split("."), (int(match.group(2)) if match.group(2) is not None else None)
    current, python, size = cls, float, 1
    for depth, name in enumerate(names):
        fields = current.get_fields_and_field_types() if current is not None else {}
        if name not in fields:
            choices = numeric_fields(cls)
            shown = ", ".join(choices[:24]) + (", ..." if len(choices) > 24 else "")
            raise ValueError(f"{type_name_of(cls)} has no field {path!r}; its numeric fields are: {shown}")
        base, fixed, sequence = _field_type(fields[name])
        last = depth == len(names) - 1
        if base in _NUMERIC and last:
            python = _NUMERIC[base]
            size = 1 if index is not None else (fixed if fixed is not None else (None if sequence else 1))
            if index is not None and fixed is None and not sequence:
                raise ValueError(f"field {path!r}: {match.group(1)} is not an array")
            if index is not None and fixed is not None and index >= fixed:
                raise ValueError(f"field {path!r}: {match.group(1)} has {fixed} values")
        elif "/" in base and not last and fixed is None and not sequence:
            current = message_class(base)
        else:
            what = "a message" if "/" in base else f"of type {fields[name]}"
            raise ValueError(f"field {path!r} of {type_name_of(cls)}: {'.'.join(names[:depth + 1])} is {what}, "
                             f"not a number (numeric fields: {', '.join(numeric_fields(cls)[:24])})")
    return NumericField(path.strip(), tuple(names), index, size, python)


class FieldCodec:
    """Message of ``cls`` <-> float32 vector of the named fields, concatenated in order."""

    def __init__(self, cls: type, fields: Sequence[str]):
        if not fields:
            raise ValueError(f"no fields given for {type_name_of(cls)}")
        self.cls = cls
        self.fields = [resolve_field(cls, f) for f in fields]
        self.stamped = "header" in cls.get_fields_and_field_types()

    @property
    def size(self) -> int | None:
        """Values per message; None when a sequence field makes it depend on the message."""
        sizes = [f.size for f in self.fields]
        return None if any(s is None for s in sizes) else int(sum(sizes))

    def to_array(self, msg: Any) -> np.ndarray:
        if not isinstance(msg, self.cls):
            raise ConversionError("type", f"expected {type_name_of(self.cls)}, got {type(msg).__name__}")
        parts = [f.read(msg) for f in self.fields]
        return _finite(np.concatenate(parts).astype(np.float32), type_name_of(self.cls))

    def to_message(self, array: np.ndarray, stamp_ns: int, frame_id: str = "") -> Any:
        values = np.asarray(array, dtype=np.float64).reshape(-1)
        msg = self.cls()
        if self.stamped:
            msg.header = _header(stamp_ns, frame_id)
        sequences = [f for f in self.fields if f.size is None]
        rest = values.size - sum(f.size for f in self.fields if f.size is not None)
        at = 0
        for f in self.fields:
            count = f.size if f.size is not None else rest // max(len(sequences), 1)
            f.write(msg, values[at:at + count])
            at += count
        return msg
