"""PolyDigits (the PolyMNIST protocol from sklearn's digits) and a tiny `bench zoo`."""
import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mdgm_ros.bench import zoo
from mdgm_ros.data.polydigits import make_polydigits, split_instances

ROOT = Path(__file__).resolve().parents[1]


def test_polydigits_tuples_share_a_label_with_distinct_instances_and_disjoint_splits():
    from sklearn.datasets import load_digits

    train, test = make_polydigits(n_train=400, n_test=100, n_modalities=5, seed=3)
    assert len(train) == 400 and len(test) == 100 and train.names == ["m0", "m1", "m2", "m3", "m4"]
    digit_labels = load_digits().target
    for data in (train, test):
        assert all(img.shape == (len(data), 3, 16, 16) and img.dtype == np.float32 for img in data.images.values())
        assert all(0.0 <= img.min() and img.max() <= 1.0 for img in data.images.values())
        assert (digit_labels[data.instances] == data.labels[:, None]).all()          # one label per tuple
        assert all(len(set(row)) == 5 for row in data.instances)                      # distinct instances
    assert not set(train.instances.ravel()) & set(test.instances.ravel())            # split before tuples
    again, _ = make_polydigits(n_train=400, n_test=100, n_modalities=5, seed=3)
    assert all(np.array_equal(again.images[n], train.images[n]) for n in train.names)
    # every modality has its own background: the mean colours differ
    means = np.stack([train.images[n].mean(axis=(0, 2, 3)) for n in train.names])
    assert np.min(np.abs(means[:, None] - means[None]).sum(-1) + np.eye(5)) > 0.02


def test_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 20)
    train, test = split_instances(labels, 0.25, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == 200
    assert all((labels[test] == c).sum() == 5 for c in range(10))


def test_tiny_zoo_reports_every_metric_and_writes_its_files(tmp_path):
    config = zoo.ZooConfig(families=("mopoe", "jvae"), seeds=1, n_train=200, n_test=60, epochs=1,
                           classifier_epochs=1, iwae_k=3, n_nll=10, n_probe=200, batch_size=64)
    report = zoo.run_zoo(config)
    assert set(report["classifier_accuracy"]["0"]) == {f"m{j}" for j in range(5)}
    mopoe, jvae = report["summary"]["mopoe"], report["summary"]["jvae"]
    assert list(mopoe["coherence"]) == list(mopoe["coherence_sampled"]) == ["1", "2", "3", "4"]
    assert all(0.0 <= v <= 1.0 for v in [*mopoe["coherence"].values(), *mopoe["coherence_sampled"].values()])
    assert jvae["coherence"] is None and jvae["coherence_sampled"] is None   # JVAE refuses inference from a subset
    for s in (mopoe, jvae):
        assert 0.0 <= s["latent_probe"] <= 1.0 and np.isfinite(s["joint_nll"]) and s["samples_per_s"] > 0
    zoo.write_outputs(report, tmp_path)
    assert json.loads((tmp_path / "zoo.json").read_text())["summary"].keys() == {"mopoe", "jvae"}
    table = (tmp_path / "zoo.md").read_text()
    assert "| jvae | — | — | — | — | — |" in table and "| sampled z, k=1..4 |" in table
    assert table.splitlines()[2].endswith("| 1 | clip 10, warm-up 20 |")   # mopoe: train's, 5 epochs of 4 steps
    assert (tmp_path / "coherence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zoo_command_refuses_unknown_families_with_one_error_line():
    lines = []
    args = argparse.Namespace(families="mopoe,nope", seeds=1, epochs=1, quick=True, json=False, out=None)
    assert zoo.zoo_command(args, write=lines.append) == 2
    assert lines == ["error: unknown families ['nope'] (registered: " + ", ".join(zoo.FAMILIES) + ")"]


@pytest.mark.parametrize("bad", [{"seeds": 0}, {"epochs": 0}])
def test_zoo_command_refuses_bad_counts(bad):
    lines = []
    args = argparse.Namespace(**{"families": "mopoe", "seeds": 1, "epochs": 1, "quick": False, "json": False,
                                 "out": None, **bad})
    assert zoo.zoo_command(args, write=lines.append) == 2 and lines[0].startswith("error:")


def test_zoo_options_parse_and_reports_merge():
    assert zoo.parse_family_options(["mmvae.K=1", "mopoe.kl_estimator=sampled"]) == {
        "mmvae": {"K": 1}, "mopoe": {"kl_estimator": "sampled"}}
    with pytest.raises(ValueError, match="FAMILY.KEY=VALUE"):
        zoo.parse_family_options(["K=1"])
    args = argparse.Namespace(families="mopoe", seeds=1, epochs=3, quick=False, json=False, out=None,
                              first_seed=1, train_tuples=500, test_tuples=50, option=["mopoe.kl_estimator=exact"])
    config = zoo.zoo_config_from_args(args)
    assert (config.first_seed, config.n_train, config.n_test, config.normalize) == (1, 500, 50, True)
    assert config.family_options == {"mopoe": {"kl_estimator": "exact"}}
    wider = zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "latent_dim": 64, "beta": 2.5}))
    assert (wider.latent_dim, wider.beta, config.latent_dim) == (64, 2.5, zoo.ZooConfig.latent_dim)
    with pytest.raises(ValueError, match="--beta > 0"):
        zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "beta": 0.0}))
    with pytest.raises(ValueError, match="--private-dim >= 0"):
        zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "private_dim": -1}))
    run = {"family": "mopoe", "coherence": {1: 0.5}, "latent_probe": 0.9, "joint_nll": 1.0,
           "samples_per_s": 10.0, "train_seconds": 5.0}
    reports = [{"config": {}, "classifier_accuracy": {str(s): {}}, "wall_seconds": 10.0,
                "runs": [{**run, "seed": s, "latent_probe": 0.8 + 0.1 * s}]} for s in (0, 1)]
    merged = zoo.merge_reports(reports)
    assert merged["summary"]["mopoe"]["seeds"] == 2 and merged["wall_seconds"] == 20.0
    assert merged["summary"]["mopoe"]["latent_probe"] == pytest.approx(0.85)


