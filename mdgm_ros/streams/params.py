"""Typed, validated, documented parameters of the fusion node (see config/fusion.yaml).

Per-modality parameters live under the modality's name (``camera.topic``, ``joints.joint_names``...);
which ones exist depends on ``<name>.message_type``. Defaults: the wire contract of docs/nodes.rst.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..core import ModalitySpec
from ..core.engine.loop import PRECISIONS

MESSAGE_TYPES = {  # message_type -> the model kinds it can feed
    "image": ("image",), "compressed_image": ("image",), "joint_state": ("vector",),
    "float32_multiarray": ("audio",), "int16_multiarray": ("audio",), "tactile_image": ("tactile",),
}
QOS_PRESETS = ("sensor_data", "reliable")
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
_KNOWN = {  # defaults for the design card's four streams; relative, so a node namespace moves them too
    "camera": {"topic": "camera/image_raw", "message_type": "image", "staleness": 0.1},
    "joints": {"topic": "joint_states", "message_type": "joint_state", "staleness": 0.05},
    "audio": {"topic": "audio", "message_type": "float32_multiarray", "staleness": 0.1},
    "tactile": {"topic": "tactile", "message_type": "tactile_image", "staleness": 0.05},
}


class ParameterError(ValueError):
    """A parameter value is invalid or does not fit the model bundle."""


SOURCE_DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def _installed_default_bundle() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory
        folder = Path(get_package_share_directory("mdgm_ros")) / "models" / "default"
    except Exception:  # no ament index, or the package is not installed with colcon
        return None
    return folder if (folder / "manifest.json").is_file() else None


def resolve_bundle(value: str) -> tuple[str, str]:
    """(bundle folder, where it came from): the parameter if set, else the shipped ``models/default``
    from the installed share folder (colcon), else from the source tree (pip -e)."""
    if value:
        return value, "parameter bundle"
    installed = _installed_default_bundle()
    if installed is not None:
        return str(installed), "default: the installed share folder"
    if (SOURCE_DEFAULT_BUNDLE / "manifest.json").is_file():
        return str(SOURCE_DEFAULT_BUNDLE), "default: the source tree"
    raise ParameterError("parameter 'bundle' is empty and no models/default is installed: give the bundle folder")


@dataclass
class StreamParams:
    name: str
    topic: str
    message_type: str
    qos: str
    staleness: float
    buffer_size: int
    min_rate: float = 0.0
    max_rate: float = 0.0
    max_stamp_age: float = 0.0
    joint_names: list[str] = field(default_factory=list)
    joint_fields: list[str] = field(default_factory=list)
    sample_rate: int = 16000
    channels: int = 1
    uint16_full_scale: float = 65535.0


@dataclass
class FusionParams:
    bundle: str
    device: str
    threads: int
    autostart: bool
    anchor: str
    output_rate: float
    impute_present: bool
    standard_mirrors: bool
    frame_id: str
    diagnostics_period: float
    diagnostics_window: float
    rate_tolerance: float
    warn_throttle: float
    reset_after: float
    streams: list[StreamParams]
    prediction_horizon: int = 10
    absence_after: float = 0.5
    precision: str = "fp32"
    engine: str = "torch"

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.streams]


ENGINES = ("torch", "onnxruntime")   # what runs a bundle's networks in the fusion node

# Ranges in the descriptors (by the parameter's last name part), enforced by rclpy on every set.
RANGES: dict[str, tuple[float, float]] = {
    "threads": (1, 256), "output_rate": (0.0, 10000.0), "diagnostics_period": (0.01, 3600.0),
    "diagnostics_window": (0.01, 3600.0), "rate_tolerance": (0.0, 0.99), "warn_throttle": (0.0, 3600.0),
    "reset_after": (0.001, 3600.0), "staleness": (0.001, 3600.0), "buffer_size": (1, 100000),
    "min_rate": (0.0, 100000.0), "max_rate": (0.0, 100000.0), "max_stamp_age": (0.0, 3600.0),
    "sample_rate": (1, 1000000), "channels": (1, 64), "uint16_full_scale": (1.0, 65535.0),
    "prediction_horizon": (0, 1000), "absence_after": (0.0, 3600.0),
}
READ_ONLY = {"modalities"}            # which parameters exist follows from it: fixed for the process
# Applied while the node runs; "bundle" is taken by ~/reload_model or the next configure; anything else
# changes subscriptions, devices or the model wiring and needs deactivate -> cleanup -> set -> configure.
LIVE = {"impute_present", "warn_throttle", "diagnostics_window", "rate_tolerance", "prediction_horizon",
        "absence_after"}
LIVE_PER_STREAM = {"staleness", "min_rate", "max_rate", "max_stamp_age"}
DEFERRED = {"bundle"}


def _descriptor(name: str, description: str, default: Any) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=name in READ_ONLY)
    bounds = RANGES.get(name.rsplit(".", 1)[-1])
    if bounds is not None and isinstance(default, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]), to_value=float(bounds[1]))]
    elif bounds is not None and isinstance(default, int) and not isinstance(default, bool):
        descriptor.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]))]
    return descriptor


def _declare(node, name: str, default: Any, description: str) -> Any:
    """Declare (or, when declared already, re-read) one parameter."""
    has = getattr(node, "has_parameter", None)
    if has is not None and has(name):
        return node.get_parameter(name).value
    return node.declare_parameter(name, default, _descriptor(name, description, default)).value


def blocked_while_configured(names: list[str], modalities: list[str]) -> list[str]:
    """The names among ``names`` that cannot change while a model is loaded (see LIVE)."""
    blocked = []
    for name in names:
        head, _, tail = name.partition(".")
        if name in LIVE or name in DEFERRED or name == "use_sim_time" or name.startswith("qos_overrides.") \
                or (head in modalities and tail in LIVE_PER_STREAM):
            continue
        blocked.append(name)
    return blocked


class _Overlay:
    """A node's parameters with ``changes`` applied, to validate a set before it takes effect."""

    def __init__(self, node, changes: dict[str, Any]):
        self.node, self.changes = node, changes

    def declare_parameter(self, name: str, default: Any, descriptor: Any = None) -> Any:
        if name in self.changes:
            value = self.changes[name]
        elif self.node.has_parameter(name):
            value = self.node.get_parameter(name).value
        else:
            value = default
        return type("Parameter", (), {"value": value})()


