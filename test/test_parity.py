"""``mdgm-ros bench parity``: the comparison with MultiVae, an optional extra (most of it runs without it)."""
import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdgm_ros.bench import parity, zoo

ROOT = Path(__file__).resolve().parents[1]
HAS_MULTIVAE = importlib.util.find_spec("multivae") is not None
needs_multivae = pytest.mark.skipif(not HAS_MULTIVAE, reason=f"MultiVae is not installed ({parity.INSTALL})")


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mdgm_ros", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def quick_args(**kw) -> argparse.Namespace:
    values = {"families": ",".join(parity.PARITY_FAMILIES), "seeds": "1", "first_seed": 0, "quick": True,
              "device": "cpu", "option": [], "out": None, "json": False, "threads": 1}
    return argparse.Namespace(**{**values, **kw})


@pytest.mark.skipif(HAS_MULTIVAE, reason="MultiVae is installed here")
def test_the_command_refuses_without_multivae_in_one_line_naming_the_fix():
    result = run("bench", "parity", "--quick")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MultiVae is not installed")
    assert "pip install multivae==1.0.3" in lines[0]


def test_the_refusal_comes_before_any_work(monkeypatch):
    monkeypatch.setattr(parity, "multivae_version", lambda: None)
    monkeypatch.setattr(parity, "run_parity", lambda *a, **k: pytest.fail("nothing may run without MultiVae"))
    printed, logged = [], []
    assert parity.parity_command(quick_args(), write=printed.append, log=logged.append) == 2
    assert printed == [] and len(logged) == 1 and parity.INSTALL in logged[0]


