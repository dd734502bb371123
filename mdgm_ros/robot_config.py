"""``mdgm-ros init --bags BAG... --out DIR``: a robot's configs from its bags, with no file edited by hand.

Reads the bags' topics, types, message counts and one message of each candidate topic, proposes one
modality per sensor stream and writes ``model.yaml``, ``fusion.yaml`` and ``train.yaml`` into DIR:

* streams: colour cameras (``Image`` rgb8/bgr8/mono8..., ``CompressedImage``), depth cameras (``Image``
  16UC1 / 32FC1), taxel grids (a 16UC1 / 32FC1 / mono8 image on a tactile / taxel / touch / skin topic, or
  of at most 256 cells), joint states (with the joint names and the fields
  the messages fill), WrenchStamped / Wrench, Imu, Odometry, Twist/Pose/Vector3/PointStamped,
  Float64MultiArray (a vector), Float32MultiArray / Int16MultiArray (PCM audio when a message holds a
  chunk of samples, else a vector). Strings, ``/tf``, ``/clock``, ``/rosout``, ``/diagnostics``, the
  simulator's own topics and the fusion node's outputs are left out, each with its reason;
* alignment: a timer at the fastest camera's rate (at most 30 Hz; without a camera, the slowest stream's,
  at most 50 Hz), so any stream may be missing in a sample; each stream is stale after 2.5 of its periods;
* modality weights: sqrt(values of the largest stream / values of this one), so the small streams shape
  the latent too; a stream absent from some bags is listed in ``data.absent_ok``.

Every choice is printed with its reason, then the next command. ``--interactive`` asks before keeping
each stream and lets the user rename it; without it nothing is asked (a terminal-less run works).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .data import bags
from .data.dataset import absolute_topic
from .streams.params import FIELD_PRESETS, field_preset_of

IGNORED_PREFIXES = ("/sim/", "/tf", "/clock", "/rosout", "/parameter_events", "/diagnostics", "/mdgm_fusion/")
AUDIO_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_TIMER_HZ = 30.0
_GENERIC_SEGMENTS = {"image", "image_raw", "compressed", "color", "rgb", "raw", "data", "states", "state", "msg",
                     "sensor", "sensors", "camera_info"}


class InitError(ValueError):
    """Bags that give no usable stream, or an output folder that would be overwritten."""


@dataclass
class Proposal:
    """One proposed modality: the stream it reads, its model entry and why."""

    name: str
    topic: str
    ros_type: str
    message_type: str
    kind: str
    rate_hz: float
    values: int                                   # model input values per sample (for the weights)
    params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    absent_from: list[str] = field(default_factory=list)


def _base_name(kind_word: str, topic: str, taken: set[str]) -> str:
    """'camera' for the first camera; the topic's distinguishing part for the next ones."""
    segments = [s for s in topic.strip("/").split("/") if s and s.lower() not in _GENERIC_SEGMENTS]
    candidates = [kind_word] + [re.sub(r"\W", "_", s.lower()) for s in reversed(segments)]
    for candidate in candidates:
        if candidate and candidate not in taken and candidate[0].isalpha():
            return candidate
    index = 2
    while f"{kind_word}_{index}" in taken:
        index += 1
    return f"{kind_word}_{index}"


def _image(topic: str, ros_type: str, msg: Any, size: int) -> tuple[str, str, str, dict, dict, str] | None:
    """(kind word, message_type, kind, params, model entry, why) of an image topic."""
    if ros_type.endswith("CompressedImage"):
        return ("camera", "compressed_image", "image", {}, {"shape": [3, size, size]},
                f"compressed colour camera ({getattr(msg, 'format', '') or 'JPEG/PNG'}), resized to {size}x{size}")
    encoding = msg.encoding
    height, width = int(msg.height), int(msg.width)
    touch = any(word in topic.lower() for word in ("tactile", "taxel", "touch", "skin")) or height * width <= 256
    if encoding in ("16UC1", "32FC1") and not touch:
        return ("depth", "depth_image", "image", {"max_range": 10.0}, {"shape": [1, size, size]},
                f"depth camera {width}x{height} {encoding}, metres over max_range 10 m, resized to {size}x{size}")
    if encoding in ("16UC1", "32FC1", "mono8") and touch:
        return ("tactile", "tactile_image", "tactile", {}, {"shape": [1, height, width]},
                f"small {width}x{height} {encoding} grid: read as one taxel pad")
    channels = 1 if encoding in ("mono8", "8UC1") else 3
    if encoding.lower() not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        return None
    return ("camera", "image", "image", {}, {"shape": [channels, size, size]},
            f"{encoding} camera {width}x{height}, resized to {size}x{size}")


