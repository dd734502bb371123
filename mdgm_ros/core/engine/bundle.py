"""Model bundles: one folder that holds everything needed to run a trained model, and nothing pickled.

Layout::

    NAME/
      manifest.json          format version, sha256 of every file, content hash, model id, creation info
      config.json            ModelConfig (modalities, fusion, family, latent dim)
      weights.safetensors    the state dict (safetensors: loading never unpickles)
      normalization.json     per-modality feature statistics
      calibration.json       anomaly calibration (optional)
      training_means.safetensors   per-element mean of each modality's training features (optional)

Writes are atomic: the bundle is written into a temporary sibling folder, fsynced, then renamed into
place; a reader sees either the old bundle or the new one. Loading checks every file's hash before it
parses anything, so a corrupt or truncated bundle fails with a :class:`BundleError` naming the file.
"""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import math
import os
import platform
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from ..families import get_family
from ..model.modalities import Normalization, SpecError
from ..model.vae import ModelConfig, MultimodalVAE, renamed_keys
from .atomic import fsync_path, publish_modes, recover_dir, replace_dir
from .inference import AnomalyCalibration

FORMAT = "mdgm_ros.bundle"
FORMAT_VERSION = 2
# version 1 stored only the objective options that were set; its configs read with the families'
# format-1 defaults (Family.format1_option_defaults). Version 2 stores every option that shapes the networks.
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
NORMALIZATION = "normalization.json"
CALIBRATION = "calibration.json"
# per-element mean of each modality's un-normalised training features: the "training mean" baseline
TRAINING_MEANS = "training_means.safetensors"


class BundleError(RuntimeError):
    """A bundle is missing, corrupt, truncated or does not match; the message says which part."""


@dataclass
class Bundle:
    model: MultimodalVAE
    calibration: AnomalyCalibration | None
    manifest: dict[str, Any]
    path: Path
    # modality -> per-element mean of its un-normalised training features (:data:`TRAINING_MEANS`; empty in
    # bundles without the file)
    means: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    def training_means(self) -> dict[str, torch.Tensor]:
        """Each modality's training mean (un-normalised features, its feature shape): :attr:`means`, with the
        normalisation mean (per channel, band or element) standing in where a bundle has none."""
        model = self.model
        return {n: self.means[n] if n in self.means else
                model.normalization_stats(n)[0].cpu().expand(model.specs[n].feature_shape).clone()
                for n in model.names}


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
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_contents(tmp, model, calibration, name or target.name, extra or {}, attach)
        publish_modes(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_contents(folder: Path, model: MultimodalVAE, calibration: AnomalyCalibration | None,
                    name: str, extra: dict[str, Any], attach: Callable[[Path], None] | None = None) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT})
    fsync_path(folder / WEIGHTS)
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
            fsync_path(path)
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir())}
    digest = content_hash(files)
    from ... import __version__
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "files": files, "content_hash": digest,
        "model_id": f"{name}-{digest[:12]}", "name": name,
        "created": {"utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "mdgm_ros": __version__, "torch": torch.__version__, "host": platform.node(),
                    "python": platform.python_version()},
        "extra": extra,
    }
    _write_json(folder / MANIFEST, manifest)


# --------------------------------------------------------------------------- loading
# A bundle is a closed folder: the manifest names plain files inside it, each opened without following
# links, checked to be a regular file and sized before a byte is read. Only manifest-listed files are read.
MAX_JSON_BYTES = 16 << 20            # manifest, config, normalization, calibration
MAX_FILE_BYTES = 1 << 30             # weights and any attached file
MAX_BUNDLE_BYTES = 2 << 30           # everything the manifest lists
MAX_FILES = 64
_MAX_NAME_BYTES = 255
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _shown(path: Path | str) -> str:
    text = str(path)
    return text if len(text) <= 160 else f"{text[:80]}…{text[-60:]} ({len(text)} characters)"


def _os_reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def entry_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a manifest entry (None if it is a plain file name inside the folder)."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        return "is not a plain file name inside the bundle (no separators, '..' or absolute paths)"
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        return "is too long for a file name"
    return None