def fusion_params_with(node, changes: dict[str, Any]) -> FusionParams:
    """The node's FusionParams if ``changes`` were applied; ParameterError if they are invalid."""
    return declare_fusion_params(_Overlay(node, changes))


def unknown_overrides(overrides: list[str], declared: list[str]) -> list[str]:
    """Names given at start (params file, -p) that the node does not have (typos, old names)."""
    ignored = ("qos_overrides.", "use_sim_time", "start_type_description_service", "bundle_roots")
    return sorted(n for n in set(overrides) - set(declared) if not n.startswith(ignored))


def declare_fusion_params(node) -> FusionParams:
    g = {
        "bundle": _declare(node, "bundle", "", "model bundle folder; '' = the shipped models/default"),
        "device": _declare(node, "device", "auto", "auto | cpu | cuda | cuda:N"),
        "threads": _declare(node, "threads", 1, "torch (and onnxruntime) intra-op threads for inference"),
        "engine": _declare(node, "engine", "torch", "torch | onnxruntime: what runs the bundle's networks "
                           "(onnxruntime: the bundle's ONNX files; CUDA/TensorRT providers when installed)"),
        "precision": _declare(node, "precision", "fp32",
                              "fp32 | bf16 | fp16 (CUDA) | auto: autocast of the fusion step's networks"),
        "autostart": _declare(node, "autostart", True, "configure and activate at start"),
        "anchor": _declare(node, "anchor", "camera",
                           "modality whose messages trigger a fusion step; '' = use output_rate"),
        "output_rate": _declare(node, "output_rate", 0.0, "fixed output rate in Hz when anchor is ''"),
        "impute_present": _declare(node, "impute_present", False, "also publish reconstructions of present modalities"),
        "standard_mirrors": _declare(node, "standard_mirrors", False,
                                     "also publish ~/mirror/latent, ~/mirror/anomaly (JointState) and unstamped "
                                     "imputed audio (Float32MultiArray) for PlotJuggler / Foxglove"),
        "frame_id": _declare(node, "frame_id", "", "frame_id of published headers ('' = the anchor's)"),
        "diagnostics_period": _declare(node, "diagnostics_period", 1.0, "seconds between /diagnostics messages"),
        "diagnostics_window": _declare(node, "diagnostics_window", 1.0,
                                       "s: rate window; no input (STALE) or no output (ERROR) for this long"),
        "rate_tolerance": _declare(node, "rate_tolerance", 0.1, "relative slack on <stream>.min_rate/max_rate"),
        "warn_throttle": _declare(node, "warn_throttle", 5.0, "seconds between warnings of one kind"),
        "reset_after": _declare(node, "reset_after", 1.0, "a stamp this many seconds back clears the buffers"),
        "prediction_horizon": _declare(node, "prediction_horizon", 10,
                                       "temporal bundles: predicted steps on ~/latent_prediction (0 = none)"),
        "absence_after": _declare(node, "absence_after", 0.5,
                                  "s: a stream that published before and has been silent this long is scored "
                                  "by its absence (shorter gaps: no score)"),
    }
    names = _declare(node, "modalities", ["camera", "joints", "audio", "tactile"], "modality names, as in the bundle")
    streams = [_declare_stream(node, name) for name in names]
    params = FusionParams(streams=streams, **g)
    check_params(params)
    return params


