"""The fusion node's output topics, in one place: the package's own messages (msg/), and the
standard-type mirrors (``standard_mirrors``) for tools that only know common_interfaces.

| topic | type | content |
|---|---|---|
| ``~/latent`` | ``mdgm_ros/Latent`` | posterior mean/std, presence mask, model id; stamp = source stamp |
| ``~/latent_private/<m>`` | ``mdgm_ros/Latent`` | families with private latents: q(s_m) mean/std of each observed m |
| ``~/anomaly`` | ``mdgm_ros/AnomalyScores`` | per-modality score, threshold, flagged; total |
| ``~/latent_prediction`` | ``mdgm_ros/LatentPrediction`` | temporal models: k predicted latents; stamp = source stamp |
| ``~/imputed/<m>`` | the modality's own type; audio: ``mdgm_ros/ImputedArray`` (stamped log-mel) | |
| ``~/imputed_std/<m>`` | ``mdgm_ros/ImputedArray`` | vector, tactile, audio: each imputed element's predictive std |
| ``~/model_info`` | ``mdgm_ros/ModelInfo`` (transient local) | what the node runs |
| ``~/mirror/latent`` | ``sensor_msgs/JointState`` | name z0.., position = mean, effort = std |
| ``~/mirror/anomaly`` | ``sensor_msgs/JointState`` | name total + modalities, position = score, effort = threshold |
| ``~/mirror/imputed/<audio>`` | ``std_msgs/Float32MultiArray`` | the unstamped log-mel, as before |
"""
from __future__ import annotations

import array
import functools
import json
from typing import Any, Sequence

import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState

from ..core.engine.anomaly import describe as describe_scores
from ..core.engine.fallback import MODEL, Published
from ..core.engine.uncertainty import STD_KINDS
from ..msg import AnomalyScores, ImputedArray, Latent, LatentPrediction, ModelInfo
from ..streams import bridge
from ..streams.kinds import Stream

