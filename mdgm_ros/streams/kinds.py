"""Per-stream wiring between a modality's parameters, its bundle spec and the bridge conversions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray

from ..core import ModalitySpec
from . import bridge
from .alignment import StreamConfig
from .params import StreamParams, reads_fields, ros_type_of

OUTPUT_TYPES = {"image": Image, "vector": JointState, "audio": Float32MultiArray, "tactile": Image}


def input_type(params: StreamParams) -> type:
    """The message class a stream subscribes to (ValueError when this install lacks it)."""
    return bridge.message_class(ros_type_of(params.message_type))
# physically impossible: a vector or tactile value more than IMPOSSIBLE_Z training standard deviations
# from the training mean (normalization.json) is refused as impossible (no sensor reads it; squares of
# such values overflow float32). A value merely outside the training range reaches the model, which
# leaves it out of the fusion and scores it (mdgm_ros.core.engine.ranges). Bundles written without
# bounds keep the older rule: beyond Z_LIMIT standard deviations is refused as out_of_range. Images are
# bounded by their encoding and audio by bridge.AUDIO_LIMIT.
IMPOSSIBLE_Z = 1e6
Z_LIMIT = 1000.0


class OutOfRange(np.ndarray):
    """A converted array that lies outside the bundle's training bounds (a view, no copy): the flag
    travels with the array through the aligner to the fusion step, which leaves the stream out of the
    posterior and scores it (:mod:`mdgm_ros.core.engine.ranges`) without scanning it again."""


class RangeCheck:
    """|x - mean| <= z_limit * std, elementwise, with the bundle's normalization statistics; refused
    with ``reason`` beyond. With the bundle's training ``bounds`` (low, high), an array outside them comes
    back as an :class:`OutOfRange` view."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, z_limit: float = Z_LIMIT, reason: str = "out_of_range",
                 bounds: tuple[np.ndarray, np.ndarray] | None = None):
        self.low = (np.asarray(mean, np.float64) - z_limit * np.asarray(std, np.float64))
        self.high = (np.asarray(mean, np.float64) + z_limit * np.asarray(std, np.float64))
        self.z_limit, self.reason = z_limit, reason
        self.bounds = bounds

    def __call__(self, array: np.ndarray) -> np.ndarray:
        values = np.asarray(array, np.float64)
        outside = (values < self.low) | (values > self.high)
        if outside.any():
            worst = float(np.abs(values[outside]).max())
            raise bridge.ConversionError(self.reason, f"{int(outside.sum())} values beyond {self.z_limit:g} "
                                                      f"training standard deviations (|x| up to {worst:.3g})")
        if self.bounds is not None and (np.count_nonzero(array < self.bounds[0])
                                        or np.count_nonzero(array > self.bounds[1])):
            return np.asarray(array).view(OutOfRange)
        return array


