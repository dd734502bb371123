"""``mdgm-ros train``: rosbags -> aligned samples -> a trained, calibrated model bundle (+ ONNX).

Steps: read the train config (config/train.yaml: the model, the node's params file for alignment,
data split, optimisation, calibration, export); align every bag (cached per bag content); drop the
samples in or just after a fault span; split off held-out blocks of ``block_s`` seconds; fit the
normalisation on the training rows; train with a progress bar, CSV and TensorBoard metrics, an atomic
checkpoint after every epoch (``--resume`` continues from it) and early stopping on the held-out
loss; restore the best epoch; calibrate anomaly scores on the held-out data; write the bundle (with
ONNX encoders/decoders) atomically.

Work files go to ``<out>.train/``: ``checkpoint.pt`` (+ the previous generation, see
:mod:`.checkpoints`), ``metrics.csv``, ``tensorboard/``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core import BetaSchedule, MultimodalVAE, TrainConfig, Trainer, save_bundle, select_device
from ..core.engine import loop as core_training
from ..core.engine import sequence as core_sequence
from ..core.engine.windows import window_index
from ..core.families.temporal import is_temporal, options_of
from ..data import bags
from ..data.dataset import AlignedDataset, check_bags, default_cache_dir, load_bags
from ..streams.params import stream_settings
from .bundle_files import TRAINING_MEANS, export_onnx
from .calibration import calibrate_model, held_out_windows, normalized_means, observed_means
from .config import TrainError, TrainSettings
from .distributed import amp_dtype, launched_by_torchrun
from .fit import TrainResult, feature_dims, fit_epochs, no_best, resume_key_of, resumed_best, split_blocks
from .streaming import train_from_shards

__all__ = ["TrainError", "TrainResult", "TrainSettings", "run_training"]


# ----------------------------------------------------------------------------- bundle files
def save_training_means(feats: dict[str, torch.Tensor], mask: torch.Tensor, names, folder: Path) -> None:
    """Per-element mean of each modality's (un-normalised) features over the training rows where it
    was observed: the 'training mean' baseline of ``mdgm-ros evaluate``."""
    from safetensors.torch import save_file

    save_file(observed_means(feats, mask, names), str(folder / TRAINING_MEANS))


# ----------------------------------------------------------------------------- the command
def _features(model: MultimodalVAE, data: AlignedDataset) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features in fresh, contiguous torch memory. Vectorised reductions (the normalisation statistics)
    round differently with the start address of their input, and numpy arrays from a fresh alignment and
    from the cache start at different offsets: without the copy, cached and fresh runs differ in the
    last bits of the statistics, then in every weight."""
    feats = core_training.raw_to_features(model, data.float_raw())
    return ({k: v.clone(memory_format=torch.contiguous_format) for k, v in feats.items()},
            torch.from_numpy(data.mask).clone())


@dataclass
class _Data:
    all_samples: int
    train: AlignedDataset
    val: AlignedDataset


def check_inputs(bag_paths: list[str], settings: TrainSettings, log: Callable[[str], None]) -> None:
    """Every bag exists and has every configured topic with the expected type, before any work."""
    absent = check_bags(bag_paths, settings.fusion, settings.data.absent_ok, more=settings.problems)
    for bag, lacking in absent.items():
        if lacking:
            log(f"{bag}: no {', '.join(lacking)} (data.absent_ok): trained as missing in this bag")


def _split_data(bag_paths: list[str], settings: TrainSettings, log: Callable[[str], None]) -> _Data:
    """Aligned samples of the bags, fault spans left out, whole blocks held out."""
    cache = default_cache_dir() if settings.data.cache else None
    data = load_bags(bag_paths, settings.fusion, list(settings.model.modalities), cache, settings.data.settle_s, log,
                     label_topic=settings.data.label_topic, max_corrupt=settings.data.max_corrupt)
    clean = data.subset(~data.near_fault)
    is_val = split_blocks(clean.stamps, settings.data.block_s, settings.data.val_fraction, settings.train.seed,
                          clean.bag)
    split = _Data(len(data), clean.subset(~is_val), clean.subset(is_val))
    log(f"{len(data)} samples: {len(split.train)} train, {len(split.val)} held out, "
        f"{len(data) - len(clean)} in or near fault spans left out")
    if len(split.train) < settings.train.batch_size or len(split.val) < 2:
        raise TrainError(f"too little fault-free data: {len(split.train)} train / {len(split.val)} held-out samples")
    for j, name in enumerate(settings.model.names):
        if int(split.val.mask[:, j].sum()) < 2:
            raise TrainError(f"{name} is observed in {int(split.val.mask[:, j].sum())} held-out samples: too few to "
                             "calibrate its anomaly score (record more of it, or lower data.block_s)")
    return split


@dataclass
class _Windows:
    """Temporal family: (W, T) row indices of the training and held-out windows, -1 for padding."""

    train: np.ndarray
    val: np.ndarray
    calibration: np.ndarray         # long held-out windows (whole runs up to CALIBRATION_WINDOW_S)
    max_gap_s: float


