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
    monkeypatch.setenv("MDGM_ROS_CACHE", cache_env["MDGM_ROS_CACHE"])
    single = run_training(two_bags, "config/train.yaml", tmp_path / "one", device="cpu", show_bar=False,
                          log=lambda m: None, overrides={**TINY, "training.epochs": 2})
    ddp, one = _losses(tmp_path / "ddp", "train_loss"), _losses(tmp_path / "one", "train_loss")
    assert len(ddp) == len(one) == 2 and ddp[1] < ddp[0]
    # the same batches; only the reparameterisation noise differs between the ranks and the one process
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
