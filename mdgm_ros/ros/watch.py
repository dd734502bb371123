"""``mdgm-ros echo`` and ``mdgm-ros watch``: what is on the graph and what the fusion node does, without the
ros2 command line.

``echo`` lists the topics (types, publishers, subscribers) or prints the messages of one topic as YAML (or
JSON lines), its type read from the graph. ``watch`` shows one fusion node live: model, latent, anomaly
scores against thresholds, presence and imputation per modality, input and output rates measured from
message arrivals, the node's /diagnostics and its latent prediction; as plain text blocks when stdout is
not a terminal. rclpy is imported only when a command runs, so ``--help`` starts no ROS.
"""
from __future__ import annotations

import argparse
import array
import json
import math
import os
import re
import sys
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from ..interrupts import ctrl_c_seen, exit_code, interrupted_inside_native

DEFAULT_NODE = "/mdgm_fusion"
LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
LEVEL_STYLES = {"OK": "green", "WARN": "yellow", "ERROR": "bold red", "STALE": "magenta"}
_F32 = re.compile(r"^(sequence<)?float\b")


# ------------------------------------------------------------------------------------------ messages
def message_to_dict(msg: Any, max_items: int | None = None, no_arr: bool = False) -> dict[str, Any]:
    """A ROS message as nested dicts and lists (field order kept), over ``get_fields_and_field_types()``.

    Sequences longer than ``max_items`` keep their first items and end with a ``"... +N more (M in all)"``
    string; ``no_arr`` replaces every sequence with ``"<sequence type: T, length: N>"`` as ros2 does.
    """
    return {name: _value(getattr(msg, name), ftype, max_items, no_arr)
            for name, ftype in msg.get_fields_and_field_types().items()}


def _value(value: Any, ftype: str, max_items: int | None, no_arr: bool) -> Any:
    if hasattr(value, "get_fields_and_field_types"):
        return message_to_dict(value, max_items, no_arr)
    if isinstance(value, (list, tuple, array.array, np.ndarray)) or (isinstance(value, bytes) and len(value) != 1):
        n = len(value)
        if no_arr:
            return f"<sequence type: {_element_type(ftype)}, length: {n}>"
        shown = value[:max_items] if max_items is not None and n > max_items else value
        element = _element_type(ftype)
        items = [_value(v, element, max_items, no_arr) for v in shown]
        if len(shown) < n:
            items.append(f"... +{n - len(shown)} more ({n} in all)")
        return items
    if isinstance(value, bytes):                      # one ``byte`` / ``octet``
        return value[0]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and _F32.match(ftype) and math.isfinite(value):
        return float(str(np.float32(value)))         # the float32's own shortest digits
    return value


def _element_type(ftype: str) -> str:
    """``sequence<float>`` / ``sequence<float, 8>`` / ``float[3]`` -> ``float``."""
    match = re.match(r"^sequence<([^,>]+)", ftype)
    if match:
        return match.group(1)
    return re.sub(r"\[\d*\]$", "", ftype)


def to_yaml(data: Any) -> str:
    """A converted message (or one field of it) as ``ros2 topic echo`` prints it (block style, field order)."""
    import yaml

    if isinstance(data, (dict, list)):
        return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True,
                              width=10_000).rstrip("\n")
    return str(data)


def to_json(data: Any) -> str:
    """One line of JSON; NaN and infinities become null."""
    return json.dumps(_finite(data), allow_nan=False, separators=(",", ":"))


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    return data


def message_class(type_name: str) -> type:
    """``pkg/msg/Name`` -> its class (imported here, not at start: ``--help`` must not load ROS)."""
    from ..streams.bridge import message_class as find

    return find(type_name)


