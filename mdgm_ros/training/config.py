"""The training config (config/train.yaml), read strictly.

Every section is a dataclass: an unknown key is an error that names its path and the nearest valid
name (``training: unknown field 'epoch' (did you mean 'epochs'?)``), a value of the wrong type is an
error that names its path. ``model:`` and ``fusion_params:`` name other files: resolved relative to
the train config first, then in the shipped ``config/`` folder, so a copied ``train.yaml`` still finds
the shipped ``model.yaml`` and ``fusion.yaml``. Overrides (``--set section.key=value``) are applied
before the checks, so a misspelt override fails the same way.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config_files import config_path
from ..core import BetaSchedule, ModelConfig, TrainConfig
from ..core.families import get_family
from ..core.model.modalities import SpecError, checked_fields
from ..core.model.vae import renamed_keys
from ..data.labels import DEFAULT_LABEL_TOPIC
from ..streams.params import FusionParams, ParameterError, bundle_mismatches, fusion_params_from_file, stream_size


class TrainError(RuntimeError):
    """Bad training input (config, bags, resume state) with a specific message."""


@dataclass
class DataSection:
    val_fraction: float = 0.15
    block_s: float = 10.0
    settle_s: float = 0.5
    cache: bool = True
    absent_ok: list = field(default_factory=list)      # modalities some bags may lack (trained as missing there)
    label_topic: str = DEFAULT_LABEL_TOPIC              # std_msgs/String JSON fault labels inside the bags
    max_corrupt: float = 0.01                           # fraction of a topic's messages skipped as corrupt, at most
    shards: bool = False                                # stream from on-disk shards (always under torchrun)
    shard_size: int = 1024                              # samples per shard
    shuffle_buffer: int = 2048                          # rows shuffled together (shards come in random order)
    workers: int = 0                                    # bags aligned at once (0: one per core)
    loader_workers: int = 2                             # DataLoader processes reading shards (0: in process)
    window: int = 32                                    # temporal family: consecutive samples per training window
    window_stride: int = 8                              # temporal family: a window starts every this many samples


@dataclass
class BetaSection:
    kind: str = "linear"
    start: float = 0.0
    end: float = 1.0
    warmup_epochs: float = 5.0           # left out of the config: the family's (Family.training_defaults)


@dataclass
class TrainingSection:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0              # left out of the config: the family's (Family.training_defaults)
    seed: int = 0
    patience: int = 8
    min_delta: float = 0.0
    threads: int = 0
    deterministic: bool = False          # bit-identical reruns (deterministic kernels; matters on CUDA)
    init_from: str = ""                  # a bundle whose weights of the same name and shape start this model
    precision: str = "fp32"              # fp32, bf16, fp16 (CUDA) or auto: mixed precision (torch.autocast)
    beta: dict = field(default_factory=dict)


@dataclass
class CalibrationSection:
    quantile: float = 0.99


@dataclass
class ExportSection:
    onnx: bool = True


@dataclass
class TrainFile:
    """The top level of train.yaml."""

    model: Any = "model.yaml"
    model_overrides: dict = field(default_factory=dict)
    modality_weights: dict = field(default_factory=dict)
    fusion_params: str = "fusion.yaml"
    fusion_overrides: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)


def _typed(cls: type, data: Any, label: str) -> Any:
    """``cls(**data)`` after checking names (with a suggestion) and the type of every value."""
    try:
        values = checked_fields(cls, {} if data is None else data, (), label)
    except SpecError as err:
        raise TrainError(str(err)) from None
    defaults = cls()
    for f in dataclasses.fields(cls):
        if values.get(f.name, None) is None:        # absent, or an empty YAML section: the default
            values.pop(f.name, None)
            continue
        expected, value = getattr(defaults, f.name), values[f.name]
        if isinstance(expected, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(expected, bool)
        elif isinstance(expected, float):
            ok = isinstance(value, (int, float))
            value = float(value) if ok else value
        else:
            ok = expected is None or isinstance(value, type(expected)) or f.name == "model"
        if not ok:
            raise TrainError(f"{label}.{f.name}: expected {type(expected).__name__}, got {value!r}")
        values[f.name] = value
    return cls(**values)


def resolve_include(name: str, relative_to: Path, label: str) -> Path:
    """A file named in the config: next to the config, else the shipped config/ folder."""
    for candidate in (relative_to.parent / name, config_path(name)):
        if candidate.is_file():
            return candidate
    raise TrainError(f"{label}: {name!r} is neither next to {relative_to} nor in the shipped config folder")


def apply_overrides(doc: dict[str, Any], overrides: dict[str, Any]) -> None:
    """``{"training.epochs": 3, "fusion_overrides.camera.topic": "/x"}`` into the document (in place).
    ``fusion_overrides`` takes the rest of the key as one parameter name (its keys are dotted)."""
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] in ("fusion_overrides", "modality_weights") and len(parts) > 1:
            parts = [parts[0], ".".join(parts[1:])]
        node = doc
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TrainError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value


def parse_set(items: list[str], expected: str = "section.key=value",
              error: type[Exception] = TrainError) -> dict[str, Any]:
    """``["training.lr=1e-3", "data.absent_ok=[audio]"]`` -> overrides; values parsed as YAML. ``expected``
    names the form in the message, ``error`` is what a malformed item raises."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise error(f"--set {item!r}: expected {expected}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise error(f"--set {item!r}: the value is not YAML ({err})") from None
    return out


