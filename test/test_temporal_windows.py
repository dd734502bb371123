"""Windows of consecutive aligned samples: runs break at bags, gaps, clock jumps and hold-out blocks."""
import numpy as np
import pytest
import torch

from mdgm_ros.core.engine.windows import gather_windows, runs, window_index

S = 1_000_000_000


def test_runs_break_at_a_new_bag_a_gap_a_backwards_stamp_and_a_hold_out_boundary():
    stamps = np.array([0, 1, 2, 3, 10, 11, 12, 5, 6, 0, 1, 2, 3]) * S // 10
    bag = np.array([0] * 9 + [1] * 4)
    group = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, -1])      # rows 11: held out, 12: excluded
    found = [r.tolist() for r in runs(stamps, bag, group, max_gap_s=0.5)]
    assert found == [[0, 1, 2, 3], [4, 5, 6], [7, 8], [9, 10], [11]]


def test_windows_cover_each_run_pad_short_runs_and_never_mix_groups():
    stamps = np.arange(10) * S // 10
    bag = np.zeros(10, int)
    group = np.array([0] * 7 + [1] * 3)
    index = window_index(stamps, bag, group, length=4, stride=2)
    assert index.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [3, 4, 5, 6], [7, 8, 9, -1]]
    for row in index:
        assert len({int(group[i]) for i in row if i >= 0}) == 1
    with pytest.raises(ValueError, match="must be >= 1"):
        window_index(stamps, bag, group, length=0)
    assert window_index(stamps, bag, np.full(10, -1), 3).shape == (0, 3)


def test_gathered_windows_hold_the_rows_and_padding_observes_nothing():
    feats = {"a": torch.arange(10.0)[:, None].expand(10, 2), "img": torch.ones(10, 1, 2, 2)}
    mask = torch.ones(10, 2, dtype=torch.bool)
    out, wmask = gather_windows(feats, mask, np.array([[3, 4, 5], [8, 9, -1]]))
    assert out["a"].shape == (2, 3, 2) and out["img"].shape == (2, 3, 1, 2, 2)
    assert out["a"][0, :, 0].tolist() == [3, 4, 5] and out["a"][1, 2].tolist() == [0, 0]
    assert wmask[1, 2].tolist() == [False, False] and bool(wmask[:, :2].all())
    assert float(out["img"][1, 2].abs().sum()) == 0.0