def test_private_dim_flag_sizes_only_the_families_with_private_latents():
    args = argparse.Namespace(families="mmvae_plus,mmvae", seeds=1, epochs=1, quick=False, json=False, out=None,
                              private_dim=32)
    config = zoo.zoo_config_from_args(args)
    assert zoo.private_dim_for("mmvae_plus", config) == 32
    assert zoo.private_dim_for("mmvae", config) is None           # no s_m: the flag does not apply
    default = zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "private_dim": 0}))
    assert zoo.private_dim_for("mmvae_plus", default) is None     # the family's own default size


def test_device_option():
    args = argparse.Namespace(families="mopoe", seeds=1, epochs=1, quick=False, json=False, out=None, device="cpu")
    assert zoo.zoo_config_from_args(args).device == "cpu"
    if not __import__("torch").cuda.is_available():              # CUDA asked for where there is none
        lines = []
        assert zoo.zoo_command(argparse.Namespace(**{**vars(args), "device": "cuda"}), write=lines.append) == 2
        assert lines[0].startswith("error: device 'cuda' requested but CUDA is not available")


def test_sampled_coherence_decodes_samples_not_the_mean(monkeypatch):
    train, test = make_polydigits(200, 40, 5, seed=0)
    classifiers, _ = zoo.train_classifiers(train, test, epochs=1, seed=0)
    config = zoo.ZooConfig(families=("mvae",), n_train=200, n_test=40, epochs=1, batch_size=64)
    model, _ = zoo.train_family("mvae", train, config, seed=0)
    model.eval()
    calls, original = [], zoo.impute
    monkeypatch.setattr(zoo, "impute", lambda *a, **k: calls.append(k.get("n_samples")) or original(*a, **k))
    mean = zoo.coherence(model, test, classifiers)
    sampled = zoo.coherence(model, test, classifiers, samples=1)
    assert set(calls) == {0, 1} and mean.keys() == sampled.keys()
    assert sampled == zoo.coherence(model, test, classifiers, samples=1)     # seeded: reproducible


def recorded_training(monkeypatch):
    """Training replaced by a recorder of its TrainConfig; a tiny PolyDigits train set."""
    seen = []
    monkeypatch.setattr(zoo.training, "train", lambda model, feats, mask, tconfig, **_: seen.append(tconfig) or [])
    return seen, make_polydigits(40, 20, 5, seed=0)[0]


def test_grad_clip_flag_reaches_every_training_step(monkeypatch):
    args = argparse.Namespace(families="mopoe", seeds=1, epochs=1, quick=False, json=False, out=None,
                              train_tuples=40, test_tuples=20, grad_clip=0.0)
    config = zoo.zoo_config_from_args(args)
    assert config.grad_clip == 0.0 and zoo.zoo_config_from_args(
        argparse.Namespace(**{**vars(args), "grad_clip": 10})).grad_clip == 10.0
    with pytest.raises(ValueError, match="--grad-clip >= 0"):
        zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "grad_clip": -1.0}))
    seen, train = recorded_training(monkeypatch)
    zoo.train_family("mopoe", train, config, seed=0)
    assert seen[0].grad_clip == 0.0


