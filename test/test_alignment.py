"""Alignment: point and window streams, staleness, resets on backwards stamps, bounded memory."""
import numpy as np
import pytest

from mdgm_ros.streams.alignment import NS, Aligner, PushResult, StreamConfig

MS = 1_000_000


def make():
    return Aligner([StreamConfig("camera", 0.1), StreamConfig("joints", 0.02, capacity=8),
                    StreamConfig("audio", 0.05, window_samples=800, sample_rate=16000)])


def test_point_stream_takes_the_newest_at_or_before_the_anchor():
    aligner = make()
    for k in range(5):
        aligner.push("joints", 100 * MS + k * 5 * MS, np.array([k], np.float32))
    sample = aligner.sample(117 * MS, anchor=("camera", np.zeros(1)))
    assert sample.present == {"camera": True, "joints": True, "audio": False}
    assert sample.arrays["joints"][0] == 3 and sample.age_s["joints"] == pytest.approx(0.002)
    assert aligner.sample(99 * MS).present["joints"] is False             # nothing at or before
    assert aligner.sample(200 * MS).present["joints"] is False            # stale (> 20 ms)
    assert aligner.sample(200 * MS).age_s["joints"] == pytest.approx(0.08)


def test_audio_window_concatenates_consecutive_chunks():
    aligner = make()
    for k in range(5):                                                    # 20 ms chunks of 320 samples
        aligner.push("audio", (k + 1) * 20 * MS, np.arange(k * 320, (k + 1) * 320, dtype=np.float32))
    sample = aligner.sample(101 * MS)
    np.testing.assert_array_equal(sample.arrays["audio"], np.arange(1600 - 800, 1600, dtype=np.float32))
    assert aligner.sample(59 * MS).present["audio"] is False              # only 2 chunks: 640 < 800


def test_audio_gap_makes_the_window_missing():
    aligner = make()
    aligner.push("audio", 20 * MS, np.zeros(320, np.float32))
    aligner.push("audio", 40 * MS, np.zeros(320, np.float32))
    aligner.push("audio", 200 * MS, np.zeros(320, np.float32))           # a 140 ms hole
    assert aligner.sample(200 * MS).present["audio"] is False
    aligner.push("audio", 220 * MS, np.zeros(320, np.float32))
    aligner.push("audio", 240 * MS, np.zeros(320, np.float32))
    assert aligner.sample(240 * MS).present["audio"] is True


def test_backwards_stamps_reset_or_reject():
    aligner = make()
    aligner.push("camera", 10 * NS, np.zeros(1))
    aligner.push("joints", 10 * NS, np.zeros(1))
    assert aligner.push("joints", 10 * NS - 5 * MS, np.zeros(1)) == PushResult.OUT_OF_ORDER
    assert aligner.push("joints", 2 * NS, np.ones(1)) == PushResult.RESET  # bag loop
    assert aligner.resets == 1
    assert aligner.buffers["camera"].newest is None and aligner.buffers["joints"].newest == 2 * NS
    aligner.push("joints", 3 * NS, np.zeros(1))
    assert aligner.note_anchor(1 * NS) is True and aligner.buffers["joints"].newest is None


def test_memory_is_bounded():
    aligner = make()
    for k in range(1000):
        aligner.push("joints", k * MS, np.zeros(27, np.float32))
    assert len(aligner.buffers["joints"].stamps) == 8


def test_invalid_configs():
    with pytest.raises(ValueError):
        StreamConfig("audio", window_samples=100)
    with pytest.raises(ValueError):
        Aligner([StreamConfig("a"), StreamConfig("a")])