def _windows(data: _Data, settings: TrainSettings, log: Callable[[str], None]) -> _Windows:
    """Windows of consecutive aligned samples (the node's alignment) that never cross a bag, a gap of
    more than 3 sample periods, a fault span or a held-out block (those rows are gone, which is a gap)."""
    rate = settings.fusion.output_rate
    gap = 3.0 / rate if rate > 0 else 0.5
    length, stride = settings.data.window, settings.data.window_stride

    def index(part: AlignedDataset, size: int, step: int) -> np.ndarray:
        return window_index(part.stamps, part.bag, np.zeros(len(part), int), size, step, gap)

    out = _Windows(index(data.train, length, stride), index(data.val, length, length),
                   held_out_windows(data.val, rate, length), gap)
    log(f"temporal: {len(out.train)} training windows of {length} samples (stride {stride}), {len(out.val)} "
        f"held out; a gap over {gap:.3f} s starts a new window")
    if len(out.train) == 0 or len(out.val) == 0:
        raise TrainError("no windows of consecutive samples to train the temporal model on")
    return out


def widened_inputs(source: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Linear weights of the same name whose layer gained inputs at the end (a decoder that reads
    [z, s_m] where the source read z): the source's columns, zeros for the new inputs, so the layer
    starts as the source's function of z."""
    out = {}
    for key, value in source.items():
        mine = own.get(key)
        if (mine is not None and key.endswith("weight") and value.dim() == mine.dim() == 2
                and value.shape[0] == mine.shape[0] and value.shape[1] < mine.shape[1]):
            grown = torch.zeros_like(mine)
            grown[:, :value.shape[1]] = value
            out[key] = grown
    return out


def init_weights(model: MultimodalVAE, bundle_path: str, log: Callable[[str], None]) -> None:
    """Start from another bundle's weights wherever name and shape match (e.g. a temporal model from the
    per-frame encoders, decoders and likelihood scales trained on the same bags), and from its feature
    normalisation (so the weights see inputs scaled as in their training); the rest stays new."""
    from ..core import BundleError, load_bundle

    try:
        source_model = load_bundle(bundle_path, device=str(model.device)).model
    except (BundleError, OSError) as err:
        raise TrainError(f"training.init_from: {err}") from None
    source = source_model.state_dict()
    own = model.state_dict()
    shared = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    shared.update(widened_inputs(source, own))
    if not shared:
        raise TrainError(f"training.init_from: {bundle_path} has no weights of this model's names and shapes")
    model.load_state_dict(shared, strict=False)
    copied = [m.name for m in source_model.config.modalities
              if m.normalization is not None and m.name in model.specs and
              tuple(m.feature_shape) == tuple(model.specs[m.name].feature_shape)]
    for name in copied:               # its weights expect the inputs scaled as it was trained
        model.set_normalization(name, source_model.specs[name].normalization)
    log(f"started from {len(shared)}/{len(own)} tensors of {bundle_path} and its normalisation of "
        f"{', '.join(copied) or 'no modality'}")


def run_training(bag_paths: list[str], config_path: str | Path, out: str | Path, resume: bool = False,
                 device: str = "auto", overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print,
                 progress: Callable[[int, int, float], None] | None = None, show_bar: bool = True,
                 should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """The whole ``mdgm-ros train``; ``progress(epoch, epochs, val_loss)`` after each epoch."""
    started = time.perf_counter()
    settings = TrainSettings.from_file(config_path, overrides)
    bag_paths = [str(Path(p).absolute()) for p in bag_paths]
    check_inputs(bag_paths, settings, log)
    out = Path(out).absolute()
    workdir = out.with_name(out.name + ".train")
    workdir.mkdir(parents=True, exist_ok=True)
    if settings.opt.threads:
        torch.set_num_threads(settings.opt.threads)
    if settings.opt.deterministic:
        use_deterministic_kernels()
    if settings.data.shards or launched_by_torchrun():      # streamed from shards; torchrun: DDP
        return train_from_shards(bag_paths, settings, out, workdir, resume, device, log, progress, show_bar,
                                 should_stop, started)
    data = _split_data(bag_paths, settings, log)

    torch.manual_seed(settings.train.seed)
    model = MultimodalVAE(settings.model).to(select_device(device))
    train_feats, train_mask = _features(model, data.train)
    val_feats, val_mask = _features(model, data.val)
    windows = _windows(data, settings, log) if is_temporal(model) else None
    units = len(data.train) if windows is None else len(windows.train)       # rows, or windows
    steps_per_epoch = -(-units // settings.train.batch_size)
    beta = settings.train.beta
    train_config = TrainConfig(**{**vars(settings.train), "beta": BetaSchedule(
        beta.kind, beta.start, beta.end, int(settings.beta.warmup_epochs * steps_per_epoch))})
    trainer = (Trainer(model, train_config) if windows is None else
               core_sequence.SequenceTrainer(model, train_config, windows.train, windows.val))
    trainer.amp = amp_dtype(settings.opt.precision, model.device)
    resume_key = resume_key_of(bag_paths, settings)
    best = resumed_best(workdir, model, trainer, resume_key, log) if resume else None
    if best is None:
        best = no_best()
        (workdir / "metrics.csv").unlink(missing_ok=True)
        core_training.fit_normalization(model, train_feats, train_mask)
        if settings.opt.init_from:
            init_weights(model, settings.opt.init_from, log)
    val_norm = core_training.normalize_features(model, val_feats)
    train_norm = with_phase_labels(model, core_training.normalize_features(model, train_feats), data)
    fit = fit_epochs(trainer, (train_norm, train_mask), (with_phase_labels(model, val_norm, data, val=True), val_mask),
                     settings, workdir, resume_key, log, progress, show_bar, should_stop, best)
    best = fit.best
    if best["state"] is None:
        raise TrainError("no epoch finished; nothing to save")
    model.load_state_dict(best["state"])
    log(f"best epoch {best['epoch'] + 1} (held-out loss {best['val'] / feature_dims(model):.4f} nats/dim)")
    calibration = calibrate_model(
        model, val_norm, val_mask, windows.calibration if windows is not None else
        held_out_windows(data.val, settings.fusion.output_rate, settings.data.window),
        normalized_means(model, observed_means(train_feats, train_mask, model.names)),
        settings.calibration.quantile, settings.fusion.output_rate, log)
    onnx_files: list[str] = []

    def attach(folder: Path) -> None:
        save_training_means(train_feats, train_mask, model.names, folder)
        if settings.export.onnx:
            onnx_files.extend(export_onnx(model, folder))

    extra = {"training": {"bags": [str(p) for p in bag_paths],
                          "bag_hashes": [bags.content_hash(p) for p in bag_paths], "epochs": fit.epochs,
                          "best_epoch": best["epoch"] + 1, "best_val_loss": best["val"],
                          "train_samples": len(data.train), "val_samples": len(data.val),
                          "alignment": {"anchor": settings.fusion.anchor, "output_rate": settings.fusion.output_rate},
                          "label_topic": settings.data.label_topic, "absent_ok": list(settings.data.absent_ok)},
             "streams": stream_settings(settings.fusion),
             "onnx": {"inputs": "encoders: normalised features (normalization.json; audio = log-mel); "
                                "decoders: z", "opset": 17}}
    if windows is not None:
        extra["temporal"] = temporal_manifest(model, settings, windows)
    save_bundle(out, model, calibration, name=out.name, extra=extra, attach=attach)
    log(f"bundle written: {out}")
    return TrainResult(out, fit.epochs, best["epoch"] + 1, float(best["val"]), fit.stopped_early, len(data.train),
                       len(data.val), data.all_samples - len(data.train) - len(data.val),
                       round(time.perf_counter() - started, 1), onnx_files)


def temporal_manifest(model: MultimodalVAE, settings: TrainSettings, windows: _Windows) -> dict[str, Any]:
    """What a temporal bundle says about its training windows, time step and anomaly scores."""
    options = options_of(model)
    rate = settings.fusion.output_rate
    return {"window": settings.data.window, "window_stride": settings.data.window_stride,
            "train_windows": int(len(windows.train)), "max_gap_s": windows.max_gap_s,
            "step_s": 1.0 / rate if rate > 0 else None, "transition": options.transition,
            "action_dim": options.action_dim,
            "anomaly": "one-step predictive NLL of each stream given the past and the other streams now "
                       "(calibration.json), calibrated by filtering held-out runs from a fresh state",
            "onnx_transition": "onnx_transition.onnx: z (and u) -> mean, logvar of p(z_t | z_{t-1}, u_t)"}


def with_phase_labels(model: MultimodalVAE, feats: dict[str, torch.Tensor], data: _Data,
                      val: bool = False) -> dict[str, torch.Tensor]:
    """For a family with a label head (Tian et al.): each sample's task phase as a class index (sorted
    phase names of the train and held-out rows; -1 where the bag has no phase)."""
    if not model.family.uses_labels:
        return feats
    from ..core.model.family import LABELS

    names = sorted({str(p) for p in np.concatenate([data.train.phase, data.val.phase])} - {""})
    limit = int(model.config.family_options.get("n_labels", 16))
    if len(names) > limit:
        raise TrainError(f"{len(names)} task phases but the label head has {limit} classes: set "
                         f"model_overrides.family_options.n_labels to at least {len(names)}")
    index = {name: i for i, name in enumerate(names)}
    phases = (data.val if val else data.train).phase
    return {**feats, LABELS: torch.tensor([index.get(str(p), -1) for p in phases], dtype=torch.long)}


def use_deterministic_kernels() -> None:
    """Deterministic algorithms only (an error names any op without one), cuDNN autotuning off, cuBLAS
    with a fixed workspace. Same seed, data, device and thread count: bit-identical runs."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
