"""Model bundles: one folder that holds everything needed to run a trained model, and nothing pickled.

Layout::

    NAME/
      manifest.json          format version, sha256 of every file, content hash, model id, creation info
      config.json            ModelConfig (modalities, fusion, objective, latent dim)
      weights.safetensors    the state dict (safetensors: loading never unpickles)
      normalization.json     per-modality feature statistics
      calibration.json       anomaly calibration (optional)

Writes are atomic: the bundle is written into a temporary sibling folder, fsynced, then renamed into
place; a reader sees either the old bundle or the new one. Loading checks every file's hash before it
parses anything, so a corrupt or truncated bundle fails with a :class:`BundleError` naming the file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .inference import AnomalyCalibration
from .modalities import Normalization, SpecError
from .model import ModelConfig, MultimodalVAE

FORMAT = "mdgm_ros.bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
NORMALIZATION = "normalization.json"
CALIBRATION = "calibration.json"


class BundleError(RuntimeError):
    """A bundle is missing, corrupt, truncated or does not match; the message says which part."""


@dataclass
class Bundle:
    model: MultimodalVAE
    calibration: AnomalyCalibration | None
    manifest: dict[str, Any]
    path: Path

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def content_hash(file_hashes: dict[str, str]) -> str:
    joined = "".join(f"{name}:{digest}\n" for name, digest in sorted(file_hashes.items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def save_bundle(path: str | os.PathLike, model: MultimodalVAE,
                calibration: AnomalyCalibration | None = None, name: str | None = None,
                extra: dict[str, Any] | None = None, attach: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` (+ calibration) as a bundle folder at ``path``, atomically; returns the path.

    ``attach(folder)`` may add more plain files (e.g. ONNX exports) before the manifest hashes them."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_contents(tmp, model, calibration, name or target.name, extra or {}, attach)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_contents(folder: Path, model: MultimodalVAE, calibration: AnomalyCalibration | None,
                    name: str, extra: dict[str, Any], attach: Callable[[Path], None] | None = None) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT})
    _fsync_file(folder / WEIGHTS)
    _write_json(folder / CONFIG, model.config.to_dict())
    norms = {m.name: m.normalization.to_dict() for m in model.config.modalities if m.normalization is not None}
    _write_json(folder / NORMALIZATION, norms)
    if calibration is not None:
        _write_json(folder / CALIBRATION, calibration.to_dict())
    if attach is not None:
        attach(folder)
        for path in folder.iterdir():
            if not path.is_file():
                raise BundleError(f"attached {path.name!r} is not a plain file")
            _fsync_file(path)
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir())}
    digest = content_hash(files)
    from .. import __version__
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "files": files, "content_hash": digest,
        "model_id": f"{name}-{digest[:12]}", "name": name,
        "created": {"utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "mdgm_ros": __version__, "torch": torch.__version__, "host": platform.node(),
                    "python": platform.python_version()},
        "extra": extra,
    }
    _write_json(folder / MANIFEST, manifest)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder into place (rename is atomic; an old bundle is moved aside first)."""
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "bundle")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{folder}: {name} is unreadable: {err}") from None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    if not (folder / MANIFEST).is_file():
        raise BundleError(f"{folder}: {MANIFEST} is missing (not a bundle, or an interrupted write)")
    manifest = _read_json(folder, MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{folder}: {MANIFEST} is not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{folder}: bundle format version {manifest.get('format_version')!r} is not "
                          f"supported (this mdgm_ros reads version {FORMAT_VERSION})")
    return manifest


def verify_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Check that every file the manifest lists exists with its recorded sha256; returns the manifest."""
    folder = Path(path)
    manifest = read_manifest(folder)
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or CONFIG not in files:
        raise BundleError(f"{folder}: {MANIFEST} lists no {WEIGHTS}/{CONFIG}")
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            raise BundleError(f"{folder}: {name} is missing")
        actual = _sha256(file)
        if actual != expected:
            raise BundleError(f"{folder}: {name} is corrupt or truncated (sha256 {actual[:12]}… != "
                              f"manifest {str(expected)[:12]}…, size {file.stat().st_size} bytes)")
    if content_hash(files) != manifest.get("content_hash"):
        raise BundleError(f"{folder}: {MANIFEST} content_hash does not match its file list")
    return manifest


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu",
                expect_modalities: list[str] | None = None) -> Bundle:
    """Load and check a bundle. ``expect_modalities`` (e.g. from a node's parameters) must match the
    bundle's modality names exactly, in order."""
    folder = Path(path)
    manifest = verify_bundle(folder)
    config = _load_config(folder)
    if expect_modalities is not None and list(config.names) != list(expect_modalities):
        raise BundleError(f"{folder}: bundle modalities {list(config.names)} do not match the expected "
                          f"{list(expect_modalities)}")
    model = MultimodalVAE(config)
    _load_normalization(folder, model)
    _load_weights(folder, model)
    calibration = None
    if (folder / CALIBRATION).is_file():
        calibration = _load_calibration(folder, config)
    return Bundle(model.to(device).eval(), calibration, manifest, folder)


def _load_config(folder: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(_read_json(folder, CONFIG))
    except SpecError as err:
        raise BundleError(f"{folder}: {CONFIG} is invalid: {err}") from None


def _load_normalization(folder: Path, model: MultimodalVAE) -> None:
    data = _read_json(folder, NORMALIZATION) if (folder / NORMALIZATION).is_file() else {}
    if not isinstance(data, dict):
        raise BundleError(f"{folder}: {NORMALIZATION} must be a mapping")
    unknown = set(data) - set(model.names)
    if unknown:
        raise BundleError(f"{folder}: {NORMALIZATION} names unknown modalities {sorted(unknown)}")
    for name, stats in data.items():
        try:
            norm = Normalization.from_dict(stats)
            model.specs[name].with_normalization(norm)  # validates the shape against the features
        except (SpecError, KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{folder}: {NORMALIZATION} entry {name!r} is invalid: {err}") from None
        model.set_normalization(name, norm)


def _load_weights(folder: Path, model: MultimodalVAE) -> None:
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"{folder}: {WEIGHTS} cannot be read: {err}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing tensors {missing[:5]}")
        if unexpected:
            details.append(f"unexpected tensors {unexpected[:5]}")
        if wrong:
            details.append("shape mismatch " + ", ".join(
                f"{k}: {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:5]))
        raise BundleError(f"{folder}: {WEIGHTS} does not match {CONFIG}: " + "; ".join(details))
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise BundleError(f"{folder}: {WEIGHTS} holds non-finite values in {bad[:5]}")
    model.load_state_dict(state)


def _load_calibration(folder: Path, config: ModelConfig) -> AnomalyCalibration:
    try:
        calibration = AnomalyCalibration.from_dict(_read_json(folder, CALIBRATION))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{folder}: {CALIBRATION} is invalid: {err}") from None
    for name in config.names:
        if name not in calibration.mean or name not in calibration.std or name not in calibration.threshold:
            raise BundleError(f"{folder}: {CALIBRATION} lacks statistics for modality {name!r}")
    if "total" not in calibration.threshold:
        raise BundleError(f"{folder}: {CALIBRATION} lacks the 'total' threshold")
    return calibration
