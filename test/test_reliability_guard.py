"""The callback guard: a failure injected into each kind of callback is logged once, counted, survived.

The node under test runs in a child process over real DDS (private ROS_DOMAIN_ID); this process
publishes to it, calls its service, sets its parameter, and reads its counters from a status topic.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from ros_env import ROOT, call, private_ros_env, spin_until, stop

from mdgm_ros.ros.guard import CallbackGuard

FAILING_NODE = textwrap.dedent('''
    import json, rclpy
    from rclpy.node import Node
    from rcl_interfaces.msg import SetParametersResult
    from std_msgs.msg import String
    from std_srvs.srv import Trigger
    from mdgm_ros.ros.guard import GuardedNode

    class Failing(GuardedNode, Node):
        def __init__(self):
            super().__init__("failing")
            self.declare_parameter("knob", 0)
            self.ticks = 0
            self.create_subscription(String, "/poke", self.on_poke, 10)
            self.create_service(Trigger, "~/explode", self.on_explode)
            self.add_on_set_parameters_callback(self.on_params)
            self.create_timer(0.05, self.on_tick)
            self.status = self.create_publisher(String, "/failing_status", 10)

        def on_poke(self, msg):
            raise ValueError("poke " + msg.data)

        def on_explode(self, request, response):
            open("/nonexistent/dir/file")

        def on_params(self, params):
            raise KeyError("knob")

        def on_tick(self):
            self.ticks += 1
            if self.ticks % 3 == 0:
                raise ZeroDivisionError("tick")
            self.status.publish(String(data=json.dumps({"ticks": self.ticks, "errors": dict(self.callback_errors)})))

    rclpy.init()
    rclpy.spin(Failing())
''')


def test_guard_counts_and_logs_once():
    lines = []
    guard = CallbackGuard(lines.append)
    fn = guard.wrap("timer", "t", lambda: 1 / 0)
    for _ in range(5):
        assert fn() is None
    assert guard.errors == {"timer t: ZeroDivisionError": 5} and guard.total == 5
    assert len(lines) == 1 and "Traceback" in lines[0] and "ZeroDivisionError" in lines[0]
    assert guard.wrap("x", "y", lambda a, b=2: a + b)(1) == 3   # passes values through


def test_guard_keeps_the_signature_rclpy_inspects():
    import inspect

    def on_timer(info):
        return info

    wrapped = CallbackGuard(print).wrap("timer", "t", on_timer)
    assert list(inspect.signature(wrapped).parameters) == ["info"]


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    import rclpy

    tmp = tmp_path_factory.mktemp("guard")
    env = private_ros_env()
    log = open(tmp / "node.log", "w")
    process = subprocess.Popen([sys.executable, "-c", FAILING_NODE], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    rclpy.init()
    probe = rclpy.create_node("guard_probe")
    yield process, probe, tmp / "node.log"
    probe.destroy_node()
    rclpy.shutdown()
    stop(process)


def test_every_callback_kind_survives_an_exception(failing):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    process, probe, log = failing
    status = []
    probe.create_subscription(String, "/failing_status", lambda m: status.append(json.loads(m.data)), 10)
    poke = probe.create_publisher(String, "/poke", 10)
    assert spin_until(probe, lambda: status, 60), "the node never published its status"

    answer = call(probe, probe.create_client(Trigger, "/failing/explode"), Trigger.Request(), timeout=30)
    assert answer.success is False and "FileNotFoundError" in answer.message

    setter = probe.create_client(SetParameters, "/failing/set_parameters")
    request = SetParameters.Request(parameters=[Parameter(name="knob", value=ParameterValue(
        type=ParameterType.PARAMETER_INTEGER, integer_value=3))])
    result = call(probe, setter, request, timeout=30).results[0]
    assert result.successful is False and "KeyError" in result.reason

    def poked():
        poke.publish(String(data="x"))
        return status and any(k.startswith("subscription /poke") for k in status[-1]["errors"])
    assert spin_until(probe, poked, 60), "a poke never reached the node"

    seen = len(status)
    assert spin_until(probe, lambda: len(status) > seen + 3, 30), "the node stopped after the failures"
    assert process.poll() is None
    errors = status[-1]["errors"]
    assert errors["service /failing/explode: FileNotFoundError"] == 1
    assert errors["parameter callback on_params: KeyError"] == 1
    assert errors["timer on_tick (0.05 s): ZeroDivisionError"] >= 1
    text = log.read_text()
    assert text.count("unexpected error in timer on_tick") == 1        # logged once, then throttled
    assert "Traceback" in text


def test_async_callbacks_and_action_fallbacks_are_guarded():
    import asyncio

    from std_srvs.srv import Trigger

    from mdgm_ros.ros.guard import _parameters_refused, _service_failure

    guard = CallbackGuard(lambda text: None)

    async def execute(goal_handle):
        raise RuntimeError("boom")
    assert asyncio.run(guard.wrap("action execute", "/a", execute, lambda err, *a: "aborted")(None)) == "aborted"
    assert guard.errors == {"action execute /a: RuntimeError": 1}
    response = _service_failure(OSError(36, "File name too long"), Trigger.Request(), Trigger.Response())
    assert response.success is False and "File name too long" in response.message
    assert _parameters_refused(ValueError("x")).successful is False


def test_a_publish_failing_on_a_closing_context_is_shutdown_not_a_failed_step():
    """SIGINT: rclpy's signal thread shuts the context down while a step runs; the publish then fails
    before context.ok() turns false. That is shutdown, not a fusion step to count and log."""
    from mdgm_ros.ros.fusion_node import _shutting_down

    class Context:
        def __init__(self, ok: bool):
            self._ok = ok

        def ok(self) -> bool:
            return self._ok

    closing = RuntimeError("Failed to publish: publisher's context is invalid, at ./src/rcl/publisher.c:427")
    assert _shutting_down(Context(True), closing) and _shutting_down(Context(False), ValueError("any"))
    assert not _shutting_down(Context(True), ValueError("shape mismatch"))


def test_until_shutdown_ends_quietly_only_on_what_a_shutdown_raises():
    """SIGINT can close the context between two waits of the executor; rcl then raises from the wait set.
    That ends the spin like Ctrl-C does; the same error with the context still open is a real failure."""
    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.executors import ExternalShutdownException

    from mdgm_ros.ros.guard import until_shutdown

    class Context:
        def __init__(self, ok):
            self._ok = ok

        def ok(self):
            return self._ok

    wait_set = RCLError("failed to initialize wait set: the given context is not valid")
    for quiet in (KeyboardInterrupt(), ExternalShutdownException(), wait_set):
        with until_shutdown(Context(ok=False)):
            raise quiet
    with pytest.raises(RCLError), until_shutdown(Context(ok=True)):
        raise wait_set
    with pytest.raises(ValueError), until_shutdown(Context(ok=False)):
        raise ValueError("not a shutdown")