def check_field(cls: type, path: str) -> list[str]:
    """The parts of ``a.b.0.c``, checked against the message class (names only; indices at run time)."""
    parts = [p for p in path.split(".") if p]
    if not parts:
        raise ValueError("--field: empty")
    current: Any = cls()
    for part in parts:
        if part.isdigit():
            return parts                                 # inside a sequence: checked on each message
        fields = current.get_fields_and_field_types() if hasattr(current, "get_fields_and_field_types") else {}
        if part not in fields:
            kind = type(current).__name__
            raise ValueError(f"--field {path}: {kind} has no field {part!r} (fields: {', '.join(fields) or 'none'})")
        current = getattr(current, part)
    return parts


def select_field(msg: Any, parts: list[str]) -> tuple[Any, str]:
    """(the value at ``parts``, its field type) of one message."""
    value, ftype = msg, ""
    for part in parts:
        if part.isdigit():
            value, ftype = value[int(part)], _element_type(ftype)
        else:
            ftype = value.get_fields_and_field_types()[part]
            value = getattr(value, part)
    return value, ftype


# ------------------------------------------------------------------------------------------ ROS plumbing
def _start_ros(name: str):
    """rclpy without its signal handlers (Ctrl-C is a KeyboardInterrupt here) and a node that adds nothing
    to the graph it looks at (no /rosout, no parameter services)."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    return rclpy.create_node(f"{name}_{os.getpid()}", enable_rosout=False, start_parameter_services=False)


def _stop_ros(node) -> None:
    import rclpy

    try:
        node.destroy_node()
    finally:
        rclpy.try_shutdown()


def _absolute(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def _graph(node) -> dict[str, tuple[list[str], int, int]]:
    """topic -> (types, publishers, subscribers), other nodes' endpoints only."""
    own = node.get_name()
    found = {}
    for topic, types in node.get_topic_names_and_types():
        pubs = sum(1 for e in node.get_publishers_info_by_topic(topic) if e.node_name != own)
        subs = sum(1 for e in node.get_subscriptions_info_by_topic(topic) if e.node_name != own)
        if pubs or subs:
            found[topic] = (list(types), pubs, subs)
    return found


def settle_graph(node, timeout: float, least: float = 2.5, quiet: float = 1.5) -> dict[str, tuple[list[str], int, int]]:
    """topic -> (types, publishers, subscribers) once discovery has settled: something found, nothing new for
    ``quiet`` s, at least ``least`` s after the start; at most ``timeout`` s. (Without a ROS daemon that
    remembers the graph, a loaded node can take seconds to answer discovery.)"""
    start = time.monotonic()
    graph, changed = _graph(node), start
    while time.monotonic() - start < timeout:
        time.sleep(0.1)
        now_graph, now = _graph(node), time.monotonic()
        if now_graph != graph:
            graph, changed = now_graph, now
        elif graph and now - start >= least and now - changed >= quiet:
            break
    return graph