@dataclass
class TrainSettings:
    model: ModelConfig
    fusion: FusionParams
    data: DataSection
    opt: TrainingSection
    beta: BetaSection
    calibration: CalibrationSection
    export: ExportSection
    source: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)   # model vs fusion params, reported with the bags'

    @property
    def train(self) -> TrainConfig:
        """The core trainer's config (beta warm-up in steps is set once the data size is known)."""
        o, b = self.opt, self.beta
        return TrainConfig(epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, weight_decay=o.weight_decay,
                           grad_clip=o.grad_clip, seed=o.seed, beta=BetaSchedule(b.kind, b.start, b.end, 0))

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainSettings":
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise TrainError(f"cannot read train config {path}: {err}") from None
        if not isinstance(doc, dict):
            raise TrainError(f"{path}: a train config is a mapping of sections, got {type(doc).__name__}")
        apply_overrides(doc, overrides or {})
        try:
            return cls._build(path, doc)
        except TrainError as err:
            raise TrainError(f"{path}: {err}") from None

    @classmethod
    def _build(cls, path: Path, doc: dict[str, Any]) -> "TrainSettings":
        top = _typed(TrainFile, doc, "train config")
        opt = _typed(TrainingSection, top.training, "training")
        fusion = _fusion_params(top, path)
        model, where = _model_config(top, path, fusion)
        settings = cls(model, fusion, _typed(DataSection, top.data, "data"),
                       opt, _typed(BetaSection, opt.beta, "training.beta"),
                       _typed(CalibrationSection, top.calibration, "calibration"),
                       _typed(ExportSection, top.export, "export"), doc)
        family_schedule(settings, top.training)
        settings.problems = bundle_mismatches(
            fusion, list(model.modalities),
            lambda name, size: f"but {where} gives {name} shape {_shape_of(model, name)}: set its shape to "
                               f"[{size}] there, or leave shape out (a vector's size follows the fusion params)")
        _check_values(settings)
        return settings


def family_schedule(settings: "TrainSettings", training: Any) -> None:
    """The gradient clip and the KL warm-up epochs that the config's ``training`` section leaves out: the
    model family's (:meth:`Family.training_defaults`, the schedule ``bench zoo`` measures it with)."""
    training = training if isinstance(training, dict) else {}
    beta = training.get("beta") if isinstance(training.get("beta"), dict) else {}
    defaults = get_family(settings.model.family).training_defaults()
    if training.get("grad_clip") is None:
        settings.opt.grad_clip = defaults["grad_clip"]
    if beta.get("warmup_epochs") is None:
        settings.beta.warmup_epochs = defaults["warmup_epochs"]


