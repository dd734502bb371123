"""`bench zoo --out DIR --resume`: an interrupted run continues where it stopped and gives the same report."""
import argparse
import json
import os
import subprocess
import sys
import textwrap

import pytest

from mdgm_ros.bench import zoo
from mdgm_ros.core.engine import loop as training

TIMINGS = ("train_seconds", "samples_per_s", "eval_seconds")


def tiny_args(out, **extra):
    return argparse.Namespace(**{"families": "mopoe,telbo", "seeds": 1, "epochs": 2, "quick": False, "json": True,
                                 "out": None if out is None else str(out), "train_tuples": 60, "test_tuples": 20,
                                 "batch_size": 32,
                                 "resume": False, **extra})


def results(out):
    """The report's runs without their timings."""
    report = json.loads((out / "zoo.json").read_text())
    return [{k: v for k, v in run.items() if k not in TIMINGS} for run in report["runs"]], report


def interrupt_at_epoch(monkeypatch, call):
    """Ctrl-C during the ``call``-th training epoch of the process (counting from 1)."""
    original, calls = training.Trainer.run_epoch, []

    def run_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)
    monkeypatch.setattr(training.Trainer, "run_epoch", run_epoch)


def test_an_interrupted_zoo_resumes_inside_the_family_it_was_training_and_reports_the_same(tmp_path, monkeypatch):
    lines = []
    assert zoo.zoo_command(tiny_args(tmp_path / "whole"), write=lines.append) == 0
    whole, _ = results(tmp_path / "whole")
    assert not (tmp_path / "whole" / "state").exists()                  # removed once the report is written

    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 4)             # mopoe: epochs 1-2; telbo: stage 1 done, Ctrl-C in stage 2
        assert zoo.zoo_command(tiny_args(out), write=lines.append) == 130
    assert lines[-1].startswith(f"interrupted: finished families and the last finished epoch are in {out / 'state'}")
    state = out / "state"
    assert (state / "run_mopoe_seed0.json").exists() and (state / "classifiers_seed0.pt").exists()
    assert (state / "train" / "telbo_seed0" / "checkpoint.pt").exists() and not (out / "zoo.json").exists()

    epochs = []
    original = training.Trainer.run_epoch
    monkeypatch.setattr(training.Trainer, "run_epoch",
                        lambda self, *a, **k: epochs.append(self.epoch) or original(self, *a, **k))
    assert zoo.zoo_command(tiny_args(out, resume=True), write=lines.append) == 0
    assert epochs == [1]                          # only telbo's second epoch ran again
    resumed, report = results(out)
    assert report["resumed_runs"] == ["mopoe seed 0"] and not state.exists()
    assert resumed == whole                       # bit for bit: metrics, losses, style grids, classifiers' scores


def test_resume_refusals_name_what_is_wrong(tmp_path, monkeypatch):
    lines = []
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 1)
        assert zoo.zoo_command(tiny_args(out), write=lines.append) == 130
    assert zoo.zoo_command(tiny_args(out), write=lines.append) == 2
    assert lines[-1] == (f"error: {out} holds an unfinished zoo run ({out / 'state'}): add --resume to continue it, "
                         "or choose another --out")
    assert zoo.zoo_command(tiny_args(out, resume=True, epochs=3), write=lines.append) == 2
    assert lines[-1] == f"error: --resume: the run in {out} was started with other settings (epochs: 2 then, 3 now)"
    assert zoo.zoo_command(tiny_args(None, resume=True), write=lines.append) == 2
    assert lines[-1] == "error: --resume needs --out, the folder of the run to continue"
    assert (out / "state" / "config.json").exists()                    # a refusal leaves the state as it was
    typo = tmp_path / "typo"
    assert zoo.zoo_command(tiny_args(typo, families="mopoe,nope"), write=lines.append) == 2
    assert lines[-1].startswith("error: unknown families ['nope']") and not typo.exists()   # nothing to resume


