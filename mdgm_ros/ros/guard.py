"""A guard on every callback of a node: an unexpected exception is logged once, counted, and survived.

``GuardedNode`` is a mixin placed before ``Node`` / ``LifecycleNode`` in a node's bases. It wraps the
callbacks given to ``create_subscription``, ``create_timer``, ``create_service`` and
``add_on_set_parameters_callback`` (and offers ``create_action_server``), so no exception escapes into the
executor (which would end
``spin`` and the process). What a failed callback returns:

* subscription / timer: nothing (the message or tick is dropped);
* service: the response object it was given, with ``success = False`` and ``message`` set when the
  service type has those fields (``std_srvs/Trigger``, ``SetBool``);
* action: a failed goal or cancel callback rejects; a failed execute callback aborts the goal;
* parameter callback: ``SetParametersResult(successful=False, reason=...)`` (the change is refused).

The first failure of each (callback, exception type) is logged with its traceback; later ones are
counted and logged at most once per ``GUARD_WARN_PERIOD_S``. ``callback_errors`` (a Counter keyed
``"<kind> <context>: <ExceptionType>"``) and ``callback_error_total`` are for diagnostics.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
import time
import traceback
from collections import Counter
from typing import Any, Callable

from rcl_interfaces.msg import SetParametersResult

GUARD_WARN_PERIOD_S = 10.0


class CallbackGuard:
    """Wraps callables; counts and logs what they raise. ``log`` takes one string (an error line)."""

    def __init__(self, log: Callable[[str], None]):
        self._log = log
        self.errors: Counter = Counter()
        self._last_log: dict[str, float] = {}

    @property
    def total(self) -> int:
        return sum(self.errors.values())

    def wrap(self, kind: str, context: str, callback: Callable, on_error: Callable[..., Any] | None = None):
        """``callback`` wrapped; ``on_error(err, *args)`` gives the value returned after a failure."""
        if inspect.iscoroutinefunction(callback):
            @functools.wraps(callback)
            async def guarded_async(*args, **kwargs):
                try:
                    return await callback(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - the point of the guard
                    self.record(kind, context, err)
                    return on_error(err, *args) if on_error is not None else None
            return guarded_async

        @functools.wraps(callback)         # keeps the signature rclpy inspects (TimerInfo, MessageInfo)
        def guarded(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - the point of the guard
                self.record(kind, context, err)
                return on_error(err, *args) if on_error is not None else None
        return guarded

    def record(self, kind: str, context: str, err: BaseException) -> None:
        key = f"{kind} {context}: {type(err).__name__}"
        self.errors[key] += 1
        count = self.errors[key]
        now = time.monotonic()
        try:
            if count == 1:
                trace = "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-6))
                self._log(f"unexpected error in {kind} {context} (the node keeps running): "
                          f"{type(err).__name__}: {err}\n{trace}")
                self._last_log[key] = now
            elif now - self._last_log.get(key, -1e9) >= GUARD_WARN_PERIOD_S:
                self._log(f"unexpected error in {kind} {context} again ({count} so far): {type(err).__name__}: {err}")
                self._last_log[key] = now
        except Exception:  # noqa: BLE001 - a failing logger must not undo the guard
            pass


def _service_failure(err: BaseException, request: Any = None, response: Any = None) -> Any:
    if response is not None:
        if hasattr(response, "success"):
            response.success = False
        if hasattr(response, "message"):
            response.message = f"internal error: {type(err).__name__}: {err}"[:500]
    return response


def _parameters_refused(err: BaseException, *args: Any) -> SetParametersResult:
    return SetParametersResult(successful=False, reason=f"internal error: {type(err).__name__}: {err}"[:500])


def _accept(goal: Any) -> Any:
    from rclpy.action import GoalResponse
    return GoalResponse.ACCEPT


def _reject_cancel(request: Any) -> Any:
    from rclpy.action import CancelResponse
    return CancelResponse.REJECT


class GuardedNode:
    """Mixin: ``class MyNode(GuardedNode, Node)``; every callback registered through the node is guarded."""

    @property
    def callback_guard(self) -> CallbackGuard:
        guard = self.__dict__.get("_callback_guard")
        if guard is None:               # created lazily: Node.__init__ registers services before ours runs
            guard = CallbackGuard(lambda text: self.get_logger().error(text))
            self.__dict__["_callback_guard"] = guard
        return guard

    @property
    def callback_errors(self) -> Counter:
        return self.callback_guard.errors

    @property
    def callback_error_total(self) -> int:
        return self.callback_guard.total

    @staticmethod
    def _guard_name(resolve: Callable[[str], str], name: str) -> str:
        try:
            return resolve(name)
        except Exception:  # noqa: BLE001 - an unresolvable name is reported by rclpy itself
            return name

    def create_subscription(self, msg_type, topic, callback, qos_profile, **kwargs):
        wrapped = self.callback_guard.wrap("subscription", self._guard_name(self.resolve_topic_name, topic), callback)
        return super().create_subscription(msg_type, topic, wrapped, qos_profile, **kwargs)

    def create_timer(self, timer_period_sec, callback, *args, **kwargs):
        name = getattr(callback, "__name__", "callback")
        wrapped = self.callback_guard.wrap("timer", f"{name} ({timer_period_sec:g} s)", callback)
        return super().create_timer(timer_period_sec, wrapped, *args, **kwargs)

    def create_service(self, srv_type, srv_name, callback, **kwargs):
        name = self._guard_name(self.resolve_service_name, srv_name)
        wrapped = self.callback_guard.wrap("service", name, callback, _service_failure)
        return super().create_service(srv_type, srv_name, wrapped, **kwargs)

    def add_on_set_parameters_callback(self, callback):
        wrapped = self.callback_guard.wrap("parameter callback", getattr(callback, "__name__", "callback"),
                                           callback, _parameters_refused)
        self.__dict__.setdefault("_guarded_parameter_callbacks", {})[callback] = wrapped
        return super().add_on_set_parameters_callback(wrapped)

    def create_action_server(self, action_type, action_name, execute_callback, **kwargs):
        """An ``rclpy.action.ActionServer`` whose callbacks are guarded: a failed goal or cancel callback
        rejects, a failed execute callback aborts the goal with an empty result."""
        from rclpy.action import ActionServer, CancelResponse, GoalResponse

        guard, name = self.callback_guard, self._guard_name(self.resolve_service_name, action_name)
        kwargs["goal_callback"] = guard.wrap("action goal", name, kwargs.get("goal_callback", _accept),
                                             lambda err, *a: GoalResponse.REJECT)
        kwargs["cancel_callback"] = guard.wrap("action cancel", name, kwargs.get("cancel_callback", _reject_cancel),
                                               lambda err, *a: CancelResponse.REJECT)

        def aborted(err: BaseException, goal_handle: Any = None) -> Any:
            if goal_handle is not None and goal_handle.is_active:
                goal_handle.abort()
            return action_type.Result()
        execute = guard.wrap("action execute", name, execute_callback, aborted)
        return ActionServer(self, action_type, action_name, execute, **kwargs)

    def remove_on_set_parameters_callback(self, callback):
        wrapped = self.__dict__.get("_guarded_parameter_callbacks", {}).pop(callback, callback)
        return super().remove_on_set_parameters_callback(wrapped)


# --------------------------------------------------------------------------- shutdown
@contextlib.contextmanager
def until_shutdown(context):
    """Wrap a node's spin loop: Ctrl-C, an external shutdown, and rcl's error when SIGINT closes the context
    between two waits ("failed to initialize wait set: the given context is not valid", a race) end it
    quietly, so the node's clean-up runs and it exits 0; any other error propagates."""
    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.executors import ExternalShutdownException
    try:
        yield
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        if context.ok():
            raise