def test_help_works_without_multivae_and_parity_is_listed_apart_from_all():
    result = run("bench", "parity", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--quick", "--seeds", "--first-seed", "--epochs", "--option", "--out", "--json", "--device"):
        assert flag in result.stdout
    assert "multivae==1.0.3" in result.stdout and "--raw-pixels" in result.stdout
    assert "--networks" not in result.stdout                          # the comparison's networks are fixed
    listing = run("bench", "--help")
    assert listing.returncode == 0 and "    parity " in listing.stdout and "not part of all" in listing.stdout


def test_seeds_are_a_count_from_the_first_seed_or_a_list():
    assert parity.parse_seeds("3", 2) == [2, 3, 4]
    assert parity.parse_seeds("0,1,2") == [0, 1, 2] and parity.parse_seeds("4,") == [4]
    for bad in ("0", "x", "1,1", "-1,2"):
        with pytest.raises(ValueError, match="--seeds"):
            parity.parse_seeds(bad)


def test_the_protocol_is_fixed_and_options_reach_this_packages_families():
    config, seeds = parity.parity_config_from_args(quick_args(option=["jmvae.alpha=0.1", "mmvae.K=4"]))
    assert seeds == [0] and (config.n_train, config.n_test, config.epochs, config.classifier_epochs) == (300, 100, 1, 1)
    assert (config.networks, config.normalize, config.latent_dim, config.batch_size) == ("mlp", True, 20, 64)
    raw, _ = parity.parity_config_from_args(quick_args(raw_pixels=True))
    assert not raw.normalize
    assert (config.warmup_steps, config.grad_clip, config.beta, config.lr) == (0, 0.0, 1.0, 1e-3)
    assert config.family_options["mmvae"] == {"K": 4, "learn_prior": False}
    assert config.family_options["mmvae_plus"] == {"K": 2} and config.family_options["jmvae"] == {"alpha": 0.1}
    assert zoo.training_protocol("mvae", config)["options"] == {}         # the family's default k, as train
    assert parity.user_options(config, "mmvae") == {"K": 4} and parity.user_options(config, "mmvae_plus") == {}
    full, seeds = parity.parity_config_from_args(quick_args(quick=False, epochs=12, seeds="0,1,2",
                                                            train_tuples=10000, test_tuples=2000))
    assert seeds == [0, 1, 2] and (full.epochs, full.n_train, full.classifier_epochs) == (12, 10000, 10)
    with pytest.raises(ValueError, match="parity compares the families"):
        parity.parity_config_from_args(quick_args(families="mvae,jvae"))


def untrained(family: str):
    """The comparison's config for ``family`` and its untrained model (seed 0), on one thread."""
    torch.set_num_threads(1)
    config, _ = parity.parity_config_from_args(quick_args(families=family))
    torch.manual_seed(0)
    return config, zoo.build_model(family, config)


@pytest.mark.parametrize("family", parity.PARITY_FAMILIES)
def test_the_copied_networks_are_this_packages_networks_with_the_same_weights(family):
    config, model = untrained(family)
    copied = parity.copy_networks(model)
    gen = torch.Generator().manual_seed(1)
    batch = {n: torch.rand((8, 3, 16, 16), generator=gen) for n in model.names}
    assert parity.copy_difference(model, copied, batch) == 0.0
    assert (copied.joint is not None) == (family in ("jmvae", "telbo"))
    private = family in ("dmvae_lee", "mmvae_plus")
    assert all((c.private is not None) == private for c in copied.encoders.values())
    out = copied.encoders[model.names[0]].outputs(batch[model.names[0]])
    assert set(out) == ({"embedding", "log_covariance"} | ({"style_embedding", "style_log_covariance"} if private
                                                              else set()))
    assert out["embedding"].shape == (8, 20)
    mine = {id(p) for p in model.parameters()}
    copies = [*copied.encoders.values(), *copied.decoders.values(), *([copied.joint] if copied.joint else [])]
    assert not any(id(p) in mine for c in copies for p in c.parameters())               # copies, not shared
    with torch.no_grad():                                                               # the check can fail
        next(copied.decoders[model.names[-1]].parameters()).add_(0.01)
    assert parity.copy_difference(model, copied, batch) > 0


def fake_rows(coherence: dict, theirs: dict) -> dict:
    def side(values, library):
        return {"family": "mvae", "seed": 0, "library": library, "coherence": values, "coherence_sampled": values,
                "train_seconds": 1.5, "samples_per_s": 200.0, "notes": ["a note"] if library == "multivae" else []}
    return {("mvae", 0, "ours"): side(coherence, "ours"), ("mvae", 0, "multivae"): side(theirs, "multivae")}


def test_the_report_has_a_row_per_family_and_seed_with_the_difference_and_the_markdown_table():
    config, seeds = parity.parity_config_from_args(quick_args(families="mvae"))
    ours, theirs = {"1": 0.5, "2": 0.6, "3": 0.7, "4": 0.8}, {"1": 0.25, "2": None, "3": 0.75, "4": 0.8}
    report = parity.parity_report(config, seeds, "1.0.3", fake_rows(ours, theirs), {"0": {"m0": 0.9}}, 3.0)
    row, = report["rows"]
    assert (row["family"], row["seed"], row["notes"]) == ("mvae", 0, ["a note"])
    assert row["difference"]["coherence"] == pytest.approx({"1": 0.25, "2": None, "3": -0.05, "4": 0.0})
    assert row["ours"]["samples_per_s"] == 200.0 and report["versions"]["multivae"] == "1.0.3"
    assert report["protocol"]["latent_dim"] == 20 and report["versions"]["torch"] == torch.__version__
    table = parity.markdown(report)
    assert "| family | seed | this project k=1/2/3/4 | MultiVae | difference |" in table
    assert "| mvae | 0 | 0.500 / 0.600 / 0.700 / 0.800 | 0.250 / — / 0.750 / 0.800 | +0.250 / — / -0.050 / +0.000 |" \
        in table
    json.dumps(report)


def test_stored_rows_are_read_back_only_for_the_same_protocol(tmp_path):
    config, _ = parity.parity_config_from_args(quick_args(families="mvae"))
    store = parity.RowStore(tmp_path)
    protocol = parity.row_protocol("mvae", config, "ours", "0.1.0")
    store.save({"family": "mvae", "seed": 3, "library": "ours", "protocol": protocol, "coherence": {"1": 0.5}})
    assert store.load("mvae", 3, "ours", protocol)["coherence"] == {"1": 0.5}
    other = parity.row_protocol("mvae", parity.parity_config_from_args(quick_args(families="mvae", quick=False,
                                                                                  epochs=2))[0], "ours", "0.1.0")
    assert store.load("mvae", 3, "ours", other) is None and store.load("mvae", 4, "ours", protocol) is None
    assert parity.RowStore(None).load("mvae", 3, "ours", protocol) is None


@needs_multivae
@pytest.mark.parametrize("family", parity.PARITY_FAMILIES)
def test_multivaes_models_hold_this_packages_untrained_networks(family):
    config, model = untrained(family)
    mv_model, notes = parity.build_multivae(family, model, config)
    batch = {n: torch.rand((8, 3, 16, 16)) for n in model.names}
    assert parity.multivae_copy_difference(model, mv_model, batch) == 0.0 and notes


@needs_multivae
def test_a_quick_run_reports_both_libraries_and_reads_its_rows_back(tmp_path):
    result = run("bench", "parity", "--quick", "--families", "mvae,dmvae_lee", "--json", "--device", "cpu",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [(r["family"], r["seed"]) for r in report["rows"]] == [("mvae", 0), ("dmvae_lee", 0)]
    ks = ["1", "2", "3", "4"]
    for row in report["rows"]:
        for library in ("ours", "multivae"):
            side = row[library]
            assert list(side["coherence"]) == ks and list(side["coherence_sampled"]) == ks
            assert all(0 <= v <= 1 for v in side["coherence"].values())
            assert side["train_seconds"] > 0 and side["samples_per_s"] > 0
        assert row["multivae"]["initial_networks_max_abs_difference"] == 0.0
        assert list(row["difference"]["coherence"]) == ks and row["notes"]
    assert report["versions"]["multivae"] == parity.multivae_version()
    assert (tmp_path / "parity.json").is_file() and "| dmvae_lee | 0 |" in (tmp_path / "parity.md").read_text()
    assert len(list((tmp_path / "rows").glob("*_seed0_*.json"))) == 4
    again = run("bench", "parity", "--quick", "--families", "mvae,dmvae_lee", "--json", "--device", "cpu",
                "--out", str(tmp_path))
    assert again.returncode == 0 and again.stderr.count("read back") == 4
    assert json.loads(again.stdout)["rows"] == report["rows"]
