"""Hostile stream input: property-based tests of the bridge and the aligner with hypothesis.

Invariants: a conversion either raises ConversionError (a counted reject) or returns a finite float32
array of the model's shape; one odd stamp never clears the buffers or enters them; only a consistent
backwards jump resets; a compressed frame's claimed size is refused before decoding."""
from __future__ import annotations

import struct
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Header, Int16MultiArray

from mdgm_ros.ros.fusion_node import _non_finite_part
from mdgm_ros.streams import bridge
from mdgm_ros.streams.alignment import NS, Aligner, PushResult, StreamConfig
from mdgm_ros.streams.kinds import RangeCheck

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAMERA = (3, 16, 16)
TACTILE = (2, 4, 4)
JOINTS = ["j1", "j2", "j3"]
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _converts_or_rejects(fn, *args, shape=None):
    try:
        out = fn(*args)
    except bridge.ConversionError as err:
        assert err.reason and isinstance(err.detail, str)
        return None
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    if shape is not None:
        assert out.shape == shape
    return out


@SETTINGS
@given(encoding=st.sampled_from(["rgb8", "bgr8", "rgba8", "mono8", "bgra8", "16UC1", "yuv422", ""]),
       height=st.integers(0, 40), width=st.integers(0, 40), extra_step=st.integers(-2, 6),
       size_delta=st.integers(-3, 3), bigendian=st.integers(0, 1), seed=st.integers(0, 2**31))
def test_camera_images(encoding, height, width, extra_step, size_delta, bigendian, seed):
    depth = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(encoding, 2)
    step = max(width * depth + extra_step, 0)
    size = max(step * height + size_delta, 0)
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    out = _converts_or_rejects(bridge.image_to_array, msg, CAMERA, shape=CAMERA)
    if out is not None:
        assert out.min() >= 0.0 and out.max() <= 1.0


@SETTINGS
@given(values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=32, max_size=32),
       bigendian=st.booleans(), encoding=st.sampled_from(["32FC1", "16UC1", "mono8", "32FC2"]))
def test_tactile_honours_is_bigendian_and_stays_finite(values, bigendian, encoding):
    array = np.asarray(values, np.float32).reshape(TACTILE)
    dtype = {"32FC1": "f4", "16UC1": "u2", "mono8": "u1", "32FC2": "f4"}[encoding]
    raw = np.nan_to_num(array, nan=0, posinf=0, neginf=0) if dtype != "f4" else array
    raw = np.clip(np.abs(raw), 0, np.iinfo(dtype).max) if dtype != "f4" else raw
    typed = raw.astype((">" if bigendian else "<") + dtype)
    msg = Image(height=8, width=4, encoding=encoding, is_bigendian=int(bigendian), step=4 * typed.itemsize)
    msg.data = typed.tobytes()
    out = _converts_or_rejects(bridge.tactile_to_array, msg, TACTILE, shape=TACTILE)
    if out is not None and encoding == "32FC1":
        np.testing.assert_array_equal(out, array)            # decoded in the message's byte order
    if encoding == "32FC1" and np.all(np.isfinite(array)):
        assert out is not None


@SETTINGS
@given(names=st.lists(st.sampled_from(JOINTS + ["x", "y"]), max_size=6),
       position=st.lists(floats, max_size=6), velocity=st.lists(floats, max_size=6),
       effort=st.lists(floats, max_size=6))
def test_joint_states(names, position, velocity, effort):
    msg = JointState(name=names, position=position, velocity=velocity, effort=effort)
    _converts_or_rejects(bridge.joint_state_to_array, msg, JOINTS, ["position", "velocity", "effort"], shape=(9,))


@SETTINGS
@given(samples=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=64),
       channels=st.integers(1, 3), int16=st.booleans())
def test_audio_chunks(samples, channels, int16):
    if int16:
        msg = Int16MultiArray(data=[int(np.clip(np.nan_to_num(s), -32768, 32767)) for s in samples])
    else:
        msg = Float32MultiArray(data=samples)
    out = _converts_or_rejects(bridge.audio_to_array, msg, channels)
    if out is not None:
        assert np.abs(out).max(initial=0) <= bridge.AUDIO_LIMIT


def test_loud_float_pcm_is_refused_and_averaging_cannot_overflow():
    big = np.full(8, 3e38, np.float32)
    with pytest.raises(bridge.ConversionError, match="out_of_range"):
        bridge.audio_to_array(Float32MultiArray(data=big.tolist()), 2)
    ok = np.full(8, 0.9, np.float32)
    assert np.allclose(bridge.audio_to_array(Float32MultiArray(data=ok.tolist()), 2), 0.9)


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_random_compressed_bytes(blob):
    msg = CompressedImage(format="jpeg")
    msg.data = blob
    _converts_or_rejects(bridge.compressed_image_to_array, msg, CAMERA, shape=CAMERA)


