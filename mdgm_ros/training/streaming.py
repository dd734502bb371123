"""Training that streams from shards (``data.shards: true``, and every ``torchrun`` launch).

The bags are aligned once into shards (:mod:`mdgm_ros.data.shards`); only the small per-sample arrays
(stamps, presence masks, fault marks) are held in memory. The held-out blocks are drawn exactly as in
memory (:func:`~.fit.split_blocks`). Each epoch the training rows are ordered by shard (the shards
in a seeded random order) and shuffled within a buffer of ``data.shuffle_buffer`` rows, then cut into
batches that a ``torch.utils.data.DataLoader`` loads in ``data.loader_workers`` processes from
memory-mapped shard files (a few open at a time), pinned when training on a GPU and copied
non-blocking. Resident memory is therefore a few shards and batches, whatever the hours of bags.

The normalisation statistics and the training means are one streaming pass (per-batch moments merged
with Chan's formulas); held-out losses and the anomaly calibration are streaming passes too.

Distributed (:mod:`.distributed`): every rank computes the same epoch order and the same assignment
of the shards to the ranks (:func:`shard_owners`: balanced by rows, drawn anew each epoch), and reads
only its own shards, cut into as many batches as a single process makes (:func:`own_share`), so one
DDP step averages about ``batch_size`` rows from ``world`` disjoint parts of the data and every row
is read once per epoch. The held-out, statistics and calibration passes split the shards the same way (every
``world``-th). With fewer shards than ranks, every rank reads rows ``rank::world`` of each shared
batch instead (the same batches as a single process).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core import BetaSchedule, MultimodalVAE, TrainConfig, Trainer, save_bundle
from ..core.engine.inference import calibrate_predictive_scale, calibration_from_nll, leave_one_out_surprise
from ..core.engine.loop import NORM_AXES, Batch, Batches
from ..core.engine.objective import compute_objective
from ..core.model.modalities import BOUNDED_KINDS, Normalization, range_bounds
from ..data import bags
from ..data import cache as data_cache
from ..data.shards import BagShards, RowReader, ensure_shards
from . import distributed
from .bundle_files import TRAINING_MEANS, export_onnx
from .config import TrainError, TrainSettings
from .fit import TrainResult, feature_dims, fit_epochs, no_best, resume_key_of, resumed_best, split_blocks

EVAL_BATCH = 256


# ----------------------------------------------------------------------------- rows and order
@dataclass
class ShardRows:
    """The per-sample arrays of all bags' shards (small), and where each row's data lives."""

    bags: list[BagShards]
    bag_of: np.ndarray          # (N,) bag index
    row_of: np.ndarray          # (N,) row within its bag
    stamps: np.ndarray
    mask: np.ndarray
    near_fault: np.ndarray

    @classmethod
    def of(cls, opened: list[BagShards]) -> "ShardRows":
        return cls(opened, np.concatenate([np.full(len(b), i) for i, b in enumerate(opened)]).astype(np.int64),
                   np.concatenate([np.arange(len(b)) for b in opened]).astype(np.int64),
                   np.concatenate([b.stamps for b in opened]), np.concatenate([b.mask for b in opened]),
                   np.concatenate([b.near_fault for b in opened]))

    def __len__(self) -> int:
        return len(self.stamps)

    def shard_ids(self, rows: np.ndarray) -> np.ndarray:
        sizes = np.asarray([b.shard_size for b in self.bags], np.int64)
        return self.bag_of[rows] * (1 << 32) + self.row_of[rows] // sizes[self.bag_of[rows]]


def split_rows(data: ShardRows, settings: TrainSettings, log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): fault spans left out, whole blocks held out, as in memory."""
    clean = np.flatnonzero(~data.near_fault)
    is_val = split_blocks(data.stamps[clean], settings.data.block_s, settings.data.val_fraction,
                          settings.train.seed, data.bag_of[clean])
    train, val = clean[~is_val], clean[is_val]
    log(f"{len(data)} samples: {len(train)} train, {len(val)} held out, "
        f"{len(data) - len(clean)} in or near fault spans left out")
    if len(train) < settings.train.batch_size or len(val) < 2:
        raise TrainError(f"too little fault-free data: {len(train)} train / {len(val)} held-out samples")
    for j, name in enumerate(settings.model.names):
        if int(data.mask[val, j].sum()) < 2:
            raise TrainError(f"{name} is observed in {int(data.mask[val, j].sum())} held-out samples: too few to "
                             "calibrate its anomaly score (record more of it, or lower data.block_s)")
    return train, val


