"""``mdgm-ros bench zoo``: every model family on PolyDigits (the PolyMNIST protocol, offline).

For each family and seed: train on the train tuples, then report on the test tuples
- conditional coherence for k = 1..M-1 given modalities: for every subset S of size k and every target
  t not in S, the plain accuracy of t's pretrained digit classifier on the image generated from S
  (decoded from the posterior mean; ``coherence_sampled``: from one sample of z per tuple, as MultiVae
  measures it), averaged over targets and subsets; ``null`` where the family refuses inference from a
  subset (Table 1: no missing modalities);
- latent linear-probe accuracy (logistic regression on the full-set posterior mean); for families with
  private latents also on the s_m and a style-transfer PNG (:mod:`.zoo_private`);
- joint NLL by IWAE (K samples, full-set proposal), in nats per tuple of the likelihood's features
  (standardised pixels under Laplace(0.75); ``--raw-pixels``: raw [0, 1] pixels, the reference's);
- training samples/s and wall time.
The per-modality classifiers are trained once per seed and their test accuracies are reported.
Everything runs on ``--device`` (a GPU when asked; on CPU the numbers are reproducible to the bit).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core import ModelConfig, MultimodalVAE, impute, iwae_log_likelihood, register_network, save_bundle
from ..core.engine import loop as training
from ..core.engine.atomic import write_atomically, write_text_atomically
from ..core.families import FAMILIES, FamilyError, get_family
from ..core.model.family import LABELS
from ..data.polydigits import PolyDigits, make_polydigits, specs
from ..interrupts import exit_code
from . import zoo_private
from .zoo_latents import latent_probe, normalized_images
from .zoo_state import TrainingProgress, ZooState


@dataclass
class ZooConfig:
    families: tuple[str, ...] = tuple(FAMILIES)
    seeds: int = 1
    first_seed: int = 0                  # seeds first_seed .. first_seed + seeds - 1 (one process per seed)
    n_train: int = 10000
    n_test: int = 2000
    n_modalities: int = 5
    epochs: int = 72                     # docs/benchmarks.rst's 72-epoch tables (where MoPoE's coherence holds)
    batch_size: int = 128
    lr: float = 1e-3
    latent_dim: int = 16
    private_dim: int = 0                 # size of each s_m for families with private latents (0: the family's default)
    # None: what `mdgm-ros train` uses by default (the family's schedule, Family.training_defaults); a value:
    # every family
    warmup_steps: int | None = None      # optimiser steps of the linear KL warm-up
    warmup_start: float | None = None    # the warm-up's first KL weight, as a fraction of beta
    beta: float = 1.0                    # final KL weight after the linear warm-up
    grad_clip: float | None = None       # gradient-norm clip of every training step (0: none)
    # True: Laplace(0.75) on per-channel standardised pixels (about 5x sharper than on raw pixels, so the
    # KL counts less); False: on raw [0, 1] pixels, the PolyMNIST reference's and MultiVae's choice, which
    # at this benchmark's few epochs stayed near chance for MoPoE, MVAE and MultiVae's MoPoE alike
    normalize: bool = True
    family_options: dict = field(default_factory=dict)   # {"mmvae": {"K": 1}}: options per family
    classifier_epochs: int = 10
    iwae_k: int = 100
    n_nll: int = 500
    n_probe: int = 5000
    threads: int = 1
    networks: str = "cnn"                # "cnn" (PolyMNIST-style), "mlp" (768-256-256) or "default" (the package's)
    device: str = "cpu"                  # where classifiers and families train and are evaluated
    keep_models: bool = False            # with --out: each trained family as a bundle in OUT/models/


# ----------------------------------------------------------------------------- classifiers
class DigitClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _predict(net: nn.Module, images: np.ndarray | torch.Tensor, chunk: int = 1000) -> np.ndarray:
    device = next(net.parameters()).device
    x = torch.as_tensor(images, dtype=torch.float32)
    with torch.no_grad():
        labels = [net(x[i:i + chunk].to(device)).argmax(1).cpu() for i in range(0, len(x), chunk)]
    return torch.cat(labels).numpy()


def train_classifiers(train: PolyDigits, test: PolyDigits, epochs: int, seed: int, device: str = "cpu"
                      ) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """One digit classifier per modality (on ``device``); returns them and their test accuracies."""
    nets, accuracy = {}, {}
    labels = torch.from_numpy(train.labels).to(device)
    for j, name in enumerate(train.names):
        torch.manual_seed(seed * 100 + j)
        net = DigitClassifier().to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
        x = torch.from_numpy(train.images[name]).to(device)
        gen = torch.Generator().manual_seed(seed * 100 + j)
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(128):
                loss = nn.functional.cross_entropy(net(x[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        nets[name] = net.eval()
        accuracy[name] = float((_predict(net, test.images[name]) == test.labels).mean())
    return nets, accuracy


# ----------------------------------------------------------------------------- networks
class DigitEncoder(nn.Module):
    """PolyMNIST-style conv encoder for 3x16x16 images -> (mu, logvar)."""

    def __init__(self, spec, latent_dim: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.SiLU(), nn.Conv2d(width, 2 * width, 4, 2, 1),
                                 nn.SiLU(), nn.Flatten(), nn.Linear(2 * width * 16, 256), nn.SiLU(),
                                 nn.Linear(256, 2 * latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class DigitDecoder(nn.Module):
    """Mirror of :class:`DigitEncoder` with transposed convs; any leading dimensions on z."""

    def __init__(self, spec, latent_dim: int, width: int = 32):
        super().__init__()
        self.width = width
        self.fc = nn.Sequential(nn.Linear(latent_dim, 256), nn.SiLU(), nn.Linear(256, 2 * width * 16), nn.SiLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.SiLU(),
                                nn.ConvTranspose2d(width, 3, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, 2 * self.width, 4, 4)
        return self.up(h).reshape(*lead, 3, 16, 16)


class MLPEncoder(nn.Module):
    """768-256-256 multilayer perceptron (ReLU) on the flattened 3x16x16 image -> (mu, logvar): the
    networks of the library comparison (:mod:`.parity`)."""

    def __init__(self, spec, latent_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return self.mu(h), self.logvar(h)


class MLPDecoder(nn.Module):
    """Mirror of :class:`MLPEncoder`; any leading dimensions on z."""

    def __init__(self, spec, latent_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 3 * 16 * 16))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], 3, 16, 16)


# registered through the public API, as a user's own networks would be
register_network("encoder", "polydigits_cnn", DigitEncoder, replace=True)
register_network("decoder", "polydigits_cnn", DigitDecoder, replace=True)
register_network("encoder", "polydigits_mlp", MLPEncoder, replace=True)
register_network("decoder", "polydigits_mlp", MLPDecoder, replace=True)
NETWORKS = ("cnn", "mlp", "default")


def network_config(names: Sequence[str], choice: str) -> dict[str, Any]:
    """``default``: the package's image nets; ``cnn``: the PolyMNIST-style pair above (private encoders:
    the package's); ``mlp``: the perceptrons above, private encoders included."""
    if choice not in NETWORKS:
        raise ValueError(f"networks must be one of {', '.join(NETWORKS)}, got {choice!r}")
    if choice == "default":
        return {}
    net = {"name": f"polydigits_{choice}"}
    return {n: {"encoder": net, "decoder": net, **({"private": net} if choice == "mlp" else {})} for n in names}


