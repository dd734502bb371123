"""What both ways of ``mdgm-ros train`` share -- in memory (:mod:`.trainer`) and streamed from shards
(:mod:`.streaming`, also every ``torchrun`` launch): the held-out blocks, the epoch loop (metrics, a
checkpoint after every epoch, early stopping, one best epoch per stage), resuming from the checkpoints,
and the result of a run.

Work files go to ``<out>.train/``: ``checkpoint.pt`` (+ the previous generation, see
:mod:`.checkpoints`), ``metrics.csv``, ``tensorboard/``.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core import MultimodalVAE, Trainer
from ..core.model.modalities import Normalization
from ..data import bags
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainError, TrainSettings


def split_blocks(stamps: np.ndarray, block_s: float, val_fraction: float, seed: int,
                 bag: np.ndarray | None = None) -> np.ndarray:
    """Held-out rows: whole blocks of ``block_s`` seconds (neighbouring frames are near-duplicates,
    so a row-wise split would leak), drawn in every bag alike (``val_fraction`` of each bag's blocks,
    at least one where the bag spans two or more), so every bag -- and what only it records -- is held
    out too. Returns a boolean 'is validation' array."""
    bag = np.zeros(len(stamps), int) if bag is None else np.asarray(bag)
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(stamps), bool)
    for b in np.unique(bag):
        rows = np.flatnonzero(bag == b)
        block = (stamps[rows] - stamps[rows].min()) // int(block_s * 1e9)
        ids = np.unique(block)
        if len(ids) < 2:
            continue
        n_val = min(max(1, int(round(len(ids) * val_fraction))), len(ids) - 1)
        is_val[rows] = np.isin(block, rng.choice(ids, size=n_val, replace=False))
    if len(stamps) and not is_val.any():
        raise TrainError(f"the data spans under 2 blocks of {block_s} s in every bag: too short to hold any out")
    return is_val


# ----------------------------------------------------------------------------- the result
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


# ----------------------------------------------------------------------------- checkpoints and resuming
_NOT_SHAPING = ("cache", "workers", "loader_workers")      # data settings a resumed run may change


def resume_key_of(bag_paths: list[str], settings: TrainSettings) -> str:
    """What a resumed run must share with its checkpoint (epochs, patience etc. may change)."""
    shaping = {"model": settings.model.to_dict(), "fusion": repr(settings.fusion),
               "data": {k: v for k, v in vars(settings.data).items() if k not in _NOT_SHAPING}}
    return hashlib.sha256(json.dumps({"bags": [bags.content_hash(p) for p in bag_paths], "config": shaping,
                                      "seed": settings.train.seed, "batch_size": settings.train.batch_size,
                                      "init_from": settings.opt.init_from},
                                     sort_keys=True, default=str).encode()).hexdigest()


def _normalization_state(model: MultimodalVAE) -> dict[str, Any]:
    return {m.name: {key: torch.from_numpy(np.asarray(value)) for key in ("mean", "std", "low", "high")
                     if (value := getattr(m.normalization, key)) is not None}
            for m in model.config.modalities if m.normalization is not None}


def _restore_normalization(model: MultimodalVAE, state: dict[str, Any]) -> None:
    for name, stats in state.items():
        bounds = [stats[k].numpy() for k in ("low", "high") if k in stats]
        model.set_normalization(name, Normalization(stats["mean"].numpy(), stats["std"].numpy(), *bounds))


def no_best(stage: int = 0) -> dict[str, Any]:
    return {"val": float("inf"), "epoch": -1, "stage": stage, "state": None, "bad_epochs": 0}


def resumed_best(workdir: Path, model: MultimodalVAE, trainer: Any, resume_key: Any,
                 log: Callable[[str], None]) -> dict[str, Any] | None:
    """Restore model, normalisation and trainer from the newest checkpoint in ``workdir``; return its
    best-epoch record (None: nothing to resume, start fresh)."""
    if not any(workdir.glob("checkpoint*.pt")):
        return None
    try:
        state = load_checkpoint(workdir, model.device, resume_key, log)
    except CheckpointError as err:
        raise TrainError(f"cannot resume from {workdir}: {err}; train without --resume to start fresh "
                         "(that replaces the checkpoints)") from None
    _restore_normalization(model, state["normalization"])
    model.load_state_dict(state["model"])
    trainer.load_state_dict(state["trainer"])
    log(f"resumed from {workdir} after epoch {trainer.epoch}")
    return state["best"]


# ----------------------------------------------------------------------------- the epochs
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


@dataclass
class FitResult:
    best: dict[str, Any]
    epochs: int
    stopped_early: bool


def fit_epochs(trainer: Trainer, train, val, settings: TrainSettings, workdir: Path, resume_key: str,
               log: Callable[[str], None], progress, show_bar: bool, should_stop: Callable[[], bool],
               best: dict[str, Any], primary: bool = True) -> FitResult:
    """Epochs with metrics, a checkpoint after each, and early stopping on the held-out loss. A family
    with several stages gets each stage's own best epoch and patience (their held-out losses measure
    different terms): a stage that ends, by its epochs or by early stopping, hands its best weights on."""
    model, epochs = trainer.model, trainer.config.epochs
    dims, staged = feature_dims(model), len(trainer.stage_epochs) > 1
    metrics = MetricsLog(workdir) if primary else None      # rank 0 of a distributed run writes
    stopped_early = False
    try:
        while trainer.epoch < epochs and not should_stop():
            stage = trainer.stage_index
            if best.get("stage", 0) != stage:
                best = no_best(stage)
            bar = _progress_bar(trainer.epoch, epochs, steps_per_epoch(train[1], trainer), show_bar)
            record = trainer.run_epoch(*train, val, on_batch=None if bar is None else lambda done, total: bar.update(1))
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.write(record, trainer.optimizer.param_groups[0]["lr"])
            if record.val_loss < best["val"] - settings.opt.min_delta:
                best = {"val": record.val_loss, "epoch": record.epoch, "stage": stage, "bad_epochs": 0,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            else:
                best["bad_epochs"] += 1
            stage_name = f" [stage {stage + 1}/{len(trainer.stage_epochs)} {trainer.stage.name}]" if staged else ""
            log(f"epoch {record.epoch + 1}/{epochs}{stage_name}: loss {record.train_loss / dims:.4f} train, "
                f"{record.val_loss / dims:.4f} held out (nats/dim over {dims} dims), beta {record.beta:.2f} "
                f"({record.seconds:.1f} s)" + (" best" if best["epoch"] == record.epoch else ""))
            patience_out = best["bad_epochs"] >= settings.opt.patience
            if patience_out and not trainer.advance_stage():
                stopped_early = True
                log(f"early stop: no held-out improvement for {settings.opt.patience} epochs")
            if trainer.stage_index != stage and trainer.epoch < epochs:
                model.load_state_dict(best["state"])
                log(f"stage {stage + 1} ends{' early' if patience_out else ''}: its best "
                    f"epoch {best['epoch'] + 1} goes on to stage {trainer.stage_index + 1} ({trainer.stage.name})")
            state = {"data_key": resume_key, "model": model.state_dict(),
                     "normalization": _normalization_state(model), "trainer": trainer.state_dict(), "best": best}
            if primary:
                save_checkpoint(state, workdir)
            if progress is not None:
                progress(trainer.epoch, epochs, record.val_loss)
            if stopped_early:
                break
    finally:
        if metrics is not None:
            metrics.close()
    return FitResult(best, trainer.epoch, stopped_early)


def feature_dims(model: MultimodalVAE) -> int:
    """Values per sample over all modalities' features: the loss divided by this is in nats per dimension."""
    return int(sum(np.prod(model.specs[name].feature_shape) for name in model.names))


def steps_per_epoch(mask: torch.Tensor, trainer: Trainer) -> int:
    if hasattr(trainer, "batches_per_epoch"):              # the temporal trainer: batches of windows
        return trainer.batches_per_epoch
    return -(-int(mask.shape[0]) // trainer.config.batch_size)


def _progress_bar(epoch: int, epochs: int, total: int, enabled: bool):
    """A tqdm bar for one epoch (None when disabled). Test it with ``is None``: a tqdm has no truth value."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)
