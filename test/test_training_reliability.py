"""What a kill, a damaged file or the cache must not change: bundles, checkpoints, aligned samples, weights."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, load_bundle, save_bundle
from mdgm_ros.core.engine.atomic import recover_dir
from mdgm_ros.data import dataset
from mdgm_ros.training.config import TrainSettings
from mdgm_ros.training.trainer import run_training

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"data.block_s": 3.0, "export.onnx": False}


def _train(bag, out, epochs, **kw):
    overrides = {**QUICK, "training.epochs": epochs, **kw.pop("overrides", {})}
    return run_training([str(bag)], ROOT / "config" / "train.yaml", out, device="cpu", overrides=overrides,
                        show_bar=False, **kw)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_bundle(folder).model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_cache_returns_exactly_a_fresh_alignment_and_trains_the_same_weights(sim_bag, tmp_path, monkeypatch):
    settings = TrainSettings.from_file(ROOT / "config" / "train.yaml")
    specs = list(settings.model.modalities)
    fresh = dataset.load_bags([sim_bag[0]], settings.fusion, specs, None, 0.5, log=lambda m: None)
    dataset.load_bags([sim_bag[0]], settings.fusion, specs, tmp_path / "c", 0.5, log=lambda m: None)
    cached = dataset.load_bags([sim_bag[0]], settings.fusion, specs, tmp_path / "c", 0.5, log=lambda m: None)
    for name in fresh.raw:
        assert fresh.raw[name].dtype == cached.raw[name].dtype and np.array_equal(fresh.raw[name], cached.raw[name])
    for field in ("mask", "stamps", "fault", "near_fault", "phase", "bag"):
        assert np.array_equal(getattr(fresh, field), getattr(cached, field)), field
    assert fresh.labels == cached.labels

    monkeypatch.setenv("MDGM_ROS_CACHE", str(tmp_path / "train_cache"))
    logs: list[str] = []
    _train(sim_bag[0], tmp_path / "from_bag", 1, overrides={"data.cache": True}, log=logs.append)
    _train(sim_bag[0], tmp_path / "from_cache", 1, overrides={"data.cache": True}, log=logs.append)
    assert any("from the cache" in line for line in logs)
    assert _same(_weights(tmp_path / "from_bag"), _weights(tmp_path / "from_cache"))


def test_deterministic_runs_are_bit_identical(sim_bag, tmp_path):
    for name in ("a", "b"):
        _train(sim_bag[0], tmp_path / name, 1, overrides={"data.cache": False, "training.deterministic": True},
               log=lambda m: None)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_a_damaged_checkpoint_falls_back_to_the_previous_generation_or_is_one_clear_line(sim_bag, tmp_path):
    out = tmp_path / "m"
    _train(sim_bag[0], out, 2, overrides={"data.cache": False}, log=lambda m: None)
    work = tmp_path / "m.train"
    assert (work / "checkpoint.pt").is_file() and (work / "checkpoint.prev.pt").is_file()
    data = (work / "checkpoint.pt").read_bytes()
    (work / "checkpoint.pt").write_bytes(data[: len(data) // 2])                  # truncated
    logs: list[str] = []
    result = _train(sim_bag[0], out, 3, overrides={"data.cache": False}, resume=True, log=logs.append)
    assert result.epochs == 3
    assert any("checkpoint.pt is damaged" in line and "previous generation checkpoint.prev.pt" in line
               for line in logs), logs
    assert any("after epoch 1" in line for line in logs)

    (work / "checkpoint.pt").write_bytes(b"")
    (work / "checkpoint.prev.pt").write_bytes(b"garbage, not a checkpoint")
    done = subprocess.run([sys.executable, "-m", "mdgm_ros", "train", "--bags", str(sim_bag[0]), "--out", str(out),
                           "--resume", "--epochs", "4", "--set", "data.block_s=3.0", "--set", "data.cache=false",
                           "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot resume from") and "checkpoint.pt is damaged" in line
    assert "checkpoint.prev.pt is damaged" in line and "train without --resume to start fresh" in line


KILLER = textwrap.dedent("""
    import os, shutil, signal, sys, tempfile, torch
    from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, atomic, save_bundle
    target, kill_at, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    if not exchange:
        atomic._renameat2 = None
    calls = [0]
    def counted(fn):
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return step
    for module, name in ((os, "rename"), (os, "replace"), (os, "chmod"), (os, "fsync"), (shutil, "rmtree"),
                         (tempfile, "mkdtemp"), (atomic, "_exchange")):
        setattr(module, name, counted(getattr(module, name)))
    torch.manual_seed(1)
    model = MultimodalVAE(ModelConfig((ModalitySpec("a", "vector", (3,)),), latent_dim=2))
    save_bundle(target, model, name="new")
    print("finished", calls[0])
