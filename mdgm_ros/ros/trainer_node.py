"""``trainer_node``: ``mdgm-ros train`` as a ROS node, driven by the ``~/train`` action (mdgm_ros/action/Train).

Action ``~/train``: goal = bags, config, out, epochs, resume, overrides, fusion_node; feedback after every
epoch (epoch, epochs, held-out loss); cancel takes effect at the next epoch boundary and writes no bundle;
result = the bundle's absolute path. One training at a time (a second goal is rejected while one runs).
On success with ``fusion_node`` set, the node sets that node's ``bundle`` parameter to the new bundle and
calls its ``~/reload_model``; the fusion node swaps models without stopping.

One-shot mode (as before): parameters ``bags`` and ``out`` given at start train once, then the node exits
(``exit_when_done``); ``config``, ``epochs``, ``resume``, ``fusion_node`` (default /mdgm_fusion) apply.
Progress goes to ``/diagnostics`` (state, epoch, held-out loss) once a second in both modes.
Training runs off the executor (its own thread, or an executor thread of a MultiThreadedExecutor), so
the action, cancel requests, diagnostics and the reload's service answers keep being served.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy._rclpy_pybind11 import RCLError
from rclpy.action import CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import Trigger

from ..action import Train
from ..config_files import config_path
from .guard import GuardedNode, node_main, until_shutdown


class Cancelled(Exception):
    """Raised from run_training's ``should_stop`` so a cancelled run ends without writing a bundle."""


@dataclass
class Job:
    bags: list[str]
    config: str
    out: str
    epochs: int = 0
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    fusion_node: str = ""

    @classmethod
    def from_goal(cls, goal) -> "Job":
        return cls([b for b in goal.bags if b], goal.config or str(config_path("train.yaml")), goal.out,
                   int(goal.epochs), bool(goal.resume), list(goal.overrides), goal.fusion_node)


@dataclass
class Outcome:
    bundle: str = ""
    best_epoch: int = 0
    best_loss: float = math.nan
    message: str = ""


