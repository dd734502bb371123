"""Typed, validated, documented parameters of the fusion node (see config/fusion.yaml).

Per-modality parameters live under the modality's name (``camera.topic``, ``joints.joint_names``...);
which ones exist depends on ``<name>.message_type``. Defaults: the wire contract of docs/nodes.rst.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..core import ModalitySpec
from ..core.engine.loop import PRECISIONS

# message_type -> (the ROS message type it subscribes to, the model kinds it can feed). Any other
# 'package/msg/Name' feeds a vector modality through <name>.fields (numeric field paths of the message).
MESSAGE_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "image": ("sensor_msgs/msg/Image", ("image",)),
    "compressed_image": ("sensor_msgs/msg/CompressedImage", ("image",)),
    "depth_image": ("sensor_msgs/msg/Image", ("image",)),
    "joint_state": ("sensor_msgs/msg/JointState", ("vector",)),
    "float32_multiarray": ("std_msgs/msg/Float32MultiArray", ("audio", "vector")),
    "int16_multiarray": ("std_msgs/msg/Int16MultiArray", ("audio",)),
    "tactile_image": ("sensor_msgs/msg/Image", ("tactile",)),
    "float64_multiarray": ("std_msgs/msg/Float64MultiArray", ("vector",)),
    "wrench_stamped": ("geometry_msgs/msg/WrenchStamped", ("vector",)),
    "wrench": ("geometry_msgs/msg/Wrench", ("vector",)),
    "imu": ("sensor_msgs/msg/Imu", ("vector",)),
    "odometry": ("nav_msgs/msg/Odometry", ("vector",)),
    "twist_stamped": ("geometry_msgs/msg/TwistStamped", ("vector",)),
    "pose_stamped": ("geometry_msgs/msg/PoseStamped", ("vector",)),
    "vector3_stamped": ("geometry_msgs/msg/Vector3Stamped", ("vector",)),
    "point_stamped": ("geometry_msgs/msg/PointStamped", ("vector",)),
}
_XYZ, _XYZW = ("x", "y", "z"), ("x", "y", "z", "w")
# the fields a preset reads when <name>.fields is not given (a full type name: all its numeric fields)
FIELD_PRESETS: dict[str, list[str]] = {
    "wrench_stamped": [f"wrench.{p}.{a}" for p in ("force", "torque") for a in _XYZ],
    "wrench": [f"{p}.{a}" for p in ("force", "torque") for a in _XYZ],
    "imu": ([f"orientation.{a}" for a in _XYZW] + [f"angular_velocity.{a}" for a in _XYZ]
            + [f"linear_acceleration.{a}" for a in _XYZ]),
    "odometry": ([f"pose.pose.position.{a}" for a in _XYZ] + [f"pose.pose.orientation.{a}" for a in _XYZW]
                 + [f"twist.twist.{p}.{a}" for p in ("linear", "angular") for a in _XYZ]),
    "twist_stamped": [f"twist.{p}.{a}" for p in ("linear", "angular") for a in _XYZ],
    "pose_stamped": [f"pose.position.{a}" for a in _XYZ] + [f"pose.orientation.{a}" for a in _XYZW],
    "vector3_stamped": [f"vector.{a}" for a in _XYZ],
    "point_stamped": [f"point.{a}" for a in _XYZ],
    "float64_multiarray": ["data"],
    "float32_multiarray": ["data"],
}
FIELD_TYPES = set(FIELD_PRESETS)        # short names read through fields (float32_multiarray: for a vector)


def ros_type_of(message_type: str) -> str:
    """A message_type parameter value -> the full ROS type name it subscribes to."""
    if message_type in MESSAGE_TYPES:
        return MESSAGE_TYPES[message_type][0]
    return message_type.replace("/", "/msg/", 1) if message_type.count("/") == 1 else message_type


def message_types_reading(ros_type: str) -> list[str]:
    """The short message_type names that subscribe to ``ros_type`` ([] for a type read by its full name)."""
    return [name for name, (full, _) in MESSAGE_TYPES.items() if full == ros_type]


def field_preset_of(ros_type: str) -> str | None:
    """The preset that reads ``ros_type`` through named fields (``wrench_stamped`` for WrenchStamped), if any."""
    return next((name for name in message_types_reading(ros_type) if name in FIELD_PRESETS), None)


def kinds_of(message_type: str) -> tuple[str, ...]:
    """The model kinds a message_type can feed (any full type name: a vector, through fields)."""
    known = MESSAGE_TYPES.get(message_type)
    return known[1] if known else ("vector",)


def is_full_type_name(message_type: str) -> bool:
    return "/" in message_type


def reads_fields(message_type: str, kind: str = "vector") -> bool:
    """True when this stream's values are named fields of its message (a preset or a full type name)."""
    return (message_type in FIELD_TYPES and kind == "vector") or is_full_type_name(message_type)