# ----------------------------------------------------------------------------- one family
def _features(model: MultimodalVAE, data: PolyDigits) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    feats = {n: torch.from_numpy(data.images[n]) for n in model.names}
    return feats, torch.ones((len(data), len(model.names)), dtype=torch.bool)


MODELS = "models"                        # OUT/models/: the bundles of --keep-models
def steps_per_epoch(config: ZooConfig) -> int:
    return -(-config.n_train // config.batch_size)


def training_protocol(name: str, config: ZooConfig) -> dict[str, Any]:
    """The clip, warm-up and options that family ``name`` trains with: the config's where set (``--grad-clip``,
    ``--beta-warmup``, ``--beta-start``, ``--option``), else what ``mdgm-ros train`` uses by default
    (:meth:`Family.training_defaults`: the family's own schedule, else a clip of 10 and a 5-epoch linear KL
    warm-up from 0; the objective's default options), the warm-up in optimiser steps."""
    defaults = get_family(name).training_defaults()
    warmup = round(defaults["warmup_epochs"] * steps_per_epoch(config))
    return {"grad_clip": defaults["grad_clip"] if config.grad_clip is None else config.grad_clip,
            "warmup_steps": warmup if config.warmup_steps is None else config.warmup_steps,
            "warmup_start": 0.0 if config.warmup_start is None else config.warmup_start,
            "options": dict(config.family_options.get(name, {}))}


def private_dim_for(name: str, config: ZooConfig) -> int | None:
    """``config.private_dim`` for a family with private latents; None (the family's default) otherwise."""
    has_private = bool(get_family(name).private_latent_dims)
    return config.private_dim if has_private and config.private_dim else None


def build_model(name: str, config: ZooConfig) -> MultimodalVAE:
    """Family ``name`` on PolyDigits' modalities and the zoo's networks, untrained, on the CPU."""
    modality_specs = specs(config.n_modalities)
    networks = network_config([m.name for m in modality_specs], config.networks)
    return MultimodalVAE(ModelConfig(modality_specs, latent_dim=config.latent_dim, family=name,
                                     networks=networks, family_options=training_protocol(name, config)["options"],
                                     private_dim=private_dim_for(name, config)))


def train_family(name: str, train: PolyDigits, config: ZooConfig, seed: int,
                 progress: TrainingProgress | None = None) -> tuple[MultimodalVAE, dict]:
    """Train family ``name`` on the train tuples; ``progress`` checkpoints every epoch and continues from
    its last checkpoint (``bench zoo --resume``)."""
    torch.manual_seed(seed)
    protocol = training_protocol(name, config)
    model = build_model(name, config).to(config.device)
    raw, mask = _features(model, train)
    if config.normalize:
        training.fit_normalization(model, raw, mask)
    feats = training.normalize_features(model, raw)
    if model.family.uses_labels:          # label heads (Tian et al.): the digit
        feats[LABELS] = torch.from_numpy(train.labels)
    schedule = training.BetaSchedule("linear", protocol["warmup_start"] * config.beta, config.beta,
                                     protocol["warmup_steps"])
    tconfig = training.TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                   beta=schedule, seed=seed, grad_clip=protocol["grad_clip"])
    trainer = training.Trainer(model, tconfig)
    if progress is not None:
        progress.restore(model, trainer)
    started = time.perf_counter()
    history = training.train(model, feats, mask, tconfig, trainer=trainer,
                             on_epoch=None if progress is None else lambda r: progress.save(model, trainer, r))
    seconds = time.perf_counter() - started if progress is None else progress.seconds   # over every process
    return model, {"protocol": protocol, "train_seconds": seconds,
                   "samples_per_s": len(train) * trainer.epoch / max(seconds, 1e-9),
                   "final_train_loss": history[-1].train_loss if history else None}