def buffer_shuffle(stream: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffle buffer of ``size`` over ``stream``: each step emits a random buffered item and refills
    its place with the next one, so an item moves at most about ``size`` places ahead."""
    if size <= 1 or len(stream) <= 1:
        return stream.copy()
    size = min(size, len(stream))
    buffer, out = stream[:size].copy(), np.empty_like(stream)
    picks = rng.integers(0, size, len(stream) - size)
    for k, (j, incoming) in enumerate(zip(picks, stream[size:])):
        out[k] = buffer[j]
        buffer[j] = incoming
    out[len(stream) - size:] = rng.permutation(buffer)
    return out


def epoch_order(rows: np.ndarray, shard_ids: np.ndarray, seed: int, epoch: int, buffer: int) -> np.ndarray:
    """The rows of one epoch: shards in a random order (seeded by seed and epoch), then a shuffle buffer."""
    rng = np.random.default_rng([seed, epoch])
    groups, inverse = np.unique(shard_ids, return_inverse=True)
    position = np.empty(len(groups), np.int64)
    position[rng.permutation(len(groups))] = np.arange(len(groups))
    return buffer_shuffle(rows[np.argsort(position[inverse], kind="stable")], buffer, rng)


def cut_batches(order: np.ndarray, batch_size: int, world: int = 1) -> list[np.ndarray]:
    """Batches of ``batch_size``; a last batch too small to give every rank a row joins the one before."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < world:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def shard_owners(counts: np.ndarray, world: int, seed: int, epoch: int) -> np.ndarray:
    """The rank that reads each shard this epoch (``counts``: the shards' training rows): the shards in
    a random order seeded by seed and epoch, each to the rank with the fewest rows so far, so every
    rank reads a disjoint share of about the same size and the shares change from epoch to epoch."""
    rng = np.random.default_rng([seed, epoch, world])
    owners, load = np.zeros(len(counts), np.int64), np.zeros(world, np.int64)
    for shard in rng.permutation(len(counts)):
        owners[shard] = int(np.argmin(load))
        load[owners[shard]] += counts[shard]
    return owners


def own_share(order: np.ndarray, shard_ids: np.ndarray, world: int, rank: int, seed: int, epoch: int,
              batch_size: int) -> tuple[list[np.ndarray], list[int]] | None:
    """This rank's batches of an epoch when each rank reads its own shards, and each global batch's
    size over all ranks: the epoch has as many steps as in one process (``len(order) / batch_size``,
    rounded up); each rank cuts its share -- the rows of the order whose shard :func:`shard_owners`
    gives it -- into that many nearly equal parts, so every row is read once, by one rank, and a step
    averages about ``batch_size`` rows. None when a rank's share could not give every step a row
    (fewer shards than ranks, or a very uneven split): then the ranks share every batch row by row."""
    groups, inverse, counts = np.unique(shard_ids, return_inverse=True, return_counts=True)
    if len(groups) < world:
        return None
    owners = shard_owners(counts, world, seed, epoch)[inverse]
    steps = -(-len(order) // batch_size)
    shares = [int(np.sum(owners == r)) for r in range(world)]
    if min(shares) < steps:
        return None
    whole = [sum(n // steps + (k < n % steps) for n in shares) for k in range(steps)]
    return np.array_split(order[owners == rank], steps), whole


class BatchSource(torch.utils.data.Dataset):
    """Batch k -> (raw arrays, mask, size of the whole batch over the ranks) of this rank's rows of
    batch k: rows ``rank::world`` of a shared batch, or, given ``whole`` (each global batch's size), the
    batch is this rank's own rows."""

    def __init__(self, reader: RowReader, data: ShardRows, batches: list[np.ndarray], rank: int = 0, world: int = 1,
                 whole: list[int] | None = None):
        self.reader, self.bag_of, self.row_of, self.mask = reader, data.bag_of, data.row_of, data.mask
        self.batches, self.rank, self.world, self.whole = batches, rank, world, whole

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        own = self.whole is not None
        rows = self.batches[k] if own else self.batches[k][self.rank::self.world]
        raw = self.reader.read(self.bag_of[rows], self.row_of[rows])
        return ({name: torch.from_numpy(array) for name, array in raw.items()},
                torch.from_numpy(self.mask[rows]), self.whole[k] if own else len(self.batches[k]))


# ----------------------------------------------------------------------------- features and statistics
def device_features(model: MultimodalVAE, raw: dict[str, torch.Tensor],
                    normalized: bool = True) -> dict[str, torch.Tensor]:
    """Raw batch arrays (uint8 images) -> features on the model's device (copied non-blocking)."""
    out = {}
    with torch.no_grad():
        for name, x in raw.items():
            x = x.to(model.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = x.float() / 255.0
            feats = model.raw_features(name, x)
            out[name] = model.normalize(name, feats) if normalized else feats
    return out


class FeatureStats:
    """Streaming moments for the normalisation (per channel / dimension / mel band / taxel, as
    :func:`~mdgm_ros.core.training.fit_normalization`) and per-element sums for the training means."""

    def __init__(self, model: MultimodalVAE):
        self.kinds = {n: (model.specs[n].kind, model.specs[n].normalized) for n in model.names}
        self.moments: dict[str, list] = {}        # name -> [elements, mean, M2, rows] (float64, CPU)
        self.sums: dict[str, list] = {}           # name -> [sum over rows, rows]
        self.ranges: dict[str, tuple] = {}        # name -> element-wise (min, max) of vectors and taxel grids

    def add(self, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        for j, name in enumerate(self.kinds):
            rows = mask[:, j].to(feats[name].device)
            if not bool(rows.any()):
                continue
            x = feats[name][rows].double()
            self._merge_sum(name, [x.sum(0).cpu(), x.shape[0]])
            kind, normalized = self.kinds[name]
            if normalized:
                axes = NORM_AXES[kind]
                mean = x.mean(dim=axes, keepdim=True)
                part = [x.numel() / mean.numel(), mean.cpu(), ((x - mean) ** 2).sum(dim=axes, keepdim=True).cpu(),
                        x.shape[0]]
                self._merge_moments(name, part)
                if kind in BOUNDED_KINDS:
                    self._merge_range(name, x.amin(0).cpu(), x.amax(0).cpu())

    def _merge_sum(self, name: str, part: list) -> None:
        old = self.sums.get(name)
        self.sums[name] = part if old is None else [old[0] + part[0], old[1] + part[1]]

    def _merge_range(self, name: str, low: torch.Tensor, high: torch.Tensor) -> None:
        old = self.ranges.get(name)
        self.ranges[name] = (low, high) if old is None else (torch.minimum(old[0], low), torch.maximum(old[1], high))

    def _merge_moments(self, name: str, part: list) -> None:
        old = self.moments.get(name)
        if old is None:
            self.moments[name] = part
            return
        (na, ma, m2a, ra), (nb, mb, m2b, rb) = old, part
        n, delta = na + nb, mb - ma
        self.moments[name] = [n, ma + delta * (nb / n), m2a + m2b + delta ** 2 * (na * nb / n), ra + rb]

    @classmethod
    def merged(cls, parts: list["FeatureStats"]) -> "FeatureStats":
        out = parts[0]
        for part in parts[1:]:
            for name, value in part.sums.items():
                out._merge_sum(name, value)
            for name, value in part.moments.items():
                out._merge_moments(name, value)
            for name, (low, high) in part.ranges.items():
                out._merge_range(name, low, high)
        return out

    def apply(self, model: MultimodalVAE) -> None:
        """Set the normalisation of every modality observed in 2 or more rows."""
        for name, (elements, mean, m2, rows) in self.moments.items():
            if rows < 2:
                continue
            std = (m2 / (elements - 1)).sqrt().squeeze(0)
            floor = max(1e-6, 0.01 * float(std.median()))
            extent = self.ranges.get(name)
            bounds = () if extent is None else range_bounds(extent[0].numpy(), extent[1].numpy(), self.kinds[name][0])
            model.set_normalization(name, Normalization(mean.squeeze(0).numpy(), std.clamp_min(floor).numpy(),
                                                        *bounds))

    def means(self) -> dict[str, torch.Tensor]:
        return {name: (total / rows).float().contiguous() for name, (total, rows) in self.sums.items()}


# ----------------------------------------------------------------------------- the feed and the trainer
class ShardFeed:
    """The training and held-out rows as DataLoaders for one rank."""

    def __init__(self, data: ShardRows, train_rows: np.ndarray, val_rows: np.ndarray, settings: TrainSettings,
                 ranks: distributed.Ranks, device: torch.device):
        self.data, self.train_rows, self.val_rows, self.ranks = data, train_rows, val_rows, ranks
        self.batch_size, self.seed = settings.train.batch_size, settings.train.seed
        self.buffer, self.workers = settings.data.shuffle_buffer, settings.data.loader_workers
        self.pin = device.type == "cuda"
        self.reader = RowReader(data.bags)
        self.train_ids = data.shard_ids(train_rows)

    def train_batches(self, epoch: int) -> tuple[list[np.ndarray], list[int] | None]:
        """The epoch's batches, and each global batch's size when they are this rank's own rows: in one
        process all rows; across ranks this rank's own shards (:func:`own_share`), else the shared
        batches whose rows ``rank::world`` it reads (sizes None)."""
        order = epoch_order(self.train_rows, self.train_ids, self.seed, epoch, self.buffer)
        if self.ranks.distributed:
            own = own_share(order, self.data.shard_ids(order), self.ranks.world, self.ranks.rank, self.seed, epoch,
                            self.batch_size)
            if own is not None:
                return own
        return cut_batches(order, self.batch_size, self.ranks.world), None

    def loader(self, batches: list[np.ndarray], rank: int | None = None, world: int | None = None,
               whole: list[int] | None = None):
        rank = self.ranks.rank if rank is None else rank
        world = self.ranks.world if world is None else world
        source = BatchSource(self.reader, self.data, batches, rank, world, whole)
        return torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=self.workers,
                                           pin_memory=self.pin, prefetch_factor=2 if self.workers else None,
                                           multiprocessing_context="fork" if self.workers else None)

    def train_loader(self, epoch: int):
        batches, whole = self.train_batches(epoch)
        return self.loader(batches, whole=whole)

    def in_order(self, rows: np.ndarray, world_share: bool = True):
        """``rows`` in their order, EVAL_BATCH at a time: this rank's share (the rows of every
        ``world``-th shard), or all of them."""
        if not (world_share and self.ranks.distributed):
            return self.loader(cut_batches(rows, EVAL_BATCH), 0, 1)
        _, shard = np.unique(self.data.shard_ids(rows), return_inverse=True)
        return self.loader(cut_batches(rows[shard % self.ranks.world == self.ranks.rank], EVAL_BATCH), 0, 1)


class StreamingTrainer(Trainer):
    """The core trainer's epochs, its batches streamed from a :class:`ShardFeed` (and DDP across ranks)."""

    def __init__(self, model: MultimodalVAE, config: TrainConfig, feed: ShardFeed):
        super().__init__(model, config)
        self.feed, self.ranks = feed, feed.ranks
        if self.ranks.rank:                     # independent reparameterisation noise on every rank
            self.dev_gen.manual_seed(config.seed + 1 + 7919 * self.ranks.rank)
        self._ddp: tuple[int, Any] | None = None
        self.rank_states: list[dict[str, Any]] | None = None

    def _objective(self):
        if not self.ranks.distributed:
            return None
        if self._ddp is None or self._ddp[0] != self.stage_index:
            self._ddp = (self.stage_index, distributed.wrap(self.model, self.ranks))
        return self._ddp[1]

    def epoch_batches(self, rows, mask) -> Batches:
        """This rank's batches of the epoch, streamed from the shards (DDP: the loss scaled so that the
        gradient is the mean over every rank's rows)."""
        objective, world, device = self._objective(), self.ranks.world, self.model.device

        def make(item) -> Batch:
            raw, m, whole = item
            batch = device_features(self.model, raw)
            return Batch(batch, m.to(device, non_blocking=True), int(m.shape[0]), objective,
                         world / whole if objective is not None else None)

        return Batches(self.feed.train_loader(self.epoch), make)

    def reduce_epoch_sums(self, sums: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
        distributed.check_in_step(self.model, self.ranks)
        keys = sorted(sums)
        totals = distributed.total(self.ranks, [sums[k] for k in keys] + [seen])
        return dict(zip(keys, totals[:-1])), totals[-1]

    def validation_loss(self, val, stage, beta) -> float:
        return streaming_loss(self.model, self.feed, beta, stage, self.amp)

    def after_epoch(self) -> None:
        self.rank_states = distributed.gather(self.ranks, {"dev_gen": self.dev_gen.get_state(),
                                                           "torch_rng": torch.get_rng_state()})

    def reduce_own_gradients(self, had_loss: bool) -> bool:
        if not self.ranks.distributed:
            return had_loss
        return distributed.average_gradients(self.model.family.own_step_parameters(self.model), had_loss)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranks": self.rank_states}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        per_rank = state.get("ranks")
        if per_rank and len(per_rank) == self.ranks.world:      # the same world size: each rank's own RNGs
            self.dev_gen.set_state(per_rank[self.ranks.rank]["dev_gen"])
            torch.set_rng_state(per_rank[self.ranks.rank]["torch_rng"])


@torch.no_grad()
def streaming_loss(model: MultimodalVAE, feed: ShardFeed, beta: float, stage: str | None,
                   amp: torch.dtype | None = None) -> float:
    """Mean held-out loss over all ranks (as :func:`~mdgm_ros.core.training.evaluate_loss`)."""
    model.eval()
    generator = torch.Generator(device=model.device).manual_seed(0)
    total, count = 0.0, 0
    for raw, m, _ in feed.in_order(feed.val_rows):
        m = m.to(model.device, non_blocking=True)
        with torch.autocast(model.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = compute_objective(model, device_features(model, raw), m, beta=beta, generator=generator,
                                    stage=stage, **dict(model.family.eval_options))
        total += float(out.loss.float().sum())
        count += m.shape[0]
    total, count = distributed.total(feed.ranks, [total, count])
    return total / max(count, 1)


def streaming_statistics(model: MultimodalVAE, feed: ShardFeed) -> FeatureStats:
    """Normalisation statistics and training means over the training rows, merged over the ranks."""
    stats = FeatureStats(model)
    for raw, m, _ in feed.in_order(feed.train_rows):
        stats.add(device_features(model, raw, normalized=False), m)
    return FeatureStats.merged(distributed.gather(feed.ranks, stats))


# held-out rows whose features are kept for the predictive std's scale (the anomaly tables see them all)
SCALE_ROWS = 512


@torch.no_grad()
def streaming_calibration(model: MultimodalVAE, feed: ShardFeed, quantile: float):
    """Anomaly calibration on all held-out rows, and the predictive std's scales on the first
    SCALE_ROWS of them (one process)."""
    chunks, kept, kept_masks = [], [], []
    for raw, m, _ in feed.in_order(feed.val_rows, world_share=False):
        m = m.to(model.device)
        feats = device_features(model, raw)
        full = model.complete(feats, m)
        mu, logvar = model.experts(full, m)
        chunks.append(leave_one_out_surprise(model, full, mu, logvar, m).cpu())
        room = SCALE_ROWS - sum(len(k) for k in kept_masks)
        if room > 0:
            kept.append({n: v[:room].cpu() for n, v in full.items()})
            kept_masks.append(m[:room].cpu())
    calibration = calibration_from_nll(model, torch.cat(chunks), quantile)
    if kept:
        feats = {n: torch.cat([k[n] for k in kept]) for n in model.names}
        calibration.predictive_scale = calibrate_predictive_scale(model, feats, torch.cat(kept_masks))
    return calibration


# ----------------------------------------------------------------------------- the command
def train_from_shards(bag_paths: list[str], settings: TrainSettings, out: Path, workdir: Path, resume: bool,
                      device: str, log: Callable[[str], None], progress, show_bar: bool,
                      should_stop: Callable[[], bool], started: float) -> TrainResult:
    """``mdgm-ros train`` over shards, in one process or as one rank of a torchrun launch."""
    ranks, dev = distributed.start(device)
    say = log if ranks.primary else (lambda m: None)
    if ranks.distributed:
        log(f"rank {ranks.rank}/{ranks.world} (local {ranks.local_rank}) on {dev}, pid {os.getpid()}")
    try:
        return _train(bag_paths, settings, out, workdir, resume, ranks, dev, say, progress if ranks.primary else None,
                      show_bar and ranks.primary, should_stop, started)
    finally:
        distributed.stop()


def _open_shards(bag_paths: list[str], settings: TrainSettings, ranks: distributed.Ranks, log) -> ShardRows:
    d = settings.data

    def opened() -> list[BagShards]:
        return ensure_shards(bag_paths, settings.fusion, settings.model.modalities, d.settle_s, d.label_topic,
                             d.max_corrupt, d.shard_size, d.workers, log=log)
    # rank 0 builds; the others then find them (or, on another machine's disk, build their own)
    first = opened() if ranks.primary else None
    distributed.barrier(ranks)
    return ShardRows.of(first if first is not None else opened())


def _train(bag_paths, settings: TrainSettings, out: Path, workdir: Path, resume: bool, ranks, dev, log, progress,
           show_bar, should_stop, started) -> TrainResult:
    data = _open_shards(bag_paths, settings, ranks, log)
    train_rows, val_rows = split_rows(data, settings, log)
    torch.manual_seed(settings.train.seed)
    model = MultimodalVAE(settings.model).to(dev)
    if model.family.temporal or model.family.uses_labels:
        raise TrainError(f"the {model.family.name} family trains in memory (windows of consecutive samples, or "
                         "task-phase labels): leave data.shards off (and train it without torchrun)")
    feed = ShardFeed(data, train_rows, val_rows, settings, ranks, dev)
    first_batches, own = feed.train_batches(0)
    steps = len(first_batches)
    if ranks.distributed:
        log(f"{ranks.world} ranks, {len(np.unique(feed.train_ids))} shards: "
            + ("each rank reads its own shards (drawn anew each epoch)" if own is not None else
               "too few or too uneven shards for one share per rank: the ranks read every batch row by row "
               "(smaller data.shard_size gives more shards)"))
    beta = settings.train.beta
    trainer = StreamingTrainer(model, TrainConfig(**{**vars(settings.train), "beta": BetaSchedule(
        beta.kind, beta.start, beta.end, int(settings.beta.warmup_epochs * steps))}), feed)
    trainer.amp = distributed.amp_dtype(settings.opt.precision, dev)
    stats = streaming_statistics(model, feed)
    resume_key = resume_key_of(bag_paths, settings)
    best = resumed_best(workdir, model, trainer, resume_key, log) if resume else None
    if best is None:
        best = no_best()
        if ranks.primary:
            (workdir / "metrics.csv").unlink(missing_ok=True)
        stats.apply(model)
    train_mask = torch.from_numpy(data.mask[train_rows])
    fit = fit_epochs(trainer, (feed, train_mask), feed, settings, workdir, resume_key, log, progress, show_bar,
                     should_stop, best, primary=ranks.primary)
    best = fit.best
    if best["state"] is None:
        raise TrainError("no epoch finished; nothing to save")
    model.load_state_dict(best["state"])
    onnx_files = _write_bundle(model, feed, stats, settings, bag_paths, fit, out, log) if ranks.primary else []
    distributed.barrier(ranks)
    if ranks.primary:
        data_cache.enforce_bound([b.folder for b in data.bags], log)
    return TrainResult(out, fit.epochs, best["epoch"] + 1, float(best["val"]), fit.stopped_early, len(train_rows),
                       len(val_rows), len(data) - len(train_rows) - len(val_rows),
                       round(time.perf_counter() - started, 1), onnx_files)


def _write_bundle(model, feed: ShardFeed, stats: FeatureStats, settings: TrainSettings, bag_paths, fit, out: Path,
                  log) -> list[str]:
    best = fit.best
    log(f"best epoch {best['epoch'] + 1} (held-out loss {best['val'] / feature_dims(model):.4f} nats/dim)")
    calibration = None
    if model.family.properties.missing_modalities:
        log(f"calibrating anomaly scores on {len(feed.val_rows)} held-out fault-free samples (streamed)")
        calibration = streaming_calibration(model, feed, settings.calibration.quantile)

    onnx_files: list[str] = []

    def attach(folder: Path) -> None:
        from safetensors.torch import save_file
        save_file(stats.means(), str(folder / TRAINING_MEANS))
        if settings.export.onnx:
            onnx_files.extend(export_onnx(model, folder))

    extra = {"training": {"bags": [str(p) for p in bag_paths], "bag_hashes": [bags.content_hash(p) for p in bag_paths],
                          "epochs": fit.epochs, "best_epoch": best["epoch"] + 1, "best_val_loss": best["val"],
                          "train_samples": len(feed.train_rows), "val_samples": len(feed.val_rows),
                          "alignment": {"anchor": settings.fusion.anchor, "output_rate": settings.fusion.output_rate},
                          "label_topic": settings.data.label_topic, "absent_ok": list(settings.data.absent_ok),
                          "shards": True, "ranks": feed.ranks.world},
             "onnx": {"inputs": "encoders: normalised features (normalization.json; audio = log-mel); "
                                "decoders: z", "opset": 17}}
    save_bundle(out, model, calibration, name=out.name, extra=extra, attach=attach)
    log(f"bundle written: {out}")
    return onnx_files