class _Folder:
    """The bundle folder, opened once; entries are opened relative to it."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise BundleError(f"{_shown(path)}: no such bundle folder") from None
        except OSError as err:
            raise BundleError(f"{_shown(path)}: cannot open the bundle folder: {_os_reason(err)}") from None
        except ValueError as err:                    # an embedded NUL byte
            raise BundleError(f"{_shown(path)}: not a usable path: {err}") from None

    def __enter__(self) -> "_Folder":
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)

    def _open(self, name: str, limit: int) -> tuple[int, int]:
        """(fd, size) of a regular file entry no larger than ``limit``."""
        problem = entry_name_problem(name)
        if problem:
            raise BundleError(f"{_shown(self.path)}: manifest entry {_shown(repr(name))} {problem}")
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            raise BundleError(f"{_shown(self.path)}: {name} is missing") from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise BundleError(f"{_shown(self.path)}: {name} is a symbolic link (a bundle holds plain files "
                                  "only)") from None
            raise BundleError(f"{_shown(self.path)}: {name} cannot be opened: {_os_reason(err)}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"{_shown(self.path)}: {name} is not a regular file (a bundle holds plain "
                                  "files only)")
            if info.st_size > limit:
                raise BundleError(f"{_shown(self.path)}: {name} is {info.st_size} bytes, over the limit of "
                                  f"{limit} bytes")
        except BaseException:
            os.close(fd)
            raise
        return fd, info.st_size

    def read(self, name: str, limit: int, keep: bool = True) -> tuple[bytes, str, int]:
        """(content (b"" unless ``keep``), sha256, size) of an entry; never more than ``limit`` bytes are read."""
        fd, size = self._open(name, limit)
        digest, parts, total = hashlib.sha256(), [], 0
        try:
            with os.fdopen(fd, "rb", closefd=True) as fh:
                while total <= limit:
                    block = fh.read(min(1 << 20, limit + 1 - total))
                    if not block:
                        break
                    if keep:
                        parts.append(block)
                    digest.update(block)
                    total += len(block)
        except OSError as err:
            raise BundleError(f"{_shown(self.path)}: {name} cannot be read: {_os_reason(err)}") from None
        if total > limit:
            raise BundleError(f"{_shown(self.path)}: {name} grew past the limit of {limit} bytes while read")
        return b"".join(parts), digest.hexdigest(), total


def _parse_json(folder: Path, name: str, blob: bytes) -> Any:
    try:
        return json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(f"{_shown(folder)}: {name} is unreadable: {str(err)[:200]}") from None


def _check_manifest(folder: Path, manifest: Any) -> dict[str, str]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{_shown(folder)}: {MANIFEST} is not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise BundleError(f"{_shown(folder)}: bundle format version {str(version)[:20]} is not supported "
                          f"(this mdgm_ros reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or CONFIG not in files:
        raise BundleError(f"{_shown(folder)}: {MANIFEST} lists no {WEIGHTS}/{CONFIG}")
    if len(files) > MAX_FILES:
        raise BundleError(f"{_shown(folder)}: {MANIFEST} lists {len(files)} files (at most {MAX_FILES})")
    for name, digest in files.items():
        problem = entry_name_problem(name) or (None if name != MANIFEST else "is the manifest itself")
        if problem:
            raise BundleError(f"{_shown(folder)}: manifest entry {_shown(repr(name))} {problem}")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise BundleError(f"{_shown(folder)}: manifest entry {name!r} has no sha256 hex digest")
    return files


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    folder = Path(path)
    with _Folder(folder) as opened:
        return _read_manifest(opened)


def _read_manifest(opened: _Folder) -> dict[str, Any]:
    try:
        blob, _, _ = opened.read(MANIFEST, MAX_JSON_BYTES)
    except BundleError as err:
        if str(err).endswith(f"{MANIFEST} is missing"):
            raise BundleError(f"{_shown(opened.path)}: {MANIFEST} is missing (not a bundle, or an interrupted "
                              "write)") from None
        raise
    manifest = _parse_json(opened.path, MANIFEST, blob)
    _check_manifest(opened.path, manifest)
    return manifest


def _verified_contents(opened: _Folder, manifest: dict[str, Any],
                       max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, bytes]:
    """Read and hash every listed file; the contents of the ones the loader parses."""
    folder, files = opened.path, manifest["files"]
    contents, total = {}, 0
    for name, expected in sorted(files.items()):
        limit = MAX_JSON_BYTES if name.endswith(".json") else MAX_FILE_BYTES
        parsed = name in (CONFIG, WEIGHTS, NORMALIZATION, CALIBRATION, TRAINING_MEANS)
        blob, actual, size = opened.read(name, min(limit, max(max_bytes - total, 0)), keep=parsed)
        total += size
        if actual != expected:
            raise BundleError(f"{_shown(folder)}: {name} is corrupt or truncated (its sha256 does not match the "
                              f"manifest; {size} bytes)")
        if parsed:
            contents[name] = blob
    if content_hash(files) != manifest.get("content_hash"):
        raise BundleError(f"{_shown(folder)}: {MANIFEST} content_hash does not match its file list")
    return contents


def verify_bundle(path: str | os.PathLike, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, Any]:
    """Check that every file the manifest lists is a plain file in the folder with its recorded sha256;
    returns the manifest."""
    with _Folder(Path(path)) as opened:
        manifest = _read_manifest(opened)
        _verified_contents(opened, manifest, max_bytes)
    return manifest


def model_id_for(name: Any, digest: str) -> str:
    """The model id: the bundle's (sanitised) name and the start of its content hash, so any change to
    any file gives another id."""
    text = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in str(name or "model"))[:64]
    return f"{text or 'model'}-{digest[:12]}"


def within_roots(path: str | os.PathLike, roots: list[str]) -> Path:
    """``path`` resolved (links followed) if it lies inside one of ``roots``; BundleError otherwise."""
    try:
        real = Path(os.path.realpath(path))
        real_roots = [Path(os.path.realpath(os.path.expanduser(r))) for r in roots if r]
    except (OSError, ValueError) as err:
        raise BundleError(f"{_shown(path)}: not a usable path: {err}") from None
    if not any(real == root or root in real.parents for root in real_roots):
        raise BundleError(f"{_shown(path)} is outside the allowed bundle folders {[_shown(r) for r in real_roots]} "
                          "(parameter bundle_roots)")
    return real


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu",
                expect_modalities: list[str] | None = None, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """Load and check a bundle. ``expect_modalities`` (e.g. from a node's parameters) must match the
    bundle's modality names exactly, in order. What is parsed is exactly what was hashed."""
    folder = Path(path)
    with _Folder(folder) as opened:
        manifest = _read_manifest(opened)
        contents = _verified_contents(opened, manifest, max_bytes)
    manifest = {**manifest, "model_id": model_id_for(manifest.get("name"), manifest["content_hash"])}
    config = _load_config(folder, contents[CONFIG], manifest["format_version"])
    if expect_modalities is not None and list(config.names) != list(expect_modalities):
        raise BundleError(f"{_shown(folder)}: bundle modalities {list(config.names)} do not match the expected "
                          f"{list(expect_modalities)}")
    model = MultimodalVAE(config)
    _load_normalization(folder, model, contents.get(NORMALIZATION))
    _load_weights(folder, model, contents[WEIGHTS])
    calibration = None
    if CALIBRATION in contents:
        calibration = _load_calibration(folder, config, contents[CALIBRATION])
    means = _load_means(folder, model, contents.get(TRAINING_MEANS))
    return Bundle(model.to(device).eval(), calibration, manifest, folder, means)


def _load_means(folder: Path, model: MultimodalVAE, blob: bytes | None) -> dict[str, torch.Tensor]:
    """The training means of the bundle's modalities, each of its modality's feature shape (none: {})."""
    if blob is None:
        return {}
    try:
        means = load_bytes(blob)
    except (SafetensorError, ValueError) as err:
        raise BundleError(f"{_shown(folder)}: {TRAINING_MEANS} is invalid: {str(err)[:200]}") from None
    for name, value in means.items():
        spec = model.specs.get(name)
        if spec is None or tuple(value.shape) != tuple(spec.feature_shape) or not bool(torch.isfinite(value).all()):
            raise BundleError(f"{_shown(folder)}: {TRAINING_MEANS} holds {name!r} of shape {tuple(value.shape)}, "
                              "not a finite mean of one of the model's modalities")
    return {n: v.float() for n, v in means.items()}


def _load_config(folder: Path, blob: bytes, version: int = FORMAT_VERSION) -> ModelConfig:
    try:
        data = _parse_json(folder, CONFIG, blob)
        if version == 1:
            data = _with_format1_defaults(data)
        return ModelConfig.from_dict(data, warn=False)       # configs written before the rename load silently
    except (SpecError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{_shown(folder)}: {CONFIG} is invalid: {str(err)[:300]}") from None


def _with_format1_defaults(data: Any) -> Any:
    """A version-1 config with the options it did not store set as that version meant them."""
    data = renamed_keys(data, CONFIG, warn=False)     # bundles written before the rename say "objective"
    if not isinstance(data, dict) or not isinstance(data.get("family_options", {}), dict):
        return data                                            # ModelConfig reports what is wrong
    try:
        family = get_family(data.get("family", ModelConfig.family))
    except (ValueError, TypeError):
        return data
    return {**data, "family_options": {**family.format1_option_defaults, **data.get("family_options", {})}}


def _load_normalization(folder: Path, model: MultimodalVAE, blob: bytes | None) -> None:
    data = _parse_json(folder, NORMALIZATION, blob) if blob is not None else {}
    if not isinstance(data, dict):
        raise BundleError(f"{_shown(folder)}: {NORMALIZATION} must be a mapping")
    unknown = set(data) - set(model.names)
    if unknown:
        raise BundleError(f"{_shown(folder)}: {NORMALIZATION} names unknown modalities {sorted(unknown)[:5]}")
    for name, stats in data.items():
        try:
            norm = Normalization.from_dict(stats)   # finite, std > 0
            model.specs[name].with_normalization(norm)  # validates the shape against the features
        except (SpecError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise BundleError(f"{_shown(folder)}: {NORMALIZATION} entry {name!r} is invalid: "
                              f"{str(err)[:200]}") from None
        model.set_normalization(name, norm)


def _load_weights(folder: Path, model: MultimodalVAE, blob: bytes) -> None:
    try:
        state = load_bytes(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BundleError(f"{_shown(folder)}: {WEIGHTS} cannot be read: {str(err)[:200]}") from None
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
        raise BundleError(f"{_shown(folder)}: {WEIGHTS} does not match {CONFIG}: " + "; ".join(details))
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise BundleError(f"{_shown(folder)}: {WEIGHTS} holds non-finite values in {bad[:5]}")
    model.load_state_dict(state)


def _load_calibration(folder: Path, config: ModelConfig, blob: bytes) -> AnomalyCalibration:
    try:
        calibration = AnomalyCalibration.from_dict(_parse_json(folder, CALIBRATION, blob))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise BundleError(f"{_shown(folder)}: {CALIBRATION} is invalid: {str(err)[:200]}") from None
    for name in config.names:
        if name not in calibration.mean or name not in calibration.std or name not in calibration.threshold:
            raise BundleError(f"{_shown(folder)}: {CALIBRATION} lacks statistics for modality {name!r}")
    if "total" not in calibration.threshold:
        raise BundleError(f"{_shown(folder)}: {CALIBRATION} lacks the 'total' threshold")
    problem = _calibration_problem(calibration)
    if problem:
        raise BundleError(f"{_shown(folder)}: {CALIBRATION} is invalid: {problem}")
    return calibration


def _calibration_problem(calibration: AnomalyCalibration) -> str | None:
    for key, value in calibration.mean.items():
        if not math.isfinite(value):
            return f"mean of {key!r} is not finite"
    for key, value in calibration.std.items():
        if not (math.isfinite(value) and value > 0):
            return f"std of {key!r} must be finite and > 0 (is {value})"
    for key, value in calibration.threshold.items():
        if not math.isfinite(value):
            return f"threshold of {key!r} is not finite"
    if not 0 < calibration.quantile <= 1:
        return f"quantile {calibration.quantile} is not in (0, 1]"
    return calibration.problem()