IMPUTED_AUDIO_LABELS = ["mel", "frame"]
LATCHED_INFO = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def f32(values: Any) -> array.array:
    """A float32 sequence field from a numpy array without a per-element Python loop."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def latent_message(model_id: str, names: Sequence[str], present: Sequence[bool], mean: np.ndarray, std: np.ndarray,
                   stamp_ns: int, frame_id: str, step: int = 0) -> Latent:
    msg = Latent(model_id=model_id, modalities=list(names), present=[bool(p) for p in present], step=int(step))
    msg.header.stamp, msg.header.frame_id = bridge.ns_to_stamp(stamp_ns), frame_id
    msg.mean, msg.std = f32(mean), f32(std)
    return msg


def anomaly_message(model_id: str, names: Sequence[str], scores: np.ndarray, thresholds: np.ndarray, total: float,
                    total_threshold: float, stamp_ns: int, frame_id: str) -> AnomalyScores:
    flagged = (scores > thresholds).tolist()           # NaN compares False, without a warning
    msg = AnomalyScores(model_id=model_id, modalities=list(names), flagged=flagged, total=float(total),
                        total_threshold=float(total_threshold), total_flagged=bool(total > total_threshold))
    msg.header.stamp, msg.header.frame_id = bridge.ns_to_stamp(stamp_ns), frame_id
    msg.score, msg.threshold = f32(scores), f32(thresholds)
    return msg


def prediction_message(model_id: str, mean: np.ndarray, std: np.ndarray, stamp_ns: int, step_ns: int,
                       frame_id: str) -> LatentPrediction:
    """k predicted latents (k, D) from the step stamped ``stamp_ns``; step i+1 stands for stamp + (i+1) step."""
    horizon, dim = mean.shape
    msg = LatentPrediction(model_id=model_id, horizon=horizon, latent_dim=dim,
                           stamps=[bridge.ns_to_stamp(stamp_ns + (k + 1) * step_ns) for k in range(horizon)])
    msg.header.stamp, msg.header.frame_id = bridge.ns_to_stamp(stamp_ns), frame_id
    msg.mean, msg.std = f32(mean), f32(std)
    return msg


@functools.lru_cache(maxsize=8)
def _imputed_audio_layout(shape: tuple[int, ...]):
    """One layout per shape, shared by the messages (never modified)."""
    return bridge.array_to_multiarray(np.zeros(shape, np.float32), IMPUTED_AUDIO_LABELS).layout


# the dimensions of an ~/imputed_std/<m> array, per kind (a vector's elements in the order of its imputation)
STD_LABELS = {"vector": ["element"], "tactile": ["pad", "row", "column"], "audio": IMPUTED_AUDIO_LABELS}


@functools.lru_cache(maxsize=16)
def _std_layout(shape: tuple[int, ...], kind: str):
    return bridge.array_to_multiarray(np.zeros(shape, np.float32), STD_LABELS[kind]).layout


def imputed_std_message(model_id: str, name: str, kind: str, std: np.ndarray, stamp_ns: int,
                        frame_id: str, source: str = MODEL) -> ImputedArray:
    """~/imputed_std/<name>: the predictive std of each element of the imputation of the same step, and
    what produced that imputation (the model, or the baseline the node fell back to)."""
    msg = ImputedArray(model_id=model_id, modality=name, layout=_std_layout(std.shape, kind), source=source)
    msg.header.stamp, msg.header.frame_id = bridge.ns_to_stamp(stamp_ns), frame_id
    msg.data = f32(std)
    return msg


def imputed_array_message(model_id: str, name: str, values: np.ndarray, stamp_ns: int, frame_id: str,
                          source: str = MODEL) -> ImputedArray:
    msg = ImputedArray(model_id=model_id, modality=name, layout=_imputed_audio_layout(values.shape), source=source)
    msg.header.stamp, msg.header.frame_id = bridge.ns_to_stamp(stamp_ns), frame_id
    msg.data = f32(values)
    return msg


class FusionOutputs:
    """Publishers of one activation; ``publish`` sends one fusion step (latent first)."""

    def __init__(self, node, streams: dict[str, Stream], mirrors: bool, qos: QoSProfile):
        self.node, self.streams, self.mirrors, self.qos = node, streams, mirrors, qos
        self.names = list(streams)
        self.model_id = ""
        self.thresholds = np.full(len(self.names), np.nan, np.float32)
        self.total_threshold = float("nan")
        self.latent_names: list[str] = []
        self.std_names: frozenset[str] = frozenset()     # the modalities whose imputation std goes out
        self.pubs = {"latent": node.create_publisher(Latent, "~/latent", qos),
                     "anomaly": node.create_publisher(AnomalyScores, "~/anomaly", qos)}
        for name, stream in streams.items():
            kind = ImputedArray if stream.spec.kind == "audio" else stream.output_type
            self.pubs[f"imputed/{name}"] = node.create_publisher(kind, f"~/imputed/{name}", qos)
            if stream.spec.kind in STD_KINDS:
                self.pubs[f"imputed_std/{name}"] = node.create_publisher(ImputedArray, f"~/imputed_std/{name}", qos)
            if mirrors and stream.spec.kind == "audio":
                self.pubs[f"mirror/imputed/{name}"] = node.create_publisher(
                    stream.output_type, f"~/mirror/imputed/{name}", qos)
        if mirrors:
            self.pubs["mirror/latent"] = node.create_publisher(JointState, "~/mirror/latent", qos)
            self.pubs["mirror/anomaly"] = node.create_publisher(JointState, "~/mirror/anomaly", qos)

    def set_model(self, model_id: str, thresholds: dict[str, float] | None) -> None:
        """The bundle whose outputs follow (at activation, and after a reload)."""
        th = thresholds or {}
        self.model_id = model_id
        self.thresholds = np.asarray([th.get(n, np.nan) for n in self.names], np.float32)
        self.total_threshold = float(th.get("total", np.nan))

    def destroy(self) -> None:
        for pub in self.pubs.values():
            self.node.destroy_publisher(pub)
        self.pubs = {}

    def publish(self, result, present: Sequence[bool], stamp_ns: int, frame_id: str) -> None:
        """~/latent, then ~/anomaly, then ~/imputed/* (and their mirrors)."""
        self.publish_latent(result, present, stamp_ns, frame_id)
        self.publish_derived(result, present, stamp_ns, frame_id)

    def publish_latent(self, result, present: Sequence[bool], stamp_ns: int, frame_id: str, step: int = 0) -> None:
        """~/latent (and its mirror): the node sends it as soon as the posterior exists, before decoding."""
        mean = result.latent_mean[0].cpu().numpy()
        std = result.latent_std[0].cpu().numpy()
        self.pubs["latent"].publish(latent_message(self.model_id, self.names, present, mean, std, stamp_ns, frame_id,
                                                   step))
        if self.mirrors:
            if len(self.latent_names) != len(mean):
                self.latent_names = bridge.latent_names(len(mean))
            self.pubs["mirror/latent"].publish(bridge.named_vector(self.latent_names, mean, std, stamp_ns, frame_id))

    def publish_derived(self, result, present: Sequence[bool], stamp_ns: int, frame_id: str,
                        sources: Published | None = None) -> None:
        """What the decoders give, after the latent: ~/anomaly, ~/imputed/*, the private latents; ``sources``:
        where the node fell back to a baseline (:mod:`~mdgm_ros.core.engine.fallback`)."""
        if result.scores is not None:
            self._publish_anomaly(result.scores[0].cpu().numpy(), float(result.total_score[0]), stamp_ns, frame_id)
        for name, imputed in result.imputed.items():
            source = MODEL if sources is None else sources.name_of(name)
            self._publish_imputed(name, imputed.mean[0].cpu().numpy(), stamp_ns, frame_id, source)
            if name in self.std_names:
                self.pubs[f"imputed_std/{name}"].publish(imputed_std_message(
                    self.model_id, name, self.streams[name].spec.kind,
                    imputed.std[0].expand_as(imputed.mean[0]).cpu().numpy(), stamp_ns, frame_id, source))
        for name, private_mean in getattr(result, "private_mean", {}).items():
            self._publish_private(name, private_mean[0].cpu().numpy(), result.private_std[name][0].cpu().numpy(),
                                  present, stamp_ns, frame_id)

    def _publish_private(self, name: str, mean: np.ndarray, std: np.ndarray, present: Sequence[bool],
                         stamp_ns: int, frame_id: str) -> None:
        """~/latent_private/<name>: the modality's private latent (publisher made at first use)."""
        key = f"latent_private/{name}"
        if key not in self.pubs:
            self.pubs[key] = self.node.create_publisher(Latent, f"~/{key}", self.qos)
        self.pubs[key].publish(latent_message(self.model_id, self.names, present, mean, std, stamp_ns, frame_id))

    def publish_prediction(self, mean: np.ndarray, std: np.ndarray, stamp_ns: int, step_ns: int,
                           frame_id: str) -> None:
        """~/latent_prediction (publisher made at first use: only temporal bundles have one)."""
        if "latent_prediction" not in self.pubs:
            self.pubs["latent_prediction"] = self.node.create_publisher(LatentPrediction, "~/latent_prediction",
                                                                        self.qos)
        self.pubs["latent_prediction"].publish(prediction_message(self.model_id, mean, std, stamp_ns, step_ns,
                                                                  frame_id))

    def _publish_anomaly(self, scores: np.ndarray, total: float, stamp_ns: int, frame_id: str) -> None:
        self.pubs["anomaly"].publish(anomaly_message(self.model_id, self.names, scores, self.thresholds, total,
                                                     self.total_threshold, stamp_ns, frame_id))
        if self.mirrors:
            self.pubs["mirror/anomaly"].publish(bridge.named_vector(
                ["total", *self.names], [total, *scores], [self.total_threshold, *self.thresholds], stamp_ns, frame_id))

    def _publish_imputed(self, name: str, values: np.ndarray, stamp_ns: int, frame_id: str,
                         source: str = MODEL) -> None:
        stream = self.streams[name]
        if stream.spec.kind != "audio":
            self.pubs[f"imputed/{name}"].publish(stream.output_message(values, stamp_ns, frame_id))
            return
        self.pubs[f"imputed/{name}"].publish(imputed_array_message(self.model_id, name, values, stamp_ns, frame_id,
                                                                   source))
        if self.mirrors:
            self.pubs[f"mirror/imputed/{name}"].publish(stream.output_message(values, stamp_ns, frame_id))


def private_latent_info(model, temporal: bool) -> dict:
    """model_info's ~/latent_private/<m>: q(s_m | x_m) while m is observed, or a temporal model's
    filtered private state on every step."""
    mean = ("mean of the filtered private state s_m (during m's outages: carried by the transition)" if temporal
            else "mean of q(s_m | x_m), the modality's private latent")
    published = "published every step" if temporal else "published only while the modality is observed"
    return {"topic": "~/latent_private/<modality>", "type": "mdgm_ros/msg/Latent", "dim": int(model.private_dim),
            "mean": mean, "std": "its standard deviation", "present": f"presence mask (as ~/latent); {published}",
            "latent": "~/latent carries the shared c"}


def model_info_message(runtime, node, mirrors: bool) -> ModelInfo:
    """The latched description of the loaded bundle; topics as the node resolves them."""
    model = runtime.bundle.model
    streams = list(runtime.streams.values())
    details = {
        "modalities": [{"name": s.name, "kind": s.spec.kind, "shape": list(s.spec.shape),
                        "message_type": s.params.message_type} for s in streams],
        "latent": {"topic": "~/latent", "type": "mdgm_ros/msg/Latent", "stamp": "the anchor's source stamp",
                   **model.family.latent_description(model.config), "present": "presence mask"},
        "anomaly": {"topic": "~/anomaly", "type": "mdgm_ros/msg/AnomalyScores",
                    **describe_scores(runtime.bundle.calibration), "threshold": "calibrated threshold"},
        "imputed_audio": "log-mel spectrogram, mdgm_ros/msg/ImputedArray, layout dims mel x frame",
        "imputed_std": imputed_std_info(runtime, node),
        "fallback": fallback_info(runtime, node),
        **({"temporal": temporal_info(runtime, node)} if getattr(runtime, "temporal", False) else {}),
        **({"latent_private": private_latent_info(model, getattr(runtime, "temporal", False))}
           if getattr(model, "private_dim", 0) else {}),
        "mirrors": {"~/mirror/latent": "sensor_msgs/JointState: name z0.., position = mean, effort = std",
                    "~/mirror/anomaly": "sensor_msgs/JointState: name total + modalities, position = score, "
                                        "effort = threshold",
                    "~/mirror/imputed/<audio>": "std_msgs/Float32MultiArray, unstamped"} if mirrors else {},
    }
    return ModelInfo(
        model_id=runtime.bundle.model_id, content_hash=runtime.bundle.content_hash, fusion=str(model.fusion),
        objective=str(model.config.family), latent_dim=int(model.latent_dim), device=str(runtime.device),
        modalities=[s.name for s in streams], kinds=[s.spec.kind for s in streams],
        input_topics=[resolve_topic(node, s.params.topic) for s in streams],
        imputed_topics=[resolve_topic(node, f"~/imputed/{s.name}") for s in streams],
        imputed_types=[imputed_type_name(s) for s in streams],
        details_json=json.dumps(details))


def imputed_std_info(runtime, node) -> dict[str, Any]:
    """~/imputed_std/<m>: which modalities, what it holds, and whether the bundle calibrated it."""
    calibration = runtime.bundle.calibration
    scales = calibration.predictive_scale if calibration is not None else {}
    names = sorted(getattr(runtime.fuser, "predictive_std", ()))
    return {
        "topic": "~/imputed_std/<modality>", "type": "mdgm_ros/msg/ImputedArray", "modalities": names,
        "parameter": "imputed_std (live)",
        "data": "the predictive standard deviation of each element of the same step's ~/imputed/<modality>, in "
                "its units (vector: its elements in order; tactile: pad x row x column; audio: log-mel mel x frame)",
        "interval": "imputation +- 1.645 std is the central 90 % interval",
        "method": "moment matching of the decoder over the posterior (filter) belief, cubature rule, times a "
                  "per-modality scale calibrated on held-out data at training",
        "calibrated": {name: name in scales for name in names},
        "scale": {name: scales[name] for name in names if name in scales},
        "images": "no std is published for image modalities"}


def fallback_info(runtime, node) -> dict[str, Any]:
    """Where the node publishes a baseline instead of the model's imputation, per modality."""
    policy = getattr(runtime, "fallback", None)
    params = getattr(node, "params", None)
    return {
        "parameter": "fallback (live)", "on": bool(getattr(params, "fallback", False)) and policy is not None,
        "source": "ImputedArray.source of ~/imputed_std/<modality> (and of imputed audio): model | last_value | "
                  "training_mean",
        "rule": "per outage length (steps since the stream was last seen), whichever of the model, the last value "
                "and the training mean had the lowest error on the bundle's held-out data; the better baseline "
                "while the step's total anomaly score is over its threshold; the baseline's std is its held-out "
                "error",
        "measured": policy is not None,
        "modalities": {} if policy is None else {n: policy.table.describe(n) for n in sorted(policy.enabled)},
        "steps": [] if policy is None else list(policy.table.steps)}


def temporal_info(runtime, node) -> dict[str, Any]:
    """What a temporal bundle adds: the filter state and ~/latent_prediction."""
    requested = int(node.params.prediction_horizon) if getattr(node, "params", None) else 0
    horizon = int(getattr(runtime.fuser, "horizon", requested))
    calibration = runtime.bundle.calibration
    measured = calibration.prediction if calibration is not None else {}
    return {
        "state": "a filter state carried between steps; reset on a backwards clock or stamp jump, a buffer "
                 "reset, a gap longer than reset_after, deactivate and a model reload; Latent.step counts "
                 "the steps since the last reset",
        "anomaly": "one-step predictive NLL of each stream given the past and the other streams now, "
                   "standardised by the bundle's calibration",
        "latent_prediction": {
            "topic": resolve_topic(node, "~/latent_prediction"), "type": "mdgm_ros/msg/LatentPrediction",
            "horizon": horizon, "parameter": "prediction_horizon (0 = none, live)", "requested": requested,
            "useful_horizon": measured.get("useful"),
            "useful_horizon_means": "steps ahead at which the predicted latent beat 'nothing changes' on the bundle's "
                                    "held-out data; the node publishes no further (None: not measured)",
            "step_s": runtime.step_s, "stamp": "the source stamp of the step predicted from",
            "stamps": "stamp + k time steps (the bundle's step_s, else the node's median step period)",
            "mean": "horizon x latent_dim, row-major", "std": "horizon x latent_dim, row-major"}}


def imputed_type_name(stream: Stream) -> str:
    kind = ImputedArray if stream.spec.kind == "audio" else stream.output_type
    package = kind.__module__.split(".")[0]
    return f"{package}/msg/{kind.__name__}"


def resolve_topic(node, name: str) -> str:
    """The fully qualified name the node uses for ``name`` (namespace, ``~`` and remaps applied)."""
    try:
        return node.resolve_topic_name(name)
    except Exception:  # rclpy without resolve_topic_name (Humble): show the name as given
        return name
