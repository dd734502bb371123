"""Message <-> array conversions, per encoding, and the reasons bad messages are rejected."""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Int16MultiArray, MultiArrayDimension

from mdgm_ros.streams import bridge
from mdgm_ros.streams.bridge import ConversionError

RNG = np.random.default_rng(0)


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_give_rgb(encoding):
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pixels = rgb[:, :, ::-1] if encoding.startswith("bgr") else rgb
    if encoding.endswith("a8"):
        pixels = np.concatenate([pixels, np.full((8, 8, 1), 7, np.uint8)], axis=2)
    out = bridge.image_to_array(_image(np.ascontiguousarray(pixels), encoding, pad=4), (3, 8, 8))
    np.testing.assert_allclose(out, np.transpose(rgb, (2, 0, 1)) / 255.0, atol=1e-6)


def test_mono_and_resizing():
    grey = RNG.integers(0, 256, (16, 24), dtype=np.uint8)
    out = bridge.image_to_array(_image(grey, "mono8"), (3, 8, 12))
    assert out.shape == (3, 8, 12) and np.allclose(out[0], out[2])
    np.testing.assert_allclose(out[0], cv2.resize(grey, (12, 8), interpolation=cv2.INTER_AREA) / 255.0, atol=1e-6)
    assert bridge.image_to_array(_image(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8), "rgb8"),
                                 (1, 8, 8)).shape == (1, 8, 8)


def test_image_round_trip():
    array = RNG.random((3, 8, 8)).astype(np.float32)
    back = bridge.image_to_array(bridge.array_to_image(array, 5), (3, 8, 8))
    np.testing.assert_allclose(back, array, atol=1 / 255)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_compressed_images(ext):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (255, 0, 0)
    ok, data = cv2.imencode(ext, rgb[:, :, ::-1])
    msg = CompressedImage(format=ext[1:])
    msg.data = data.tobytes()
    out = bridge.compressed_image_to_array(msg, (3, 16, 16))
    assert out[0, :, :6].mean() > 0.9 and out[2, :, :6].mean() < 0.1 and out[0, :, 10:].mean() < 0.1


@pytest.mark.parametrize("make, reason", [
    (lambda: _image(np.zeros((4, 4, 3), np.uint8), "yuv422"), "encoding"),
    (lambda: Image(height=4, width=4, encoding="rgb8", step=12, data=b"\x00" * 10), "size"),
    (lambda: Image(height=0, width=0, encoding="rgb8"), "empty"),
])
def test_bad_camera_images(make, reason):
    with pytest.raises(ConversionError) as err:
        bridge.image_to_array(make(), (3, 4, 4))
    assert err.value.reason == reason


def test_bad_compressed_image():
    msg = CompressedImage(format="jpeg")
    msg.data = b"not a jpeg at all"
    with pytest.raises(ConversionError) as err:
        bridge.compressed_image_to_array(msg, (3, 8, 8))
    assert err.value.reason == "decode"


def _joints(names, n_fields=3):
    msg = JointState(name=list(names))
    values = np.arange(len(names), dtype=float)
    msg.position, msg.velocity, msg.effort = (values + 0.1).tolist(), (values + 0.2).tolist(), (values + 0.3).tolist()
    if n_fields < 3:
        msg.effort = []
    return msg


def test_joint_state_reorders_and_selects_fields():
    out = bridge.joint_state_to_array(_joints(["b", "x", "a"]), ["a", "b"], ["position", "effort"])
    np.testing.assert_allclose(out, [2.1, 0.1, 2.3, 0.3])
    back = bridge.array_to_joint_state(out, ["a", "b"], ["position", "effort"], 7)
    assert list(back.name) == ["a", "b"] and list(back.effort) == pytest.approx([2.3, 0.3])
    assert back.header.stamp.nanosec == 7


@pytest.mark.parametrize("msg, reason", [
    (_joints(["q", "r"]), "unknown_joints"),
    (_joints(["a"]), "missing_joints"),
    (_joints(["a", "b"], n_fields=2), "layout"),
    (_joints(["a", "a"]), "layout"),
])
def test_bad_joint_states(msg, reason):
    with pytest.raises(ConversionError) as err:
        bridge.joint_state_to_array(msg, ["a", "b"], ["position", "velocity", "effort"])
    assert err.value.reason == reason


