"""Stamped numeric messages read through named fields, depth images, and a bundle's stream settings."""
from __future__ import annotations

import json

import numpy as np
import pytest
from geometry_msgs.msg import WrenchStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Image, Imu
from std_msgs.msg import Float64MultiArray

from mdgm_ros.core import ModalitySpec
from mdgm_ros.streams import bridge
from mdgm_ros.streams.kinds import make_stream
from mdgm_ros.streams.params import (
    FIELD_PRESETS,
    ParameterError,
    _YamlParameters,
    bundle_mismatches,
    contradictions,
    declare_fusion_params,
    fusion_params_for_bundle,
    stream_settings,
)


def _params(values: dict):
    return declare_fusion_params(_YamlParameters(values))


@pytest.mark.parametrize("cls, preset", [(WrenchStamped, "wrench_stamped"), (Imu, "imu"), (Odometry, "odometry")])
def test_a_preset_reads_its_fields_and_writes_them_back_in_the_same_type(cls, preset):
    codec = bridge.FieldCodec(cls, FIELD_PRESETS[preset])
    values = np.arange(1, codec.size + 1, dtype=np.float32) / 7
    msg = codec.to_message(values, 1_700_000_000_123_456_789, "ee")
    assert isinstance(msg, cls) and msg.header.frame_id == "ee" and msg.header.stamp.nanosec == 123_456_789
    np.testing.assert_allclose(codec.to_array(msg), values, rtol=1e-6)


def test_field_paths_name_arrays_sequences_and_elements():
    imu = bridge.FieldCodec(Imu, ["orientation_covariance", "linear_acceleration.z", "angular_velocity_covariance[4]"])
    assert imu.size == 11
    msg = imu.to_message(np.arange(11), 1)
    assert list(msg.orientation_covariance) == list(range(9)) and msg.angular_velocity_covariance[4] == 10
    array = bridge.FieldCodec(Float64MultiArray, ["data"])
    assert array.size is None                                   # a sequence: as many values as the message holds
    np.testing.assert_array_equal(array.to_array(Float64MultiArray(data=[1.0, 2.0, 3.0])), [1, 2, 3])
    one = bridge.FieldCodec(Float64MultiArray, ["data[1]"])
    assert one.size == 1 and one.to_array(Float64MultiArray(data=[1.0, 2.0])).tolist() == [2.0]
    with pytest.raises(bridge.ConversionError, match="layout"):
        one.to_array(Float64MultiArray(data=[1.0]))
    with pytest.raises(bridge.ConversionError, match="non_finite"):
        bridge.FieldCodec(WrenchStamped, ["wrench.force.x"]).to_array(_nan_wrench())


def _nan_wrench() -> WrenchStamped:
    msg = WrenchStamped()
    msg.wrench.force.x = float("nan")
    return msg