def test_beta_warmup_flag_sets_the_schedule_of_every_training_step(monkeypatch):
    args = argparse.Namespace(families="mmvae", seeds=1, epochs=1, quick=False, json=False, out=None,
                              train_tuples=40, test_tuples=20, beta_warmup=0, option=["mmvae.K=1"])
    config = zoo.zoo_config_from_args(args)
    assert config.warmup_steps == 0 and zoo.zoo_config_from_args(argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k != "beta_warmup"})).warmup_steps is None   # the family's
    with pytest.raises(ValueError, match="--beta-warmup >= 0"):
        zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "beta_warmup": -1}))
    seen, train = recorded_training(monkeypatch)
    zoo.train_family("mmvae", train, config, seed=0)
    assert seen[0].beta(0) == 1.0                           # no warm-up: the full KL weight from the first step
    zoo.train_family("mmvae", train, zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "beta_warmup": 100})),
                     seed=0)
    assert (seen[1].beta(0), seen[1].beta(50)) == (0.0, 0.5)
    started = zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "beta_warmup": 100, "beta_start": 0.1,
                                                              "beta": 2.0}))
    zoo.train_family("mmvae", train, started, seed=0)
    assert [round(seen[2].beta(s), 6) for s in (0, 50, 100, 900)] == [0.2, 1.1, 2.0, 2.0]   # a fraction of --beta
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="0 <= --beta-start <= 1"):
            zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "beta_start": bad}))


def test_each_family_trains_with_what_mdgm_ros_train_uses_unless_a_flag_says_otherwise(monkeypatch):
    args = argparse.Namespace(families="mopoe,jmvae,telbo,mmvae,mvae", seeds=1, epochs=1, quick=False, json=False,
                              out=None, train_tuples=1000, test_tuples=20, batch_size=100, option=["mmvae.K=1"])
    config = zoo.zoo_config_from_args(args)
    assert (config.grad_clip, config.warmup_steps, config.warmup_start) == (None, None, None)
    assert zoo.steps_per_epoch(config) == 10
    protocols = {name: zoo.training_protocol(name, config) for name in config.families}
    assert protocols["mopoe"] == {"grad_clip": 10.0, "warmup_steps": 50, "warmup_start": 0.0, "options": {}}
    assert protocols["jmvae"]["grad_clip"] == protocols["telbo"]["grad_clip"] == 0.0     # no clip, as MultiVae
    assert protocols["mmvae"] == {"grad_clip": 10.0, "warmup_steps": 0, "warmup_start": 0.0,  # no warm-up
                                  "options": {"K": 1}}                                   # --option kept
    assert protocols["mvae"] == {"grad_clip": 0.0, "warmup_steps": 100, "warmup_start": 0.0, "options": {}}
    assert zoo.protocol_text(protocols["mvae"]) == "clip 0, warm-up 100"
    assert zoo.protocol_text({**protocols["mmvae"], "warmup_start": 0.1}) == "clip 10, warm-up 0 from 0.1, K=1"
    # the same schedule as `mdgm-ros train` with the shipped config and that family
    from mdgm_ros.training.config import TrainSettings
    for name, protocol in protocols.items():
        settings = TrainSettings.from_file(ROOT / "config" / "train.yaml", {
            "model_overrides": {"family": name, "fusion": None, "family_options": {}}})
        assert (settings.opt.grad_clip, settings.beta.warmup_epochs * zoo.steps_per_epoch(config),
                settings.beta.start) == (protocol["grad_clip"], protocol["warmup_steps"], protocol["warmup_start"])
    seen, train = recorded_training(monkeypatch)
    _, stats = zoo.train_family("jmvae", train, config, seed=0)
    assert seen[0].grad_clip == 0.0 and seen[0].beta(0) == 0.0 and stats["protocol"] == protocols["jmvae"]
    zoo.train_family("mmvae", train, config, seed=0)
    assert seen[1].grad_clip == 10.0 and seen[1].beta(0) == 1.0
    model, _ = zoo.train_family("mvae", train, config, seed=0)
    assert "k" not in model.config.family_options and seen[2].beta(50) == 0.5     # MultiVae's 10-epoch warm-up
    with_subsets = zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "option": ["mvae.k=2"]}))
    assert zoo.train_family("mvae", train, with_subsets, seed=0)[0].config.family_options["k"] == 2
    forced = zoo.zoo_config_from_args(argparse.Namespace(**{**vars(args), "grad_clip": 5, "beta_warmup": 100}))
    assert all({k: v for k, v in zoo.training_protocol(name, forced).items() if k != "options"}
               == {"grad_clip": 5.0, "warmup_steps": 100, "warmup_start": 0.0}
               for name in forced.families)                                    # a flag wins for every family


def test_a_family_with_an_unknown_reference_training_key_is_refused():
    from mdgm_ros.core.families import get_family
    with pytest.raises(ValueError, match="unknown reference_training keys"):
        dataclasses.replace(get_family("jmvae"), reference_training={"lr": 1e-4})


def test_quick_runs_keep_the_families_options():
    args = argparse.Namespace(families="mmvae", seeds=1, epochs=5, quick=True, json=False, out=None,
                              option=["mmvae.K=1", "mmvae.posterior=laplace"], grad_clip=0.0)
    config = zoo.zoo_config_from_args(args)
    assert (config.n_train, config.epochs) == (300, 1)                       # tiny sizes
    assert config.family_options == {"mmvae": {"K": 1, "posterior": "laplace"}} and config.grad_clip == 0.0