# images of the targets, in [0, 1] pixel units, from the raw images of the given modalities:
# imputer(given {name: (B, 3, 16, 16)}, targets) -> {target: (B, 3, 16, 16)}; raises SubsetRefused where
# the model cannot infer from that subset
Imputer = Callable[[dict[str, torch.Tensor], Sequence[str]], dict[str, torch.Tensor]]


class SubsetRefused(Exception):
    """The model cannot infer from the given subset of modalities (its coherence there is null)."""


def model_imputer(model: MultimodalVAE, samples: int = 0) -> Imputer:
    """This package's imputation as an :data:`Imputer`: the targets decoded from the posterior mean
    (``samples`` 0) or from one sample of z per tuple (``samples`` 1, seeded: reproducible)."""
    generator = torch.Generator(device=model.device).manual_seed(0) if samples else None
    names = model.names

    def imputer(given: dict[str, torch.Tensor], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        rows = next(iter(given.values())).shape[0]
        mask = torch.zeros((rows, len(names)), dtype=torch.bool, device=model.device)
        mask[:, [names.index(n) for n in given]] = True
        try:
            imputed = impute(model, {n: model.normalize(n, x) for n, x in given.items()}, mask, targets,
                             n_samples=samples, generator=generator)
        except FamilyError as err:
            raise SubsetRefused(str(err)) from None
        return {t: model.denormalize(t, imputed[t].mean) for t in targets}
    return imputer


@torch.no_grad()
def subset_coherence(imputer: Imputer, names: Sequence[str], test: PolyDigits, classifiers: dict[str, nn.Module],
                     device: torch.device | str = "cpu", chunk: int = 500) -> dict[int, float | None]:
    """k -> mean accuracy of the classifiers on the images ``imputer`` generates from every subset of
    size k of ``names`` for every target outside it (targets, then subsets, averaged); None for a k
    where the imputer refuses a subset. Any model that can impute images can be measured this way."""
    n_mod = len(names)
    correct: dict[int, list[float]] = {k: [] for k in range(1, n_mod)}
    refused: set[int] = set()
    for k in range(1, n_mod):
        for given in itertools.combinations(range(n_mod), k):
            targets = [names[j] for j in range(n_mod) if j not in given]
            hits = {t: 0 for t in targets}
            for start in range(0, len(test), chunk):
                rows = slice(start, start + chunk)
                images = {names[j]: torch.from_numpy(test.images[names[j]][rows]).to(device) for j in given}
                try:
                    imputed = imputer(images, targets)
                except SubsetRefused:
                    refused.add(k)
                    break
                for t in targets:
                    hits[t] += int((_predict(classifiers[t], imputed[t].clamp(0, 1)) == test.labels[rows]).sum())
            if k in refused:
                break
            correct[k] += [hits[t] / len(test) for t in targets]
    return {k: None if k in refused else float(np.mean(v)) for k, v in correct.items()}


def coherence(model: MultimodalVAE, test: PolyDigits, classifiers: dict[str, nn.Module],
              chunk: int = 500, samples: int = 0) -> dict[int, float] | None:
    """k -> mean accuracy of the classifiers on the images generated from every subset of size k;
    None if the family refuses inference from a proper subset. ``samples`` 0 decodes the posterior
    mean; 1 decodes one sample of z per tuple (as MultiVae's coherence does)."""
    values = subset_coherence(model_imputer(model, samples), model.names, test, classifiers, model.device, chunk)
    return None if any(v is None for v in values.values()) else values


@torch.no_grad()
def joint_nll(model: MultimodalVAE, test: PolyDigits, k: int, n: int, chunk: int = 25) -> float:
    gen = torch.Generator(device=model.device).manual_seed(0)
    values = []
    for start in range(0, min(n, len(test)), chunk):
        rows = slice(start, min(start + chunk, n))
        feats = normalized_images(model, test, rows)
        mask = torch.ones((len(test.labels[rows]), len(model.names)), dtype=torch.bool, device=model.device)
        values.append(-iwae_log_likelihood(model, feats, mask, n_samples=k, generator=gen).cpu())
    return float(torch.cat(values).mean())


def evaluate_family(name: str, train: PolyDigits, test: PolyDigits, classifiers: dict[str, nn.Module],
                    config: ZooConfig, seed: int, progress: TrainingProgress | None = None,
                    keep_in: Path | None = None) -> dict[str, Any]:
    """Train family ``name`` and measure it; ``keep_in``: save the trained model there as a bundle first."""
    model, stats = train_family(name, train, config, seed, progress)
    model.eval()
    if keep_in is not None:
        save_bundle(keep_in / f"{name}_seed{seed}", model, name=f"polydigits-{name}-seed{seed}",
                    extra={"zoo": {"family": name, "seed": seed, "protocol": stats["protocol"],
                                   "epochs": config.epochs}})
    started = time.perf_counter()
    result = {"family": name, "seed": seed, **stats,
              "coherence": coherence(model, test, classifiers),
              "coherence_sampled": coherence(model, test, classifiers, samples=1),
              "latent_probe": latent_probe(model, train, test, config.n_probe),
              "joint_nll": joint_nll(model, test, config.iwae_k, config.n_nll),
              **zoo_private.private_metrics(model, train, test, config.n_probe)}     # families with private latents
    result["eval_seconds"] = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------- the benchmark
def run_zoo(config: ZooConfig, log: Callable[[str], None] = lambda m: None,
            state: ZooState | None = None, models_dir: Path | None = None) -> dict[str, Any]:
    """Every family of the config on every seed. ``state`` (``--out``) keeps what a resumed run needs:
    the classifiers, the finished families and the training checkpoints (:mod:`.zoo_state`).
    ``models_dir``: where each trained family is kept as a bundle (``--keep-models``)."""
    check_families(config.families)
    torch.set_num_threads(max(1, config.threads))
    runs, classifier_acc = [], {}
    started = time.perf_counter()
    for seed in range(config.first_seed, config.first_seed + config.seeds):
        train, test = make_polydigits(config.n_train, config.n_test, config.n_modalities, seed=seed)
        classifiers, classifier_acc[seed] = seed_classifiers(train, test, config, seed, state)
        log(f"seed {seed}: classifier test accuracy {classifier_acc[seed]}")
        for name in config.families:
            run = state.finished_run(name, seed) if state is not None else None
            if run is None:
                progress = state.progress(name, seed, log) if state is not None else None
                run = evaluate_family(name, train, test, classifiers, config, seed, progress, models_dir)
                if state is not None:
                    run = state.save_run(run)
            log(f"seed {seed} {name}: coherence {run['coherence']} (sampled z: {run['coherence_sampled']}) "
                f"probe {run['latent_probe']:.3f} "
                f"nll {run['joint_nll']:.1f} ({run['train_seconds']:.0f} s)")
            runs.append(run)
    resumed = {"resumed_runs": state.resumed} if state is not None and state.resumed else {}
    return {"benchmark": "zoo", "dataset": "PolyDigits", "config": asdict(config),
            "classifier_accuracy": {str(s): a for s, a in classifier_acc.items()},
            "runs": runs, "summary": summarize(runs), "wall_seconds": time.perf_counter() - started, **resumed,
            "coherence_decoding": "coherence: the posterior mean; coherence_sampled: one sample of z (MultiVae's)",
            "accuracy": "plain (not class-balanced)"}


def check_families(families: Sequence[str]) -> None:
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown} (registered: {', '.join(FAMILIES)})")