def _declare_stream(node, name: str) -> StreamParams:
    known = _KNOWN.get(name, {})
    p = f"{name}."
    kwargs: dict[str, Any] = {
        "topic": _declare(node, p + "topic", known.get("topic", name),
                          "input topic (relative names follow the node's namespace and remaps)"),
        "message_type": _declare(node, p + "message_type", known.get("message_type", "image"),
                                 " | ".join(MESSAGE_TYPES)),
        "qos": _declare(node, p + "qos", "sensor_data", "sensor_data (best effort) | reliable"),
        "staleness": _declare(node, p + "staleness", known.get("staleness", 0.1),
                              "seconds after which the stream counts as missing"),
        "buffer_size": _declare(node, p + "buffer_size", 256, "ring buffer length (messages)"),
        "min_rate": _declare(node, p + "min_rate", 0.0, "Hz: diagnostics WARN below (0 = no bound)"),
        "max_rate": _declare(node, p + "max_rate", 0.0, "Hz: diagnostics WARN above (0 = no bound)"),
        "max_stamp_age": _declare(node, p + "max_stamp_age", 0.0, "s: diagnostics WARN for older stamps (0 = off)"),
    }
    kind = kwargs["message_type"]
    if kind == "joint_state":
        kwargs["joint_names"] = list(_declare(node, p + "joint_names", PANDA_JOINTS, "joints, in model order"))
        kwargs["joint_fields"] = list(_declare(node, p + "joint_fields", ["position", "velocity", "effort"],
                                               "position | velocity | effort, in model order"))
    elif kind in ("float32_multiarray", "int16_multiarray"):
        kwargs["sample_rate"] = _declare(node, p + "sample_rate", 16000, "PCM sample rate (Hz)")
        kwargs["channels"] = _declare(node, p + "channels", 1, "channels when the layout is empty")
    elif kind == "tactile_image":
        kwargs["uint16_full_scale"] = _declare(node, p + "uint16_full_scale", 65535.0, "16UC1 value that maps to 1.0")
    return StreamParams(name=name, **kwargs)


def check_params(params: FusionParams) -> None:
    names = params.names
    if not names or len(set(names)) != len(names):
        raise ParameterError(f"modalities must be unique and non-empty, got {names}")
    if params.device not in ("auto", "cpu", "cuda") and not params.device.startswith("cuda:"):
        raise ParameterError(f"device {params.device!r} is not auto | cpu | cuda | cuda:N")
    if params.threads < 1:
        raise ParameterError("threads must be >= 1")
    if params.engine not in ENGINES:
        raise ParameterError(f"engine {params.engine!r} is not one of {' | '.join(ENGINES)}")
    if params.engine == "onnxruntime" and params.precision != "fp32":
        raise ParameterError("precision applies to the torch engine; onnxruntime runs the fp32 ONNX graphs")
    if params.precision not in PRECISIONS:
        raise ParameterError(f"precision {params.precision!r} is not one of {' | '.join(PRECISIONS)}")
    if params.anchor and params.anchor not in names:
        raise ParameterError(f"anchor {params.anchor!r} is not one of the modalities {names}")
    if not params.anchor and params.output_rate <= 0:
        raise ParameterError("with no anchor, output_rate must be > 0")
    if params.diagnostics_period <= 0 or params.warn_throttle < 0 or params.reset_after <= 0:
        raise ParameterError("diagnostics_period and reset_after must be > 0, warn_throttle >= 0")
    if not 0 <= params.absence_after <= RANGES["absence_after"][1]:
        raise ParameterError(f"absence_after must be in [0, {RANGES['absence_after'][1]}] s")
    if not 0 <= params.prediction_horizon <= RANGES["prediction_horizon"][1]:
        raise ParameterError(f"prediction_horizon must be in [0, {RANGES['prediction_horizon'][1]}]")
    if params.diagnostics_window <= 0 or not 0 <= params.rate_tolerance < 1:
        raise ParameterError("diagnostics_window must be > 0 and rate_tolerance in [0, 1)")
    for s in params.streams:
        if s.message_type not in MESSAGE_TYPES:
            raise ParameterError(f"{s.name}.message_type {s.message_type!r} not in {list(MESSAGE_TYPES)}")
        if s.qos not in QOS_PRESETS:
            raise ParameterError(f"{s.name}.qos {s.qos!r} not in {QOS_PRESETS}")
        if s.staleness <= 0 or s.buffer_size < 1:
            raise ParameterError(f"{s.name}: staleness must be > 0 and buffer_size >= 1")
        if s.min_rate < 0 or s.max_rate < 0 or s.max_stamp_age < 0 or (s.max_rate and s.max_rate < s.min_rate):
            raise ParameterError(f"{s.name}: min_rate, max_rate, max_stamp_age must be >= 0 and max_rate >= min_rate")
        bad_fields = set(s.joint_fields) - {"position", "velocity", "effort"}
        if bad_fields:
            raise ParameterError(f"{s.name}.joint_fields has unknown fields {sorted(bad_fields)}")
        if s.channels < 1 or s.sample_rate <= 0:
            raise ParameterError(f"{s.name}: channels and sample_rate must be positive")