def wait_for_topic(node, topic: str, timeout: float) -> list[str] | None:
    """The types of ``topic`` once it is on the graph, or None after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        types = dict(node.get_topic_names_and_types()).get(topic)
        if types:
            return list(types)
        if time.monotonic() >= end:
            return None
        time.sleep(0.1)


def subscription_qos(node, topic: str):
    """Best effort, volatile: it takes messages from reliable and best-effort publishers alike. Where every
    publisher is reliable and transient local (a latched topic such as ``~/model_info``): the same, so the
    last message already sent arrives too."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    publishers = node.get_publishers_info_by_topic(topic)
    if publishers and all(p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                          and p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers):
        return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def _spin(executor, seconds: float) -> None:
    """Run every callback that becomes ready within ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        executor.spin_once(timeout_sec=left)


# ------------------------------------------------------------------------------------------ echo
def add_echo_parser(sub: Any) -> argparse.ArgumentParser:
    """``echo [TOPIC]``."""
    parser = sub.add_parser(
        "echo", help="list the topics on the graph, or print a topic's messages (like ros2 topic echo)",
        description="Without TOPIC: the topics on the graph with their types, publishers and subscribers. "
                    "With TOPIC: its messages as YAML separated by '---' (its type read from the graph, a "
                    "best-effort subscription that takes reliable and best-effort publishers alike). "
                    "Ctrl-C stops (exit 130).")
    parser.add_argument("topic", nargs="?", default=None, help="the topic to print (default: list the topics)")
    parser.add_argument("--once", action="store_true", help="print one message, then exit")
    parser.add_argument("-n", "--count", type=int, default=0, metavar="N", help="print N messages, then exit")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for TOPIC to appear on the graph (default 5; exit 2 if it does "
                             "not); without TOPIC, at most this long for discovery")
    parser.add_argument("--field", default="", metavar="A.B",
                        help="print only this field (dotted path; numbers index sequences)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line (full sequences unless --max-items; NaN as null)")
    parser.add_argument("--max-items", type=int, default=None, metavar="N",
                        help="show at most N items of a sequence, then how many more (default 16; JSON: all)")
    parser.add_argument("--no-arr", action="store_true", help="show sequences as their type and length only")
    parser.set_defaults(func=echo_command)
    return parser


def echo_command(args: argparse.Namespace) -> int:
    count = 1 if args.once else max(args.count, 0)
    if args.count < 0 or (args.max_items is not None and args.max_items < 0) or args.timeout < 0:
        print("error: --count, --max-items and --timeout must be >= 0", file=sys.stderr)
        return 2
    node = None
    try:
        node = _start_ros("mdgm_echo")
        if args.topic is None:
            return _list_topics(node, args)
        with ctrl_c_seen():
            return _echo_topic(node, args, count)
    except KeyboardInterrupt as interrupt:
        return exit_code(interrupt)
    except RuntimeError as err:
        if interrupted_inside_native(err):               # Ctrl-C while rclpy was taking a message
            return exit_code(KeyboardInterrupt())
        raise
    finally:
        if node is not None:
            _stop_ros(node)


def _list_topics(node, args: argparse.Namespace) -> int:
    graph = settle_graph(node, args.timeout)
    rows = [{"topic": topic, "types": types, "publishers": pubs, "subscribers": subs}
            for topic, (types, pubs, subs) in sorted(graph.items())]
    if args.json:
        for row in rows:
            print(to_json(row), flush=True)
        return 0
    if not rows:
        print(f"no topics on the graph (ROS_DOMAIN_ID {os.environ.get('ROS_DOMAIN_ID', '0')})")
        return 0
    width = max(len(r["topic"]) for r in rows)
    type_width = max(len(", ".join(r["types"])) for r in rows)
    for r in rows:
        plural = "" if r["publishers"] == 1 else "s"
        print(f"{r['topic']:{width}s}  {', '.join(r['types']):{type_width}s}  {r['publishers']} publisher{plural}, "
              f"{r['subscribers']} subscriber{'' if r['subscribers'] == 1 else 's'}")
    return 0


def _echo_topic(node, args: argparse.Namespace, count: int) -> int:
    from rclpy.executors import SingleThreadedExecutor

    topic = _absolute(args.topic)
    types = wait_for_topic(node, topic, args.timeout)
    if types is None:
        names = sorted(settle_graph(node, timeout=3.0, least=0.0, quiet=1.0))     # discovery may be under way
        print(f"error: topic {topic} did not appear within {args.timeout:g} s; topics on the graph: "
              f"{', '.join(names) if names else 'none'}", file=sys.stderr)
        return 2
    if len(types) > 1:
        print(f"warning: {topic} has several types ({', '.join(types)}); printing {types[0]}", file=sys.stderr)
    try:
        cls = message_class(types[0])
        parts = check_field(cls, args.field) if args.field else []
    except (ImportError, AttributeError, ValueError) as err:
        reason = str(err) if isinstance(err, ValueError) else f"cannot import message type {types[0]} ({err})"
        print(f"error: {reason}", file=sys.stderr)
        return 2
    max_items = args.max_items if args.max_items is not None else (None if args.json else 16)
    printed = [0]

    def on_message(msg) -> None:
        if count and printed[0] >= count:
            return
        if parts:
            try:
                value, ftype = select_field(msg, parts)
            except (IndexError, TypeError) as err:
                print(f"warning: --field {args.field}: {err}", file=sys.stderr)
                return
            data = _value(value, ftype, max_items, args.no_arr)
        else:
            data = message_to_dict(msg, max_items, args.no_arr)
        if args.json:
            print(to_json(data), flush=True)
        else:
            print(to_yaml(data) + "\n---", flush=True)
        printed[0] += 1

    node.create_subscription(cls, topic, on_message, subscription_qos(node, topic))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while not count or printed[0] < count:
        executor.spin_once(timeout_sec=0.1)
    return 0


# ------------------------------------------------------------------------------------------ watch
class Arrivals:
    """Receive times of one topic; the rate over the last ``window`` seconds."""

    def __init__(self, window: float):
        self.window, self.times = window, deque()
        self.first: float | None = None
        self.last: float | None = None

    def add(self, *_: Any) -> None:
        now = self.last = time.monotonic()
        self.times.append(now)
        if self.first is None:
            self.first = now
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()

    def rate(self, now: float | None = None) -> float | None:
        """Messages per second over the window; over the time since the first message while that is shorter
        (None for its first half second, and while nothing has arrived)."""
        if self.first is None:
            return None
        now = time.monotonic() if now is None else now
        self._forget(now)
        span = now - self.first
        if span < 0.5:
            return None
        if span < self.window:                      # the first arrival opens the span: count the intervals
            return (len(self.times) - 1) / span
        return len(self.times) / self.window


class FusionWatch:
    """What one fusion node publishes, as last received: model info, latent, anomaly, prediction, its
    /diagnostics statuses, and the arrival rates of its inputs and outputs."""

    def __init__(self, node, target: str, window: float):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from ..msg import AnomalyScores, Latent, LatentPrediction, ModelInfo

        self.node, self.target, self.window = node, target.rstrip("/"), window
        self.started = time.monotonic()
        self.info = None
        self.details: dict[str, Any] = {}
        self.latent = self.anomaly = self.prediction = None
        self.statuses: dict[str, Any] = {}
        self.rates: dict[str, Arrivals] = {k: Arrivals(window) for k in ("latent", "anomaly", "latent_prediction")}
        self.inputs: dict[str, tuple[str, Any, Arrivals]] = {}      # modality -> (topic, subscription, arrivals)
        self.imputed: dict[str, tuple[str, Any, Arrivals]] = {}
        self.pending: dict[str, str] = {}                            # modality -> input topic not yet typed
        self.inputs_since: float | None = None
        best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(Latent, f"{self.target}/latent", self._keep("latent"), best_effort)
        node.create_subscription(AnomalyScores, f"{self.target}/anomaly", self._keep("anomaly"), best_effort)
        node.create_subscription(LatentPrediction, f"{self.target}/latent_prediction",
                                 self._keep("latent_prediction", "prediction"), best_effort)
        node.create_subscription(ModelInfo, f"{self.target}/model_info", self._on_info, latched)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, best_effort)

    def _keep(self, key: str, attribute: str | None = None) -> Callable[[Any], None]:
        def keep(msg) -> None:
            self.rates[key].add()
            setattr(self, attribute or key, msg)
        return keep

    def latent_age(self) -> str:
        """How long ago the newest latent arrived."""
        last = self.rates["latent"].last
        return "" if last is None else f"received {time.monotonic() - last:.1f} s ago"

    def _on_diagnostics(self, msg) -> None:
        prefix = f"{self.target}: "
        for status in msg.status:
            if status.name.startswith(prefix):
                self.statuses[status.name[len(prefix):]] = status

    def _on_info(self, msg) -> None:
        """A (new) model: subscribe to its input and imputed topics, raw (only arrivals are counted)."""
        self.info = msg
        try:
            self.details = json.loads(msg.details_json or "{}")
        except ValueError:
            self.details = {}
        names = list(msg.modalities)
        wanted = {id(self.inputs): dict(zip(names, msg.input_topics)),
                  id(self.imputed): dict(zip(names, msg.imputed_topics))}
        for table in (self.inputs, self.imputed):
            for name in list(table):
                topic, subscription, _ = table[name]
                if wanted[id(table)].get(name) != topic:           # gone, or moved by the new model's params
                    self.node.destroy_subscription(subscription)
                    del table[name]
        self.pending = {n: t for n, t in wanted[id(self.inputs)].items() if n not in self.inputs}
        for name, topic, kind in zip(names, msg.imputed_topics, msg.imputed_types):
            if name not in self.imputed:
                try:
                    self.imputed[name] = (topic, *self._count(message_class(kind), topic, 10))
                except (ImportError, AttributeError, ValueError):
                    pass
        self.subscribe_inputs()

    def _count(self, cls: type, topic: str, depth: int) -> tuple[Any, Arrivals]:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        arrivals = Arrivals(self.window)
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_subscription(cls, topic, arrivals.add, qos, raw=True), arrivals

    def subscribe_inputs(self) -> None:
        """Each input topic with the type the node's own subscription has (else the graph's first)."""
        if not self.pending:
            return
        graph = dict(self.node.get_topic_names_and_types())
        for name, topic in list(self.pending.items()):
            ours = [e.topic_type for e in self.node.get_subscriptions_info_by_topic(topic)
                    if f"{e.node_namespace.rstrip('/')}/{e.node_name}" == self.target]
            for kind in ours or graph.get(topic, []):
                try:
                    self.inputs[name] = (topic, *self._count(message_class(kind), topic, 50))
                except (ImportError, AttributeError, ValueError):
                    continue
                del self.pending[name]
                break
        if not self.pending and self.inputs_since is None:
            self.inputs_since = time.monotonic()

    @property
    def prediction_expected(self) -> bool:
        horizon = self.details.get("temporal", {}).get("latent_prediction", {}).get("horizon", 0)
        return bool(horizon) or self.prediction is not None

    @property
    def heard(self) -> bool:
        return any(x is not None for x in (self.info, self.latent, self.anomaly)) or bool(self.statuses)

    def complete(self) -> bool:
        """Model info, a latent, anomaly scores, the node's diagnostics (and its prediction, where it makes
        one), and rates measured over a full window."""
        now = time.monotonic()
        return (self.info is not None and self.latent is not None and self.anomaly is not None
                and bool(self.statuses) and (self.prediction is not None or not self.prediction_expected)
                and self.inputs_since is not None and now - self.inputs_since >= self.window
                and now - self.started >= self.window)

    # ---------------------------------------------------------------------------------------- the view
    def modalities(self) -> list[dict[str, Any]]:
        """One row per modality: kind, presence, input and imputed rates, score, threshold, flag."""
        names = list(self.info.modalities) if self.info else list(self.latent.modalities) if self.latent else []
        kinds = dict(zip(self.info.modalities, self.info.kinds)) if self.info else {}
        present = dict(zip(self.latent.modalities, self.latent.present)) if self.latent else {}
        scores = {}
        if self.anomaly is not None:
            for i, name in enumerate(self.anomaly.modalities):
                scores[name] = (_at(self.anomaly.score, i), _at(self.anomaly.threshold, i),
                                bool(self.anomaly.flagged[i]) if i < len(self.anomaly.flagged) else False)
        rows = []
        for name in names:
            score, threshold, flagged = scores.get(name, (math.nan, math.nan, False))
            rows.append({"name": name, "kind": kinds.get(name, ""), "present": present.get(name),
                         "input_hz": self.inputs[name][2].rate() if name in self.inputs else None,
                         "input_topic": self.inputs[name][0] if name in self.inputs else self.pending.get(name, ""),
                         "imputed_hz": self.imputed[name][2].rate() if name in self.imputed else None,
                         "score": score, "threshold": threshold, "flagged": flagged})
        return rows

    def diagnostics(self) -> list[tuple[str, str, str]]:
        """(level, part, message) of the node's latest statuses."""
        return [(_level(s.level), part, s.message) for part, s in sorted(self.statuses.items())]

    def prediction_line(self) -> str:
        p = self.prediction
        if p is None:
            return "not published" + (" yet" if self.prediction_expected else " (not a temporal model)")
        stamps = [s.sec + s.nanosec * 1e-9 for s in p.stamps]
        origin = p.header.stamp.sec + p.header.stamp.nanosec * 1e-9
        std = np.asarray(p.std, np.float32).reshape(int(p.horizon), -1) if p.horizon and len(p.std) else None
        growth = f", mean std {std[0].mean():.3f} -> {std[-1].mean():.3f}" if std is not None else ""
        ahead = f" ({stamps[0] - origin:.3f} .. {stamps[-1] - origin:.3f} s ahead)" if stamps else ""
        return f"horizon {p.horizon} steps{ahead}{growth}"

    def model_line(self) -> str:
        if self.info is None:
            return "model: waiting for ~/model_info"
        i = self.info
        return (f"model {i.model_id}  family {i.objective}  fusion {i.fusion}  latent {i.latent_dim}  "
                f"device {i.device}")

    def output_line(self) -> str:
        def hz(key: str) -> str:
            rate = self.rates[key].rate()
            return "-" if rate is None else f"{rate:.1f} Hz"
        return (f"outputs  latent {hz('latent')}  anomaly {hz('anomaly')}  prediction {hz('latent_prediction')}  "
                f"(window {self.window:g} s)")