def default_fields(message_type: str) -> list[str]:
    """The fields a stream reads when <name>.fields is not set."""
    if message_type in FIELD_PRESETS:
        return list(FIELD_PRESETS[message_type])
    full = ros_type_of(message_type)
    preset = field_preset_of(full)
    if preset is not None:
        return list(FIELD_PRESETS[preset])
    from .bridge import message_class, numeric_fields

    try:
        return numeric_fields(message_class(full)) or ["data"]
    except ValueError:
        return ["data"]


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
    fields: list[str] = field(default_factory=list)
    max_range: float = 10.0


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
    imputed_std: bool = True
    fallback: bool = True

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
    "prediction_horizon": (0, 1000), "absence_after": (0.0, 3600.0), "max_range": (0.001, 10000.0),
}
READ_ONLY = {"modalities"}            # which parameters exist follows from it: fixed for the process
# Applied while the node runs; "bundle" is taken by ~/reload_model or the next configure; anything else
# changes subscriptions, devices or the model wiring and needs deactivate -> cleanup -> set -> configure.
LIVE = {"impute_present", "warn_throttle", "diagnostics_window", "rate_tolerance", "prediction_horizon",
        "absence_after", "imputed_std", "fallback"}
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


class _BundleDefaults:
    """A node whose parameter defaults come from ``values`` (a bundle's stream settings) where given."""

    def __init__(self, node, values: dict[str, Any]):
        self.node, self.values = node, values

    def has_parameter(self, name: str) -> bool:
        has = getattr(self.node, "has_parameter", None)
        return bool(has and has(name))

    def get_parameter(self, name: str) -> Any:
        return self.node.get_parameter(name)

    def declare_parameter(self, name: str, default: Any, descriptor: Any = None) -> Any:
        value = self.values.get(name, default)
        if type(default) is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default) and not (isinstance(value, list) and isinstance(default, list)):
            value = default                        # a bundle value of another type never breaks start-up
        return self.node.declare_parameter(name, value, descriptor)


def declare_fusion_params(node, bundle_defaults: bool = False) -> FusionParams:
    """Declare (or re-read) the node's parameters. ``bundle_defaults``: the defaults of every stream and
    alignment parameter come from the bundle's own stream settings (:func:`bundle_stream_settings`), so a
    params file or ``-p`` only overrides them."""
    bundle = _declare(node, "bundle", "", "model bundle folder; '' = the shipped models/default")
    if bundle_defaults:
        try:
            settings = bundle_stream_settings(resolve_bundle(bundle)[0])
        except ParameterError:
            settings = {}
        node = _BundleDefaults(node, settings)
    g = {
        "bundle": bundle,
        "device": _declare(node, "device", "auto", "auto | cpu | cuda | cuda:N"),
        "threads": _declare(node, "threads", 1, "torch (and onnxruntime) intra-op threads for inference"),
        "engine": _declare(node, "engine", "torch", "torch | onnxruntime: what runs the bundle's networks "
                           "(onnxruntime: the bundle's ONNX files; CUDA/TensorRT providers when installed)"),
        "precision": _declare(node, "precision", "fp32",
                              "fp32 | bf16 | fp16 (CUDA) | auto: autocast of the fusion step's networks"),
        "autostart": _declare(node, "autostart", True, "configure and activate at start"),
        "anchor": _declare(node, "anchor", "camera",
                           "modality whose messages trigger a fusion step; '' = use output_rate (the fusion node "
                           "defaults every stream and alignment parameter to the bundle's stream settings)"),
        "output_rate": _declare(node, "output_rate", 0.0, "fixed output rate in Hz when anchor is ''"),
        "impute_present": _declare(node, "impute_present", False, "also publish reconstructions of present modalities"),
        "imputed_std": _declare(node, "imputed_std", True,
                                "publish ~/imputed_std/<modality>: each imputed element's predictive standard "
                                "deviation (vector, tactile and audio modalities)"),
        "fallback": _declare(node, "fallback", True,
                             "publish the last value or the training mean instead of the model's imputation where "
                             "the bundle measured it did better for that outage length (vector, tactile, audio; "
                             "the source is in ~/imputed_std/<modality>)"),
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
                                 " | ".join(MESSAGE_TYPES) + " | any package/msg/Name (read through fields)"),
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
    elif kind == "depth_image":
        kwargs["max_range"] = _declare(node, p + "max_range", 10.0, "m: depth mapped to 1.0 (farther is clipped)")
    if kind in FIELD_TYPES or is_full_type_name(kind):
        kwargs["fields"] = list(_declare(node, p + "fields", default_fields(kind),
                                         "numeric field paths of the message, in model order (e.g. wrench.force.x, "
                                         "data, data[2])"))
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
        if s.message_type not in MESSAGE_TYPES and not is_full_type_name(s.message_type):
            raise ParameterError(f"{s.name}.message_type {s.message_type!r} is neither one of {list(MESSAGE_TYPES)} "
                                 "nor a full message type name such as geometry_msgs/msg/WrenchStamped")
        if s.fields and (s.message_type in FIELD_TYPES or is_full_type_name(s.message_type)):
            _check_fields(s)
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
        if s.max_range <= 0:
            raise ParameterError(f"{s.name}.max_range must be > 0")