def _audio_or_vector(ros_type: str, msg: Any, rate: float) -> tuple[str, str, str, dict, dict, str]:
    values = len(msg.data)
    if ros_type.endswith("Int16MultiArray") or (ros_type.endswith("Float32MultiArray") and values >= 64):
        estimate = values * rate
        sample_rate = min(AUDIO_RATES, key=lambda r: abs(r - estimate))
        window = sample_rate // 2
        return ("audio", "int16_multiarray" if "Int16" in ros_type else "float32_multiarray", "audio",
                {"sample_rate": sample_rate},
                {"shape": [window], "audio": {"sample_rate": sample_rate, "n_fft": 512, "hop_length": 256,
                                              "n_mels": 32, "f_min": 30.0, "f_max": None}},
                f"PCM chunks of {values} samples at {rate:.0f} Hz: about {sample_rate} Hz audio, 0.5 s windows")
    preset = "float64_multiarray" if "Float64" in ros_type else "float32_multiarray"
    return ("array", preset, "vector", {"fields": [f"data[{i}]" for i in range(values)]}, {},
            f"an array of {values} values")


def propose(bag_paths: list[str | Path], image_size: int = 64) -> tuple[list[Proposal], list[str], float]:
    """The modalities proposed for these bags, the topics left out (with reasons), the output rate."""
    summaries = {str(p): bags.topic_summary(p) for p in bag_paths}
    durations = {str(p): max(bags.duration_s(p), 1e-9) for p in bag_paths}
    topics: dict[str, str] = {}
    for summary in summaries.values():
        for topic, (ros_type, count) in summary.items():
            if count:
                topics.setdefault(topic, ros_type)
    proposals, skipped, taken = [], [], set()
    for topic, ros_type in sorted(topics.items()):
        if topic.startswith(IGNORED_PREFIXES):
            skipped.append(f"{topic} ({ros_type}): not a sensor stream")
            continue
        holding = [p for p in summaries if summaries[p].get(topic, ("", 0))[1]]
        rate = float(np.median([summaries[p][topic][1] / durations[p] for p in holding]))
        try:
            msg = bags.first_message(holding[0], topic)
        except bags.BagError as err:
            skipped.append(f"{topic} ({ros_type}): unreadable ({err})")
            continue
        found = _classify(topic, ros_type, msg, rate, image_size)
        if isinstance(found, str):
            skipped.append(f"{topic} ({ros_type}): {found}")
            continue
        word, message_type, kind, params, model, why = found
        name = _base_name(word, topic, taken)
        taken.add(name)
        values = _values(kind, message_type, params, model)
        proposals.append(Proposal(name, topic, ros_type, message_type, kind, rate, values, params, model, why,
                                  [p for p in summaries if p not in holding]))
    rank = {"image": 0, "tactile": 1, "audio": 2, "vector": 3}
    proposals.sort(key=lambda p: (rank[p.kind], p.name))
    if not proposals:
        raise InitError("no sensor stream in the bags: " + "; ".join(skipped or ["they hold no messages"]))
    cameras = [p.rate_hz for p in proposals if p.kind == "image"]
    rate = min(MAX_TIMER_HZ, max(cameras)) if cameras else min(50.0, min(p.rate_hz for p in proposals))
    return proposals, skipped, round(rate, 1)