# --------------------------------------------------------------------------- start-up
def startup_error_text(err: BaseException) -> str:
    """One line for an error at start-up: rcl's source locations and the exception's repetitions cut."""
    text = " ".join(str(err).split())
    text = re.sub(r"(, )?at /\S+:\d+", "", text)
    text = text.replace("failed to initialize rcl: ", "")
    if type(err).__name__ == "InvalidParameterTypeException":
        found = re.match(r"Trying to set parameter '([^']+)' to '(.*)' of type '(\w+)', expecting type '(\w+)'", text)
        if found:
            name, value, got, want = found.groups()
            text = f"parameter {name}: {value!r} is a {got.lower()}, expected a {want.lower()}"
    return text[:500]


def node_main(main: Callable[..., int]) -> Callable[..., int]:
    """Decorator for a node's ``main``: ``-h`` / ``--help`` among the node's own arguments (before
    ``--ros-args``) prints the node's help (:mod:`mdgm_ros.ros.node_help`) and returns 0 before ``main``
    runs (no ``rclpy.init``, no node, no model); a bad command line, parameter type or params file ends
    with one ``error:`` line on stderr and exit status 2 instead of a traceback."""
    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.exceptions import ParameterException

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        argv = args[0] if args else next((kwargs[k] for k in ("args", "argv") if k in kwargs), None)
        if _print_help_if_asked(main, argv):
            return 0
        try:
            return main(*args, **kwargs)
        except (RCLError, ParameterException) as err:
            print(f"error: {startup_error_text(err)}", file=sys.stderr)
            try:
                import rclpy
                rclpy.try_shutdown()
            except Exception:  # noqa: BLE001 - already failing; the error line is what matters
                pass
            return 2
    return run


def _print_help_if_asked(main: Callable[..., int], argv: list[str] | None) -> bool:
    """Print the node's help to stdout when ``argv`` (None: ``sys.argv[1:]``) asks for it; True if it did."""
    from .node_help import help_text, program_name, wants_help

    if not wants_help(argv):
        return False
    prog = program_name(main)
    try:
        text = help_text(prog, sys.modules[main.__module__])
    except Exception as err:  # noqa: BLE001 - --help must answer even if the source cannot be read
        text = (f"usage: {prog} [-h] [--ros-args [-p NAME:=VALUE]... [--params-file FILE]]\n"
                f"(the parameter list is unavailable: {type(err).__name__}: {err}; see docs/nodes.rst)\n")
    sys.stdout.write(text)
    sys.stdout.flush()
    return True
