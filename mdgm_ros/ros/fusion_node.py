"""``fusion_node``: the lifecycle node that fuses live sensor streams with a model bundle.

Lifecycle: configure loads the bundle and checks it against the parameters (and offers
``~/reload_model`` and ``~/model_info``); activate creates the subscriptions, publishers and timers;
deactivate destroys them and moves the model off the GPU; cleanup unloads the model. With
``autostart`` (default) the node configures and activates itself at start, as bringup nodes do.

Topics (docs/nodes.rst, :mod:`mdgm_ros.ros.outputs`): ``~/latent`` (mdgm_ros/Latent), ``~/anomaly``
(mdgm_ros/AnomalyScores), ``~/imputed/<modality>`` (the modality's own type; audio: mdgm_ros/ImputedArray),
``/diagnostics``, ``~/model_info`` (mdgm_ros/ModelInfo, latched); JointState mirrors with ``standard_mirrors``.
With no ``bundle`` parameter the node runs the shipped ``models/default``.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.task import Future
from std_srvs.srv import Trigger

from ..core import Bundle, BundleError, Fuser, load_bundle, select_device
from ..core.engine.bundle import within_roots
from ..core.engine.fallback import SOURCES, FallbackPolicy, Published
from ..core.engine.filter import TemporalFilter
from ..core.engine.loop import autocast_dtype
from ..core.families.temporal import is_temporal, options_of
from ..streams import bridge
from ..streams.alignment import Aligner, PushResult
from ..streams.kinds import OutOfRange, Stream, make_stream
from ..streams.params import (
    FusionParams,
    ParameterError,
    blocked_while_configured,
    bundle_stream_settings,
    check_against_bundle,
    contradictions,
    declare_fusion_params,
    fusion_params_with,
    resolve_bundle,
    unknown_overrides,
)
from .diagnostics import StreamCheck, StreamStats, anomaly_status, model_status, stream_status
from .guard import GuardedNode, node_main, until_shutdown
from .outputs import LATCHED_INFO, STD_KINDS, FusionOutputs, ModelInfo, model_info_message

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
FUTURE_TOLERANCE_S = 1.0   # a stamp further ahead of the node's clock is refused (future_stamp)
RESET_CONFIRM = 5          # messages in a row, far back, that confirm a backwards jump (bag loop)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Runtime:
    """Everything a loaded bundle brings; swapped as one reference on reload."""

    bundle: Bundle
    streams: dict[str, Stream]
    fuser: Fuser | TemporalFilter
    device: torch.device
    step_s: float | None = None          # temporal bundles: the time step the model was trained at
    # the bundle's fallback table applied to the imputations (None: it measured none); used while ``fallback``
    fallback: FallbackPolicy | None = None

    @property
    def temporal(self) -> bool:
        return isinstance(self.fuser, TemporalFilter)


class FusionNode(GuardedNode, LifecycleNode):
    def __init__(self, **kwargs: Any):
        super().__init__("mdgm_fusion", **kwargs)
        self.param_error: str | None = None
        try:
            self.params: FusionParams | None = declare_fusion_params(self, bundle_defaults=True)
        except ParameterError as err:
            self.params, self.param_error = None, str(err)
            self.get_logger().error(f"invalid parameters: {err}")
        self.runtime: Runtime | None = None
        self.aligner: Aligner | None = None
        self.stats: dict[str, StreamStats] = {}
        self._last_warn: dict[tuple[str, str], float] = {}
        self._subs: list = []
        self._timers: list = []
        self._pubs: dict[str, Any] = {}
        self._outputs: FusionOutputs | None = None
        self._topics: dict[str, str] = {}                 # modality -> resolved input topic
        self._incompatible_warned: set[tuple[str, str]] = set()
        self._info_pub = None
        self._reload_srv = None
        self._latency_ms: deque = deque(maxlen=1000)
        self._compute_ms: deque = deque(maxlen=1000)
        self._published = 0
        self._last_output = float("-inf")
        self._steady = rclpy.clock.Clock(clock_type=rclpy.clock.ClockType.STEADY_TIME)
        self._errors = Counter()
        self._reloading = threading.Lock()
        self._last_step_ns: int | None = None             # temporal bundles: the last step's stamp
        self._step_periods: deque = deque(maxlen=64)
        self._filter_resets = 0
        self.bundle_roots = self._declare_bundle_roots()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:                                              # re-read: values set while unconfigured apply now
            self.params, self.param_error = declare_fusion_params(self, bundle_defaults=True), None
        except ParameterError as err:
            self.params, self.param_error = None, str(err)
        if self.params is None:
            self.get_logger().error(f"cannot configure: {self.param_error}")
            return TransitionCallbackReturn.FAILURE
        self._warn_unknown_parameters()
        torch.set_num_threads(self.params.threads)
        try:
            path, origin = resolve_bundle(self.params.bundle)
            self.get_logger().info(f"bundle {path} ({origin})")
            self._warn_contradictions(path)
            self.runtime = self._load(path)
        except (BundleError, ParameterError, RuntimeError, ValueError, OSError) as err:
            self.get_logger().error(f"cannot configure: {err}")
            return TransitionCallbackReturn.FAILURE
        self.aligner = Aligner([s.alignment_config() for s in self.runtime.streams.values()],
                               reset_after_s=self.params.reset_after, future_tolerance_s=FUTURE_TOLERANCE_S,
                               reset_confirm=RESET_CONFIRM)
        self.stats = {name: StreamStats() for name in self.params.names}
        self._info_pub = self.create_publisher(ModelInfo, "~/model_info", LATCHED_INFO)
        self._reload_srv = self.create_service(Trigger, "~/reload_model", self._on_reload)
        self._publish_model_info()
        precision = "" if self.params.precision == "fp32" else f", networks under autocast ({self.params.precision})"
        engine = "" if self.params.engine == "torch" else f", networks in {self.params.engine}"
        self.get_logger().info(f"configured with {self.runtime.bundle.model_id} on {self.runtime.device}"
                               f"{precision}{engine}")
        for line in _older_bundle_notes(self.runtime, self.params.prediction_horizon):
            self.get_logger().info(line)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.runtime is not None and self.params is not None
        self.runtime.bundle.model.to(self.runtime.device)
        self._pubs = {"diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)}
        self._outputs = FusionOutputs(self, self.runtime.streams, self.params.standard_mirrors, RELIABLE)
        for name, stream in self.runtime.streams.items():
            self._subscribe(name, stream)
        # steady: diagnostics keep coming when use_sim_time is on and /clock is silent
        self._timers.append(self.create_timer(self.params.diagnostics_period, self._publish_diagnostics,
                                              clock=self._steady))
        if not self.params.anchor:
            self._timers.append(self.create_timer(1.0 / self.params.output_rate, self._on_tick))
        self.get_logger().info("active")
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self, name: str, stream: Stream) -> None:
        """Relative topic (namespace and remaps apply); the preset QoS, refined by qos_overrides.<topic>.*;
        an incompatible publisher (type or QoS) gives one WARN and a diagnostics entry instead of silence."""
        qos = _input_qos(stream.params.qos)              # a fresh profile: the overrides modify it in place
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda info, n=name: self._on_incompatible(n, "qos", info),
            incompatible_type=lambda info, n=name: self._on_incompatible(n, "type", info))
        sub = self.create_subscription(stream.input_type, stream.params.topic,
                                       lambda msg, n=name: self._on_message(n, msg), qos, event_callbacks=events,
                                       qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._subs.append(sub)
        self._topics[name] = sub.topic_name

    def _on_incompatible(self, name: str, kind: str, info: Any) -> None:
        """rmw event (QoS; type where the rmw reports it)."""
        stats = self.stats.get(name)
        if stats is not None:
            stats.incompatible[kind] += 1
            policy = getattr(getattr(info, "last_policy_kind", None), "name", "")
            self._warn_incompatible(name, kind, f"policy {policy}" if policy else "")

    def _check_publisher_types(self) -> None:
        """Publishers of another type on an input topic, from the graph (Fast DDS sends no incompatible_type
        event to the subscription): counted while they exist, warned about once."""
        for name, topic in self._topics.items():
            expected = _type_name(self.runtime.streams[name].input_type)
            wrong = sorted({i.topic_type for i in self.get_publishers_info_by_topic(topic)} - {expected})
            stats = self.stats[name]
            if wrong:
                stats.incompatible["type"] = len(wrong)
                self._warn_incompatible(name, "type", ", ".join(wrong))
            else:
                stats.incompatible.pop("type", None)

    def _warn_incompatible(self, name: str, kind: str, detail: str) -> None:
        if (name, kind) in self._incompatible_warned:
            return
        self._incompatible_warned.add((name, kind))
        topic = self._topics.get(name, "?")
        if kind == "type":
            expected = _type_name(self.runtime.streams[name].input_type) if self.runtime else "?"
            text = (f"a publisher on {topic} has another message type ({detail}): {name} expects {expected} "
                    f"(set {name}.message_type, or remap the topic)")
        else:
            text = (f"a publisher on {topic} offers a QoS this subscription cannot match ({detail}): "
                    f"set {name}.qos or qos_overrides.{topic}.subscription.*")
        self.get_logger().warn(text)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_io()
        self._reset_filter("deactivated")
        if self.runtime is not None:
            self.runtime.bundle.model.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_io()
        if self._reload_srv is not None:
            self.destroy_service(self._reload_srv)
        if self._info_pub is not None:
            self.destroy_publisher(self._info_pub)
        self._reload_srv = self._info_pub = None
        self.runtime, self.aligner = None, None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.on_cleanup(state)

    def _release_io(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        for timer in self._timers:
            self.destroy_timer(timer)
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        if self._outputs is not None:
            self._outputs.destroy()
        self._subs, self._timers, self._pubs, self._outputs = [], [], {}, None
        if self.aligner is not None:
            self.aligner.clear()

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Validate with the node's own checks; apply the cheap ones live; refuse, with the reason, what needs
        a reconfigure while a model is loaded (deactivate, cleanup, set, configure)."""
        changes = {p.name: p.value for p in parameters}
        try:
            candidate = fusion_params_with(self, changes)
        except ParameterError as err:
            return SetParametersResult(successful=False, reason=str(err))
        if self.runtime is not None:
            blocked = blocked_while_configured(list(changes), self.params.names if self.params else [])
            if blocked:
                return SetParametersResult(successful=False, reason=(
                    f"{', '.join(blocked)} cannot change while a model is loaded: deactivate and clean up the "
                    "node, set it, then configure (live: staleness, rate bounds, impute_present, imputed_std, "
                    "fallback, warn_throttle, prediction_horizon, absence_after)"))
            self._apply_live(candidate)
        return SetParametersResult(successful=True)

    def _apply_live(self, params: FusionParams) -> None:
        fallback_changed = self.params is not None and self.params.fallback != params.fallback
        self.params = params
        runtime, aligner = self.runtime, self.aligner
        runtime.fuser.impute_present = params.impute_present
        described = (runtime.fuser.predictive_std, getattr(runtime.fuser, "horizon", None))
        runtime.fuser.predictive_std = _std_names(runtime.streams, params.imputed_std)
        if self._outputs is not None:
            self._outputs.std_names = runtime.fuser.predictive_std
        if runtime.temporal:
            runtime.fuser.horizon = published_horizon(params.prediction_horizon, runtime.bundle.calibration)
        if described != (runtime.fuser.predictive_std, getattr(runtime.fuser, "horizon", None)) or fallback_changed:
            self._publish_model_info()                   # it says which imputations carry a std, and the horizon
        for stream_params in params.streams:
            stream = runtime.streams[stream_params.name]
            stream.params = stream_params
            if aligner is not None:                      # staleness (and audio's gap bound follow it)
                aligner.buffers[stream.name].config = stream.alignment_config()

    def _warn_unknown_parameters(self) -> None:
        overrides = list(getattr(self, "_parameter_overrides", {}))      # rclpy keeps the start-up values here
        unknown = unknown_overrides(overrides, list(self._parameters))
        if unknown:
            self.get_logger().warn(f"unknown parameters ignored (typo or old name?): {', '.join(unknown)}")

    def _warn_contradictions(self, bundle: str) -> None:
        """One WARN per start-up value (params file, -p) that contradicts what the bundle was trained with."""
        given = {name: p.value for name, p in getattr(self, "_parameter_overrides", {}).items()}
        settings = bundle_stream_settings(bundle)
        if not settings:
            self.get_logger().info("the bundle records no stream settings: the parameters alone describe the streams")
        for text in contradictions(given, settings):
            self.get_logger().warning(f"parameter {text}: the model sees other data than it learned from "
                                      "(leave the parameter out to use the bundle's)")

    # ------------------------------------------------------------------ model loading
    def _load(self, path: str) -> Runtime:
        assert self.params is not None
        path = resolve_bundle(path)[0]
        device = select_device(self.params.device)
        bundle = self._load_bundle(path, device)
        specs = list(bundle.model.config.modalities)
        check_against_bundle(self.params, specs)
        streams = {p.name: make_stream(p, spec, _normalization(bundle.model, spec.name), _bounds(spec))
                   for p, spec in zip(self.params.streams, specs)}
        amp = autocast_dtype(self.params.precision, device)             # ValueError: fp16 on a CPU
        if is_temporal(bundle.model):                    # the family says it carries a state
            return self._temporal_runtime(bundle, streams, device, amp)
        fuser = Fuser(bundle.model, bundle.calibration, impute_present=self.params.impute_present, amp=amp,
                      predictive_std=_std_names(streams, self.params.imputed_std))
        return Runtime(bundle, streams, fuser, device, fallback=_fallback_policy(bundle, streams))

    def _load_bundle(self, path: str, device: torch.device) -> Bundle:
        """The bundle, with its networks in torch or (``engine: onnxruntime``) in onnxruntime sessions."""
        if self.params.engine == "onnxruntime":
            from ..onnx_engine import load_ort_bundle, providers_for

            return load_ort_bundle(path, providers_for(device), self.params.threads, device=device,
                                   expect_modalities=self.params.names)
        return load_bundle(path, device=device, expect_modalities=self.params.names)

    def _temporal_runtime(self, bundle: Bundle, streams: dict[str, Stream], device: torch.device,
                          amp: torch.dtype | None) -> Runtime:
        """A stateful filter (one state, batch 1); anomaly scores are its one-step predictive ones, which
        the bundle's calibration standardises (the trainer calibrates them so for a temporal bundle)."""
        if options_of(bundle.model).action_dim:
            raise ValueError(f"this temporal bundle needs an action input of size {options_of(bundle.model).action_dim}"
                             "; the fusion node has none (train with action_dim 0)")
        step_s = (bundle.manifest.get("extra") or {}).get("temporal", {}).get("step_s")
        fuser = TemporalFilter(bundle.model, bundle.calibration, impute_present=self.params.impute_present,
                               horizon=published_horizon(self.params.prediction_horizon, bundle.calibration),
                               amp=amp,
                               predictive_std=_std_names(streams, self.params.imputed_std))
        return Runtime(bundle, streams, fuser, device, float(step_s) if step_s else None,
                       _fallback_policy(bundle, streams))

    def _declare_bundle_roots(self) -> list[str]:
        """Read-only: folders reloads may load bundles from (the start-up bundle's folder is always one)."""
        roots = list(self.declare_parameter("bundle_roots", default_bundle_roots(), ParameterDescriptor(
            description="folders ~/reload_model may load bundles from (read-only)", read_only=True)).value)
        start = self.params.bundle if self.params is not None else ""
        if start:
            roots.append(os.path.dirname(os.path.abspath(start)))
        return [r for r in roots if r]

    async def _on_reload(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Load in a background thread (the streams keep being served), then swap one reference."""
        path = str(self.get_parameter("bundle").value)
        if not self._reloading.acquire(blocking=False):
            response.success, response.message = False, "refused: a reload is already in progress"
            return response
        try:
            done: Future = Future()
            threading.Thread(target=self._load_in_background, args=(path, done), daemon=True,
                             name="bundle-reload").start()
            runtime, error = await done
        finally:
            self._reloading.release()
        if runtime is not None and self.runtime is None:
            runtime, error = None, "the node was cleaned up during the reload"
        if runtime is None:
            response.success, response.message = False, f"refused {path[:300]!r}: {error}"
            self.get_logger().error(response.message)
            return response
        old = self.runtime.bundle.model_id if self.runtime else None
        self.runtime = runtime                                   # one reference: an atomic swap (a fresh state)
        self._last_step_ns = None
        self._publish_model_info()
        response.success, response.message = True, f"loaded {runtime.bundle.model_id} (was {old})"
        self.get_logger().info(response.message)
        return response

    def _load_in_background(self, path: str, done: Future) -> None:
        try:
            if path:                                     # '' = the shipped default, inside the roots
                within_roots(path, self.bundle_roots)
            result = (self._load(path), None)
        except (BundleError, ParameterError, RuntimeError, ValueError, OSError) as err:
            result = (None, str(err)[:1000])
        except Exception as err:  # noqa: BLE001 - the service must answer whatever broke
            result = (None, f"{type(err).__name__}: {str(err)[:500]}")
        done.set_result(result)
        executor = self.executor
        if executor is not None:
            executor.wake()                                      # resume the waiting service callback

    def _publish_model_info(self) -> None:
        if self._info_pub is None or self.runtime is None:
            return
        self._info_pub.publish(model_info_message(self.runtime, self, self.params.standard_mirrors))

    # ------------------------------------------------------------------ streams
    def _warn(self, key: tuple[str, str], text: str) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= (self.params.warn_throttle if self.params else 5.0):
            self._last_warn[key] = now
            self.get_logger().warn(text)

    def _reject(self, name: str, reason: str, detail: str) -> None:
        stats = self.stats[name]
        stats.rejects[reason] += 1
        stats.last_reject = time.monotonic()
        self._warn((name, reason), f"rejected {name} message ({reason}, {stats.rejects[reason]} so far): {detail}")

    def _on_message(self, name: str, msg: Any) -> None:
        runtime, aligner = self.runtime, self.aligner
        if runtime is None or aligner is None:
            return
        stats = self.stats[name]
        stats.received += 1
        stream = runtime.streams[name]
        now_ns = self.get_clock().now().nanoseconds
        if aligner.note_clock(now_ns):                   # /clock went back (sim reset, bag loop with --clock)
            self.get_logger().info("clock jumped back: buffers cleared")
            self._reset_filter("clock jumped back")
        try:
            stamp_ns = bridge.header_stamp_ns(msg) if stream.stamped else now_ns
            array = stream.to_array(msg)
        except bridge.ConversionError as err:
            self._reject(name, err.reason, err.detail)
            return
        except Exception as err:  # an unforeseen malformed message must not kill the node
            self._reject(name, "invalid", f"{type(err).__name__}: {err}")
            return
        result = aligner.push(name, stamp_ns, array, now_ns=now_ns)
        if result in PushResult.REJECTED:
            self._reject(name, result, f"stamp {stamp_ns} (newest {aligner.buffers[name].newest}, clock {now_ns})")
            return
        if result == PushResult.RESET:
            self.get_logger().info(f"{name} stamps jumped back consistently (bag loop or sim reset): buffers cleared")
            self._reset_filter(f"{name} stamps jumped back")
        stats.accepted += 1
        stats.arrivals.append(time.monotonic())
        if name == self.params.anchor:
            frame = self.params.frame_id or bridge.frame_id_of(msg)
            self._fuse(stamp_ns, (name, array), frame)

    def _on_tick(self) -> None:
        stamp_ns = self.get_clock().now().nanoseconds
        self.aligner.note_clock(stamp_ns)
        if self.aligner.note_anchor(stamp_ns):           # the clock went back (sim time reset, bag loop)
            self.get_logger().info("clock jumped back: buffers cleared")
            self._reset_filter("clock jumped back")
        self._fuse(stamp_ns, None, self.params.frame_id)

    # ------------------------------------------------------------------ fusion
    def _fuse(self, stamp_ns: int, anchor: tuple[str, np.ndarray] | None, frame_id: str) -> None:
        """Align, then run the model; the latent goes out as soon as the posterior exists (before the
        decoders), the anomaly scores, imputations and (temporal bundles) predicted latents after it."""
        runtime = self.runtime
        started = time.perf_counter()
        sample = self.aligner.sample(stamp_ns, anchor)
        present = sample.mask(runtime.streams)
        for name, stats in self.stats.items():
            stats.present, stats.age_s = sample.present[name], sample.age_s[name]
        temporal = runtime.temporal
        if temporal:
            self._check_filter_time(runtime, stamp_ns)
        if not any(present) and not (temporal and bool(runtime.fuser.state.started[0])):
            return                                       # nothing observed and no memory to predict from
        outputs = self._outputs
        if outputs.model_id != runtime.bundle.model_id:        # first step, or a reloaded bundle
            calibration = runtime.bundle.calibration
            outputs.set_model(runtime.bundle.model_id, calibration.threshold if calibration else None)
            outputs.std_names = runtime.fuser.predictive_std

        entered = list(present)                          # the streams whose experts entered the posterior

        def publish_latent(result) -> bool:
            if _non_finite_latent(result):               # never publish a NaN or inf: count and skip the step
                self._skip_non_finite("latent")
                return False
            if result.out_of_range is not None:
                entered[:] = self._note_out_of_range(list(runtime.streams), present, result.out_of_range[0].tolist())
            outputs.publish_latent(result, entered, stamp_ns, frame_id, runtime.fuser.steps if temporal else 0)
            self._latency_ms.append((self.get_clock().now().nanoseconds - stamp_ns) / 1e6)
            return True

        expected = [self._absence_counts(name, sample.age_s[name]) for name in runtime.streams]
        try:
            result = self._infer(runtime, sample, present, publish_latent, expected)
            if result is not None:
                sources = self._fall_back(runtime, sample, result, entered)
                self._publish_rest(runtime, result, entered, stamp_ns, frame_id, sources)
        except Exception as err:  # keep running; the counter and the log say what broke
            if _shutting_down(self.context, err):        # SIGINT: rclpy's signal thread closed the context
                return
            self._errors[type(err).__name__] += 1
            self._warn(("inference", type(err).__name__), f"fusion step failed: {type(err).__name__}: {err}")
            if temporal:                                 # a half-done step leaves no trustworthy state
                self._reset_filter("the step failed")
            return
        if result is None:                               # the latent was not finite: nothing published
            if temporal:
                self._reset_filter("non-finite state")
            return
        self._compute_ms.append((time.perf_counter() - started) * 1e3)

    def _note_out_of_range(self, names: list[str], present: list[bool], outside: list[bool]) -> list[bool]:
        """Count (and warn, throttled) the streams outside their training range; the presence mask without
        them (the model left their experts out)."""
        for name, out in zip(names, outside):
            if out:
                stats = self.stats[name]
                stats.out_of_range += 1
                self._warn((name, "out_of_range"),
                           f"{name} is outside its training range ({stats.out_of_range} samples so far): left out "
                           "of the fusion, imputed from the other streams and flagged as anomalous")
        return [p and not out for p, out in zip(present, outside)]

    def _fall_back(self, runtime: Runtime, sample, result, entered: list[bool]) -> Published | None:
        """The bundle's fallback table applied to this step's imputations (``fallback``): the last value
        or the training mean where they are expected to do better for the outage so far (the held-out errors,
        the model's scaled by this step's predictive std); counted per stream. None: the model's imputations
        stand."""
        policy = runtime.fallback
        if policy is None:
            return None
        arrays = sample.arrays
        policy.observe({n: torch.from_numpy(np.ascontiguousarray(arrays[n], dtype=np.float32))[None]
                        for n, seen in zip(runtime.streams, entered) if seen and n in policy.enabled},
                       np.asarray([entered], bool))
        if not self.params.fallback or not result.imputed:
            return None
        published = policy.apply(result, predictive=runtime.fuser.predictive_std)
        for name, source in published.source.items():
            if source[0]:
                self.stats[name].fallback[SOURCES[int(source[0])]] += 1
        return published

    def _publish_rest(self, runtime: Runtime, result, present, stamp_ns: int, frame_id: str,
                      sources: Published | None = None) -> None:
        """After ~/latent: scores, imputations and (temporal) the predicted latents."""
        self._published += 1
        self._last_output = time.monotonic()
        bad = _non_finite_part(result, present)
        if bad is not None:                              # the latent is out; the rest of this step is not
            self._skip_non_finite(bad)
            return
        if result.scores is not None:
            for name, score in zip(runtime.streams, result.scores[0].tolist()):
                self.stats[name].score = score
        self._outputs.publish_derived(result, present, stamp_ns, frame_id, sources)
        if runtime.temporal and getattr(result, "predicted_mean", None) is not None:
            self._publish_prediction(runtime, result, stamp_ns, frame_id)

    # ------------------------------------------------------------------ temporal state
    def _check_filter_time(self, runtime: Runtime, stamp_ns: int) -> None:
        """The state belongs to a time line: a step back in time, or a gap longer than reset_after,
        starts it afresh (the buffer resets and clock jumps reset it where they are seen)."""
        last, self._last_step_ns = self._last_step_ns, stamp_ns
        if last is None:
            return
        if stamp_ns <= last:
            self._reset_filter("the step's stamp went back")
        elif stamp_ns - last > self.params.reset_after * 1e9:
            self._reset_filter(f"no step for {(stamp_ns - last) / 1e9:.2f} s")
        else:
            self._step_periods.append(stamp_ns - last)

    def _reset_filter(self, reason: str) -> None:
        runtime = self.runtime
        if runtime is not None and runtime.fallback is not None:    # a new time line: forget the last values
            runtime.fallback.reset()
        if runtime is None or not runtime.temporal:
            return
        if bool(runtime.fuser.state.started.any()):
            self._filter_resets += 1
            self.get_logger().info(f"temporal state reset: {reason} ({self._filter_resets} so far)")
        runtime.fuser.reset()
        self._step_periods.clear()

    def _publish_prediction(self, runtime: Runtime, result, stamp_ns: int, frame_id: str) -> None:
        """~/latent_prediction: k future steps from this one, one model time step apart (the bundle's
        step, else the median period of this node's steps; nothing until one is known)."""
        if runtime.step_s:
            step_ns = int(runtime.step_s * 1e9)
        elif self._step_periods:
            step_ns = int(np.median(self._step_periods))
        else:
            return
        self._outputs.publish_prediction(result.predicted_mean[0].cpu().numpy(),
                                         result.predicted_std[0].cpu().numpy(), stamp_ns, step_ns, frame_id)

    def _skip_non_finite(self, part: str) -> None:
        self._errors["non_finite_output"] += 1
        self._warn(("inference", "non_finite"), f"fusion step output not published: non-finite {part} "
                                                f"({self._errors['non_finite_output']} so far)")

    def _absence_counts(self, name: str, age_s: float) -> bool:
        """A stream that published since start and has been silent for ``absence_after`` s is scored by its
        absence; a shorter gap (a late message) or a cleared buffer (age NaN) is not."""
        return self.stats[name].accepted > 0 and age_s >= self.params.absence_after

    @staticmethod
    def _infer(runtime: Runtime, sample, present: list[bool], on_latent, expected: list[bool]):
        device = runtime.device
        raw = {n: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None].to(device)
               for n, a in sample.arrays.items()}
        mask = torch.tensor([present], dtype=torch.bool)     # stays on the host: no device round trip
        # the conversion of each message checked it against the training bounds (kinds.OutOfRange)
        outside = torch.tensor([[isinstance(sample.arrays.get(n), OutOfRange) for n in runtime.streams]])
        return runtime.fuser(raw, mask, on_latent=on_latent, expected=torch.tensor([expected], dtype=torch.bool),
                             out_of_range=outside)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        runtime = self.runtime
        if runtime is None or "diagnostics" not in self._pubs:
            return
        params, now, window = self.params, time.monotonic(), self.params.diagnostics_window
        prefix, model_id = self.get_fully_qualified_name(), runtime.bundle.model_id
        clock_ns = self.get_clock().now().nanoseconds
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        self._check_publisher_types()
        for p in params.streams:
            stats = self.stats[p.name]
            newest = self.aligner.buffers[p.name].newest if self.aligner is not None else None
            stamp_age = (clock_ns - newest) / 1e9 if newest is not None and clock_ns else float("nan")
            check = StreamCheck(self._topics.get(p.name, p.topic), p.staleness, p.min_rate, p.max_rate,
                                params.rate_tolerance, p.max_stamp_age)
            array.status.append(stream_status(f"{prefix}: {p.name}", stats, check, now, window, stamp_age, model_id))
        waiting_for_clock = self._waiting_for_clock(clock_ns)
        array.status.append(model_status(f"{prefix}: model", self._model_values(runtime), self._published,
                                         now - self._last_output, window, waiting_for_clock, model_id))
        calibration = runtime.bundle.calibration
        thresholds = dict(calibration.threshold) if calibration else {}
        array.status.append(anomaly_status(f"{prefix}: anomaly", {n: self.stats[n].score for n in runtime.streams},
                                           thresholds, model_id))
        self._pubs["diagnostics"].publish(array)

    def _waiting_for_clock(self, clock_ns: int) -> bool:
        """use_sim_time on and no /clock yet: warn (throttled), since nothing else would say why all is quiet."""
        if not (self.get_parameter("use_sim_time").value and clock_ns == 0):
            return False
        self._warn(("clock", "missing"), "use_sim_time is true and no /clock has arrived: the node has no time "
                                         "and publishes nothing (start the simulator or `play --clock`)")
        return True

    def _model_values(self, runtime: Runtime) -> dict:
        latency = np.asarray(self._latency_ms or [np.nan])
        compute = np.asarray(self._compute_ms or [np.nan])
        return {"model_id": runtime.bundle.model_id, "fusion": runtime.bundle.model.fusion,
                "device": str(runtime.device), "engine": self.params.engine if self.params else "torch",
                "latency_p50_ms": round(float(np.median(latency)), 3),
                "latency_max_ms": round(float(latency.max()), 3),
                "inference_p50_ms": round(float(np.median(compute)), 3),
                "buffer_resets": self.aligner.resets if self.aligner else 0,
                **({"filter_steps": runtime.fuser.steps, "filter_resets": self._filter_resets}
                   if runtime.temporal else {}),
                "callback_errors": self.callback_error_total,
                **{f"errors_{k}": v for k, v in self._errors.items()}}


def published_horizon(requested: int, calibration) -> int:
    """The steps ~/latent_prediction carries: ``prediction_horizon``, but no further than the predicted
    latent beat "nothing changes" on the bundle's held-out data (where the bundle measured it)."""
    useful = None if calibration is None else calibration.useful_horizon
    return requested if useful is None else min(requested, useful)


def _older_bundle_notes(runtime: Runtime, requested_horizon: int) -> list[str]:
    """What a bundle trained before training bounds and the predictive std's calibration does differently,
    and a prediction horizon cut to where the bundle's prediction helps."""
    model, calibration, notes = runtime.bundle.model, runtime.bundle.calibration, []
    unbounded = [n for n, s in runtime.streams.items() if s.spec.kind in ("vector", "tactile")
                 and model.feature_bounds(n) is None]
    if unbounded:
        notes.append(f"this bundle has no training bounds for {', '.join(unbounded)}: values beyond 1000 training "
                     "standard deviations are refused, nearer ones are fused (retrain to score them as out of range)")
    if runtime.temporal and runtime.fuser.horizon < requested_horizon:
        notes.append(f"~/latent_prediction carries {runtime.fuser.horizon} of the {requested_horizon} steps "
                     "asked for: further ahead the bundle's prediction did not beat 'nothing changes' on its "
                     "held-out data")
    if runtime.fallback is None:
        notes.append("this bundle measured no fallback table: the model's imputation is published for every "
                     "outage length (`mdgm-ros calibrate` on bags it has not seen measures where the last value or "
                     "the training mean does better)")
    uncalibrated = sorted(n for n in runtime.fuser.predictive_std
                          if calibration is None or n not in calibration.predictive_scale)
    if uncalibrated:
        notes.append(f"this bundle did not calibrate the predictive std of {', '.join(uncalibrated)}: "
                     "~/imputed_std is moment-matched but not scaled to 90 % coverage (retrain to calibrate it)")
    return notes


def _fallback_policy(bundle: Bundle, streams: dict[str, Stream]) -> FallbackPolicy | None:
    """The bundle's fallback table over the modalities whose imputation can say where it came from
    (their ~/imputed_std/<m> carries the source: vector, tactile, audio); None where it measured none."""
    table = None if bundle.calibration is None else bundle.calibration.fallback_table
    if table is None:
        return None
    means = bundle.training_means()
    return FallbackPolicy(bundle.model, table, means,
                          enabled=[n for n, s in streams.items() if s.spec.kind in STD_KINDS])


def _std_names(streams: dict[str, Stream], enabled: bool) -> frozenset[str]:
    """The modalities whose imputations carry their predictive std (``imputed_std``; images never)."""
    return frozenset(n for n, s in streams.items() if s.spec.kind in STD_KINDS) if enabled else frozenset()


def _bounds(spec) -> tuple[np.ndarray, np.ndarray] | None:
    """The training bounds of a vector or tactile modality's raw values (None: the bundle has none)."""
    norm = spec.normalization
    if spec.kind not in ("vector", "tactile") or norm is None or norm.low is None:
        return None
    return norm.low, norm.high


def _normalization(model, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The bundle's (mean, std) of a modality's raw values for the range check (None if not normalised)."""
    mean, std = (t.detach().cpu().numpy() for t in model.normalization_stats(name))
    return (mean, std) if mean.ndim else None


def _finite(values: torch.Tensor) -> bool:
    """One numpy check (no torch op dispatch on the hot path; a CPU tensor's numpy view is free)."""
    return bool(np.isfinite(values.detach().cpu().numpy()).all())


def _non_finite_latent(result) -> bool:
    return not (_finite(result.latent_mean) and _finite(result.latent_std))


def _non_finite_part(result, present: list[bool]) -> str | None:
    """Which output of a fusion step holds NaN or inf (scores of missing modalities are NaN by design)."""
    if _non_finite_latent(result):
        return "latent"
    if result.scores is not None:
        scores = result.scores[0].detach().cpu().numpy()[np.asarray(present, bool)]
        if not (bool(np.isfinite(scores).all()) and _finite(result.total_score)):
            return "anomaly score"
    for name, imputed in result.imputed.items():
        if not _finite(imputed.mean):
            return f"imputed {name}"
    return None


def _type_name(kind: type) -> str:
    return f"{kind.__module__.split('.')[0]}/msg/{kind.__name__}"


def _input_qos(preset: str) -> QoSProfile:
    if preset == "sensor_data":                          # rclpy's qos_profile_sensor_data, as a fresh copy
        return QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def default_bundle_roots() -> list[str]:
    """The package's models/ (source checkout or installed share) and the user's model folder."""
    roots = [str(Path(__file__).resolve().parents[2] / "models")]
    try:
        from ament_index_python.packages import get_package_share_directory
        roots.append(str(Path(get_package_share_directory("mdgm_ros")) / "models"))
    except Exception:  # noqa: BLE001 - not installed with colcon
        pass
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    roots.append(os.path.join(data_home, "mdgm_ros", "models"))
    return roots


@node_main
def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = FusionNode()
    if node.params is None:                      # an invalid value: one line, a non-zero exit
        print(f"error: invalid parameters: {node.param_error}", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        with until_shutdown(node.context):
            if node.params is not None and node.params.autostart:
                node.trigger_configure()
                if node.runtime is not None:
                    node.trigger_activate()
            executor.spin()
    finally:
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    _exit_without_teardown(0)
    return 0


def _shutting_down(context, err: BaseException) -> bool:
    """True when ``err`` comes from the context closing under the step (SIGINT: rclpy's signal thread
    shuts the context down while a callback runs, so a publish can fail before ``ok()`` turns false)."""
    return not context.ok() or "context is invalid" in str(err)


def _exit_without_teardown(status: int) -> None:
    """Everything is closed (node, executor, DDS context): skip the interpreter's teardown of torch and
    the middleware's objects, which took seconds after SIGINT on a loaded machine (launch escalates
    to SIGTERM after a few)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    raise SystemExit(main())