@pytest.mark.parametrize("option, message", [
    ("mmvae_plus.generaton_prior=joint", "error: family_options: mmvae_plus has no objective option "
                                         "'generaton_prior' (its options: K, contrastive, estimator, "
                                         "generation_prior, learn_prior, posterior)"),
    ("mmvae_plus.generation_prior=r", "error: mmvae_plus: objective option 'generation_prior' must be one of "
                                      "['aux', 'joint'], got 'r'"),
    ("mvae_plus.K=1", "error: --option for unknown families ['mvae_plus'] (registered: ")],
    ids=["misspelt_option", "bad_value", "misspelt_family"])
def test_a_bad_option_is_refused_before_anything_trains(tmp_path, monkeypatch, option, message):
    """A typo in --option used to surface as a TypeError traceback (or be ignored) after the classifiers
    had trained; now it is one line, and no state folder is left."""
    def no_training(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(zoo, "train_classifiers", no_training)
    lines, out = [], tmp_path / "run"
    code = zoo.zoo_command(tiny_args(out, families="mopoe,mmvae_plus", option=[option]), write=lines.append)
    assert code == 2 and lines[-1].startswith(message) and not out.exists(), lines


def test_keep_models_saves_each_trained_family_as_the_bundle_that_was_measured(tmp_path):
    from mdgm_ros.core import load_bundle
    from mdgm_ros.data.polydigits import make_polydigits
    lines, out = [], tmp_path / "kept"
    assert zoo.zoo_command(tiny_args(out, families="mopoe,mopoe_ms", keep_models=True), write=lines.append) == 0
    report = json.loads((out / "zoo.json").read_text())
    config = zoo.ZooConfig(**{**report["config"], "families": tuple(report["config"]["families"])})
    _, test = make_polydigits(config.n_train, config.n_test, config.n_modalities, seed=0)
    for run in report["runs"]:
        bundle = load_bundle(out / "models" / f"{run['family']}_seed0")
        assert bundle.model.config.family == run["family"] and bundle.manifest["extra"]["zoo"]["epochs"] == 2
        assert (zoo.joint_nll(bundle.model, test, config.iwae_k, config.n_nll)
                == pytest.approx(run["joint_nll"], rel=1e-6))
    assert zoo.zoo_command(tiny_args(None, keep_models=True), write=lines.append) == 2
    assert lines[-1] == "error: --keep-models needs --out, the folder the bundles go to (OUT/models/)"


@pytest.mark.parametrize("signal_name, code, background", [("SIGINT", 130, False), ("SIGTERM", 143, True)],
                         ids=["ctrl_c", "sigterm_to_a_background_job"])
def test_a_stop_signal_then_resume_from_the_command_line(tmp_path, signal_name, code, background):
    """Real processes: Ctrl-C, or SIGTERM to a job started with `&` from a script (which ignores SIGINT),
    during telbo's second epoch; then the user's command with --resume."""
    out = tmp_path / "zoo"
    flags = ["--families", "mopoe,telbo", "--epochs", "2", "--train-tuples", "60", "--test-tuples", "20",
             "--batch-size", "32", "--out", str(out)]
    signal_in_fourth_epoch = textwrap.dedent(f"""
        import os, signal, sys
        from mdgm_ros.core import training
        from mdgm_ros.cli import main
        # a job started with & ignores SIGINT; a foreground one has Python's handler (set it: pytest itself
        # may run as a background job, and its children then inherit the ignored SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN if {background!r} else signal.default_int_handler)
        original, calls = training.Trainer.run_epoch, []
        def run_epoch(self, *a, **k):
            calls.append(1)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.{signal_name})
            return original(self, *a, **k)
        training.Trainer.run_epoch = run_epoch
        sys.exit(main(["bench", "zoo", *{flags!r}]))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-c", signal_in_fourth_epoch], capture_output=True, text=True,
                           env=env, timeout=600)
    assert first.returncode == code, first.stderr[-2000:]
    assert "run the same command with --resume to continue" in first.stdout
    again = subprocess.run([sys.executable, "-m", "mdgm_ros", "bench", "zoo", *flags, "--resume"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "telbo-seed0: resuming after epoch 1" in again.stdout
    report = json.loads((out / "zoo.json").read_text())
    assert report["resumed_runs"] == ["mopoe seed 0"] and [r["family"] for r in report["runs"]] == ["mopoe", "telbo"]
    assert not (out / "state").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
