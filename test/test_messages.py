"""The package's own interfaces (msg/, action/), built by `make install` into the venv: importable with
nothing sourced by hand, and carried over real DDS between two processes."""
import subprocess
import sys
import textwrap

import pytest
from ros_env import private_ros_env, spin_until, stop

ECHO = textwrap.dedent("""
    import rclpy
    from rclpy.node import Node
    from mdgm_ros.msg import AnomalyScores, Latent
    rclpy.init()
    node = Node("latent_echo")
    pub = node.create_publisher(AnomalyScores, "probe_out", 10)
    def echo(msg):
        out = AnomalyScores(header=msg.header, model_id=msg.model_id, modalities=msg.modalities,
                            score=list(msg.mean), flagged=list(msg.present), total=float(sum(msg.std)))
        pub.publish(out)
    node.create_subscription(Latent, "probe_in", echo, 10)
    rclpy.spin(node)
""")


def test_generated_messages_and_action_import():
    from rclpy.serialization import deserialize_message, serialize_message

    from mdgm_ros.action import Train
    from mdgm_ros.msg import AnomalyScores, ImputedArray, Latent, LatentPrediction, ModelInfo
    latent = Latent(model_id="m", modalities=["camera", "joints"], present=[True, False], mean=[0.5, -1.0],
                    std=[0.1, 0.2], private_sizes=[1, 1], private_mean=[0.0, 1.0], private_std=[1.0, 1.0])
    back = deserialize_message(serialize_message(latent), Latent)
    assert list(back.present) == [True, False] and list(back.mean) == [0.5, -1.0]
    assert {"header", "horizon", "stamps", "mean", "std"} <= set(LatentPrediction.get_fields_and_field_types())
    assert "header" in ImputedArray.get_fields_and_field_types()
    assert {"flagged", "threshold", "total"} <= set(AnomalyScores.get_fields_and_field_types())
    assert "latent_dim" in ModelInfo.get_fields_and_field_types()
    assert "heldout_loss" in Train.Feedback.get_fields_and_field_types()
    assert "bundle" in Train.Result.get_fields_and_field_types()


def test_generated_messages_cross_processes_over_dds(tmp_path):
    import rclpy
    from rclpy.node import Node

    from mdgm_ros.msg import AnomalyScores, Latent
    env = private_ros_env()
    echo = subprocess.Popen([sys.executable, "-c", ECHO], cwd=tmp_path, env=env,
                            stdout=open(tmp_path / "echo.log", "w"), stderr=subprocess.STDOUT)
    rclpy.init()
    try:
        node = Node("latent_probe")
        got = []
        node.create_subscription(AnomalyScores, "probe_out", got.append, 10)
        pub = node.create_publisher(Latent, "probe_in", 10)
        msg = Latent(model_id="model-1", modalities=["camera", "audio"], present=[True, False],
                     mean=[1.5, -2.0], std=[0.25, 0.5])
        msg.header.stamp.sec, msg.header.frame_id = 42, "base"

        def sent_and_echoed():
            pub.publish(msg)
            return bool(got)
        assert spin_until(node, sent_and_echoed, 60), (tmp_path / "echo.log").read_text()
        out = got[0]
        assert out.header.stamp.sec == 42 and out.header.frame_id == "base" and out.model_id == "model-1"
        assert list(out.modalities) == ["camera", "audio"] and list(out.flagged) == [True, False]
        assert list(out.score) == pytest.approx([1.5, -2.0]) and out.total == pytest.approx(0.75)
        node.destroy_node()
    finally:
        rclpy.shutdown()
        stop(echo)
