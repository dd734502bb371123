"""`torchrun --nproc-per-node 2 -m mdgm_ros train`: DDP on CPU (gloo) from two bags, against one process,
and a run whose rank dies mid-epoch, resumed."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdgm_ros.core import load_bundle
from mdgm_ros.training.trainer import run_training

TINY = {"data.block_s": 3.0, "data.shards": True, "data.loader_workers": 0, "data.shard_size": 128,
        "export.onnx": False, "training.threads": 1}
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def two_bags(sim_bag, tmp_path_factory):
    from mdgm_ros.sim.record import simulate_to_bag

    second = tmp_path_factory.mktemp("bags") / "sim6"
    simulate_to_bag(second, 6.0, seed=5)
    return [str(sim_bag[0]), str(second)]


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    return {**os.environ, "MDGM_ROS_CACHE": str(tmp_path_factory.mktemp("cache")), "OMP_NUM_THREADS": "1"}


def _torchrun(bags, out, epochs, env, resume=False, extra=None, **popen):
    sets = [arg for key, value in {**TINY, **(extra or {})}.items() for arg in ("--set", f"{key}={value}")]
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "mdgm_ros", "train",
               "--bags", *bags, "--out", str(out), "--epochs", str(epochs), "--device", "cpu", "--no-progress",
               *sets, *(["--resume"] if resume else [])]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, **popen)


def _losses(out: Path, column: str) -> list[float]:
    rows = list(csv.DictReader(open(out.with_name(out.name + ".train") / "metrics.csv")))
    return [float(r[column]) for r in rows]


def test_two_ranks_match_one_process(two_bags, cache_env, tmp_path, monkeypatch):
    proc = _torchrun(two_bags, tmp_path / "ddp", 2, cache_env, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count('"bundle"') == 1 and "rank 1/2" in stderr          # one result, from rank 0
    assert "each rank reads its own shards" in stderr, stderr[-3000:]
    monkeypatch.setenv("MDGM_ROS_CACHE", cache_env["MDGM_ROS_CACHE"])
    single = run_training(two_bags, "config/train.yaml", tmp_path / "one", device="cpu", show_bar=False,
                          log=lambda m: None, overrides={**TINY, "training.epochs": 2})
    ddp, one = _losses(tmp_path / "ddp", "train_loss"), _losses(tmp_path / "one", "train_loss")
    assert len(ddp) == len(one) == 2 and ddp[1] < ddp[0]
    # as many steps of about as many rows over the same data; the batches are cut from each rank's own
    # shards, so they differ from the one process's
    for a, b in zip(ddp, one):
        assert abs(a - b) / abs(b) < 0.03, (ddp, one)
    assert load_bundle(tmp_path / "ddp").manifest["extra"]["training"]["ranks"] == 2
    assert single.train_samples == load_bundle(tmp_path / "ddp").manifest["extra"]["training"]["train_samples"]


def test_a_killed_rank_resumes_from_the_last_checkpoint(two_bags, cache_env, tmp_path):
    out = tmp_path / "model"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = _torchrun(two_bags, out, 3, cache_env, stderr=err)
        checkpoint = out.with_name("model.train") / "checkpoint.pt"
        deadline = time.monotonic() + 400
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = int(re.search(r"rank 1/2 .* pid (\d+)", log.read_text()).group(1))
        os.kill(pid, signal.SIGKILL)                    # rank 1 dies during epoch 2
        proc.communicate(timeout=300)
    assert proc.returncode != 0
    done_before = _losses(out, "train_loss")
    assert 1 <= len(done_before) < 3
    resumed = _torchrun(two_bags, out, 3, cache_env, resume=True, stderr=subprocess.PIPE, text=True)
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "resumed from" in stderr
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(out.with_name("model.train") / "metrics.csv"))]
    assert set(epochs) == {1, 2, 3} and epochs[-1] == 3
    assert load_bundle(out).manifest["extra"]["training"]["epochs"] == 3


def test_a_family_with_its_own_optimiser_stays_in_step_across_ranks(two_bags, cache_env, tmp_path):
    """dmvae_daunhawer's discriminator is stepped apart from DDP: its gradients are averaged across the
    ranks by the trainer, and every epoch ends with a check that the ranks hold the same weights (a
    rank-local discriminator step fails that check)."""
    family = {"model_overrides.family": "dmvae_daunhawer", "model_overrides.fusion": "null"}
    proc = _torchrun(two_bags, tmp_path / "dmvae", 2, cache_env, extra=family, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "diverged" not in stderr
    assert load_bundle(tmp_path / "dmvae").manifest["extra"]["training"]["ranks"] == 2
    metrics = list(csv.DictReader(open(tmp_path / "dmvae.train" / "metrics.csv")))
    assert len(metrics) == 2 and all(float(r["discriminator_bce"]) > 0 for r in metrics)


def test_a_rank_without_its_gpu_is_one_clear_error(monkeypatch):
    import torch

    from mdgm_ros.training import distributed
    from mdgm_ros.training.config import TrainError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(TrainError, match="local rank 1.*--nproc-per-node"):
        distributed.start("cuda")


def test_each_rank_reads_a_disjoint_share_of_the_shards_every_epoch():
    """The epoch's rows split by shard between the ranks: every training row read once, by one rank, no
    shard read by two ranks, as many steps as one process, and each step's size over the ranks known
    to every rank (the loss scaling); the shares are drawn anew each epoch."""
    from types import SimpleNamespace

    import numpy as np

    from mdgm_ros.training.streaming import BatchSource, ShardRows, cut_batches, epoch_order, own_share

    sizes = (230, 170)                                   # two bags, shards of 16 rows
    data = ShardRows([SimpleNamespace(shard_size=16)] * 2,
                     np.concatenate([np.full(n, b) for b, n in enumerate(sizes)]).astype(np.int64),
                     np.concatenate([np.arange(n) for n in sizes]).astype(np.int64),
                     np.zeros(sum(sizes)), np.ones((sum(sizes), 2), bool), np.zeros(sum(sizes), bool))
    rows = np.arange(sum(sizes))[::-1].copy()

    class Spy:
        def __init__(self):
            self.read_rows: list[tuple[int, int]] = []

        def read(self, bag_of, row_of):
            self.read_rows += list(zip(bag_of.tolist(), row_of.tolist()))
            return {"x": np.zeros((len(bag_of), 1), np.float32)}

    for world in (2, 3):
        owned_by_epoch = []
        for epoch in range(3):
            order = epoch_order(rows, data.shard_ids(rows), seed=4, epoch=epoch, buffer=64)
            spies, counts, wholes = [], [], []
            for rank in range(world):
                batches, whole = own_share(order, data.shard_ids(order), world, rank, 4, epoch, batch_size=32)
                spy = Spy()
                source = BatchSource(spy, data, batches, rank, world, whole)
                items = [source[k] for k in range(len(source))]
                sizes_here = [mask.shape[0] for _, mask, _ in items]
                assert [total for _, _, total in items] == whole
                spies.append(spy)
                counts.append(sizes_here)
                wholes.append(whole)
            assert len({len(c) for c in counts}) == 1 and len(counts[0]) == len(cut_batches(order, 32))
            assert wholes[0] == [sum(c[k] for c in counts) for k in range(len(counts[0]))]
            assert all(w == wholes[0] for w in wholes)
            read = [set(s.read_rows) for s in spies]
            assert sum(len(s.read_rows) for s in spies) == len(rows) == len(set().union(*read))
            shards = [{(b, r // 16) for b, r in part} for part in read]
            assert all(not (shards[i] & shards[j]) for i in range(world) for j in range(i + 1, world))
            owned_by_epoch.append(shards[0])
        assert owned_by_epoch[0] != owned_by_epoch[1] or owned_by_epoch[1] != owned_by_epoch[2]
    # fewer shards than ranks: no own shares (the ranks then read every batch row by row)
    few = rows[:20]
    assert own_share(few, data.shard_ids(few), 4, 0, 4, 0, 8) is None


def test_two_nodes_on_localhost_match_one_process(two_bags, cache_env, tmp_path, monkeypatch):
    """torchrun --nnodes 2 with a c10d rendezvous on localhost: two launches of one rank each, as on
    two machines, train together and match one process within the single-node tolerance."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    launches = [subprocess.Popen(
        [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node), "--rdzv-backend", "c10d",
         "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "mdgm-two-nodes", "-m", "mdgm_ros", "train",
         "--bags", *two_bags, "--out", str(tmp_path / "two_nodes"), "--epochs", "2", "--device", "cpu",
         "--no-progress", *sets], env=cache_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)]
    outputs = [launch.communicate(timeout=600) for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(out.count('"bundle"') for out, _ in outputs) == 1
    assert "each rank reads its own shards" in "".join(err for _, err in outputs)
    monkeypatch.setenv("MDGM_ROS_CACHE", cache_env["MDGM_ROS_CACHE"])
    run_training(two_bags, "config/train.yaml", tmp_path / "one", device="cpu", show_bar=False,
                 log=lambda m: None, overrides={**TINY, "training.epochs": 2})
    nodes, one = _losses(tmp_path / "two_nodes", "train_loss"), _losses(tmp_path / "one", "train_loss")
    assert len(nodes) == len(one) == 2
    for a, b in zip(nodes, one):
        assert abs(a - b) / abs(b) < 0.03, (nodes, one)
    assert load_bundle(tmp_path / "two_nodes").manifest["extra"]["training"]["ranks"] == 2
