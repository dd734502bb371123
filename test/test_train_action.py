"""trainer_node's ``~/train`` action over real DDS, client and nodes in separate processes: feedback per
epoch, a cancelled goal writes no bundle, a bad goal aborts with its reason, success reloads a running
fusion_node (bundle_roots allows the folder)."""
from __future__ import annotations

import signal

from action_msgs.msg import GoalStatus
from ros_env import ROOT, spin_until, start, stop


def _send(node, client, goal, on_feedback, timeout=30.0):
    future = client.send_goal_async(goal, feedback_callback=lambda m: on_feedback(m.feedback))
    assert spin_until(node, future.done, timeout), "the trainer did not answer the goal"
    handle = future.result()
    assert handle.accepted
    return handle


def _result(node, handle, timeout):
    future = handle.get_result_async()
    assert spin_until(node, future.done, timeout), "no result in time"
    return future.result()


def test_train_action_feedback_cancel_and_reload(ros_node, sim_bag, trained_bundle, tmp_path):
    from rclpy.action import ActionClient
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from mdgm_ros.action import Train
    from mdgm_ros.msg import ModelInfo

    node, env = ros_node
    env = {**env, "MDGM_ROS_CACHE": str(tmp_path / "cache")}
    infos = []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(ModelInfo, "/mdgm_fusion/model_info", lambda m: infos.append(m.model_id), latched)
    fusion = start("mdgm_ros.ros.fusion_node", "--ros-args", "--params-file", str(ROOT / "config" / "fusion.yaml"),
                   "-p", f"bundle:={trained_bundle[0]}", "-p", f"bundle_roots:=['{tmp_path}']",
                   env=env, log=tmp_path / "fusion.log")
    trainer = start("mdgm_ros.ros.trainer_node", "--ros-args", "-p", "device:=cpu", env=env,
                    log=tmp_path / "trainer.log")
    logs = lambda: (tmp_path / "trainer.log").read_text()[-3000:]  # noqa: E731
    try:
        client = ActionClient(node, Train, "/mdgm_trainer/train")
        assert client.wait_for_server(timeout_sec=60), logs()
        assert spin_until(node, lambda: infos, 60), (tmp_path / "fusion.log").read_text()[-2000:]
        first_id = infos[-1]

        bad = _send(node, client, Train.Goal(bags=[str(tmp_path / "no_such_bag")], out=str(tmp_path / "bad")), print)
        answer = _result(node, bad, 60)
        assert answer.status == GoalStatus.STATUS_ABORTED and not answer.result.success
        assert "no_such_bag" in answer.result.message

        goal = dict(bags=[str(sim_bag[0])], overrides=["data.block_s=3.0"])
        feedback = []
        cancelled = _send(node, client, Train.Goal(out=str(tmp_path / "cancelled"), epochs=50, **goal), feedback.append)
        assert spin_until(node, lambda: feedback, 240), logs()
        cancel = cancelled.cancel_goal_async()
        assert spin_until(node, cancel.done, 30)
        answer = _result(node, cancelled, 120)
        assert answer.status == GoalStatus.STATUS_CANCELED, answer.result.message
        assert not answer.result.success and answer.result.bundle == ""
        assert not (tmp_path / "cancelled").exists() and feedback[0].epochs == 50

        feedback.clear()
        trained = _send(node, client, Train.Goal(out=str(tmp_path / "retrained"), fusion_node="/mdgm_fusion",
                                                 epochs=2, **goal), feedback.append)
        answer = _result(node, trained, 300)
        assert answer.status == GoalStatus.STATUS_SUCCEEDED, answer.result.message + logs()
        assert answer.result.success and answer.result.bundle == str(tmp_path / "retrained")
        assert [(f.epoch, f.epochs) for f in feedback] == [(1, 2), (2, 2)]
        assert all(f.heldout_loss == f.heldout_loss for f in feedback)   # finite, not NaN
        assert "reload_model: loaded retrained-" in answer.result.message
        assert spin_until(node, lambda: infos[-1] != first_id, 30)
        assert infos[-1].startswith("retrained-")
        assert trainer.poll() is None   # the action server stays up after each goal

        feedback.clear()                 # Ctrl-C mid-training ends the node without waiting for the run
        _send(node, client, Train.Goal(out=str(tmp_path / "interrupted"), epochs=50, **goal), feedback.append)
        assert spin_until(node, lambda: feedback, 240), logs()
        trainer.send_signal(signal.SIGINT)
        assert trainer.wait(timeout=30) == 0, logs()
        assert not (tmp_path / "interrupted").exists()
        assert "Traceback" not in logs(), logs()
    finally:
        stop(trainer)
        stop(fusion)