@dataclass
class Stream:
    params: StreamParams
    spec: ModalitySpec
    convert: Callable[[Any], np.ndarray]
    range_check: RangeCheck | None = None
    codec: bridge.FieldCodec | None = None          # a vector read from named fields of its message
    input_type: type = type(None)                   # the message class it subscribes to
    stamped: bool = True                            # by its header; else (audio, Wrench, arrays) on arrival

    def to_array(self, msg: Any) -> np.ndarray:
        """Message -> model input; ConversionError (with a reason key) when it cannot or must not be one."""
        array = self.convert(msg)
        return array if self.range_check is None else self.range_check(array)

    @property
    def name(self) -> str:
        return self.params.name

    @property
    def output_type(self) -> type:
        """Imputations go out in the input's own type (a field-mapped vector, a depth image: as read)."""
        return self.codec.cls if self.codec is not None else OUTPUT_TYPES[self.spec.kind]

    def alignment_config(self) -> StreamConfig:
        if self.spec.kind == "audio":
            assert self.spec.audio is not None
            return StreamConfig(self.name, self.params.staleness, self.params.buffer_size,
                                window_samples=self.spec.shape[0], sample_rate=self.spec.audio.sample_rate,
                                max_gap_s=max(0.05, self.params.staleness))
        return StreamConfig(self.name, self.params.staleness, self.params.buffer_size)

    def output_message(self, mean: np.ndarray, stamp_ns: int, frame_id: str):
        """An imputed (or reconstructed) sample in the modality's own message type."""
        kind = self.spec.kind
        if self.codec is not None:
            return self.codec.to_message(mean, stamp_ns, frame_id)
        if self.params.message_type == "depth_image":
            return bridge.array_to_depth_image(mean, self.params.max_range, stamp_ns, frame_id)
        if kind == "image":
            return bridge.array_to_image(np.clip(mean, 0.0, 1.0), stamp_ns, frame_id)
        if kind == "vector":
            return bridge.array_to_joint_state(mean, self.params.joint_names, self.params.joint_fields,
                                               stamp_ns, frame_id)
        if kind == "tactile":
            return bridge.array_to_tactile_image(mean, stamp_ns, frame_id)
        return bridge.array_to_multiarray(mean, ["mel", "frame"])

    def output_to_array(self, msg: Any) -> np.ndarray:
        """A published imputation back to the model's array (what a recorder of the outputs needs)."""
        if self.codec is not None:
            return self.codec.to_array(msg)
        if self.params.message_type == "depth_image":
            return bridge.depth_to_array(msg, self.spec.shape, self.params.max_range)
        kind = self.spec.kind
        if kind == "image":
            return bridge.image_to_array(msg, self.spec.shape)
        if kind == "tactile":
            return bridge.tactile_to_array(msg, self.spec.shape)
        if kind == "vector":
            return bridge.joint_state_to_array(msg, self.params.joint_names, self.params.joint_fields)
        return np.asarray(msg.data, np.float32).reshape([d.size for d in msg.layout.dim])


def make_stream(params: StreamParams, spec: ModalitySpec,
                normalization: tuple[np.ndarray, np.ndarray] | None = None,
                bounds: tuple[np.ndarray, np.ndarray] | None = None) -> Stream:
    """``normalization`` (mean, std of the raw values, from the bundle) enables the range check of
    vector and tactile streams: values beyond IMPOSSIBLE_Z standard deviations are refused where the
    bundle has training ``bounds`` (low, high: an array outside them is marked :class:`OutOfRange`; the
    model scores it), beyond Z_LIMIT where it has none."""
    kind = params.message_type
    codec = None
    cls = input_type(params)
    if spec.kind == "vector" and reads_fields(kind):
        codec = bridge.FieldCodec(cls, params.fields)
        size = spec.shape[0]

        def convert(msg):
            array = codec.to_array(msg)
            if array.size != size:
                raise bridge.ConversionError("layout", f"{len(params.fields)} fields gave {array.size} values, "
                                                       f"the model takes {size}")
            return array
    elif kind == "depth_image":
        convert = lambda msg: bridge.depth_to_array(msg, spec.shape, params.max_range)  # noqa: E731
    elif kind == "image":
        convert = lambda msg: bridge.image_to_array(msg, spec.shape)  # noqa: E731
    elif kind == "compressed_image":
        convert = lambda msg: bridge.compressed_image_to_array(msg, spec.shape)  # noqa: E731
    elif kind == "joint_state":
        convert = lambda msg: bridge.joint_state_to_array(msg, params.joint_names, params.joint_fields)  # noqa: E731
    elif kind in ("float32_multiarray", "int16_multiarray"):
        convert = lambda msg: bridge.audio_to_array(msg, params.channels)  # noqa: E731
    else:
        convert = lambda msg: bridge.tactile_to_array(msg, spec.shape, params.uint16_full_scale)  # noqa: E731
    check = None
    if normalization is not None and spec.kind in ("vector", "tactile"):
        check = (RangeCheck(*normalization, IMPOSSIBLE_Z, "impossible", bounds) if bounds is not None
                 else RangeCheck(*normalization))
    return Stream(params, spec, convert, check, codec, cls, "header" in cls.get_fields_and_field_types())