def test_non_finite_joint_state():
    msg = _joints(["a", "b"])
    msg.position = [float("nan"), 0.0]
    with pytest.raises(ConversionError, match="non_finite"):
        bridge.joint_state_to_array(msg, ["a", "b"], ["position"])


def test_audio_float_int16_and_layouts():
    samples = RNG.uniform(-1, 1, 320).astype(np.float32)
    msg = Float32MultiArray()
    msg.data = samples
    np.testing.assert_allclose(bridge.audio_to_array(msg), samples)
    stereo = Int16MultiArray()
    stereo.layout.dim = [MultiArrayDimension(label="channels", size=2, stride=640),
                         MultiArrayDimension(label="samples", size=320, stride=320)]
    pcm = (np.stack([samples, -samples]) * 16384).astype(np.int16)
    stereo.data = pcm.ravel()
    np.testing.assert_allclose(bridge.audio_to_array(stereo), pcm.mean(0) / 32768.0, atol=1e-6)
    interleaved = Int16MultiArray()
    interleaved.data = np.stack([pcm[0], pcm[0]], axis=1).ravel()
    np.testing.assert_allclose(bridge.audio_to_array(interleaved, channels=2), pcm[0] / 32768.0, atol=1e-6)


@pytest.mark.parametrize("data, dims, reason", [
    ([], [], "empty"),
    ([0.0, float("inf")], [], "non_finite"),
    ([0.0] * 5, [2, 3], "layout"),
])
def test_bad_audio(data, dims, reason):
    msg = Float32MultiArray()
    msg.data = data
    msg.layout.dim = [MultiArrayDimension(size=s) for s in dims]
    with pytest.raises(ConversionError) as err:
        bridge.audio_to_array(msg)
    assert err.value.reason == reason


@pytest.mark.parametrize("encoding, dtype, scale", [("32FC1", "<f4", 1.0), ("16UC1", "<u2", 65535.0),
                                                    ("mono8", "u1", 255.0)])
def test_tactile_encodings(encoding, dtype, scale):
    grid = RNG.random((2, 4, 4)).astype(np.float32)
    stored = (grid * scale).astype(dtype) if scale > 1 else grid.astype(dtype)
    msg = Image(height=8, width=4, encoding=encoding, step=4 * np.dtype(dtype).itemsize)
    msg.data = stored.tobytes()
    np.testing.assert_allclose(bridge.tactile_to_array(msg, (2, 4, 4)), stored.astype(np.float32) / scale, atol=1e-6)


def test_tactile_round_trip_big_endian_and_errors():
    grid = RNG.random((2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(bridge.tactile_to_array(bridge.array_to_tactile_image(grid, 1), (2, 4, 4)), grid)
    big = Image(height=8, width=4, encoding="32FC1", step=16, is_bigendian=1)
    big.data = grid.astype(">f4").tobytes()
    np.testing.assert_array_equal(bridge.tactile_to_array(big, (2, 4, 4)), grid)
    with pytest.raises(ConversionError, match="size"):
        bridge.tactile_to_array(bridge.array_to_tactile_image(grid[:1], 1), (2, 4, 4))
    with pytest.raises(ConversionError, match="encoding"):
        bridge.tactile_to_array(Image(height=8, width=4, encoding="rgb8", step=12), (2, 4, 4))


def test_multiarray_and_named_vectors():
    spec = RNG.random((4, 3)).astype(np.float32)
    msg = bridge.array_to_multiarray(spec, ["mel", "frame"])
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [("mel", 4, 12), ("frame", 3, 3)]
    np.testing.assert_array_equal(np.asarray(msg.data, np.float32).reshape(4, 3), spec)
    latent = bridge.named_vector(bridge.latent_names(3), [1, 2, 3], [0.1, 0.2, 0.3], 1_500_000_000)
    assert list(latent.name) == ["z0", "z1", "z2"] and latent.header.stamp.sec == 1
    assert bridge.stamp_to_ns(bridge.ns_to_stamp(123_456_789_012)) == 123_456_789_012
