"""``mdgm-ros train``: rosbags -> aligned samples -> a trained, calibrated model bundle (+ ONNX).

Steps: read the train config (config/train.yaml: the model, the node's params file for alignment,
data split, optimisation, calibration, export); align every bag (cached per bag content); drop the
samples in or just after a fault span; split off held-out blocks of ``block_s`` seconds; fit the
normalisation on the training rows; train with a progress bar, CSV and TensorBoard metrics, an atomic
checkpoint after every epoch (``--resume`` continues from it) and early stopping on the held-out
loss; restore the best epoch; calibrate anomaly scores on the held-out data; write the bundle (with
ONNX encoders/decoders) atomically.

Work files go to ``<out>.train/``: ``checkpoint.pt``, ``metrics.csv``, ``tensorboard/``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ..data import bags
from ..core import (BetaSchedule, ModelConfig, MultimodalVAE, TrainConfig, Trainer, calibrate_anomaly,
                   save_bundle, select_device)
from ..core import training as core_training
from ..core.modalities import Normalization
from ..data.dataset import AlignedDataset, default_cache_dir, load_bags
from ..streams.params import FusionParams, fusion_params_from_file

CHECKPOINT_VERSION = 1
TRAINING_MEANS = "training_means.safetensors"


class TrainError(RuntimeError):
    """Bad training input (config, bags, resume state) with a specific message."""


@dataclass
class TrainSettings:
    model: ModelConfig
    fusion: FusionParams
    val_fraction: float = 0.15
    block_s: float = 10.0
    settle_s: float = 0.5
    cache: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    warmup_epochs: float = 5.0
    patience: int = 8
    min_delta: float = 0.0
    threads: int = 0
    quantile: float = 0.99
    onnx: bool = True
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainSettings":
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise TrainError(f"cannot read train config {path}: {err}") from err
        for key, value in (overrides or {}).items():          # {"training.epochs": 3}
            section, _, name = key.rpartition(".")
            (doc.setdefault(section, {}) if section else doc)[name] = value
        model = doc.get("model", "model.yaml")
        if isinstance(model, str):
            model = yaml.safe_load((path.parent / model).read_text(encoding="utf-8"))
        model = {**model, **(doc.get("model_overrides") or {})}
        weights = doc.get("modality_weights") or {}
        unknown = set(weights) - {m["name"] for m in model["modalities"]}
        if unknown:
            raise TrainError(f"modality_weights names unknown modalities {sorted(unknown)}")
        model["modalities"] = [{**m, "weight": float(weights.get(m["name"], m.get("weight", 1.0)))}
                               for m in model["modalities"]]
        fusion = fusion_params_from_file(str(path.parent / doc.get("fusion_params", "fusion.yaml")),
                                         overrides=doc.get("fusion_overrides") or {})
        data, opt = doc.get("data", {}), doc.get("training", {})
        beta = opt.get("beta", {})
        train = TrainConfig(epochs=int(opt.get("epochs", 40)), batch_size=int(opt.get("batch_size", 64)),
                            lr=float(opt.get("lr", 2e-3)), weight_decay=float(opt.get("weight_decay", 0.0)),
                            grad_clip=float(opt.get("grad_clip", 10.0)), seed=int(opt.get("seed", 0)),
                            beta=BetaSchedule(beta.get("kind", "linear"), float(beta.get("start", 0.0)),
                                              float(beta.get("end", 1.0)), 0))
        settings = cls(ModelConfig.from_dict(model), fusion, float(data.get("val_fraction", 0.15)),
                       float(data.get("block_s", 10.0)), float(data.get("settle_s", 0.5)),
                       bool(data.get("cache", True)), train, float(beta.get("warmup_epochs", 5.0)),
                       int(opt.get("patience", 8)), float(opt.get("min_delta", 0.0)), int(opt.get("threads", 0)),
                       float(doc.get("calibration", {}).get("quantile", 0.99)),
                       bool(doc.get("export", {}).get("onnx", True)), doc)
        if not 0.0 < settings.val_fraction < 0.9:
            raise TrainError(f"data.val_fraction must be in (0, 0.9), got {settings.val_fraction}")
        return settings


def split_blocks(stamps: np.ndarray, block_s: float, val_fraction: float, seed: int) -> np.ndarray:
    """Held-out rows: whole blocks of ``block_s`` seconds (neighbouring frames are near-duplicates,
    so a row-wise split would leak). Returns a boolean 'is validation' array."""
    if len(stamps) == 0:
        return np.zeros(0, bool)
    block = (stamps - stamps.min()) // int(block_s * 1e9)
    ids = np.unique(block)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(len(ids) * val_fraction)))
    if len(ids) < 2:
        raise TrainError(f"the data spans under 2 blocks of {block_s} s: too short to hold any out")
    chosen = rng.choice(ids, size=min(n_val, len(ids) - 1), replace=False)
    return np.isin(block, chosen)


# ----------------------------------------------------------------------------- checkpoints
def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _normalization_state(model: MultimodalVAE) -> dict[str, Any]:
    return {m.name: {"mean": torch.from_numpy(np.asarray(m.normalization.mean)),
                     "std": torch.from_numpy(np.asarray(m.normalization.std))}
            for m in model.config.modalities if m.normalization is not None}


def _restore_normalization(model: MultimodalVAE, state: dict[str, Any]) -> None:
    for name, stats in state.items():
        model.set_normalization(name, Normalization(stats["mean"].numpy(), stats["std"].numpy()))


# ----------------------------------------------------------------------------- ONNX
def export_onnx(model: MultimodalVAE, folder: Path) -> list[str]:
    """Encoders (normalised features -> mu, logvar) and decoders (z -> likelihood location) as ONNX,
    batch dimension dynamic, for TensorRT on Jetson. Audio features are the log-mel spectrogram."""
    import warnings

    model = model.eval()
    written = []
    device = model.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in model.names:
            spec = model.specs[name]
            x = torch.zeros(2, *spec.feature_shape, device=device)
            z = torch.zeros(2, model.latent_dim, device=device)
            for part, module, args, inputs, outputs in (
                    ("encoder", model.encoders[name], (x,), ["features"], ["mu", "logvar"]),
                    ("decoder", model.decoders[name], (z,), ["z"], ["loc"])):
                file = folder / f"onnx_{name}_{part}.onnx"
                torch.onnx.export(module, args, str(file), input_names=inputs, output_names=outputs,
                                  dynamic_axes={inputs[0]: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                                  dynamo=False, opset_version=17)
                written.append(file.name)
    return written


def save_training_means(feats: dict[str, torch.Tensor], mask: torch.Tensor, names, folder: Path) -> None:
    """Per-element mean of each modality's (un-normalised) features over the training rows where it
    was observed: the 'training mean' baseline of ``mdgm-ros evaluate``."""
    from safetensors.torch import save_file

    means = {name: feats[name][mask[:, j]].double().mean(0).float().contiguous() for j, name in enumerate(names)
             if bool(mask[:, j].any())}
    save_file(means, str(folder / TRAINING_MEANS))


# ----------------------------------------------------------------------------- metrics
class MetricsLog:
    """metrics.csv (appended across resumes) and TensorBoard scalars."""

    def __init__(self, workdir: Path):
        self.csv_path = workdir / "metrics.csv"
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # tensorboard is in requirements.txt; a bare install still trains
            self.tb = None

    def write(self, record, lr: float) -> None:
        row = {"epoch": record.epoch + 1, "train_loss": record.train_loss, "val_loss": record.val_loss,
               "beta": record.beta, "lr": lr, "seconds": round(record.seconds, 2), **record.terms}
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    self.tb.add_scalar(f"train/{key}" if key in record.terms else key, float(value), record.epoch + 1)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- the command
@dataclass
class TrainResult:
    bundle: Path
    epochs: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    train_samples: int
    val_samples: int
    excluded_fault_samples: int
    seconds: float
    onnx: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}


def _features(model: MultimodalVAE, data: AlignedDataset) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return core_training.raw_to_features(model, data.float_raw()), torch.from_numpy(data.mask)


@dataclass
class _Data:
    all_samples: int
    train: AlignedDataset
    val: AlignedDataset


def _split_data(bag_paths: list[str], settings: TrainSettings, log: Callable[[str], None]) -> _Data:
    """Aligned samples of the bags, fault spans left out, whole blocks held out."""
    cache = default_cache_dir() if settings.cache else None
    data = load_bags(bag_paths, settings.fusion, list(settings.model.modalities), cache, settings.settle_s, log)
    clean = data.subset(~data.near_fault)
    is_val = split_blocks(clean.stamps + clean.bag.astype(np.int64) * int(1e15), settings.block_s,
                          settings.val_fraction, settings.train.seed)
    split = _Data(len(data), clean.subset(~is_val), clean.subset(is_val))
    log(f"{len(data)} samples: {len(split.train)} train, {len(split.val)} held out, "
        f"{len(data) - len(clean)} in or near fault spans left out")
    if len(split.train) < settings.train.batch_size or len(split.val) < 2:
        raise TrainError(f"too little fault-free data: {len(split.train)} train / {len(split.val)} held-out samples")
    return split


def _resume_key(bag_paths: list[str], settings: TrainSettings) -> str:
    """What a resumed run must share with its checkpoint (epochs, patience etc. may change)."""
    shaping = {k: settings.source.get(k) for k in ("model", "model_overrides", "modality_weights", "fusion_params",
                                                   "fusion_overrides", "data")}
    return hashlib.sha256(json.dumps({"bags": [bags.content_hash(p) for p in bag_paths], "config": shaping,
                                      "seed": settings.train.seed, "batch_size": settings.train.batch_size},
                                     sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class _Fit:
    best: dict[str, Any]
    epochs: int
    stopped_early: bool


def _fit(trainer: Trainer, train, val, settings: TrainSettings, workdir: Path, resume_key: str,
         log: Callable[[str], None], progress, show_bar: bool, should_stop: Callable[[], bool],
         best: dict[str, Any]) -> _Fit:
    """Epochs with metrics, a checkpoint after each, and early stopping on the held-out loss."""
    model, epochs = trainer.model, trainer.config.epochs
    metrics = MetricsLog(workdir)
    stopped_early = False
    try:
        while trainer.epoch < epochs and not should_stop():
            bar = _progress_bar(trainer.epoch, epochs, show_bar)
            record = trainer.run_epoch(*train, val, on_batch=lambda done, total: bar.update(1) if bar else None)
            if bar:
                bar.set_postfix(train=f"{record.train_loss:.1f}", val=f"{record.val_loss:.1f}")
                bar.close()
            metrics.write(record, trainer.optimizer.param_groups[0]["lr"])
            if record.val_loss < best["val"] - settings.min_delta:
                best = {"val": record.val_loss, "epoch": record.epoch,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "bad_epochs": 0}
            else:
                best["bad_epochs"] += 1
            _atomic_torch_save({"version": CHECKPOINT_VERSION, "data_key": resume_key, "model": model.state_dict(),
                                "normalization": _normalization_state(model), "trainer": trainer.state_dict(),
                                "best": best}, workdir / "checkpoint.pt")
            log(f"epoch {record.epoch + 1}/{epochs}: train {record.train_loss:.2f} "
                f"val {record.val_loss:.2f} beta {record.beta:.2f} ({record.seconds:.1f} s)")
            if progress is not None:
                progress(trainer.epoch, epochs, record.val_loss)
            if best["bad_epochs"] >= settings.patience:
                stopped_early = True
                log(f"early stop: no held-out improvement for {settings.patience} epochs")
                break
    finally:
        metrics.close()
    return _Fit(best, trainer.epoch, stopped_early)


def run_training(bag_paths: list[str], config_path: str | Path, out: str | Path, resume: bool = False,
                 device: str = "auto", overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print,
                 progress: Callable[[int, int, float], None] | None = None, show_bar: bool = True,
                 should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """The whole ``mdgm-ros train``; ``progress(epoch, epochs, val_loss)`` after each epoch."""
    started = time.perf_counter()
    settings = TrainSettings.from_file(config_path, overrides)
    out = Path(out)
    workdir = out.with_name(out.name + ".train")
    workdir.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    data = _split_data(bag_paths, settings, log)

    torch.manual_seed(settings.train.seed)
    model = MultimodalVAE(settings.model).to(select_device(device))
    train_feats, train_mask = _features(model, data.train)
    val_feats, val_mask = _features(model, data.val)
    steps_per_epoch = -(-len(data.train) // settings.train.batch_size)
    beta = settings.train.beta
    trainer = Trainer(model, TrainConfig(**{**vars(settings.train), "beta": BetaSchedule(
        beta.kind, beta.start, beta.end, int(settings.warmup_epochs * steps_per_epoch))}))
    resume_key = _resume_key(bag_paths, settings)
    checkpoint_path = workdir / "checkpoint.pt"
    best: dict[str, Any] = {"val": float("inf"), "epoch": -1, "state": None, "bad_epochs": 0}
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=model.device, weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION or state.get("data_key") != resume_key:
            raise TrainError(f"{checkpoint_path} was made from other bags or another config; "
                             "remove it or train without --resume")
        _restore_normalization(model, state["normalization"])
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        best = state["best"]
        log(f"resumed from {checkpoint_path} after epoch {trainer.epoch}")
    else:
        (workdir / "metrics.csv").unlink(missing_ok=True)
        core_training.fit_normalization(model, train_feats, train_mask)
    val_norm = core_training.normalize_features(model, val_feats)
    fit = _fit(trainer, (core_training.normalize_features(model, train_feats), train_mask), (val_norm, val_mask),
               settings, workdir, resume_key, log, progress, show_bar, should_stop, best)
    best = fit.best
    if best["state"] is None:
        raise TrainError("no epoch finished; nothing to save")
    model.load_state_dict(best["state"])
    log(f"best epoch {best['epoch'] + 1} (held-out loss {best['val']:.2f}); calibrating on "
        f"{len(data.val)} held-out fault-free samples")
    calibration = calibrate_anomaly(model, {k: v.to(model.device) for k, v in val_norm.items()},
                                    val_mask.to(model.device), quantile=settings.quantile)
    onnx_files: list[str] = []

    def attach(folder: Path) -> None:
        save_training_means(train_feats, train_mask, model.names, folder)
        if settings.onnx:
            onnx_files.extend(export_onnx(model, folder))

    extra = {"training": {"bags": [str(p) for p in bag_paths], "epochs": fit.epochs,
                          "best_epoch": best["epoch"] + 1, "best_val_loss": best["val"],
                          "train_samples": len(data.train), "val_samples": len(data.val),
                          "alignment": {"anchor": settings.fusion.anchor, "output_rate": settings.fusion.output_rate}},
             "onnx": {"inputs": "encoders: normalised features (normalization.json; audio = log-mel); "
                                "decoders: z", "opset": 17}}
    save_bundle(out, model, calibration, name=out.name, extra=extra, attach=attach)
    log(f"bundle written: {out}")
    return TrainResult(out, fit.epochs, best["epoch"] + 1, float(best["val"]), fit.stopped_early, len(data.train),
                       len(data.val), data.all_samples - len(data.train) - len(data.val),
                       round(time.perf_counter() - started, 1), onnx_files)


def _progress_bar(epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)