def check_family_options(config: ZooConfig) -> None:
    """--option for an unknown family, an option a family does not take or a bad value: refused before
    anything trains."""
    unknown = sorted(set(config.family_options) - set(FAMILIES))
    if unknown:
        raise ValueError(f"--option for unknown families {unknown} (registered: {', '.join(FAMILIES)})")
    with torch.random.fork_rng(devices=[]):              # building draws initial weights: leave no trace
        for name in config.families:
            build_model(name, config)                    # option names and values, private_dim, networks


def seed_classifiers(train: PolyDigits, test: PolyDigits, config: ZooConfig, seed: int,
                     state: ZooState | None) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """The seed's digit classifiers: trained, or read back from the state of the run being resumed."""
    def fresh():
        return train_classifiers(train, test, config.classifier_epochs, seed, config.device)
    return fresh() if state is None else state.classifiers(seed, config.device, fresh, DigitClassifier)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean over seeds per family (coherence per k with either decoding, probe, NLL, samples/s)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["family"] for r in runs):
        mine = [r for r in runs if r["family"] == name]
        out[name] = {
            "seeds": len(mine),
            "coherence": _mean_coherence(mine, "coherence"),
            "coherence_sampled": _mean_coherence(mine, "coherence_sampled"),
            "latent_probe": float(np.mean([r["latent_probe"] for r in mine])),
            "latent_probe_private": (float(np.mean([r["latent_probe_private"] for r in mine]))
                                     if "latent_probe_private" in mine[0] else None),
            "joint_nll": float(np.mean([r["joint_nll"] for r in mine])),
            "samples_per_s": float(np.mean([r["samples_per_s"] for r in mine])),
            "train_seconds": float(np.mean([r["train_seconds"] for r in mine])),
            "protocol": " / ".join(dict.fromkeys(protocol_text(r["protocol"]) for r in mine if r.get("protocol")))
                        or None}
    return out