def _check_fields(stream: StreamParams) -> None:
    from .bridge import FieldCodec, message_class

    try:
        FieldCodec(message_class(ros_type_of(stream.message_type)), stream.fields)
    except ValueError as err:
        raise ParameterError(f"{stream.name}.fields: {err}") from None


def field_count(stream: StreamParams) -> int | None:
    """Values per message of a field-mapped stream (None: a sequence field, known per message)."""
    from .bridge import FieldCodec, message_class

    return FieldCodec(message_class(ros_type_of(stream.message_type)), stream.fields).size


def stream_size(stream: StreamParams) -> int | None:
    """Values per sample of a vector stream as its parameters describe it (joints x fields, or the
    fields' values); None when not a vector stream or a sequence field leaves it open."""
    if stream.message_type == "joint_state":
        return len(stream.joint_names) * len(stream.joint_fields)
    if reads_fields(stream.message_type):
        return field_count(stream)
    return None


def bundle_mismatches(params: FusionParams, specs: list[ModalitySpec],
                      shape_fix: Callable[[str, int], str] | None = None) -> list[str]:
    """Every way the parameters do not describe the model's modalities (names, kinds, sizes, rates);
    ``shape_fix(name, size)``: how the command at hand fixes a vector size (default: the bundle expects)."""
    if params.names != [s.name for s in specs]:
        return [f"parameter modalities {params.names} != bundle modalities {[s.name for s in specs]}"]
    problems = []
    for stream, spec in zip(params.streams, specs):
        if spec.kind not in kinds_of(stream.message_type):
            fits = [name for name, (_, kinds) in MESSAGE_TYPES.items() if spec.kind in kinds]
            problems.append(f"{stream.name}: message_type {stream.message_type} cannot feed a {spec.kind} modality "
                            f"({spec.kind} comes from {' | '.join(fits)})")
            continue
        if spec.kind == "image" and stream.message_type == "depth_image" and spec.shape[0] != 1:
            problems.append(f"{stream.name}: a depth image feeds a 1-channel image modality, the model's has shape "
                            f"{list(spec.shape)}")
        if spec.kind == "vector":
            size = stream_size(stream)
            if size is not None and size != spec.shape[0]:
                what = (f"{len(stream.joint_names)} joints x {len(stream.joint_fields)} fields"
                        if stream.message_type == "joint_state" else f"{len(stream.fields)} fields of "
                                                                     f"{stream.message_type}")
                fix = shape_fix(stream.name, size) if shape_fix else f"bundle expects {spec.shape[0]}"
                problems.append(f"{stream.name}: {what} = {size} values, {fix}")
        if spec.kind == "audio" and spec.audio is not None and stream.sample_rate != spec.audio.sample_rate:
            problems.append(f"{stream.name}: sample_rate {stream.sample_rate} != the model's {spec.audio.sample_rate}")
    return problems


def check_against_bundle(params: FusionParams, specs: list[ModalitySpec]) -> None:
    """The parameters must describe exactly the bundle's modalities, with fitting message types."""
    problems = bundle_mismatches(params, specs)
    if problems:
        raise ParameterError("; ".join(problems))


ALIGNMENT_KEYS = ("anchor", "output_rate", "reset_after", "absence_after")
_STREAM_KEYS = ("topic", "message_type", "qos", "staleness", "buffer_size", "min_rate", "max_rate", "max_stamp_age")
# what a bundle's stream settings say and a node's parameter contradicting it is warned about: the data the
# model saw (per stream: topic, type, joints / fields, scaling, staleness) and how it was aligned
CONTRACT_KEYS = ("anchor", "output_rate", "modalities")
CONTRACT_STREAM_KEYS = ("topic", "message_type", "joint_names", "joint_fields", "fields", "staleness", "sample_rate",
                        "channels", "uint16_full_scale", "max_range")