def _at(values, i: int) -> float:
    return float(values[i]) if i < len(values) else math.nan


def _level(level: Any) -> str:
    value = level[0] if isinstance(level, (bytes, bytearray)) else int(level)
    return LEVELS.get(value, str(value))


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _flag(row: dict[str, Any]) -> str:
    if not math.isfinite(row["score"]):
        return "-"
    return "ANOMALY" if row["flagged"] else "ok"


def _present(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def _latent_chunks(watch: FusionWatch, per_line: int) -> list[tuple[list[int], list[float], list[float]]]:
    mean, std = list(watch.latent.mean), list(watch.latent.std)
    return [(list(range(i, min(i + per_line, len(mean)))), mean[i:i + per_line], std[i:i + per_line])
            for i in range(0, len(mean), per_line)]


def summary_text(watch: FusionWatch) -> str:
    """One plain text block: what ``watch`` shows, for a log or a pipe."""
    lines = [f"== {watch.target}  {time.strftime('%H:%M:%S')}", watch.model_line()]
    if watch.latent is None:
        lines.append("latent: waiting for ~/latent")
    else:
        stamp = watch.latent.header.stamp
        lines.append(f"latent  dim {len(watch.latent.mean)}  step {watch.latent.step}  "
                     f"stamp {stamp.sec}.{stamp.nanosec:09d}  {watch.latent_age()}")
        for dims, mean, std in _latent_chunks(watch, 8):
            lines.append("  " + " ".join(f"{'z' + str(d):>6s}" for d in dims))
            lines.append("  " + " ".join(f"{m:+6.2f}" for m in mean) + "  mean")
            lines.append("  " + " ".join(f"{s:6.2f}" for s in std) + "  std")
    rows = watch.modalities()
    if rows:
        lines.append(f"{'modality':10s} {'kind':7s} {'present':7s} {'input':>9s} {'imputed':>9s} {'score':>8s} "
                     f"{'threshold':>9s}  flag")
        for r in rows:
            lines.append(f"{r['name']:10s} {r['kind']:7s} {_present(r['present']):7s} "
                         f"{_hz(r['input_hz']):>9s} {_hz(r['imputed_hz']):>9s} {_num(r['score']):>8s} "
                         f"{_num(r['threshold']):>9s}  {_flag(r)}")
    if watch.anomaly is not None:
        a = watch.anomaly
        lines.append(f"total score {_num(a.total)}  threshold {_num(a.total_threshold)}  "
                     f"{'ANOMALY' if a.total_flagged else 'ok'}")
    else:
        lines.append("anomaly: waiting for ~/anomaly")
    lines.append(watch.output_line())
    lines.append("prediction: " + watch.prediction_line())
    diagnostics = watch.diagnostics()
    lines.append("diagnostics:" + ("" if diagnostics else " waiting for /diagnostics"))
    lines += [f"  {level:5s} {part}: {message}" for level, part, message in diagnostics]
    return "\n".join(lines)


def _hz(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f} Hz"


def live_view(watch: FusionWatch, waiting: str = "", width: int = 120):
    """The rich renderable of ``watch`` (tables, flags in colour) for a terminal ``width`` columns wide."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text.assemble((f"{watch.target}", "bold cyan"), f"  {time.strftime('%H:%M:%S')}  ",
                                      (watch.model_line(), "bold" if watch.info else "dim"))]
    if waiting:
        parts.append(Text(waiting, style="yellow"))
    if watch.latent is not None:
        latent = Table(title=f"latent (step {watch.latent.step}, {watch.latent_age()})", title_justify="left",
                       box=None, pad_edge=False, padding=(0, 1), show_header=False)
        latent.add_column("", style="dim")
        chunks = _latent_chunks(watch, max(4, min(16, (width - 6) // 8)))
        for i in range(len(chunks[0][0]) if chunks else 0):
            latent.add_column(justify="right")
        for dims, mean, std in chunks:
            latent.add_row("", *[Text(f"z{d}", style="dim") for d in dims])
            latent.add_row("mean", *[Text(f"{m:+.2f}", style="cyan" if m >= 0 else "magenta") for m in mean])
            latent.add_row("std", *[f"{s:.2f}" for s in std])
        parts.append(latent)
    rows = watch.modalities()
    if rows:
        table = Table(title="modalities", title_justify="left", header_style="bold")
        for name, justify in (("modality", "left"), ("kind", "left"), ("present", "center"), ("input", "right"),
                              ("imputed", "right"), ("score", "right"), ("threshold", "right"), ("flag", "center")):
            table.add_column(name, justify=justify)
        for r in rows:
            flag = _flag(r)
            table.add_row(r["name"], r["kind"],
                          Text(_present(r["present"]), style="green" if r["present"] else "yellow"),
                          _hz(r["input_hz"]), _hz(r["imputed_hz"]), _num(r["score"]), _num(r["threshold"]),
                          Text(flag, style="bold red" if flag == "ANOMALY" else "green" if flag == "ok" else "dim"))
        if watch.anomaly is not None:
            a = watch.anomaly
            total = Text("ANOMALY", style="bold red") if a.total_flagged else Text("ok", style="green")
            table.add_row("total", "", "", "", "", _num(a.total), _num(a.total_threshold), total)
        parts.append(table)
    parts.append(Text(watch.output_line()))
    parts.append(Text("prediction: " + watch.prediction_line()))
    diagnostics = watch.diagnostics()
    if diagnostics:
        diag = Table(title="diagnostics", title_justify="left", header_style="bold")
        diag.add_column("level")
        diag.add_column("status")
        diag.add_column("message")
        for level, part, message in diagnostics:
            diag.add_row(Text(level, style=LEVEL_STYLES.get(level, "")), part, message)
        parts.append(diag)
    else:
        parts.append(Text("diagnostics: waiting for /diagnostics", style="dim"))
    parts.append(Text("Ctrl-C to quit", style="dim"))
    return Group(*parts)


def add_watch_parser(sub: Any) -> argparse.ArgumentParser:
    """``watch [--node NAME]``."""
    parser = sub.add_parser(
        "watch", help="a live view of a fusion node: latent, anomaly scores, presence, rates, diagnostics",
        description="A live terminal view of one fusion node: its model, the latent (mean and std per "
                    "dimension), per-modality anomaly scores against their thresholds, presence and imputed "
                    "outputs, input and output rates measured from message arrivals, its /diagnostics and "
                    "its latent prediction. When stdout is not a terminal (or with --plain): one plain text "
                    "block per --period. Ctrl-C stops (exit 130).")
    parser.add_argument("--node", default=DEFAULT_NODE, metavar="NAME",
                        help=f"the fusion node's fully qualified name (default {DEFAULT_NODE})")
    parser.add_argument("--plain", action="store_true", help="plain text blocks, even in a terminal")
    parser.add_argument("--period", type=float, default=1.0, metavar="S",
                        help="seconds between plain text blocks (default 1); the live view redraws 4 times a second")
    parser.add_argument("--window", type=float, default=2.0, metavar="S",
                        help="seconds over which rates are measured (default 2)")
    parser.add_argument("--once", action="store_true",
                        help="print one summary once everything has arrived (or after --timeout), then exit")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="S",
                        help="--once: seconds to wait for everything (default 15; exit 2 if nothing came from "
                             "the node)")
    parser.set_defaults(func=watch_command)
    return parser


def watch_command(args: argparse.Namespace) -> int:
    if args.period <= 0 or args.window <= 0 or args.timeout < 0:
        print("error: --period and --window must be > 0, --timeout >= 0", file=sys.stderr)
        return 2
    target = _absolute(args.node).rstrip("/") or DEFAULT_NODE
    plain = args.plain or not sys.stdout.isatty()
    node = None
    try:
        from rclpy.executors import SingleThreadedExecutor

        node = _start_ros("mdgm_watch")
        watch = FusionWatch(node, target, args.window)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if args.once:
            return _watch_once(watch, executor, args.timeout, plain)
        with ctrl_c_seen():
            if plain:
                while True:
                    _spin_watching(watch, executor, args.period)
                    print(summary_text(watch) + "\n", flush=True)
            return _watch_live(watch, executor)
    except KeyboardInterrupt as interrupt:
        return exit_code(interrupt)
    except RuntimeError as err:
        if interrupted_inside_native(err):               # Ctrl-C while rclpy was taking a message
            return exit_code(KeyboardInterrupt())
        raise
    finally:
        if node is not None:
            _stop_ros(node)


def _spin_watching(watch: FusionWatch, executor, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _spin(executor, min(0.25, end - time.monotonic()))
        watch.subscribe_inputs()


def _watch_once(watch: FusionWatch, executor, timeout: float, plain: bool) -> int:
    end = time.monotonic() + timeout
    while not watch.complete() and time.monotonic() < end:
        _spin_watching(watch, executor, 0.1)
    if not watch.heard:
        nodes = sorted(f"{ns.rstrip('/')}/{name}" for name, ns in watch.node.get_node_names_and_namespaces()
                       if name != watch.node.get_name())
        print(f"error: nothing from {watch.target} within {timeout:g} s; nodes on the graph: "
              f"{', '.join(nodes) if nodes else 'none'}", file=sys.stderr)
        return 2
    if plain:
        print(summary_text(watch), flush=True)
    else:
        from rich.console import Console
        console = Console()
        console.print(live_view(watch, width=console.width))
    return 0


def _watch_live(watch: FusionWatch, executor) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    waiting = f"waiting for {watch.target} ..."
    with Live(live_view(watch, waiting, console.width), console=console, refresh_per_second=4) as live:
        while True:
            _spin_watching(watch, executor, 0.25)
            live.update(live_view(watch, "" if watch.heard else waiting, console.width))
