"""Device selection, normalisation fitting, the beta schedule and a stage-aware training loop.

A family with several training stages (e.g. TELBO: joint, then unimodal) gets its epochs split over the
stages (``TrainConfig.stage_epochs``, or the stages' default shares of ``epochs``); in each stage only
the stage's parameters train. The stage follows from the epoch counter, so a resumed run restarts
inside the right stage."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..model.modalities import BOUNDED_KINDS, Normalization, range_bounds
from ..model.vae import MultimodalVAE
from .objective import compute_objective


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (error if absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available "
                               "(torch.cuda.is_available() is False)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")


PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The torch.autocast dtype of a precision name on ``device`` (None: plain fp32). ``auto``: bf16 on a
    GPU that has it, else fp16 on a GPU, fp32 on CPU; fp16 needs a GPU; bf16 runs on CPU too."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class BetaSchedule:
    """beta(step): ``constant`` (= end), ``linear`` warm-up from start to end over ``warmup_steps``,
    or ``cyclical`` (Fu et al. 2019): linear ramps over the first half of each ``warmup_steps`` cycle."""

    kind: str = "linear"
    start: float = 0.0
    end: float = 1.0
    warmup_steps: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "cyclical"):
            raise ValueError(f"beta schedule kind {self.kind!r} not in constant/linear/cyclical")
        if self.warmup_steps < 0 or self.start < 0 or self.end < 0:
            raise ValueError("beta schedule values must be >= 0")

    def __call__(self, step: int) -> float:
        if self.kind == "constant" or self.warmup_steps == 0:
            return self.end
        if self.kind == "linear":
            frac = min(1.0, step / self.warmup_steps)
        else:
            frac = min(1.0, (step % self.warmup_steps) / (0.5 * self.warmup_steps))
        return self.start + (self.end - self.start) * frac


NORM_AXES = {"image": (0, 2, 3), "vector": (0,), "audio": (0, 2), "tactile": (0,)}


@torch.no_grad()
def raw_to_features(model: MultimodalVAE, raw: Mapping[str, Any], chunk: int = 512) -> dict[str, torch.Tensor]:
    """Front ends (e.g. log-mel) over a whole dataset of raw arrays, un-normalised, on CPU."""
    out = {}
    for name, values in raw.items():
        x = torch.as_tensor(np.asarray(values, dtype=np.float32))
        parts = [model.raw_features(name, x[i:i + chunk].to(model.device)).cpu() for i in range(0, len(x), chunk)]
        out[name] = torch.cat(parts) if parts else x
    return out


def fit_normalization(model: MultimodalVAE, features: Mapping[str, torch.Tensor], mask: torch.Tensor) -> None:
    """Fit each normalised modality's statistics on the rows where it is observed (per channel for
    images, per dimension for vectors, per mel band for audio, per taxel for tactile), and the bounds
    of vectors and taxel grids (per element: :func:`~mdgm_ros.core.model.modalities.range_bounds`)."""
    for j, name in enumerate(model.names):
        spec = model.specs[name]
        rows = mask[:, j].cpu()
        if not spec.normalized or int(rows.sum()) < 2:
            continue
        x = features[name][rows].double()
        axes = NORM_AXES[spec.kind]
        mean = x.mean(dim=axes, keepdim=True).squeeze(0)
        std = x.std(dim=axes, keepdim=True).squeeze(0)
        floor = max(1e-6, 0.01 * float(std.median()))
        bounds = range_bounds(x.amin(0).numpy(), x.amax(0).numpy(), spec.kind) if spec.kind in BOUNDED_KINDS else ()
        model.set_normalization(name, Normalization(mean.numpy(), std.clamp_min(floor).numpy(), *bounds))


def normalize_features(model: MultimodalVAE, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: model.normalize(name, x.to(model.device)).cpu() for name, x in features.items()}


def make_optimizer(parameters, lr: float, weight_decay: float = 1e-2) -> torch.optim.AdamW:
    """AdamW over multi-tensor (foreach) kernels: on CPU torch defaults to the per-parameter loop,
    which gives the same weights bit for bit at about 1.5x the optimiser time. (The fused kernel is
    faster still but not bit-identical, and the shipped default model is reproduced bit for bit.)"""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, foreach=True)


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    beta: BetaSchedule = field(default_factory=BetaSchedule)
    seed: int = 0
    stage_epochs: tuple[int, ...] | None = None   # per training stage; must sum to ``epochs``


def stage_plan(model: MultimodalVAE, config: TrainConfig) -> list[int]:
    """Epochs per training stage of the model's family (sums to ``config.epochs``)."""
    stages = model.family.stages
    if config.stage_epochs is not None:
        plan = [int(e) for e in config.stage_epochs]
        if len(plan) != len(stages) or any(e < 0 for e in plan) or sum(plan) != config.epochs:
            raise ValueError(f"stage_epochs {list(config.stage_epochs)} must give one count >= 0 per stage "
                             f"{[s.name for s in stages]} summing to epochs={config.epochs}")
        return plan
    total_share = sum(s.share for s in stages)
    plan = [int(config.epochs * s.share / total_share) for s in stages]
    if config.epochs >= len(stages):
        plan = [max(1, e) for e in plan]
    plan[-1] = config.epochs - sum(plan[:-1])
    return plan


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float | None
    beta: float
    seconds: float
    terms: dict[str, float]
    stage: str = "joint"


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random order of ``n`` rows cut into batches of ``batch_size`` (the last one shorter)."""
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


@dataclass
class Batch:
    """One training batch on the model's device: features, presence mask, the number of samples (or
    steps) its loss is a mean over, and what :meth:`Trainer.train_step` needs beyond the defaults."""

    feats: Mapping[str, torch.Tensor]
    mask: torch.Tensor
    count: int
    objective: Callable[..., Any] | None = None
    loss_scale: float | None = None


class Batches:
    """A sized, lazy sequence of batches: ``make(item)`` for each of ``items`` (loaded one at a time)."""

    def __init__(self, items: Any, make: Callable[[Any], Batch]):
        self.items, self.make = items, make

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return (self.make(item) for item in self.items)


@torch.no_grad()
def evaluate_loss(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                  beta: float = 1.0, batch_size: int = 256, seed: int = 0, stage: str | None = None) -> float:
    """Mean per-sample loss of the model's objective, or of one stage's terms (the family's
    evaluation options: MMVAE evaluates with plain IWAE)."""
    model.eval()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    options = dict(model.family.eval_options)
    total, count = 0.0, 0
    for start in range(0, mask.shape[0], batch_size):
        part = {k: v[start:start + batch_size].to(model.device) for k, v in feats.items()}
        m = mask[start:start + batch_size].to(model.device)
        out = compute_objective(model, part, m, beta=beta, generator=generator, stage=stage, **options)
        total += float(out.loss.sum())
        count += m.shape[0]
    return total / max(count, 1)


class Trainer:
    """The training loop with its state (optimizer, epoch, step, RNGs) exposed, so a caller can
    checkpoint after any epoch and resume bit-for-bit (:meth:`state_dict` / :meth:`load_state_dict`).

    Stage-aware: ``stage_epochs`` lists the epochs of each of the family's stages, :attr:`stage` is the
    stage of the next epoch, :meth:`advance_stage` ends the current stage early (early stopping per
    stage). ``config.epochs`` is the total over all stages."""

    def __init__(self, model: MultimodalVAE, config: TrainConfig):
        self.model = model
        self.config = config
        self.stage_epochs = stage_plan(model, config)
        self._trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        torch.manual_seed(config.seed)
        self.cpu_gen = torch.Generator().manual_seed(config.seed)
        self.dev_gen = torch.Generator(device=model.device).manual_seed(config.seed + 1)
        # a family may step some parameters with an optimiser of its own (an adversary, e.g. a
        # discriminator): asked through own_step_parameters / own_optimizer / own_loss
        own_ids = {id(p) for p in model.family.own_step_parameters(model)}
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad and id(p) not in own_ids],
                                        lr=config.lr, weight_decay=config.weight_decay)
        self.family_optimizer = model.family.own_optimizer(model) if own_ids else None
        self.epoch = 0
        self.step = 0
        self.amp = None

    # ----------------------------------------------------------------- stages
    @property
    def stage_index(self) -> int:
        """Index of the stage the next epoch belongs to (the last stage once training is done)."""
        end = 0
        for index, epochs in enumerate(self.stage_epochs):
            end += epochs
            if self.epoch < end:
                return index
        return len(self.stage_epochs) - 1

    @property
    def stage(self):
        return self.model.family.stages[self.stage_index]

    def stage_start(self, index: int) -> int:
        return sum(self.stage_epochs[:index])

    def advance_stage(self) -> bool:
        """End the current stage now (e.g. its validation loss stopped improving): the next epoch is
        the first of the next stage. False if this is the last stage (nothing changes)."""
        index = self.stage_index
        if index + 1 >= len(self.stage_epochs):
            return False
        self.epoch = self.stage_start(index + 1)
        return True

    def _objective_stage(self) -> str | None:
        return self.stage.name if len(self.model.family.stages) > 1 else None

    def _freeze_for_stage(self) -> None:
        stage = self.stage
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._trainable[name] and stage.trains_parameter(name))

    def _unfreeze(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._trainable[name])

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
                 "cpu_gen": self.cpu_gen.get_state(), "dev_gen": self.dev_gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "stage": self.stage.name,
                 "stage_epochs": list(self.stage_epochs)}
        if self.family_optimizer is not None:
            state["family_optimizer"] = self.family_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.family_optimizer is not None and "family_optimizer" in state:
            self.family_optimizer.load_state_dict(state["family_optimizer"])
        if "stage_epochs" in state:
            self.stage_epochs = [int(e) for e in state["stage_epochs"]]
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.cpu_gen.set_state(state["cpu_gen"])
        self.dev_gen.set_state(state["dev_gen"])
        torch.set_rng_state(state["torch_rng"])

    def run_epoch(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                  val: tuple[Mapping[str, torch.Tensor], torch.Tensor] | None = None,
                  on_batch: Callable[[int, int], None] | None = None) -> EpochRecord:
        """One pass over the data (then the validation loss); ``on_batch(done, total)`` reports progress."""
        model = self.model
        model.train()
        stage = self._objective_stage()
        self._freeze_for_stage()
        try:
            record = self._train_batches(feats, mask, val, on_batch, stage)
        finally:
            self._unfreeze()
        self.epoch += 1
        model.eval()
        return record

    def train_step(self, batch: Mapping[str, torch.Tensor], m: torch.Tensor, stage: str | None,
                   objective: Callable[..., Any] | None = None, loss_scale: float | None = None):
        """One optimiser step on a batch already on the model's device; returns the objective's output.
        ``objective(batch, mask, beta=, generator=, stage=)`` replaces :func:`compute_objective` on the
        model (e.g. through a DistributedDataParallel wrapper); the step minimises the rows' mean, or
        their sum times ``loss_scale``. Mixed precision: :attr:`amp` (None, torch.bfloat16 or
        torch.float16; fp16 with a gradient scaler)."""
        model, config = self.model, self.config
        objective = objective or (lambda *a, **kw: compute_objective(model, *a, **kw))
        with torch.autocast(model.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            out = objective(batch, m, beta=config.beta(self.step), generator=self.dev_gen, stage=stage)
        loss = out.loss.float().mean() if loss_scale is None else out.loss.float().sum() * loss_scale
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at epoch {self.epoch} step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:             # False when no row of the batch has a term this stage trains
            self._backward_and_step(loss)
        if self.family_optimizer is not None:          # the family's own step (e.g. its discriminator)
            own = self._family_step(batch, m)
            out.terms.update({k: torch.full_like(out.loss, v) for k, v in own.items()})
        self.step += 1
        return out

    def _family_step(self, batch: Mapping[str, torch.Tensor], m: torch.Tensor) -> dict[str, float]:
        """One step of the family's own optimiser on its ``own_loss`` ({name: loss}, or {} when the batch
        has nothing for it); :meth:`reduce_own_gradients` runs either way, so ranks stay in step."""
        model = self.model
        losses = model.family.own_loss(model, batch, m, self.dev_gen)
        self.family_optimizer.zero_grad(set_to_none=True)
        if losses:
            sum(losses.values()).backward()
        if self.reduce_own_gradients(bool(losses)):
            self.family_optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def reduce_own_gradients(self, had_loss: bool) -> bool:
        """Whether the family's own optimiser steps; a distributed trainer averages those gradients
        across its ranks here (their parameters are outside DistributedDataParallel)."""
        return had_loss

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        scaler = self._scaler
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        if self.config.grad_clip > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)      # not the family's own
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()

    @property
    def amp(self) -> torch.dtype | None:
        return self._amp

    @amp.setter
    def amp(self, dtype: torch.dtype | None) -> None:
        self._amp = dtype
        self._scaler = torch.amp.GradScaler(self.model.device.type) if dtype == torch.float16 else None

    # ----------------------------------------------------------------- the epoch loop
    def epoch_batches(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor) -> Batches:
        """This epoch's batches: random rows of the per-sample features (subclasses: windows of
        consecutive rows, shards streamed from disk)."""
        device = self.model.device

        def make(idx: torch.Tensor) -> Batch:
            batch = {k: v[idx].to(device, non_blocking=True) for k, v in feats.items()}
            m = mask[idx].to(device)
            return Batch(batch, m, int(m.shape[0]))

        return Batches(batch_indices(mask.shape[0], self.config.batch_size, self.cpu_gen), make)

    def validation_loss(self, val: tuple[Mapping[str, torch.Tensor], torch.Tensor], stage: str | None,
                        beta: float) -> float:
        """The held-out loss reported with the epoch."""
        return evaluate_loss(self.model, val[0], val[1], beta=beta, stage=stage)

    def reduce_epoch_sums(self, sums: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
        """The epoch's loss sums and sample count over every process (a distributed trainer adds them up)."""
        return sums, seen

    def after_epoch(self) -> None:
        """Called after the validation loss, before the record is made (a distributed trainer gathers
        each rank's RNG states here)."""

    def _train_batches(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                       val: tuple[Mapping[str, torch.Tensor], torch.Tensor] | None,
                       on_batch: Callable[[int, int], None] | None, stage: str | None) -> EpochRecord:
        """The one epoch loop of every trainer: steps, loss sums, progress, validation, the record."""
        started, sums, seen = time.perf_counter(), {"loss": 0.0}, 0
        batches = self.epoch_batches(feats, mask)
        for done, batch in enumerate(batches, 1):
            out = self.train_step(batch.feats, batch.mask, stage, objective=batch.objective,
                                  loss_scale=batch.loss_scale)
            seen += batch.count
            sums["loss"] += float(out.loss.detach().float().sum())
            for key, value in out.terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.float().sum())
            if on_batch is not None:
                on_batch(done, len(batches))
        sums, seen = self.reduce_epoch_sums(sums, seen)
        beta = self.config.beta(self.step)
        val_loss = None if val is None else self.validation_loss(val, stage, beta)
        self.after_epoch()
        return EpochRecord(self.epoch, sums.pop("loss") / max(seen, 1), val_loss, beta,
                           time.perf_counter() - started, {k: v / max(seen, 1) for k, v in sums.items()},
                           self.stage.name)


def train(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor, config: TrainConfig,
          val: tuple[Mapping[str, torch.Tensor], torch.Tensor] | None = None,
          on_epoch: Callable[[EpochRecord], bool | None] | None = None,
          trainer: Trainer | None = None) -> list[EpochRecord]:
    """Minimise the mean per-sample objective over normalised features. ``on_epoch`` may return True
    to stop early. Data stays where it is and is moved to the model's device one batch at a time.
    ``trainer``: a :class:`Trainer` of this model and config to continue (e.g. restored from a
    checkpoint); its epochs already done are not run again."""
    trainer = trainer if trainer is not None else Trainer(model, config)
    history: list[EpochRecord] = []
    while trainer.epoch < config.epochs:
        record = trainer.run_epoch(feats, mask, val)
        history.append(record)
        if (on_epoch is not None and on_epoch(record)) or math.isnan(record.train_loss):
            break
    model.eval()
    return history