def stream_settings(params: FusionParams) -> dict[str, Any]:
    """The stream and alignment parameters of ``params`` as flat parameter names (what a bundle records:
    the same names a params file sets)."""
    out: dict[str, Any] = {"modalities": list(params.names), **{k: getattr(params, k) for k in ALIGNMENT_KEYS}}
    for s in params.streams:
        p = f"{s.name}."
        out.update({p + key: getattr(s, key) for key in _STREAM_KEYS})
        kind = s.message_type
        if kind == "joint_state":
            out.update({p + "joint_names": list(s.joint_names), p + "joint_fields": list(s.joint_fields)})
        elif kind in ("float32_multiarray", "int16_multiarray"):
            out.update({p + "sample_rate": s.sample_rate, p + "channels": s.channels})
        elif kind == "tactile_image":
            out[p + "uint16_full_scale"] = s.uint16_full_scale
        elif kind == "depth_image":
            out[p + "max_range"] = s.max_range
        if kind in FIELD_TYPES or is_full_type_name(kind):
            out[p + "fields"] = list(s.fields)
    return out


def bundle_stream_settings(folder: str | Path) -> dict[str, Any]:
    """A bundle's stream settings from its manifest (flat parameter names): everything the training run
    read its bags with; a bundle from before they were recorded gives its alignment only. {} if none."""
    import json

    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ParameterError(f"cannot read the manifest of bundle {folder}: {err}") from None
    extra = manifest.get("extra", {}) if isinstance(manifest, dict) else {}
    settings = extra.get("streams")
    if isinstance(settings, dict):
        return dict(settings)
    alignment = extra.get("training", {}).get("alignment", {})
    return {k: v for k, v in alignment.items() if k in ALIGNMENT_KEYS}


def contradictions(given: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Each given parameter (params file, -p) that contradicts the bundle's stream settings, in words."""
    out = []
    names = settings.get("modalities", [])
    for name, value in sorted(given.items()):
        head, _, tail = name.partition(".")
        contract = name in CONTRACT_KEYS or (head in names and tail in CONTRACT_STREAM_KEYS)
        if not contract or name not in settings:
            continue
        trained = settings[name]
        same = (float(value) == float(trained) if isinstance(trained, (int, float)) and not isinstance(trained, bool)
                and isinstance(value, (int, float)) else list(value) == list(trained)
                if isinstance(trained, list) and isinstance(value, (list, tuple)) else value == trained)
        if not same:
            out.append(f"{name} = {value!r}, but the bundle was trained with {trained!r}")
    return out


def fusion_params_for_bundle(folder: str | Path, params_file: str | Path | None = None,
                             overrides: dict[str, Any] | None = None, node_name: str = "mdgm_fusion",
                             fallback_file: str | Path | None = None) -> tuple[FusionParams, list[str]]:
    """The stream parameters a bundle was trained with, ``params_file`` and ``overrides`` on top; a bundle
    without recorded streams starts from ``fallback_file`` (the shipped params file) and its alignment.
    Returns the parameters and the contradictions of the given values with the bundle's."""
    settings = bundle_stream_settings(folder)
    recorded = "modalities" in settings
    values: dict[str, Any] = {} if recorded else _file_values(fallback_file, node_name) if fallback_file else {}
    values.update(settings)
    given = {**(_file_values(params_file, node_name) if params_file else {}), **(overrides or {})}
    values.update(given)
    values.pop("bundle", None)
    source = _YamlParameters(values)
    params = declare_fusion_params(source)
    unknown = sorted(set(values) - source.used)
    if unknown:
        raise ParameterError(f"unknown parameters {unknown}")
    return params, contradictions(given, settings)


def _file_values(path: str | Path, node_name: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParameterError(f"cannot read params file {path}: {err}") from None
    if not isinstance(document, dict):
        raise ParameterError(f"{path}: not a ROS params file (a mapping of node names)")
    section = (document.get(node_name) or document.get(f"/{node_name}") or {}).get("ros__parameters")
    if section is None:
        raise ParameterError(f"{path}: no '{node_name}: ros__parameters:' section")
    return flatten_parameters(section)


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
    values = {**_file_values(path, node_name), **(overrides or {})}
    source = _YamlParameters(values)
    params = declare_fusion_params(source)
    unknown = sorted(set(values) - source.used)
    if unknown:
        raise ParameterError(f"{path}: unknown parameters {unknown}")
    return params