def _png_claiming(width: int, height: int) -> bytes:
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    ok, real = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(real.tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("make", [_png_claiming, _jpeg_claiming])
def test_decompression_bombs_are_refused_from_the_header(make):
    msg = CompressedImage(format="png")
    msg.data = make(60000, 60000)
    started = time.perf_counter()
    with pytest.raises(bridge.ConversionError, match="too_large") as info:
        bridge.compressed_image_to_array(msg, CAMERA)
    assert "60000x60000" in str(info.value)
    assert time.perf_counter() - started < 5.0          # generous: a decode would take tens of seconds


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_real_frames_report_their_size_and_decode(ext):
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    blob = cv2.imencode(ext, image)[1].tobytes()
    assert bridge.compressed_size(blob) == (64, 48)
    msg = CompressedImage(format=ext[1:])
    msg.data = blob
    assert bridge.compressed_image_to_array(msg, CAMERA).shape == CAMERA


def test_stamps_and_frame_ids():
    msg = Image(header=Header(frame_id="f" * 1_000_000))
    msg.header.stamp.sec, msg.header.stamp.nanosec = 5, 2_000_000_000
    with pytest.raises(bridge.ConversionError, match="invalid_stamp"):
        bridge.header_stamp_ns(msg)
    msg.header.stamp.nanosec = 7
    assert bridge.header_stamp_ns(msg) == 5 * NS + 7
    assert len(bridge.frame_id_of(msg)) == bridge.MAX_FRAME_ID


def test_range_check_uses_the_training_statistics():
    check = RangeCheck(np.zeros(3), np.full(3, 2.0), z_limit=10)
    check(np.array([19.0, -19.0, 0.0]))
    with pytest.raises(bridge.ConversionError, match="out_of_range"):
        check(np.array([0.0, 1e6, 0.0]))


def test_an_array_outside_the_training_bounds_comes_back_marked_as_a_view():
    from mdgm_ros.streams.kinds import OutOfRange
    bounds = (np.full(3, -1.0, np.float32), np.full(3, 1.0, np.float32))
    check = RangeCheck(np.zeros(3), np.ones(3), 1e6, "impossible", bounds)
    inside = np.array([0.5, -0.5, 0.0], np.float32)
    assert type(check(inside)) is np.ndarray
    wild = np.array([0.0, 20.0, 0.0], np.float32)
    marked = check(wild)
    assert isinstance(marked, OutOfRange) and np.shares_memory(marked, wild)
    with pytest.raises(bridge.ConversionError, match="impossible"):
        check(np.array([0.0, 3e38, 0.0], np.float32))


# --------------------------------------------------------------------------- aligner
def _aligner():
    return Aligner([StreamConfig("camera", 0.1), StreamConfig("joints", 0.05)], reset_after_s=1.0,
                   future_tolerance_s=1.0, reset_confirm=5)


stray = st.one_of(st.just(0), st.integers(-10 * NS, -1), st.integers(1, 90 * NS),      # zero, negative, far back
                  st.integers(103 * NS, 10**12 * NS))                                    # far in the future


@SETTINGS
@given(strays=st.lists(st.tuples(st.integers(1, 199), stray), max_size=8))   # after the first message
def test_single_odd_stamps_never_clear_or_enter_the_buffers(strays):
    aligner = _aligner()
    at = dict(strays)
    for k in range(200):
        now = 100 * NS + k * 5_000_000
        if k in at:
            result = aligner.push("joints", at[k], np.ones(1), now_ns=now)
            assert result in PushResult.REJECTED, (at[k], result)
        assert aligner.push("joints", now, np.zeros(1), now_ns=now) == PushResult.ACCEPTED
        if k % 6 == 0:
            assert aligner.push("camera", now, np.zeros(1), now_ns=now) == PushResult.ACCEPTED
    assert aligner.resets == 0
    for buffer in aligner.buffers.values():
        stamps = list(buffer.stamps)
        assert stamps == sorted(stamps) and all(100 * NS <= s <= 102 * NS for s in stamps)
    sample = aligner.sample(101 * NS)
    assert all(a >= 0 for a in sample.age_s.values() if a == a)


@SETTINGS
@given(back_s=st.floats(1.5, 50.0), step_ms=st.integers(1, 40), confirm=st.integers(1, 8))
def test_a_consistent_jump_back_resets_once_and_keeps_the_new_timeline(back_s, step_ms, confirm):
    aligner = Aligner([StreamConfig("camera", 0.1), StreamConfig("joints", 0.05)], reset_confirm=confirm)
    for k in range(10):
        aligner.push("camera", 100 * NS + k * 33_000_000, np.zeros(1))
    start = 100 * NS - int(back_s * NS)
    results = [aligner.push("camera", start + k * step_ms * 1_000_000, np.ones(1)) for k in range(confirm + 3)]
    assert results[:confirm - 1] == [PushResult.JUMPED_BACK] * (confirm - 1)
    assert results[confirm - 1] == PushResult.RESET and aligner.resets == 1
    assert set(results[confirm:]) == {PushResult.ACCEPTED}
    assert aligner.buffers["camera"].stamps[0] == start      # the held messages were kept


def test_non_finite_outputs_are_found():
    finite = torch.zeros(1, 4)

    def result(**over):
        base = dict(latent_mean=finite, latent_std=finite + 1, scores=torch.tensor([[0.1, float("nan")]]),
                    total_score=torch.tensor([0.2]), imputed={"audio": SimpleNamespace(mean=finite)})
        return SimpleNamespace(**{**base, **over})

    assert _non_finite_part(result(), [True, False]) is None                    # NaN of a missing one is fine
    assert _non_finite_part(result(), [True, True]) == "anomaly score"
    assert _non_finite_part(result(latent_std=finite + float("inf")), [True, False]) == "latent"
    bad = {"audio": SimpleNamespace(mean=finite / 0)}
    assert _non_finite_part(result(imputed=bad), [True, False]) == "imputed audio"