def _values(kind: str, message_type: str, params: dict[str, Any], model: dict[str, Any]) -> int:
    """Model input values per sample (audio: its log-mel frames x bands)."""
    if kind == "audio":
        return 32 * (model["shape"][0] // 256 + 1)
    if "shape" in model:
        return int(np.prod(model["shape"]))
    if message_type == "joint_state":
        return len(params["joint_names"]) * len(params["joint_fields"])
    return len(params.get("fields", FIELD_PRESETS.get(message_type, [])))


def _classify(topic: str, ros_type: str, msg: Any, rate: float, image_size: int):
    if msg is None:
        return "no message could be read"
    if ros_type in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
        found = _image(topic, ros_type, msg, image_size)
        return found or f"image encoding {msg.encoding!r} is not supported"
    if ros_type == "sensor_msgs/msg/JointState":
        names = list(msg.name)
        fields = [f for f in ("position", "velocity", "effort") if len(getattr(msg, f)) == len(names) and names]
        if not fields:
            return "joint states with no filled position / velocity / effort"
        return ("joints", "joint_state", "vector", {"joint_names": names, "joint_fields": fields}, {},
                f"{len(names)} joints x {fields}: {len(names) * len(fields)} values, matched by name")
    if ros_type.endswith("MultiArray") and ros_type.startswith("std_msgs/"):
        if not len(msg.data):
            return "an empty array"
        return _audio_or_vector(ros_type, msg, rate)
    preset = field_preset_of(ros_type)
    if preset is not None:
        word = {"wrench_stamped": "wrench", "wrench": "wrench", "imu": "imu", "odometry": "odom"}.get(preset, preset)
        fields = FIELD_PRESETS[preset]
        return (word, preset, "vector", {}, {}, f"{ros_type}: {len(fields)} fields ({', '.join(fields[:3])}, ...)")
    return f"{ros_type} is not a stream init knows (give it as package/msg/Name with its fields by hand)"


def _model_entry(p: Proposal) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": p.name, "kind": p.kind}
    if p.kind != "vector":                        # a vector's size follows its fusion params
        entry["shape"] = p.model["shape"]
    if "audio" in p.model:
        entry["audio"] = p.model["audio"]
    entry.update(likelihood="gaussian", scale=0.5, learn_scale=True)
    return entry


def _stream_params(p: Proposal, output_rate: float) -> dict[str, Any]:
    period = 1.0 / max(p.rate_hz, 1e-3)
    staleness = round(max(2.5 * period, 0.02, 1.5 / output_rate), 3)
    params: dict[str, Any] = {"topic": p.topic, "message_type": p.message_type, "qos": "sensor_data",
                              "staleness": staleness, "buffer_size": int(max(16, min(1024, 2 * p.rate_hz))),
                              "min_rate": round(0.5 * p.rate_hz, 1)}
    params.update(p.params)
    return params


def write_configs(proposals: list[Proposal], output_rate: float, out: str | Path,
                  bag_paths: list[str | Path], force: bool = False) -> dict[str, Path]:
    out = Path(out)
    files = {name: out / f"{name}.yaml" for name in ("model", "fusion", "train")}
    existing = [str(f) for f in files.values() if f.exists()]
    if existing and not force:
        raise InitError(f"{', '.join(existing)} exist: choose another --out or add --force")
    out.mkdir(parents=True, exist_ok=True)
    largest = max(p.values for p in proposals)
    weights = {p.name: round(math.sqrt(largest / max(p.values, 1)), 1) for p in proposals}
    model = {"latent_dim": 16, "family": "mopoe", "fusion": "mopoe", "proper_subsets_include_prior": None,
             "family_options": {}, "modalities": [_model_entry(p) for p in proposals]}
    fusion = {"mdgm_fusion": {"ros__parameters": {
        "anchor": "", "output_rate": output_rate, "modalities": [p.name for p in proposals],
        **{p.name: _stream_params(p, output_rate) for p in proposals}}}}
    absent = sorted({p.name for p in proposals if p.absent_from})
    train = {"model": "model.yaml", "modality_weights": {k: v for k, v in weights.items() if v != 1.0},
             "fusion_params": "fusion.yaml",
             "data": {"val_fraction": 0.15, "block_s": 10.0, "settle_s": 0.5, "cache": True, "absent_ok": absent},
             "training": {"epochs": 30, "batch_size": 64, "lr": 0.002, "seed": 0, "patience": 6,
                          "beta": {"kind": "linear", "start": 0.0, "end": 1.0}},
             "calibration": {"quantile": 0.99}, "export": {"onnx": True}}
    sources = ", ".join(str(b) for b in bag_paths)
    headers = {
        "model": f"# The model for the streams of {sources}, written by mdgm-ros init.\n"
                 "# A vector modality has no shape: its size follows fusion.yaml (joints x fields, or the fields).\n",
        "fusion": "# The fusion node's stream parameters for this robot, written by mdgm-ros init. A bundle trained\n"
                  "# with them records them: fusion_node -p bundle:=BUNDLE needs no params file.\n",
        "train": f"# mdgm-ros train --config {files['train']} --bags BAG... --out BUNDLE (written by mdgm-ros init)\n"}
    for key, doc in (("model", model), ("fusion", fusion), ("train", train)):
        text = headers[key] + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)
        files[key].write_text(text, encoding="utf-8")
    return files


