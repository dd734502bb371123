"""Record what a fusion node publishes (latent, anomaly, imputations and their predictive std, latent
predictions) for evaluation.

Every output carries the source stamp of its fusion step (imputed audio as ``mdgm_ros/ImputedArray``).
"""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from ..core import ModalitySpec
from ..msg import AnomalyScores, ImputedArray, Latent, LatentPrediction, ModelInfo
from ..streams import bridge
from ..streams.kinds import Stream, make_stream
from ..streams.params import StreamParams
from .guard import GuardedNode
from .outputs import STD_KINDS

RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Recording:
    latent: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    anomaly: list[tuple[int, np.ndarray]] = field(default_factory=list)          # [total, per modality]
    imputed: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=lambda: defaultdict(list))
    imputed_std: dict[str, dict[int, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))  # by stamp
    prediction: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # stamp, step stamps, (k, D)
    model_info: dict | None = None
    undecodable: int = 0

    def latent_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = sorted(self.latent, key=lambda r: r[0])
        return (np.asarray([r[0] for r in rows], np.int64), np.stack([r[1] for r in rows]),
                np.stack([r[2] for r in rows]))

    def anomaly_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rows = sorted(self.anomaly, key=lambda r: r[0])
        return np.asarray([r[0] for r in rows], np.int64), np.stack([r[1] for r in rows])


class OutputRecorder(GuardedNode, Node):
    def __init__(self, node: str, specs: list[ModalitySpec], streams: list[StreamParams]):
        super().__init__("mdgm_output_recorder")
        self.recording = Recording()
        self.lock = threading.Lock()
        self.create_subscription(ModelInfo, f"{node}/model_info", self._on_info, LATCHED)
        self.create_subscription(Latent, f"{node}/latent", self._on_latent, RELIABLE)
        self.create_subscription(AnomalyScores, f"{node}/anomaly", self._on_anomaly, RELIABLE)
        self.create_subscription(LatentPrediction, f"{node}/latent_prediction", self._on_prediction, RELIABLE)
        for spec, params in zip(specs, streams):
            stream = make_stream(params, spec)
            kind = ImputedArray if spec.kind == "audio" else stream.output_type
            self.create_subscription(kind, f"{node}/imputed/{spec.name}",
                                     lambda msg, s=stream: self._on_imputed(s, msg), RELIABLE)
            if spec.kind in STD_KINDS:
                self.create_subscription(ImputedArray, f"{node}/imputed_std/{spec.name}", self._on_imputed_std,
                                         RELIABLE)

    def _on_info(self, msg: ModelInfo) -> None:
        info = json.loads(msg.details_json or "{}")
        info.update(model_id=msg.model_id, content_hash=msg.content_hash, fusion=msg.fusion,
                    latent_dim=msg.latent_dim, modality_names=list(msg.modalities))
        self.recording.model_info = info

    def _on_latent(self, msg: Latent) -> None:
        stamp = bridge.stamp_to_ns(msg.header.stamp)
        with self.lock:
            self.recording.latent.append((stamp, np.asarray(msg.mean, np.float64), np.asarray(msg.std, np.float64)))

    def _on_anomaly(self, msg: AnomalyScores) -> None:
        values = np.asarray([msg.total, *msg.score], np.float64)          # [total, per modality]
        with self.lock:
            self.recording.anomaly.append((bridge.stamp_to_ns(msg.header.stamp), values))

    def _on_prediction(self, msg: LatentPrediction) -> None:
        mean = np.asarray(msg.mean, np.float64)
        if msg.horizon == 0 or len(msg.stamps) != msg.horizon or mean.size != msg.horizon * msg.latent_dim:
            self.recording.undecodable += 1
            return
        steps = np.asarray([bridge.stamp_to_ns(s) for s in msg.stamps], np.int64)
        with self.lock:
            self.recording.prediction.append((bridge.stamp_to_ns(msg.header.stamp), steps,
                                              mean.reshape(msg.horizon, msg.latent_dim)))

    def _on_imputed_std(self, msg: ImputedArray) -> None:
        shape = [d.size for d in msg.layout.dim]
        values = np.asarray(msg.data, np.float32)
        if values.size != int(np.prod(shape)):
            self.recording.undecodable += 1
            return
        with self.lock:
            self.recording.imputed_std[msg.modality][bridge.stamp_to_ns(msg.header.stamp)] = values.reshape(shape)

    def _on_imputed(self, stream: Stream, msg) -> None:
        try:
            array, stamp = stream.output_to_array(msg), bridge.stamp_to_ns(msg.header.stamp)
        except (bridge.ConversionError, ValueError):
            self.recording.undecodable += 1
            return
        with self.lock:
            self.recording.imputed[stream.name].append((stamp, array))