def check_against_bundle(params: FusionParams, specs: list[ModalitySpec]) -> None:
    """The parameters must describe exactly the bundle's modalities, with fitting message types."""
    if params.names != [s.name for s in specs]:
        raise ParameterError(f"parameter modalities {params.names} != bundle modalities {[s.name for s in specs]}")
    for stream, spec in zip(params.streams, specs):
        if spec.kind not in MESSAGE_TYPES[stream.message_type]:
            raise ParameterError(f"{stream.name}: message_type {stream.message_type} "
                                 f"cannot feed a {spec.kind} modality")
        if spec.kind == "vector":
            size = len(stream.joint_names) * len(stream.joint_fields)
            if size != spec.shape[0]:
                raise ParameterError(f"{stream.name}: {len(stream.joint_names)} joints x "
                                     f"{len(stream.joint_fields)} fields = {size} values, "
                                     f"bundle expects {spec.shape[0]}")
        if spec.kind == "audio" and spec.audio is not None and stream.sample_rate != spec.audio.sample_rate:
            raise ParameterError(f"{stream.name}: sample_rate {stream.sample_rate} "
                                 f"!= bundle's {spec.audio.sample_rate}")


class _YamlParameters:
    """Stands in for a node in :func:`declare_fusion_params`: values come from a params-file dict, so
    offline tools (the bag-to-dataset pipeline) read config/fusion.yaml exactly as the node does."""

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self.used: set[str] = set()

    def declare_parameter(self, name: str, default: Any, descriptor: Any = None) -> Any:
        self.used.add(name)
        value = self.values.get(name, default)
        if type(default) is float and isinstance(value, int):
            value = float(value)
        if type(default) is not type(value) and not (isinstance(default, list) and isinstance(value, list)):
            raise ParameterError(f"parameter {name!r}: expected {type(default).__name__}, got {value!r}")
        return type("Parameter", (), {"value": value})()


def flatten_parameters(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested params-file section as dotted parameter names (camera: {topic: x} -> camera.topic: x)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_parameters(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fusion_params_from_file(path: str, node_name: str = "mdgm_fusion",
                            overrides: dict[str, Any] | None = None) -> FusionParams:
    """FusionParams from a ROS params file (``<node>: ros__parameters: ...``), validated like the node's."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParameterError(f"cannot read params file {path}: {err}") from None
    if not isinstance(document, dict):
        raise ParameterError(f"{path}: not a ROS params file (a mapping of node names)")
    section = document.get(node_name, document.get(f"/{node_name}", {})).get("ros__parameters")
    if section is None:
        raise ParameterError(f"{path}: no '{node_name}: ros__parameters:' section")
    values = {**flatten_parameters(section), **(overrides or {})}
    source = _YamlParameters(values)
    params = declare_fusion_params(source)
    unknown = sorted(set(values) - source.used)
    if unknown:
        raise ParameterError(f"{path}: unknown parameters {unknown}")
    return params