def run_init(bag_paths: list[str], out: str | Path, image_size: int = 64, interactive: bool = False,
             force: bool = False, log: Callable[[str], None] = print,
             ask: Callable[[str], str] = input) -> dict[str, Any]:
    """The whole ``mdgm-ros init``; returns what it wrote and chose."""
    for path in bag_paths:
        if not Path(path).exists():
            raise InitError(f"bag {path} does not exist")
    proposals, skipped, rate = propose(bag_paths, image_size)
    if interactive:
        proposals = _ask(proposals, ask, log)
        if not proposals:
            raise InitError("every stream was left out: nothing to write")
    files = write_configs(proposals, rate, out, bag_paths, force)
    log(f"{len(proposals)} modalities from {len(bag_paths)} bag(s):")
    for p in proposals:
        missing = f"; absent from {len(p.absent_from)} bag(s): data.absent_ok" if p.absent_from else ""
        log(f"  {p.name:12s} {absolute_topic(p.topic)} ({p.ros_type}, {p.rate_hz:.1f} Hz): {p.why}{missing}")
    for line in skipped:
        log(f"  left out: {line}")
    log(f"alignment: a sample every 1/{rate:g} s (timer), each stream stale after 2.5 of its periods")
    log(f"wrote {files['model']}, {files['fusion']}, {files['train']}")
    log(f"next: mdgm-ros train --config {files['train']} --bags {' '.join(str(b) for b in bag_paths)} "
        f"--out BUNDLE")
    return {"files": {k: str(v) for k, v in files.items()}, "output_rate": rate,
            "modalities": [{"name": p.name, "topic": p.topic, "type": p.ros_type, "message_type": p.message_type,
                            "kind": p.kind, "rate_hz": round(p.rate_hz, 2), "why": p.why} for p in proposals],
            "left_out": skipped}


def _ask(proposals: list[Proposal], ask: Callable[[str], str], log: Callable[[str], None]) -> list[Proposal]:
    kept = []
    for p in proposals:
        answer = ask(f"keep {p.topic} ({p.ros_type}) as '{p.name}'? [Y/n/new name] ").strip()
        if answer.lower() in ("n", "no"):
            log(f"  {p.topic}: left out")
            continue
        if answer and answer.lower() not in ("y", "yes"):
            if not re.fullmatch(r"[A-Za-z]\w*", answer):
                log(f"  {answer!r} is not a name (letters, digits, _): keeping '{p.name}'")
            else:
                p.name = answer
        kept.append(p)
    return kept
