"""What lets an interrupted ``bench zoo --out DIR`` continue (``--resume``): its state in ``DIR/state/``.

- ``config.json``: the settings that shape every result (all but which families and seeds run, and
  the thread count); a resume with other settings is refused, naming them;
- ``classifiers_seed<S>.pt``: that seed's digit classifiers and their test accuracy, so a resumed run
  scores with the very same ones (retrained on a GPU they would not be bit-identical);
- ``run_<family>_seed<S>.json``: a family that has finished (trained and evaluated);
- ``train/<family>_seed<S>/``: the family in training, checkpointed after every epoch
  (:mod:`mdgm_ros.training.checkpoints`: atomic, two generations), so a resume loses at most the epoch
  that was running. On CPU the resumed run is bit-identical to an uninterrupted one.

The folder is removed once the whole run has finished and its report is written. Everything is
written atomically.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core import MultimodalVAE
from ..core.engine import loop as training
from ..core.engine.atomic import write_atomically, write_text_atomically
from ..training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

STATE = "state"
NOT_RESULT_SHAPING = ("families", "seeds", "first_seed", "threads", "keep_models")


def result_settings(config: Any) -> dict[str, Any]:
    """The config (the run's :class:`~.zoo.ZooConfig`, a dataclass) as JSON, without what only chooses
    which runs happen (or how fast)."""
    return json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in NOT_RESULT_SHAPING}))


class ZooState:
    """The state folder of one ``bench zoo`` run (see the module docstring)."""

    def __init__(self, out: Path, config: Any, resume: bool):
        self.root = Path(out) / STATE
        settings = result_settings(config)
        if self.root.exists():
            if not resume:
                raise ValueError(f"{out} holds an unfinished zoo run ({self.root}): add --resume to continue "
                                 "it, or choose another --out")
            self._check_settings(settings)
        else:
            self.root.mkdir(parents=True)
            write_text_atomically(self.root / "config.json", json.dumps(settings, indent=2) + "\n")
        self.resumed: list[str] = []

    def _check_settings(self, settings: dict[str, Any]) -> None:
        try:
            saved = json.loads((self.root / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--resume: cannot read {self.root / 'config.json'} ({err})") from None
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            what = "; ".join(f"{k}: {saved.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise ValueError(f"--resume: the run in {self.root.parent} was started with other settings ({what})")

    # ----------------------------------------------------------------- classifiers
    def classifiers(self, seed: int, device: str, train: Callable[[], tuple[dict[str, nn.Module], dict]],
                    make: Callable[[], nn.Module]) -> tuple[dict[str, nn.Module], dict[str, float]]:
        """That seed's classifiers: read back where saved, else trained by ``train()`` and saved."""
        path = self.root / f"classifiers_seed{seed}.pt"
        if path.exists():
            saved = torch.load(path, map_location=device, weights_only=True)
            nets = {}
            for name, weights in saved["nets"].items():
                nets[name] = make().to(device)
                nets[name].load_state_dict(weights)
                nets[name].eval()
            return nets, saved["accuracy"]
        nets, accuracy = train()
        saved = {"nets": {n: net.state_dict() for n, net in nets.items()}, "accuracy": accuracy}
        write_atomically(path, lambda tmp: torch.save(saved, tmp))
        return nets, accuracy

    # ----------------------------------------------------------------- finished runs
    def _run_path(self, family: str, seed: int) -> Path:
        return self.root / f"run_{family}_seed{seed}.json"

    def finished_run(self, family: str, seed: int) -> dict[str, Any] | None:
        path = self._run_path(family, seed)
        if not path.exists():
            return None
        self.resumed.append(f"{family} seed {seed}")
        return json.loads(path.read_text())

    def save_run(self, run: dict[str, Any]) -> dict[str, Any]:
        """Keep a finished run; returns it as it reads back (JSON keys), so resumed and uninterrupted
        reports are alike."""
        text = json.dumps(run)
        write_text_atomically(self._run_path(run["family"], run["seed"]), text + "\n")
        shutil.rmtree(self.training_dir(run["family"], run["seed"]), ignore_errors=True)
        return json.loads(text)

    # ----------------------------------------------------------------- training checkpoints
    def training_dir(self, family: str, seed: int) -> Path:
        return self.root / "train" / f"{family}_seed{seed}"

    def progress(self, family: str, seed: int, log: Callable[[str], None]) -> "TrainingProgress":
        return TrainingProgress(self.training_dir(family, seed), f"{family}-seed{seed}", log)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class TrainingProgress:
    """One family's training checkpoints: :meth:`restore` before training, :meth:`save` after each epoch."""

    def __init__(self, folder: Path, key: str, log: Callable[[str], None]):
        self.folder, self.key, self.log = folder, key, log
        self.seconds = 0.0                   # training time of the epochs done, over every process

    def restore(self, model: MultimodalVAE, trainer: training.Trainer) -> None:
        if not self.folder.exists():      # (load_checkpoint falls back to the previous generation)
            return
        try:
            state = load_checkpoint(self.folder, model.device, self.key, self.log)
        except CheckpointError as err:
            self.log(f"{self.key}: starting over ({err})")
            return
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        self.seconds = float(state["seconds"])
        self.log(f"{self.key}: resuming after epoch {trainer.epoch}")

    def save(self, model: MultimodalVAE, trainer: training.Trainer, record: training.EpochRecord) -> None:
        self.seconds += record.seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint({"data_key": self.key, "model": model.state_dict(), "trainer": trainer.state_dict(),
                         "seconds": self.seconds}, self.folder)
