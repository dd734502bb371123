"""Shards (bags -> aligned samples on disk), streaming training over them, the cache command."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mdgm_ros.cli import main
from mdgm_ros.config_files import config_path
from mdgm_ros.core import MultimodalVAE, default_robot_modalities, load_bundle
from mdgm_ros.core.engine import loop as core_training
from mdgm_ros.data import cache
from mdgm_ros.data.dataset import align_bag
from mdgm_ros.data.shards import RowReader, ensure_shards
from mdgm_ros.streams.params import fusion_params_from_file
from mdgm_ros.training.config import TrainSettings
from mdgm_ros.training.distributed import Ranks
from mdgm_ros.training.streaming import (
    ShardFeed,
    ShardRows,
    buffer_shuffle,
    cut_batches,
    epoch_order,
    split_rows,
    streaming_statistics,
)
from mdgm_ros.training.trainer import run_training


def _params():
    return fusion_params_from_file(str(config_path("fusion.yaml")), overrides={"anchor": "", "output_rate": 30.0})


@pytest.fixture(scope="module")
def shard_root(sim_bag, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache") / "shards"
    logs: list[str] = []
    opened = ensure_shards([sim_bag[0]], _params(), default_robot_modalities(), shard_size=100, root=root,
                           log=logs.append)
    return root, opened, logs


def test_shards_hold_exactly_the_aligned_samples(sim_bag, shard_root):
    root, (shards,), logs = shard_root
    data = align_bag(sim_bag[0], _params(), default_robot_modalities())
    assert len(shards) == len(data) and shards.shard_rows[:-1] == [100] * (len(shards.shard_rows) - 1)
    np.testing.assert_array_equal(shards.stamps, data.stamps)
    np.testing.assert_array_equal(shards.mask, data.mask)
    np.testing.assert_array_equal(shards.fault, data.fault)
    rows = np.random.default_rng(0).permutation(len(data))[:150]
    got = RowReader([shards], open_shards=2).read(np.zeros(len(rows), int), rows)
    for name in data.names:
        np.testing.assert_array_equal(got[name], data.raw[name][rows])
    manifest = json.loads((shards.folder / "manifest.json").read_text())
    assert manifest["bag_hash"] and manifest["count"] == len(data) and manifest["labels"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]          # no temporaries left


def test_shards_are_reused_not_rebuilt(sim_bag, shard_root):
    root, (shards,), _ = shard_root
    before = (shards.folder / "index.npz").stat().st_mtime_ns
    logs: list[str] = []
    again = ensure_shards([sim_bag[0]], _params(), default_robot_modalities(), shard_size=100, root=root,
                          log=logs.append)
    assert again[0].folder == shards.folder and (shards.folder / "index.npz").stat().st_mtime_ns == before
    assert any("from the shard cache" in line for line in logs) and not any("sharded" in line for line in logs)


def test_epoch_order_is_a_seeded_permutation_that_keeps_shards_together():
    rows = np.arange(1000)
    shard_ids = rows // 100
    first, again, other = (epoch_order(rows, shard_ids, 0, e, buffer=1) for e in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and sorted(first) == list(rows)
    assert all(len(set(first[i:i + 100] // 100)) == 1 for i in range(0, 1000, 100))   # buffer 1: whole shards
    shuffled = buffer_shuffle(np.arange(1000), 50, np.random.default_rng(0))
    assert sorted(shuffled) == list(range(1000)) and not np.array_equal(shuffled, np.arange(1000))
    assert np.max(shuffled - np.arange(1000)) < 50          # nothing comes out more than a buffer early
    assert [len(b) for b in cut_batches(np.arange(129), 64, world=2)] == [64, 65]


def test_streaming_statistics_equal_the_in_memory_fit(sim_bag, shard_root):
    torch.manual_seed(0)
    _, opened, _ = shard_root
    settings = TrainSettings.from_file(config_path("train.yaml"), {"data.block_s": 3.0, "data.loader_workers": 0})
    data = ShardRows.of(opened)
    train_rows, val_rows = split_rows(data, settings, lambda m: None)
    streamed = MultimodalVAE(settings.model)
    stats = streaming_statistics(streamed, ShardFeed(data, train_rows, val_rows, settings, Ranks(),
                                                     torch.device("cpu")))
    stats.apply(streamed)
    memory = MultimodalVAE(settings.model)
    aligned = align_bag(sim_bag[0], _params(), settings.model.modalities).subset(train_rows)
    feats = core_training.raw_to_features(memory, aligned.float_raw())
    core_training.fit_normalization(memory, feats, torch.from_numpy(aligned.mask))
    for name in memory.names:
        mean, std = memory.normalization_stats(name)
        s_mean, s_std = streamed.normalization_stats(name)
        torch.testing.assert_close(s_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s_std, std, rtol=1e-5, atol=1e-6)
        observed = torch.from_numpy(aligned.mask[:, memory.names.index(name)])
        torch.testing.assert_close(stats.means()[name], feats[name][observed].double().mean(0).float(),
                                   rtol=1e-5, atol=1e-5)


def test_training_streams_from_shards_into_a_calibrated_bundle(sim_bag, tmp_path, monkeypatch):
    monkeypatch.setenv("MDGM_ROS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model"
    result = run_training([str(sim_bag[0])], "config/train.yaml", out, device="cpu", log=lambda m: None,
                          show_bar=False, overrides={"data.block_s": 3.0, "training.epochs": 2, "data.shards": True,
                                                     "data.shard_size": 64, "data.loader_workers": 1,
                                                     "export.onnx": False})
    bundle = load_bundle(out)
    assert bundle.calibration is not None and result.epochs == 2 and result.val_samples > 0
    assert set(bundle.calibration.predictive_scale) == set(bundle.model.names)
    assert bundle.model.feature_bounds("joints") is not None         # bounds from the streaming statistics
    assert bundle.manifest["extra"]["training"]["shards"] is True
    assert [e.kind for e in cache.entries()] == ["shards"]


def test_cache_command_lists_and_prunes(sim_bag, shard_root, tmp_path, monkeypatch, capsys):
    root, (shards,), _ = shard_root
    monkeypatch.setenv("MDGM_ROS_CACHE", str(root.parent))
    (root.parent / "aligned").mkdir(exist_ok=True)
    old = root.parent / "aligned" / "0123.npz"
    old.write_bytes(b"x" * 1000)
    os.utime(old, (1e9, 1e9))                                  # unused since 2001
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in listed["entries"]] == ["aligned", "shards"] and listed["entries"][1]["bag"]
    assert main(["cache", "prune", "--older-than", "30"]) == 0
    assert not old.exists() and shards.folder.is_dir()
    assert main(["cache", "prune", "--all", "--dry-run"]) == 0 and shards.folder.is_dir()
    monkeypatch.setenv("MDGM_ROS_CACHE_MAX_GB", "lots")
    assert main(["cache", "prune"]) == 2 and "MDGM_ROS_CACHE_MAX_GB" in capsys.readouterr().err


def test_the_cache_bound_keeps_what_the_run_uses(tmp_path, monkeypatch):
    monkeypatch.setenv("MDGM_ROS_CACHE", str(tmp_path))
    folders = []
    for i, used in enumerate((100, 200, 300)):                   # least recently used first
        folder = tmp_path / "shards" / f"key{i}"
        (folder / "00000").mkdir(parents=True)
        (folder / "00000" / "camera.npy").write_bytes(b"x" * 10_000)
        (folder / "manifest.json").write_text(json.dumps({"bag": f"/bags/{i}"}))
        os.utime(folder / "manifest.json", (used, used))
        folders.append(folder)
    (tmp_path / "shards" / ".key9.tmp-dead").mkdir()             # a write that died long ago
    os.utime(tmp_path / "shards" / ".key9.tmp-dead", (100, 100))
    monkeypatch.setenv("MDGM_ROS_CACHE_MAX_GB", "0.000025")      # room for two entries
    logs: list[str] = []
    cache.enforce_bound([folders[0]], logs.append)
    assert folders[0].is_dir() and not folders[1].exists() and folders[2].is_dir()
    assert not (tmp_path / "shards" / ".key9.tmp-dead").exists() and "removed 1" in logs[0]
