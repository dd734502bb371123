"""Where training runs: ranks of a ``torchrun`` launch, DistributedDataParallel, device and precision.

``torchrun --nproc-per-node N -m mdgm_ros train --bags ... --out ...`` (``--nnodes``/``--rdzv-endpoint``
for several machines) starts N copies of the train command; each finds its rank in the environment
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the process group (gloo on CPU, NCCL on
GPU, one GPU per local rank) and trains the same model wrapped in PyTorch's
:class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients across ranks. Rank 0
alone logs, writes metrics, checkpoints and the bundle; the others wait for it at a barrier.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..core import select_device
from ..core.engine.loop import autocast_dtype
from ..core.engine.objective import compute_objective
from .config import TrainError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def primary(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise TrainError(f"{name}={text!r} is not an integer (set by torchrun)") from None


def start(device: str, timeout_s: float = 1800.0) -> tuple[Ranks, torch.device]:
    """Join the process group of a torchrun launch (a no-op outside one): the ranks and this rank's device."""
    if not launched_by_torchrun():
        return Ranks(), select_device(device)
    ranks = Ranks(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    try:
        wanted = select_device(device)
        if wanted.type == "cuda":                      # one GPU per local rank
            wanted = select_device(f"cuda:{ranks.local_rank}")
            torch.cuda.set_device(wanted)
    except RuntimeError as err:
        raise TrainError(f"rank {ranks.rank} (local rank {ranks.local_rank}): {err}; start at most as many "
                         "processes per node as it has GPUs (--nproc-per-node)") from None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return ranks, wanted


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def gather(ranks: Ranks, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def total(ranks: Ranks, values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if not ranks.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


class _Objective(torch.nn.Module):
    """The model's training objective as a module, so that DDP's forward (and gradient hooks) run it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats, mask, **kw):
        return compute_objective(self.model, feats, mask, **kw)


def wrap(model: torch.nn.Module, ranks: Ranks) -> Callable[..., Any] | None:
    """A DistributedDataParallel objective over ``model`` (None outside a distributed run). Built per
    training stage: a stage that freezes parameters changes which ones DDP must reduce."""
    if not ranks.distributed:
        return None
    device_ids = [model.device.index] if model.device.type == "cuda" else None
    objective = _Objective(model)
    own = {id(p) for p in model.family.own_step_parameters(model)}     # stepped apart: average_gradients
    DDP = torch.nn.parallel.DistributedDataParallel
    DDP._set_params_and_buffers_to_ignore_for_model(
        objective, [name for name, p in objective.named_parameters() if id(p) in own])
    return DDP(objective, device_ids=device_ids, find_unused_parameters=True)


def average_gradients(params: list[torch.nn.Parameter], had_loss: bool) -> bool:
    """Average ``params``' gradients over the ranks that had a loss (a rank without one sends zeros);
    True when any rank had one, so that every rank takes the same step or none."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flag = torch.ones(1, device=grads[0].device if grads else "cpu") * float(had_loss)
    flat = torch.cat([g.reshape(-1) for g in grads] + [flag])
    dist.all_reduce(flat)
    count = float(flat[-1])
    if count == 0:
        return False
    offset = 0
    for p, g in zip(params, grads):
        p.grad = (flat[offset:offset + g.numel()] / count).view_as(g).to(g.dtype)
        offset += g.numel()
    return True


def check_in_step(model: torch.nn.Module, ranks: Ranks) -> None:
    """Every rank holds the same weights (a checksum per parameter tensor): a TrainError naming the
    first that differs otherwise, instead of a bundle that is rank 0's alone."""
    if not ranks.distributed:
        return
    names = [name for name, _ in model.named_parameters()]
    sums = torch.stack([p.detach().double().sum() for _, p in model.named_parameters()]).cpu()
    every = gather(ranks, sums)
    for rank, other in enumerate(every[1:], 1):
        differ = (other - every[0]).abs() > 1e-9 * (1 + every[0].abs())
        if bool(differ.any()):
            name = names[int(differ.nonzero()[0])]
            raise TrainError(f"rank {rank} diverged from rank 0 in {name}: its weights are no longer "
                             "those of the other ranks")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``training.precision`` as an autocast dtype (:func:`mdgm_ros.core.training.autocast_dtype`)."""
    try:
        return autocast_dtype(precision, device)
    except ValueError as err:
        raise TrainError(f"training.{err}") from None
