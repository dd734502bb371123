"""``trainer_node``: ``mdgm-ros train`` as a ROS node.

Parameters: ``bags`` (paths), ``config`` (train.yaml), ``out`` (bundle folder), ``device``, ``resume``,
``epochs`` (0 = the config's), ``fusion_node`` (name of the fusion node to update, '' = none) and
``exit_when_done``. Progress goes to ``/diagnostics`` (state, epoch, held-out loss) once a second.
When the bundle is written, the node sets the fusion node's ``bundle`` parameter to it and calls its
``~/reload_model``; the fusion node swaps models without stopping.
"""
from __future__ import annotations

import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import Trigger

from ..config_files import config_path
from .guard import GuardedNode, node_main


class TrainerNode(GuardedNode, Node):
    def __init__(self) -> None:
        super().__init__("mdgm_trainer")
        p = lambda name, default, text: self.declare_parameter(name, default, ParameterDescriptor(description=text)).value  # noqa: E731
        self.bags = list(p("bags", [""], "rosbag2 folders to train on"))
        self.config = p("config", str(config_path("train.yaml")), "train config (config/train.yaml)")
        self.out = p("out", "", "bundle folder to write, e.g. models/NAME")
        self.device = p("device", "auto", "auto | cpu | cuda | cuda:N")
        self.resume = p("resume", False, "continue from <out>.train/checkpoint.pt")
        self.epochs = p("epochs", 0, "override the config's epochs (0 = keep)")
        self.fusion_node = p("fusion_node", "/mdgm_fusion", "fusion node to reload when done ('' = none)")
        self.exit_when_done = p("exit_when_done", True, "shut down after training")
        self.state = {"state": "starting", "epoch": "0", "epochs": "?", "val_loss": "nan", "message": ""}
        self.level = DiagnosticStatus.OK
        self.done = threading.Event()
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._thread = threading.Thread(target=self._train, daemon=True)
        self._thread.start()

    def _set(self, **values) -> None:
        self.state.update({k: str(v) for k, v in values.items()})

    def _train(self) -> None:
        from ..training.trainer import run_training

        try:
            if not self.out or not [b for b in self.bags if b]:
                raise ValueError("parameters 'bags' and 'out' are required")
            self._set(state="training")
            result = run_training([b for b in self.bags if b], self.config, self.out, resume=self.resume,
                                  device=self.device, overrides={"training.epochs": self.epochs} if self.epochs else None,
                                  log=lambda m: self.get_logger().info(m), show_bar=False,
                                  progress=lambda e, n, v: self._set(epoch=e, epochs=n, val_loss=f"{v:.3f}"))
            self._set(state="done", message=f"bundle {result.bundle} (best epoch {result.best_epoch})")
            if self.fusion_node:
                self._set(message=self.state["message"] + "; " + self._reload(str(result.bundle)))
        except Exception as err:  # reported on /diagnostics and in the log; the node stays up to say so
            self.level = DiagnosticStatus.ERROR
            self._set(state="failed", message=f"{type(err).__name__}: {err}")
            self.get_logger().error(self.state["message"])
        finally:
            self._publish_diagnostics()
            self.done.set()

    def _reload(self, bundle: str) -> str:
        """Point the fusion node's ``bundle`` parameter at the new bundle, then call ~/reload_model."""
        set_client = self.create_client(SetParameters, f"{self.fusion_node}/set_parameters")
        reload_client = self.create_client(Trigger, f"{self.fusion_node}/reload_model")
        if not (set_client.wait_for_service(timeout_sec=5.0) and reload_client.wait_for_service(timeout_sec=5.0)):
            return f"fusion node {self.fusion_node} not reachable: not reloaded"
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=bundle)
        done = _wait(set_client.call_async(SetParameters.Request(parameters=[ParameterMsg(name="bundle", value=value)])))
        if done is None or not done.results[0].successful:
            return f"fusion node refused the bundle parameter: {done.results[0].reason if done else 'timeout'}"
        answer = _wait(reload_client.call_async(Trigger.Request()))
        text = answer.message if answer else "reload timed out"
        self.get_logger().info(f"reload_model: {text}")
        return f"reload_model: {text}"

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(level=self.level, name="mdgm_trainer: training", hardware_id="mdgm_ros",
                                  message=f"{self.state['state']} epoch {self.state['epoch']}/{self.state['epochs']}",
                                  values=[KeyValue(key=k, value=v) for k, v in self.state.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def _wait(future, timeout: float = 30.0):
    """Wait for a service answer from the training thread (the main thread spins the node)."""
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return future.result() if future.done() else None


@node_main
def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = TrainerNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    failed = False
    try:
        while rclpy.ok() and not (node.done.is_set() and node.exit_when_done):
            executor.spin_once(timeout_sec=0.1)
        failed = node.state["state"] == "failed"
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
