"""Training checkpoints in ``<out>.train/``: written atomically, two generations kept.

``checkpoint.pt`` is the last finished epoch, ``checkpoint.prev.pt`` the one before. A save writes a
temporary file, fsyncs it, moves the current checkpoint to ``.prev`` and the new one into place, so a
kill at any instant leaves at least one whole generation. Resuming reads the newest generation that
loads and belongs to this run (same bags and config); a damaged or foreign one is named in the log.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_VERSION = 1
CURRENT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


class CheckpointError(RuntimeError):
    """No checkpoint generation of this run can be resumed from."""


def save_checkpoint(state: dict[str, Any], workdir: Path) -> Path:
    current, tmp = workdir / CURRENT, workdir / f".{CURRENT}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            torch.save({"version": CHECKPOINT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if current.exists():
            os.replace(current, workdir / PREVIOUS)
        os.replace(tmp, current)
    finally:
        tmp.unlink(missing_ok=True)
    return current


def _read(path: Path, device: torch.device, key: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zip errors... for damage
        raise CheckpointError(f"{path.name} is damaged ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path.name} is not a checkpoint of this version")
    if state.get("data_key") != key:
        raise CheckpointError(f"{path.name} was made from other bags or another config")
    return state


def load_checkpoint(workdir: Path, device: torch.device, key: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The newest usable generation; CheckpointError naming every reason when none is."""
    reasons = []
    for name in (CURRENT, PREVIOUS):
        path = workdir / name
        if not path.exists():
            continue
        try:
            state = _read(path, device, key)
        except CheckpointError as err:
            reasons.append(str(err))
            continue
        if reasons:
            log(f"{'; '.join(reasons)}: resuming from the previous generation {path.name}")
        return state
    raise CheckpointError("; ".join(reasons) or f"no checkpoint in {workdir}")
