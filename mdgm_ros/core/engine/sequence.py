"""Training of the temporal family on windows of consecutive rows: the sequence ELBO
(:func:`mdgm_ros.core.families.temporal.sequence_objective`) in the engine's one training loop
(:class:`~.loop.Trainer`), and its held-out loss.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..families.temporal import options_of, sequence_objective
from ..model.vae import MultimodalVAE
from .filter import require_temporal
from .loop import Batch, Batches, EpochRecord, TrainConfig, Trainer, batch_indices
from .windows import gather_rows


@torch.no_grad()
def sequence_loss(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                  actions: torch.Tensor | None = None, beta: float = 1.0, batch_size: int = 64,
                  seed: int = 0, windows: torch.Tensor | None = None) -> float:
    """Mean loss per step of the windows (the filter from the full observed sets: p_full = 1, no
    outages). Without ``windows``, ``feats``/``mask``/``actions`` are already (N, T, ...) sequences;
    with them, they are rows and ``windows`` (W, T) indexes them."""
    model.eval()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    if windows is None:
        n, steps = mask.shape[:2]
        feats = {k: v.reshape(n * steps, *v.shape[2:]) for k, v in feats.items()}
        actions = None if actions is None else actions.reshape(n * steps, -1)
        mask, windows = mask.reshape(n * steps, -1), torch.arange(n * steps).reshape(n, steps)
    total = 0.0
    for start in range(0, windows.shape[0], batch_size):
        part, m, act = gather_rows(feats, mask, windows[start:start + batch_size], actions, model.device)
        out = sequence_objective(model, part, m, act, beta, generator, p_full=1.0, p_empty=0.0, p_outage=0.0)
        total += float(out.loss.sum())
    return total / max(windows.numel(), 1)


class SequenceTrainer(Trainer):
    """:class:`~mdgm_ros.core.engine.loop.Trainer` for the temporal family: batches of windows of T
    consecutive rows (``windows`` (W, T) row indices, -1 for padding, see :mod:`.windows`), the sequence
    ELBO, the same checkpointable state (optimizer, epoch, step, RNGs) and stages. :meth:`run_epoch`
    takes per-row features and masks, so the windows share memory with the rows. Losses in the records
    are per step (per-sequence loss / T), comparable with the per-frame trainer's per-sample losses.
    ``actions``: per-row u_t (N, U), ``val_actions`` the same for the validation rows."""

    def __init__(self, model: MultimodalVAE, config: TrainConfig, windows, val_windows=None,
                 actions: torch.Tensor | None = None, val_actions: torch.Tensor | None = None):
        require_temporal(model)
        options_of(model)
        super().__init__(model, config)
        self.windows = torch.as_tensor(windows, dtype=torch.long)
        self.val_windows = None if val_windows is None else torch.as_tensor(val_windows, dtype=torch.long)
        self.actions, self.val_actions = actions, val_actions

    @property
    def batches_per_epoch(self) -> int:
        return -(-int(self.windows.shape[0]) // self.config.batch_size)

    def epoch_batches(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor) -> Batches:
        """Random windows of consecutive rows, gathered on the model's device, with the sequence ELBO."""
        model = self.model

        def make(idx: torch.Tensor) -> Batch:
            part, m, act = gather_rows(feats, mask, self.windows[idx], self.actions, model.device)

            def objective(b, mm, beta, generator, stage, a=act):
                return sequence_objective(model, b, mm, a, beta, generator)

            return Batch(part, m, int(m.shape[0] * m.shape[1]), objective)      # loss per step

        return Batches(batch_indices(self.windows.shape[0], self.config.batch_size, self.cpu_gen), make)

    def validation_loss(self, val: tuple[Mapping[str, torch.Tensor], torch.Tensor], stage: str | None,
                        beta: float) -> float:
        if self.val_windows is None:
            raise ValueError("validation rows need val_windows")
        return sequence_loss(self.model, val[0], val[1], self.val_actions, beta, seed=self.config.seed,
                             windows=self.val_windows)


def train_sequences(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                    config: TrainConfig, actions: torch.Tensor | None = None,
                    val: tuple[Mapping[str, torch.Tensor], torch.Tensor] | None = None,
                    on_epoch: Callable[[EpochRecord], bool | None] | None = None) -> list[EpochRecord]:
    """Minimise the sequence loss over sequences: normalised features (N, T, ...), masks (N, T, M),
    actions (N, T, U) or None; ``val`` sequences the same way (without actions). Losses per step."""
    n, steps = mask.shape[:2]
    rows = {k: v.reshape(n * steps, *v.shape[2:]) for k, v in feats.items()}
    flat_actions = None if actions is None else actions.reshape(n * steps, -1)
    val_rows = val_windows = None
    if val is not None:
        vn, vsteps = val[1].shape[:2]
        val_rows = ({k: v.reshape(vn * vsteps, *v.shape[2:]) for k, v in val[0].items()},
                    val[1].reshape(vn * vsteps, -1))
        val_windows = torch.arange(vn * vsteps).reshape(vn, vsteps)
    trainer = SequenceTrainer(model, config, torch.arange(n * steps).reshape(n, steps), val_windows,
                              flat_actions)
    history: list[EpochRecord] = []
    while trainer.epoch < config.epochs:
        record = trainer.run_epoch(rows, mask.reshape(n * steps, -1), val_rows)
        history.append(record)
        if on_epoch is not None and on_epoch(record):
            break
    model.eval()
    return history


__all__ = ["SequenceTrainer", "sequence_loss", "train_sequences"]
