"""``mdgm-ros bench weak``: weakly supervised training on PolyDigits (the survey's sec. 5.3).

Two experiments, reusing :mod:`.zoo`'s data, classifiers, networks and coherence:

- ``missing``: each family trained with a share ``p`` of the modalities missing at random per row
  (every modality dropped independently with probability ``p``, at least one kept per row); the
  family trains the terms it can compute from what each row has (MVAE: Wu & Goodman's sub-sampled
  ELBOs). Compared with training on complete rows (``p = 0``) and with keeping only the rows that
  stayed complete (the naive alternative, reported for ``p = 0.5``).
- ``contrastive``: a share ``paired`` of the training tuples keeps all its modalities; every other
  tuple keeps one modality, drawn at random (unpaired single-modality data). Each family is trained
  with and without the contrastive term (:mod:`mdgm_ros.core.families.contrastive`).

Coherence: as ``bench zoo`` (the digit classifier of the target on the image decoded from the
posterior mean of the given modalities, every subset of size k, every missing target).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core import ModelConfig, MultimodalVAE
from ..core.engine import loop as training
from ..core.engine.atomic import write_text_atomically
from ..core.model.family import LABELS
from ..data.polydigits import PolyDigits, make_polydigits, specs
from . import zoo


@dataclass
class WeakConfig:
    experiment: str = "missing"                 # "missing" or "contrastive"
    families: tuple[str, ...] = ("mvae", "mopoe")
    seeds: int = 1
    n_train: int = 5000
    n_test: int = 1000
    n_modalities: int = 5
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    latent_dim: int = 16
    warmup_steps: int = 300
    classifier_epochs: int = 8
    missing: tuple[float, ...] = (0.0, 0.5, 0.8)
    complete_rows_of: float = 0.5               # the "complete rows only" baseline at this share
    paired: float = 0.1
    contrastive: dict = field(default_factory=lambda: {"weight": 1.0, "negatives": 4, "K": 4})
    threads: int = 1


# ----------------------------------------------------------------------------- masks
def missing_at_random(n: int, n_mod: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """(n, M) presence mask: each modality missing with probability p, at least one kept per row."""
    mask = rng.random((n, n_mod)) >= p
    empty = ~mask.any(1)
    mask[np.flatnonzero(empty), rng.integers(0, n_mod, int(empty.sum()))] = True
    return mask


def paired_share(n: int, n_mod: int, paired: float, rng: np.random.Generator) -> np.ndarray:
    """(n, M) mask: ``paired`` of the rows complete, every other row one modality at random."""
    mask = np.zeros((n, n_mod), bool)
    mask[np.arange(n), rng.integers(0, n_mod, n)] = True
    mask[rng.permutation(n)[:int(round(paired * n))]] = True
    return mask


# ----------------------------------------------------------------------------- one run
def train_masked(family: str, train: PolyDigits, mask: np.ndarray, config: WeakConfig, seed: int,
                 family_options: dict | None = None) -> tuple[MultimodalVAE, dict[str, Any]]:
    """One family trained on the rows of ``mask`` that observe anything, each with what it observes."""
    torch.manual_seed(seed)
    modality_specs = specs(config.n_modalities)
    names = [m.name for m in modality_specs]
    model = MultimodalVAE(ModelConfig(modality_specs, latent_dim=config.latent_dim, family=family,
                                      networks=zoo.network_config(names, "cnn"),
                                      family_options=family_options or {}))
    rows = np.flatnonzero(mask.any(1))
    raw = {n: torch.from_numpy(train.images[n][rows]) for n in names}
    presence = torch.from_numpy(mask[rows])
    training.fit_normalization(model, raw, presence)
    feats = training.normalize_features(model, raw)
    if model.family.uses_labels:          # label heads (Tian et al.): the digit
        feats[LABELS] = torch.from_numpy(train.labels[rows])
    schedule = training.BetaSchedule("linear", 0.0, 1.0, config.warmup_steps)
    tconfig = training.TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                   beta=schedule, seed=seed)
    started = time.perf_counter()
    training.train(model, feats, presence, tconfig)
    return model.eval(), {"train_seconds": time.perf_counter() - started, "train_rows": int(len(rows)),
                          "observed_share": float(mask[rows].mean())}


def _run(label: str, family: str, train: PolyDigits, test: PolyDigits, classifiers, mask: np.ndarray,
         config: WeakConfig, seed: int, options: dict | None = None) -> dict[str, Any]:
    model, stats = train_masked(family, train, mask, config, seed, options)
    return {"family": family, "condition": label, "seed": seed, **stats,
            "coherence": zoo.coherence(model, test, classifiers)}


def missing_runs(train, test, classifiers, config: WeakConfig, seed: int, log) -> list[dict[str, Any]]:
    runs = []
    n, n_mod = len(train), config.n_modalities
    for family in config.families:
        for p in config.missing:
            mask = missing_at_random(n, n_mod, p, np.random.default_rng(seed * 7919 + int(p * 100)))
            runs.append(_run(f"{int(p * 100)}% missing", family, train, test, classifiers, mask, config, seed))
            log(_line(runs[-1]))
            if p == config.complete_rows_of:
                complete = mask & mask.all(1, keepdims=True)
                runs.append(_run(f"complete rows of {int(p * 100)}% missing", family, train, test, classifiers,
                                 complete, config, seed))
                log(_line(runs[-1]))
    return runs


def contrastive_runs(train, test, classifiers, config: WeakConfig, seed: int, log) -> list[dict[str, Any]]:
    runs = []
    mask = paired_share(len(train), config.n_modalities, config.paired, np.random.default_rng(seed + 101))
    for family in config.families:
        for label, options in (("without", None), ("with contrastive", {"contrastive": dict(config.contrastive)})):
            runs.append(_run(f"{int(config.paired * 100)}% paired, {label}", family, train, test, classifiers,
                             mask, config, seed, options))
            log(_line(runs[-1]))
    return runs


def _line(run: dict[str, Any]) -> str:
    coherence = {k: round(v, 3) for k, v in (run["coherence"] or {}).items()}
    return (f"seed {run['seed']} {run['family']} [{run['condition']}]: coherence {coherence} "
            f"({run['train_rows']} rows, {run['train_seconds']:.0f} s)")


def run_weak(config: WeakConfig, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    if config.experiment not in ("missing", "contrastive"):
        raise ValueError(f"experiment must be 'missing' or 'contrastive', got {config.experiment!r}")
    torch.set_num_threads(max(1, config.threads))
    started, runs, accuracy = time.perf_counter(), [], {}
    for seed in range(config.seeds):
        train, test = make_polydigits(config.n_train, config.n_test, config.n_modalities, seed=seed)
        classifiers, accuracy[str(seed)] = zoo.train_classifiers(train, test, config.classifier_epochs, seed)
        log(f"seed {seed}: classifier test accuracy {accuracy[str(seed)]}")
        experiment = missing_runs if config.experiment == "missing" else contrastive_runs
        runs += experiment(train, test, classifiers, config, seed, log)
    return {"benchmark": "weak", "experiment": config.experiment, "config": asdict(config),
            "classifier_accuracy": accuracy, "runs": runs, "wall_seconds": time.perf_counter() - started}


def markdown(report: dict[str, Any]) -> str:
    """Mean coherence over seeds per family and condition, one column per k."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in report["runs"]:
        groups.setdefault((run["family"], run["condition"]), []).append(run)
    ks = next(list(r["coherence"]) for r in report["runs"] if r["coherence"])
    head = ["family", "training data", *[f"coh k={k}" for k in ks], "seeds", "rows", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (family, condition), mine in groups.items():
        coh = [np.mean([r["coherence"][k] for r in mine]) for k in ks]
        spread = [np.ptp([r["coherence"][k] for r in mine]) for k in ks]
        cells = [f"{c:.3f}" + (f" ±{s / 2:.3f}" if len(mine) > 1 else "") for c, s in zip(coh, spread)]
        lines.append("| " + " | ".join([family, condition, *cells, str(len(mine)),
                                        str(mine[0]["train_rows"]),
                                        f"{np.mean([r['train_seconds'] for r in mine]):.0f}"]) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", choices=["missing", "contrastive"])
    parser.add_argument("--families", default="mvae,mopoe")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--modalities", type=int, default=None, help="M (default: 5; contrastive: 2)")
    parser.add_argument("--train", type=int, default=WeakConfig.n_train, help="training tuples")
    parser.add_argument("--epochs", type=int, default=WeakConfig.epochs)
    parser.add_argument("--batch", type=int, default=WeakConfig.batch_size)
    parser.add_argument("--classifier-epochs", type=int, default=WeakConfig.classifier_epochs)
    parser.add_argument("--missing", default="0,0.5,0.8", help="shares of missing modalities (missing)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=None, help="write weak_<experiment>.json and .md here")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds): a smoke test, not numbers")


def config_from_args(args: argparse.Namespace) -> WeakConfig:
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    modalities = args.modalities or (2 if args.experiment == "contrastive" else 5)
    if args.quick:
        return WeakConfig(args.experiment, families, args.seeds, 200, 100, modalities, 1, 64,
                          classifier_epochs=1, missing=(0.0, 0.5))
    missing = tuple(float(p) for p in args.missing.split(",") if p.strip())
    if any(not 0 <= p < 1 for p in missing):
        raise ValueError(f"--missing shares must be in [0, 1), got {args.missing!r}")
    return WeakConfig(args.experiment, families, args.seeds, args.train, n_modalities=modalities,
                      epochs=args.epochs, batch_size=args.batch, classifier_epochs=args.classifier_epochs,
                      missing=missing)


def weak_command(args: argparse.Namespace, write: Callable[[str], Any] = print) -> int:
    """Run ``bench weak`` (arguments of :func:`add_arguments`); prints the Markdown table (or JSON with
    ``--json``), and with ``--out`` writes both there."""
    try:
        config = config_from_args(args)
        report = run_weak(config, log=zoo.log_to_stderr if args.json else write)      # --json: progress on stderr
    except ValueError as err:
        write(f"error: {err}")
        return 2
    if args.out:
        out = Path(args.out)
        write_text_atomically(out / f"weak_{config.experiment}.json", json.dumps(report, indent=2) + "\n")
        write_text_atomically(out / f"weak_{config.experiment}.md", markdown(report))
    write(json.dumps(report, indent=2) if args.json else markdown(report).rstrip("\n"))
    return 0


def main(argv: Sequence[str] | None = None, write: Callable[[str], Any] = print) -> int:
    """``python -m mdgm_ros.bench.weak ARGS``: the same as ``mdgm-ros bench weak ARGS``."""
    parser = argparse.ArgumentParser(prog="mdgm-ros bench weak")
    add_arguments(parser)
    return weak_command(parser.parse_args(argv), write)


if __name__ == "__main__":
    raise SystemExit(main())
