"""Per-stream wiring between a modality's parameters, its bundle spec and the bridge conversions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Int16MultiArray

from . import bridge
from .alignment import StreamConfig
from ..core import ModalitySpec
from .params import StreamParams

INPUT_TYPES = {"image": Image, "compressed_image": CompressedImage, "joint_state": JointState,
               "float32_multiarray": Float32MultiArray, "int16_multiarray": Int16MultiArray,
               "tactile_image": Image}
OUTPUT_TYPES = {"image": Image, "vector": JointState, "audio": Float32MultiArray, "tactile": Image}
# audio is unstamped: its chunks are stamped on arrival (end of the chunk)
STAMPED = {"image", "compressed_image", "joint_state", "tactile_image"}


@dataclass
class Stream:
    params: StreamParams
    spec: ModalitySpec
    to_array: Callable[[Any], np.ndarray]

    @property
    def name(self) -> str:
        return self.params.name

    @property
    def input_type(self) -> type:
        return INPUT_TYPES[self.params.message_type]

    @property
    def output_type(self) -> type:
        return OUTPUT_TYPES[self.spec.kind]

    @property
    def stamped(self) -> bool:
        return self.params.message_type in STAMPED

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
        if kind == "image":
            return bridge.array_to_image(np.clip(mean, 0.0, 1.0), stamp_ns, frame_id)
        if kind == "vector":
            return bridge.array_to_joint_state(mean, self.params.joint_names, self.params.joint_fields,
                                               stamp_ns, frame_id)
        if kind == "tactile":
            return bridge.array_to_tactile_image(mean, stamp_ns, frame_id)
        return bridge.array_to_multiarray(mean, ["mel", "frame"])


def make_stream(params: StreamParams, spec: ModalitySpec) -> Stream:
    kind = params.message_type
    if kind == "image":
        convert = lambda msg: bridge.image_to_array(msg, spec.shape)  # noqa: E731
    elif kind == "compressed_image":
        convert = lambda msg: bridge.compressed_image_to_array(msg, spec.shape)  # noqa: E731
    elif kind == "joint_state":
        convert = lambda msg: bridge.joint_state_to_array(msg, params.joint_names, params.joint_fields)  # noqa: E731
    elif kind in ("float32_multiarray", "int16_multiarray"):
        convert = lambda msg: bridge.audio_to_array(msg, params.channels)  # noqa: E731
    else:
        convert = lambda msg: bridge.tactile_to_array(msg, spec.shape, params.uint16_full_scale)  # noqa: E731
    return Stream(params, spec, convert)