class TrainerNode(GuardedNode, Node):
    def __init__(self) -> None:
        super().__init__("mdgm_trainer")
        p = lambda name, default, text: self.declare_parameter(  # noqa: E731
            name, default, ParameterDescriptor(description=text)).value
        bags = [b for b in p("bags", [""], "rosbag2 folders to train on at start (one-shot mode)") if b]
        config = p("config", str(config_path("train.yaml")), "train config (config/train.yaml)")
        out = p("out", "", "bundle folder to write at start, e.g. models/NAME (one-shot mode)")
        self.device = p("device", "auto", "auto | cpu | cuda | cuda:N")
        resume = p("resume", False, "continue from <out>.train/checkpoint.pt")
        epochs = p("epochs", 0, "override the config's epochs (0 = keep)")
        fusion_node = p("fusion_node", "/mdgm_fusion",
                        "fusion node to reload when the one-shot run is done ('' = none)")
        self.exit_when_done = p("exit_when_done", True, "one-shot mode: shut down after training")
        self.state = {"state": "idle", "epoch": "0", "epochs": "?", "val_loss": "nan", "message": ""}
        self.level = DiagnosticStatus.OK
        self.busy = threading.Lock()
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.one_shot = bool(bags or out)
        self.worker: threading.Thread | None = None
        self._group = ReentrantCallbackGroup()
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._action = self.create_action_server(Train, "~/train", self._execute, goal_callback=self._on_goal,
                                                 cancel_callback=lambda _: CancelResponse.ACCEPT,
                                                 callback_group=self._group)
        if self.one_shot:
            job = Job(bags, config, out, int(epochs), bool(resume), [], fusion_node)
            self.busy.acquire()
            self._start_worker(self._one_shot, job)

    def _start_worker(self, target, *args) -> threading.Thread:
        """The training thread (a daemon: a node that shuts down does not wait for a run to finish)."""
        self.worker = threading.Thread(target=target, args=args, daemon=True)
        self.worker.start()
        return self.worker

    def training_alive(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    # ------------------------------------------------------------------ modes
    def _one_shot(self, job: Job) -> None:
        try:
            self._run(job, lambda: False, None)
        except Exception:  # already logged and on /diagnostics by _run
            pass
        finally:
            self.busy.release()
            self.done.set()

    def _on_goal(self, goal) -> GoalResponse:
        if self.busy.locked():
            self.get_logger().warning("train goal rejected: a training is already running")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, goal_handle):
        """Train in a daemon thread and wait for it here (an executor thread), so a node shutting down
        mid-training ends at once instead of waiting for the run: the goal then aborts."""
        result = Train.Result()
        if not self.busy.acquire(blocking=False):
            goal_handle.abort()
            result.message = "a training is already running"
            return result
        ending: list[str] = []
        worker = self._start_worker(self._train_goal, goal_handle, result, ending)
        while worker.is_alive() and not self.stopping.is_set():
            worker.join(0.2)
        if worker.is_alive() or self.stopping.is_set() or not self.context.ok():
            # shutting down (Ctrl-C): the context is going away, leave the goal alone
            result.message = "the trainer node is shutting down: training stopped"
            return result
        self.busy.release()
        ended = ending[0] if ending else "abort"
        try:
            {"succeed": goal_handle.succeed, "canceled": goal_handle.canceled}.get(ended, goal_handle.abort)()
        except RCLError:  # the context ended between the check above and the state update
            if self.context.ok():
                raise
        return result

    def _train_goal(self, goal_handle, result, ending: list[str]) -> None:
        """One goal: fills ``result`` and says how it ended (succeed / canceled / abort) in ``ending``."""
        try:
            outcome = self._run(Job.from_goal(goal_handle.request), lambda: _check_cancel(goal_handle),
                                lambda e, n, v: goal_handle.publish_feedback(
                                    Train.Feedback(epoch=int(e), epochs=int(n), heldout_loss=float(v))))
            result.success, result.bundle, result.best_epoch = True, outcome.bundle, outcome.best_epoch
            result.best_heldout_loss, result.message = outcome.best_loss, outcome.message
            ending.append("succeed")
        except Cancelled:
            result.message = f"cancelled after epoch {self.state['epoch']}: no bundle written"
            ending.append("canceled")
        except Exception as err:  # bad goal or failed training: the goal aborts, the node keeps serving
            result.message = f"{type(err).__name__}: {err}"
            ending.append("abort")

    # ------------------------------------------------------------------ training
    def _run(self, job: Job, should_stop, feedback) -> Outcome:
        """Train one job; state and errors go to the log and /diagnostics. Raises on failure or cancel."""
        from ..training.config import parse_set
        from ..training.trainer import run_training

        def progress(epoch: int, epochs: int, val_loss: float) -> None:
            self._set(epoch=epoch, epochs=epochs, val_loss=f"{val_loss:.3f}")
            if feedback is not None:
                feedback(epoch, epochs, val_loss)

        self.level = DiagnosticStatus.OK
        self._set(state="training", epoch=0, epochs="?", val_loss="nan", message=f"training {job.out}")
        try:
            if not job.out or not job.bags:
                raise ValueError("'bags' and 'out' are required")
            overrides = parse_set(job.overrides)
            if job.epochs:
                overrides["training.epochs"] = job.epochs
            result = run_training(job.bags, job.config, job.out, resume=job.resume, device=self.device,
                                  overrides=overrides or None, log=lambda m: self.get_logger().info(m), show_bar=False,
                                  progress=progress, should_stop=should_stop)
            outcome = Outcome(str(Path(result.bundle).absolute()), result.best_epoch, result.best_val_loss,
                              f"bundle {Path(result.bundle).absolute()} (best epoch {result.best_epoch})")
            if job.fusion_node:
                outcome.message += "; " + self._reload(job.fusion_node, outcome.bundle)
            self._set(state="done", message=outcome.message)
            return outcome
        except Cancelled:
            self._set(state="cancelled", message=f"cancelled after epoch {self.state['epoch']}")
            self.get_logger().info(self.state["message"])
            raise
        except Exception as err:
            self.level = DiagnosticStatus.ERROR
            self._set(state="failed", message=f"{type(err).__name__}: {err}")
            self.get_logger().error(self.state["message"])
            raise
        finally:
            self._publish_diagnostics()

    def _set(self, **values) -> None:
        self.state.update({k: str(v) for k, v in values.items()})

    def _reload(self, fusion_node: str, bundle: str) -> str:
        """Point the fusion node's ``bundle`` parameter at the new bundle, then call ~/reload_model."""
        set_client = self.create_client(SetParameters, f"{fusion_node}/set_parameters", callback_group=self._group)
        reload_client = self.create_client(Trigger, f"{fusion_node}/reload_model", callback_group=self._group)
        try:
            if not (set_client.wait_for_service(timeout_sec=5.0) and reload_client.wait_for_service(timeout_sec=5.0)):
                return f"fusion node {fusion_node} not reachable: not reloaded"
            value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=bundle)
            done = _wait(set_client.call_async(
                SetParameters.Request(parameters=[ParameterMsg(name="bundle", value=value)])))
            if done is None or not done.results[0].successful:
                return f"fusion node refused the bundle parameter: {done.results[0].reason if done else 'timeout'}"
            answer = _wait(reload_client.call_async(Trigger.Request()))
            text = answer.message if answer else "reload timed out"
            self.get_logger().info(f"reload_model: {text}")
            return f"reload_model: {text}"
        finally:
            self.destroy_client(set_client)
            self.destroy_client(reload_client)

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(level=self.level, name=f"{self.get_fully_qualified_name()}: training",
                                  hardware_id="mdgm_ros",
                                  message=f"{self.state['state']} epoch {self.state['epoch']}/{self.state['epochs']}",
                                  values=[KeyValue(key=k, value=v) for k, v in self.state.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def _check_cancel(goal_handle) -> bool:
    if goal_handle.is_cancel_requested:
        raise Cancelled()
    return False


def _wait(future, timeout: float = 30.0):
    """Wait for a service answer from the training thread (executor threads complete the future)."""
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return future.result() if future.done() else None


@node_main
def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = TrainerNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    failed = False
    try:
        with until_shutdown(node.context):
            while rclpy.ok() and not (node.one_shot and node.done.is_set() and node.exit_when_done):
                executor.spin_once(timeout_sec=0.1)
            failed = node.state["state"] == "failed"
    finally:
        node.stopping.set()
        executor.shutdown(timeout_sec=1.0)
        interrupted = node.training_alive()
        epoch = node.state["epoch"]
        node.destroy_node()
        rclpy.try_shutdown()
    if interrupted:
        # torch is still running in the training thread: end here, without interpreter finalisation
        # (which would abort the process under it). Checkpoints of finished epochs are on disk.
        print(f"trainer_node: training interrupted after epoch {epoch}; `resume` continues from the "
              "last checkpoint", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1 if failed else 0)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