def protocol_text(protocol: dict[str, Any]) -> str:
    """``{"grad_clip": 0, "warmup_steps": 790, "warmup_start": 0, "options": {"k": 0}}`` ->
    ``clip 0, warm-up 790, k=0`` (the table's protocol column)."""
    start = f" from {protocol['warmup_start']:g}" if protocol.get("warmup_start") else ""
    options = [f"{key}={value}" for key, value in protocol.get("options", {}).items()]
    return ", ".join([f"clip {protocol['grad_clip']:g}", f"warm-up {protocol['warmup_steps']}{start}", *options])


def _mean_coherence(runs: Sequence[dict[str, Any]], key: str) -> dict[str, float] | None:
    """k -> mean over the runs that have ``key`` (None: the family refuses subsets, or older reports)."""
    values = [{str(k): v for k, v in r[key].items()} for r in runs if r.get(key)]
    return {k: float(np.mean([c[k] for c in values])) for k in values[0]} if values else None


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    ks = next((list(s["coherence"]) for s in summary.values() if s["coherence"]), [])
    head = ["family", *[f"coh k={k}" for k in ks], f"sampled z, k={ks[0]}..{ks[-1]}" if ks else "sampled z",
            "latent probe", "probe on s_m", "joint NLL (IWAE)", "samples/s", "train s", "seeds", "protocol"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        coh = [f"{s['coherence'][k]:.3f}" if s["coherence"] else "—" for k in ks]
        sampled = s.get("coherence_sampled")
        sampled_text = " / ".join(f"{sampled[k]:.3f}" for k in ks) if sampled else "—"
        private = s.get("latent_probe_private")
        lines.append("| " + " | ".join([name, *coh, sampled_text, f"{s['latent_probe']:.3f}",
                                        "—" if private is None else f"{private:.3f}", f"{s['joint_nll']:.1f}",
                                        f"{s['samples_per_s']:.0f}", f"{s['train_seconds']:.0f}",
                                        str(s["seeds"]), s.get("protocol") or "—"]) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours, markers = plt.get_cmap("tab20").colors, "os^Dv<>p*h"
    for i, (name, s) in enumerate(report["summary"].items()):     # distinct colour and marker per family
        if s["coherence"]:
            ks = [int(k) for k in s["coherence"]]
            ax.set_xticks(ks)
            line, = ax.plot(ks, list(s["coherence"].values()), marker=markers[i % len(markers)],
                            color=colours[(2 * i + i // 10) % 20], label=name)     # dark shades, then light
            if s.get("coherence_sampled"):                       # dashed: one sample of z decoded
                ax.plot(ks, list(s["coherence_sampled"].values()), ls="--", lw=0.8, color=line.get_color())
    ax.set_xlabel("k (given modalities)")
    ax.set_ylabel("conditional coherence")
    ax.set_ylim(0, 1)
    ax.axhline(0.1, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("PolyDigits: coherence vs k (dashed: sampled z)")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """zoo.json, zoo.md and coherence.png in ``out`` (each written atomically)."""
    write_text_atomically(out / "zoo.json", json.dumps(report, indent=2) + "\n")
    write_text_atomically(out / "zoo.md", markdown(report))
    plot(report, out / "coherence.png")
    zoo_private.write_style_transfer(report["runs"], out)


# ----------------------------------------------------------------------------- CLI glue
def add_zoo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench zoo`` (the CLI adds ``--json``, ``--device`` and ``--threads``)."""
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated families (default: every registered family)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds (the tables in docs/benchmarks.rst use 2)")
    parser.add_argument("--out", default=None,
                        help="folder for zoo.json, zoo.md and coherence.png; while the run lasts, its state "
                             "(checkpoints after every epoch) is in OUT/state/")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out: finished families are read back, the one "
                             "in training continues after its last finished epoch (same settings required)")
    parser.add_argument("--epochs", type=int, default=ZooConfig.epochs, help="training epochs per family")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (run seeds in parallel processes)")
    parser.add_argument("--train-tuples", type=int, default=ZooConfig.n_train, help="training tuples")
    parser.add_argument("--test-tuples", type=int, default=ZooConfig.n_test, help="test tuples")
    parser.add_argument("--batch-size", type=int, default=ZooConfig.batch_size, help="training batch size")
    parser.add_argument("--merge", default=None,
                        help="comma-separated zoo.json files: print (and with --out write) their runs as one table")
    parser.add_argument("--option", action="append", default=[], metavar="FAMILY.KEY=VALUE",
                        help="an option of one family, e.g. mmvae.K=1 (repeatable)")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="likelihood on raw [0, 1] pixels (the PolyMNIST reference's) instead of standardised ones")
    parser.add_argument("--latent-dim", type=int, default=ZooConfig.latent_dim, help="shared latent size")
    parser.add_argument("--networks", choices=NETWORKS, default=ZooConfig.networks,
                        help="encoders and decoders: cnn (PolyMNIST-style convolutions), mlp (768-256-256 "
                             "perceptrons, the library comparison's) or default (the package's image networks)")
    parser.add_argument("--private-dim", type=int, default=0,
                        help="size of each private latent s_m of the families that have them "
                             "(0: each family's default)")
    parser.add_argument("--beta", type=float, default=ZooConfig.beta, help="KL weight after the warm-up")
    parser.add_argument("--grad-clip", type=float, default=None,
                        help="gradient-norm clip of each training step for every family (0: none; default: what "
                             "mdgm-ros train uses, the family's own, else 10; `mdgm-ros families --json` lists them)")
    parser.add_argument("--beta-warmup", type=int, default=None,
                        help="optimiser steps of the linear KL warm-up to --beta for every family (from 0, or "
                             "--beta-start; 0: none; default: what mdgm-ros train uses, the family's own number "
                             "of epochs, else 5 epochs)")
    parser.add_argument("--beta-start", type=float, default=None, metavar="FRACTION",
                        help="the warm-up's first KL weight as a fraction of --beta (default 0; e.g. 0.1 with "
                             "--beta-warmup 711 approximates MultiVae's JMVAE annealing, 0.1, 0.2, .. 1 per epoch)")
    parser.add_argument("--keep-models", action="store_true",
                        help="with --out: keep each trained family as a bundle in OUT/models/<family>_seed<S>/ "
                             "(load it after `import mdgm_ros.bench.zoo`, which registers the zoo's networks)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds): a smoke test, not numbers")


def zoo_config_from_args(args: argparse.Namespace) -> ZooConfig:
    families = tuple(f.strip() for f in str(args.families).split(",") if f.strip())
    first_seed = int(getattr(args, "first_seed", 0) or 0)
    n_train = int(getattr(args, "train_tuples", ZooConfig.n_train))
    n_test = int(getattr(args, "test_tuples", ZooConfig.n_test))
    if args.seeds < 1 or args.epochs < 1 or first_seed < 0:
        raise ValueError("--seeds and --epochs must be >= 1, --first-seed >= 0")
    batch_size = int(getattr(args, "batch_size", ZooConfig.batch_size))
    latent_dim = int(getattr(args, "latent_dim", ZooConfig.latent_dim))
    beta = float(getattr(args, "beta", ZooConfig.beta))
    private_dim = int(getattr(args, "private_dim", 0) or 0)
    grad_clip = _optional(args, "grad_clip", float)
    warmup = _optional(args, "beta_warmup", int)
    warmup_start = _optional(args, "beta_start", float)
    if (n_train < 10 or n_test < 10 or batch_size < 1 or latent_dim < 1 or not beta > 0 or private_dim < 0
            or not (grad_clip is None or grad_clip >= 0) or (warmup or 0) < 0
            or not (warmup_start is None or 0 <= warmup_start <= 1)):
        raise ValueError("--train-tuples and --test-tuples must be >= 10, --batch-size and --latent-dim >= 1, "
                         "--beta > 0, --private-dim >= 0, --grad-clip >= 0, --beta-warmup >= 0, "
                         "0 <= --beta-start <= 1")
    try:
        device = str(training.select_device(str(getattr(args, "device", "cpu") or "cpu")))
    except RuntimeError as err:                               # CUDA asked for where there is none
        raise ValueError(str(err)) from None
    options = parse_family_options(getattr(args, "option", []) or [])
    keep_models = bool(getattr(args, "keep_models", False))
    if keep_models and not getattr(args, "out", None):
        raise ValueError("--keep-models needs --out, the folder the bundles go to (OUT/models/)")
    if getattr(args, "quick", False):                  # tiny sizes; the families' options still apply
        return ZooConfig(families=families, seeds=args.seeds, first_seed=first_seed, n_train=300, n_test=100,
                         epochs=1, classifier_epochs=1, iwae_k=4, n_nll=20, n_probe=300, device=device,
                         grad_clip=grad_clip, warmup_steps=warmup, warmup_start=warmup_start,
                         family_options=options, keep_models=keep_models)
    return ZooConfig(families=families, seeds=args.seeds, first_seed=first_seed, epochs=args.epochs,
                     n_train=n_train, n_test=n_test, batch_size=batch_size, latent_dim=latent_dim, beta=beta,
                     private_dim=private_dim, device=device, grad_clip=grad_clip, warmup_steps=warmup,
                     warmup_start=warmup_start, networks=str(getattr(args, "networks", ZooConfig.networks)),
                     threads=max(1, int(getattr(args, "threads", 1) or 1)),
                     normalize=not bool(getattr(args, "raw_pixels", False)),
                     family_options=options, keep_models=keep_models)


def _optional(args: argparse.Namespace, key: str, kind: type) -> Any:
    """``args.key`` converted by ``kind``; None where absent or None (the family's protocol decides)."""
    value = getattr(args, key, None)
    return None if value is None else kind(value)


def parse_family_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["mmvae.K=1"]`` -> ``{"mmvae": {"K": 1}}`` (values as JSON where they parse, else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        family, dot, option = key.partition(".")
        if not (sep and dot and family and option):
            raise ValueError(f"--option {item!r}: expected FAMILY.KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(family.strip(), {})[option.strip()] = parsed
    return out


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several zoo reports (e.g. one process per seed or per family) as one: runs concatenated, the
    summary recomputed, wall time the sum of the processes' wall times."""
    if not reports:
        raise ValueError("nothing to merge")
    runs = [run for report in reports for run in report["runs"]]
    classifiers = {k: v for report in reports for k, v in report["classifier_accuracy"].items()}
    return {**reports[0], "runs": runs, "summary": summarize(runs), "classifier_accuracy": classifiers,
            "configs": [r["config"] for r in reports], "wall_seconds": sum(r["wall_seconds"] for r in reports)}


def _load_reports(paths: str) -> list[dict[str, Any]]:
    out = []
    for path in (p.strip() for p in paths.split(",") if p.strip()):
        try:
            out.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read zoo report {path}: {err}") from None
    return out


def zoo_command(args: argparse.Namespace, write: Callable[[str], Any] = print) -> int:
    """Run ``bench zoo`` (or merge earlier reports); prints the Markdown table (or JSON with ``--json``)."""
    state = None
    try:
        if getattr(args, "merge", None):
            report = merge_reports(_load_reports(args.merge))
        else:
            config = zoo_config_from_args(args)
            if getattr(args, "resume", False) and not args.out:
                raise ValueError("--resume needs --out, the folder of the run to continue")
            check_families(config.families)                # before a state folder is made
            check_family_options(config)
            state = ZooState(Path(args.out), config, bool(getattr(args, "resume", False))) if args.out else None
            report = run_zoo(config, log=log_to_stderr if args.json else write,    # --json: progress on stderr
                             state=state, models_dir=Path(args.out) / MODELS if config.keep_models else None)
    except ValueError as err:
        write(f"error: {err}")
        return 2
    except KeyboardInterrupt as interrupt:
        if state is not None:
            write(f"interrupted: finished families and the last finished epoch are in {state.root}; "
                  "run the same command with --resume to continue")
        return exit_code(interrupt)
    if args.out:
        write_outputs(report, Path(args.out))
    if state is not None:
        state.remove()
    write(json.dumps(report, indent=2) if args.json else markdown(report).rstrip("\n"))
    return 0


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