""")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_kill_at_every_step_of_a_bundle_replacement_leaves_the_old_or_the_new_bundle(tmp_path, exchange):
    target = tmp_path / "model"
    torch.manual_seed(0)
    save_bundle(target, MultimodalVAE(ModelConfig((ModalitySpec("a", "vector", (3,)),), latent_dim=2)), name="old")
    old_id = load_bundle(target).model_id
    seen = set()
    for kill_at in range(1, 200):
        done = subprocess.run([sys.executable, "-c", KILLER, str(target), str(kill_at), "1" if exchange else "0"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        if not exchange:
            recover_dir(target)          # what the next save does first (the fallback's only gap)
        bundle = load_bundle(target)
        seen.add(bundle.manifest["name"])
        assert bundle.manifest["name"] in ("old", "new")
        if done.returncode == 0:
            assert "finished" in done.stdout and bundle.manifest["name"] == "new"
            break
        assert done.returncode == -9, done.stderr[-2000:]
        save_bundle_back = bundle.manifest["name"] == "new"
        if save_bundle_back:                       # later kill points: start again from the old bundle
            torch.manual_seed(0)
            save_bundle(target, MultimodalVAE(ModelConfig((ModalitySpec("a", "vector", (3,)),), latent_dim=2)),
                        name="old")
            assert load_bundle(target).model_id == old_id
    else:
        pytest.fail("the save never finished")
    assert seen == {"old", "new"} and kill_at > 5
    recover_dir(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]          # no hidden leftovers
    assert json.loads((target / "manifest.json").read_text())["name"] == "new"


def test_a_multi_stage_family_trains_each_stage_and_resumes_inside_the_right_one(sim_bag, tmp_path):
    telbo = {"data.cache": False, "model_overrides.family": "telbo", "model_overrides.fusion": None}
    logs: list[str] = []
    straight = _train(sim_bag[0], tmp_path / "straight", 4, overrides=telbo, log=logs.append)
    assert straight.epochs == 4
    assert any(line.startswith("epoch 1/4 [stage 1/2") for line in logs)
    assert any(line.startswith("epoch 4/4 [stage 2/2") for line in logs)
    assert any(line.startswith("stage 1 ends") for line in logs)
    done: list[int] = []
    _train(sim_bag[0], tmp_path / "resumed", 4, overrides=telbo, log=lambda m: None,
           should_stop=lambda: len(done) >= 3, progress=lambda e, n, v: done.append(e))
    resumed = _train(sim_bag[0], tmp_path / "resumed", 4, overrides=telbo, resume=True, log=logs.append)
    assert resumed.epochs == 4 and "resumed from" in " ".join(logs)
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))


SIGTERM_IN_SECOND_EPOCH = textwrap.dedent("""
    import os, signal, sys
    from mdgm_ros.core import training
    from mdgm_ros.cli import main
    signal.signal(signal.SIGINT, signal.SIG_IGN)            # as a job started with `&` from a script
    original, calls = training.Trainer.run_epoch, []
    def run_epoch(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *a, **k)
    training.Trainer.run_epoch = run_epoch
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_stops_train_like_ctrl_c_and_resume_finishes(sim_bag, tmp_path):
    out = tmp_path / "bundle"
    args = ["train", "--bags", str(sim_bag[0]), "--out", str(out), "--epochs", "3", "--set", "data.block_s=3.0",
            "--set", "data.cache=false", "--set", "export.onnx=false", "--device", "cpu", "--no-progress"]
    stopped = subprocess.run([sys.executable, "-c", SIGTERM_IN_SECOND_EPOCH, *args], capture_output=True,
                             text=True, cwd=ROOT, timeout=600)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (f"interrupted: the last finished epoch is in {out}.train/; "
                                                       "run again with --resume")
    assert not out.exists()
    done = subprocess.run([sys.executable, "-m", "mdgm_ros", *args, "--resume"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "after epoch 1" in done.stderr and json.loads(done.stdout)["epochs"] == 3
    assert load_bundle(out).model is not None