def _shape_of(model: ModelConfig, name: str) -> list[int]:
    return next(list(m.shape) for m in model.modalities if m.name == name)


def _model_config(top: TrainFile, path: Path, fusion: FusionParams) -> tuple[ModelConfig, str]:
    """The model config (and where it came from, for messages); a vector modality without a shape
    takes the size its stream's parameters give (joints x fields, or the message fields' values)."""
    model, where = top.model, "the inline model config"
    if isinstance(model, str):
        include = resolve_include(model, path, "model")
        where = str(include)
        try:
            model = yaml.safe_load(include.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise TrainError(f"model: cannot read {include}: {err}") from None
    if not isinstance(model, dict) or "modalities" not in model:
        raise TrainError("model: expected a model config (a mapping with 'modalities') or a file name")
    # the first releases called the family "objective": both files and overrides may still say so
    model = {**renamed_keys(model, "model config"), **renamed_keys(top.model_overrides, "model_overrides")}
    names = [m.get("name") for m in model["modalities"] if isinstance(m, dict)]
    unknown = set(top.modality_weights) - set(names)
    if unknown:
        raise TrainError(f"modality_weights names unknown modalities {sorted(unknown)} (the model has {names})")
    model["modalities"] = [{**m, "weight": float(top.modality_weights.get(m["name"], m.get("weight", 1.0)))}
                           for m in model["modalities"]]
    streams = {s.name: s for s in fusion.streams}
    for m in model["modalities"]:
        if isinstance(m, dict) and m.get("kind") == "vector" and m.get("shape") in (None, "auto") \
                and m.get("name") in streams:
            size = stream_size(streams[m["name"]])
            if size is None:
                raise TrainError(f"model: {m['name']} has no shape and its fields do not fix one (a sequence "
                                 f"field): give shape: [N] in {where}")
            m["shape"] = [size]
    try:
        return ModelConfig.from_dict(model), where
    except (SpecError, ValueError, TypeError) as err:
        hint = (" (the config sets model_overrides.fusion for another family: --set model_overrides.fusion=null "
                "takes this family's default)" if "needs fusion in" in str(err) else "")
        raise TrainError(f"model: {err}{hint}") from None


def _fusion_params(top: TrainFile, path: Path) -> FusionParams:
    include = resolve_include(top.fusion_params, path, "fusion_params")
    try:
        return fusion_params_from_file(str(include), overrides=top.fusion_overrides)
    except ParameterError as err:
        raise TrainError(f"fusion_params: {err}") from None


def _check_values(s: TrainSettings) -> None:
    if not 0.0 < s.data.val_fraction < 0.9:
        raise TrainError(f"data.val_fraction must be in (0, 0.9), got {s.data.val_fraction}")
    if s.opt.epochs < 1 or s.opt.batch_size < 1 or s.opt.lr <= 0:
        raise TrainError("training.epochs and training.batch_size must be >= 1 and training.lr > 0")
    if s.data.window < 2 or s.data.window_stride < 1:
        raise TrainError(f"data.window must be >= 2 and data.window_stride >= 1, got {s.data.window}, "
                         f"{s.data.window_stride}")
    if s.data.shard_size < 1 or s.data.workers < 0 or s.data.loader_workers < 0:
        raise TrainError("data.shard_size must be >= 1, data.workers and data.loader_workers >= 0")
    if not 0.0 <= s.data.max_corrupt <= 1.0:
        raise TrainError(f"data.max_corrupt must be in [0, 1], got {s.data.max_corrupt}")
    if not 0.5 <= s.calibration.quantile < 1.0:
        raise TrainError(f"calibration.quantile must be in [0.5, 1), got {s.calibration.quantile}")
    unknown = set(s.data.absent_ok) - set(s.model.names)
    if unknown:
        raise TrainError(f"data.absent_ok names unknown modalities {sorted(unknown)} (the model has "
                         f"{list(s.model.names)})")
    try:
        BetaSchedule(s.beta.kind, s.beta.start, s.beta.end, 0)
    except ValueError as err:
        raise TrainError(f"training.beta: {err}") from None