@pytest.mark.parametrize("path, expected", [
    ("linear_accel.x", "has no field 'linear_accel.x'; its numeric fields are: orientation.x"),
    ("orientation", "orientation is a message, not a number"),
    ("orientation_covariance[9]", "orientation_covariance has 9 values"),
    ("header.frame_id", "header.frame_id is of type string, not a number"),
])
def test_a_wrong_field_path_names_the_messages_numeric_fields(path, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        bridge.resolve_field(Imu, path)


def test_any_installed_type_is_a_message_type_and_its_fields_are_checked_at_configure():
    params = _params({"modalities": ["ft"], "anchor": "", "output_rate": 50.0,
                      "ft.message_type": "geometry_msgs/msg/WrenchStamped", "ft.topic": "/ft"})
    assert params.streams[0].fields == FIELD_PRESETS["wrench_stamped"]          # the preset of that type
    point = _params({"modalities": ["p"], "anchor": "", "output_rate": 50.0,
                     "p.message_type": "geometry_msgs/msg/AccelStamped"})
    assert point.streams[0].fields == ["accel.linear.x", "accel.linear.y", "accel.linear.z", "accel.angular.x",
                                       "accel.angular.y", "accel.angular.z"]    # every numeric field
    with pytest.raises(ParameterError, match=r"ft.fields: geometry_msgs/msg/WrenchStamped has no field 'force.x'"):
        _params({"modalities": ["ft"], "anchor": "", "output_rate": 50.0, "ft.message_type": "wrench_stamped",
                 "ft.fields": ["force.x"]})
    with pytest.raises(ParameterError, match="not installed here"):
        _params({"modalities": ["g"], "anchor": "", "output_rate": 50.0, "g.message_type": "no_such_msgs/msg/X",
                 "g.fields": ["a"]})


def test_a_field_stream_converts_checks_its_size_and_publishes_its_own_type():
    params = _params({"modalities": ["imu"], "anchor": "", "output_rate": 50.0, "imu.message_type": "imu"})
    spec = ModalitySpec("imu", "vector", (10,))
    assert bundle_mismatches(params, [spec]) == []
    assert bundle_mismatches(params, [ModalitySpec("imu", "vector", (6,))]) == [
        "imu: 10 fields of imu = 10 values, bundle expects 6"]
    stream = make_stream(params.streams[0], spec)
    assert stream.input_type is Imu and stream.output_type is Imu and stream.stamped
    msg = stream.output_message(np.arange(10, dtype=np.float32), 5, "imu_link")
    assert isinstance(msg, Imu) and msg.linear_acceleration.z == 9.0
    np.testing.assert_array_equal(stream.to_array(msg), np.arange(10))
    np.testing.assert_array_equal(stream.output_to_array(msg), np.arange(10))
    unstamped = _params({"modalities": ["w"], "anchor": "", "output_rate": 50.0, "w.message_type": "wrench"})
    assert not make_stream(unstamped.streams[0], ModalitySpec("w", "vector", (6,))).stamped


@pytest.mark.parametrize("encoding, dtype, scale", [("16UC1", np.uint16, 1000.0), ("32FC1", np.float32, 1.0)])
def test_depth_images_in_millimetres_and_metres_become_metres_over_the_range(encoding, dtype, scale):
    metres = np.array([[0.5, 1.0], [2.0, 0.0]], np.float32)
    raw = (metres * scale).astype(dtype)
    if dtype == np.float32:
        raw[1, 1] = np.nan                                       # no return
    msg = Image(height=2, width=2, encoding=encoding, step=2 * raw.itemsize, data=raw.tobytes())
    array = bridge.depth_to_array(msg, (1, 2, 2), max_range_m=4.0)
    np.testing.assert_allclose(array[0], [[0.125, 0.25], [0.5, 0.0]])
    out = bridge.array_to_depth_image(array, 4.0, 7)
    assert out.encoding == "32FC1"
    np.testing.assert_allclose(np.frombuffer(out.data, "<f4").reshape(2, 2), [[0.5, 1.0], [2.0, 0.0]])
    with pytest.raises(bridge.ConversionError, match="encoding"):
        bridge.depth_to_array(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12)), (1, 2, 2), 4.0)


def test_a_bundles_stream_settings_rebuild_the_same_parameters(tmp_path):
    values = {"modalities": ["camera", "joints", "ft", "depth"], "anchor": "", "output_rate": 20.0,
              "camera.message_type": "compressed_image", "camera.topic": "/wrist/image/compressed",
              "joints.joint_names": ["a", "b"], "joints.joint_fields": ["position"],
              "ft.message_type": "wrench_stamped", "ft.topic": "/ft", "ft.staleness": 0.03,
              "depth.message_type": "depth_image", "depth.max_range": 3.0}
    params = _params(values)
    settings = stream_settings(params)
    (tmp_path / "manifest.json").write_text(json.dumps({"extra": {"streams": settings}}))
    again, contradicted = fusion_params_for_bundle(tmp_path)
    assert again == params and contradicted == []
    changed, contradicted = fusion_params_for_bundle(tmp_path, overrides={"ft.topic": "/other", "output_rate": 20,
                                                                          "ft.min_rate": 50.0})
    assert changed.streams[2].topic == "/other"
    assert contradicted == ["ft.topic = '/other', but the bundle was trained with '/ft'"]   # 20 == 20.0; min_rate: free
    assert contradictions({"joints.joint_names": ["b", "a"]}, settings) == [
        "joints.joint_names = ['b', 'a'], but the bundle was trained with ['a', 'b']"]
