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
    for k in range(4):                                      # a bag loop: held until 5 messages confirm it
        assert aligner.push("joints", 2 * NS + k * MS, np.ones(1)) == PushResult.JUMPED_BACK
        assert aligner.buffers["camera"].newest == 10 * NS
    assert aligner.push("joints", 2 * NS + 4 * MS, np.ones(1)) == PushResult.RESET
    assert aligner.resets == 1
    assert aligner.buffers["camera"].newest is None and list(aligner.buffers["joints"].stamps) == \
        [2 * NS + k * MS for k in range(5)]                 # the held messages are kept
    aligner.push("joints", 3 * NS, np.zeros(1))
    assert aligner.note_anchor(1 * NS) is True and aligner.buffers["joints"].newest is None


def test_one_odd_stamp_changes_nothing():
    aligner = make()
    aligner.push("camera", 10 * NS, np.zeros(1))
    aligner.push("joints", 10 * NS, np.zeros(1))
    assert aligner.push("joints", 0, np.ones(1)) == PushResult.ZERO_STAMP
    assert aligner.push("joints", 1 * NS, np.ones(1)) == PushResult.JUMPED_BACK   # a single stray
    assert aligner.push("joints", 10 * NS + MS, np.ones(1)) == PushResult.ACCEPTED  # the stray is dropped
    assert aligner.push("joints", 1 * NS, np.ones(1)) == PushResult.JUMPED_BACK   # held afresh, not 2 of 5
    assert aligner.push("camera", 99 * NS, np.ones(1), now_ns=10 * NS) == PushResult.FUTURE_STAMP
    assert aligner.push("camera", 10 * NS + 500 * MS, np.ones(1), now_ns=10 * NS) == PushResult.ACCEPTED
    assert aligner.resets == 0 and aligner.buffers["camera"].newest == 10 * NS + 500 * MS
    assert aligner.note_clock(20 * NS) is False and aligner.note_clock(5 * NS) is True   # /clock reset


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
