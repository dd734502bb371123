"""Hostile bundles: each is refused with its reason, nothing outside the folder is read or
disclosed, and any change to any file gives another model id."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import prepared

from mdgm_ros.core import BundleError, calibrate_anomaly, load_bundle, save_bundle
from mdgm_ros.core.engine import bundle as bundle_mod
from mdgm_ros.core.engine import loop as training

OUTSIDE = b"root:x:0:0:secret outside the bundle\n"


@pytest.fixture
def saved(tmp_path, small_model_factory):
    model = small_model_factory("mvae", latent_dim=4)
    feats, mask, _ = prepared(model, 48, seed=0)
    training.fit_normalization(model, feats, mask)
    calibration = calibrate_anomaly(model, training.normalize_features(model, feats), mask)
    return save_bundle(tmp_path / "model", model, calibration, name="hostile")


@pytest.fixture
def outside(tmp_path) -> Path:
    path = tmp_path / "passwd"
    path.write_bytes(OUTSIDE)
    return path


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    manifest["content_hash"] = bundle_mod.content_hash(manifest["files"])
    (path / "manifest.json").write_text(json.dumps(manifest))


def _list(path: Path, name: str, digest: str) -> None:
    manifest = _manifest(path)
    manifest["files"][name] = digest
    _write_manifest(path, manifest)


def _rehash(path: Path, name: str) -> None:
    _list(path, name, hashlib.sha256((path / name).read_bytes()).hexdigest())


def _refused(path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(path)
    return str(info.value)


@pytest.mark.parametrize("entry", ["../passwd", "/etc/passwd", "sub/weights.safetensors", "..", ".", "",
                                   "a\\b", "x" * 300])
def test_manifest_entries_must_be_plain_names(saved, outside, entry):
    _list(saved, entry, hashlib.sha256(OUTSIDE).hexdigest())
    _refused(saved, "manifest entry .* (is not a plain file name|is too long|is not a file name)")


def test_a_symlink_out_of_the_bundle_is_refused_without_disclosing_it(saved, outside):
    (saved / "extra.txt").symlink_to(outside)
    _list(saved, "extra.txt", "0" * 64)                  # a wrong hash: nothing of the target may leak
    # the path may hold digits
    message = _refused(saved, "extra.txt is a symbolic link").replace(str(saved), "<bundle>")
    assert hashlib.sha256(OUTSIDE).hexdigest()[:8] not in message and str(len(OUTSIDE)) not in message
    _list(saved, "extra.txt", hashlib.sha256(OUTSIDE).hexdigest())   # even with its matching hash
    _refused(saved, "extra.txt is a symbolic link")


def test_a_symlinked_weights_file_is_refused(saved, tmp_path):
    real = tmp_path / "weights.bin"
    (saved / "weights.safetensors").rename(real)
    (saved / "weights.safetensors").symlink_to(real)
    _refused(saved, "weights.safetensors is a symbolic link")


def test_a_fifo_a_folder_and_a_device_are_not_regular_files(saved):
    os.mkfifo(saved / "pipe")
    _list(saved, "pipe", "0" * 64)
    _refused(saved, "pipe is not a regular file")         # and does not block on the open
    manifest = _manifest(saved)
    del manifest["files"]["pipe"]
    (saved / "sub").mkdir()
    manifest["files"]["sub"] = "0" * 64
    _write_manifest(saved, manifest)
    _refused(saved, "sub is not a regular file")
    (saved / "mem").symlink_to("/proc/self/mem")
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k != "sub"} | {"mem": "0" * 64}
    _write_manifest(saved, manifest)
    _refused(saved, "mem is a symbolic link")


def test_sizes_are_checked_before_reading(saved):
    with open(saved / "huge.bin", "wb") as fh:           # sparse: 3 GiB claimed, nothing written
        fh.truncate(3 << 30)
    _list(saved, "huge.bin", "0" * 64)
    _refused(saved, "huge.bin is 3221225472 bytes, over the limit")
    manifest = _manifest(saved)
    del manifest["files"]["huge.bin"]
    _write_manifest(saved, manifest)
    with pytest.raises(BundleError, match="over the limit of"):
        load_bundle(saved, max_bytes=1000)                # a whole-bundle budget too
    (saved / "calibration.json").write_bytes(b" " * (bundle_mod.MAX_JSON_BYTES + 1))
    _refused(saved, "calibration.json is 16777217 bytes, over the limit")


def test_os_errors_become_refusals(saved, tmp_path):
    _refused(tmp_path / ("x" * 300), "File name too long")
    _refused(Path("/proc/self/mem"), "no such bundle folder")
    _refused(str(tmp_path / "a\0b"), "not a usable path")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if not os.access(locked, os.R_OK):                # root reads anything: only checked as a user
            _refused(locked, "cannot open the bundle folder: Permission denied")
    finally:
        locked.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("field,value,match", [
    ("mean", float("nan"), "mean of 'camera' is not finite"),
    ("std", 0.0, "std of 'camera' must be finite and > 0"),
    ("std", float("inf"), "std of 'camera' must be finite and > 0"),
    ("threshold", float("nan"), "threshold of 'camera' is not finite"),
])
def test_calibration_values_are_validated(saved, field, value, match):
    data = json.loads((saved / "calibration.json").read_text())
    data[field]["camera"] = value
    (saved / "calibration.json").write_text(json.dumps(data))
    _rehash(saved, "calibration.json")
    _refused(saved, match)


def _reversed(table):
    return {**table, "values": table["values"][::-1]}


@pytest.mark.parametrize("edit,match", [
    (lambda t: {**t, "slope": float("nan")}, "table camera/nll: .*slope must be finite"),
    (lambda t: {**t, "slope": -1.0}, "table camera/nll: .*slope > 0"),
    (_reversed, "table camera/nll: values and probits must be sorted"),
    (lambda t: {**t, "probits": t["probits"][:-1]}, "table camera/nll: needs 1 to 4096 values and as many"),
    (lambda t: {**t, "values": [0.0] * 5000, "probits": [0.0] * 5000}, "table camera/nll: needs 1 to 4096"),
    (lambda t: {**t, "values": [float("inf")] * len(t["values"])}, "table camera/nll: .*must be finite"),
])
def test_quantile_tables_are_validated(saved, edit, match):
    data = json.loads((saved / "calibration.json").read_text())
    data["tables"]["camera"]["nll"] = edit(data["tables"]["camera"]["nll"])
    (saved / "calibration.json").write_text(json.dumps(data))
    _rehash(saved, "calibration.json")
    _refused(saved, match)


def test_unknown_channels_and_bad_presence_are_refused(saved):
    data = json.loads((saved / "calibration.json").read_text())
    data["tables"]["camera"]["loudness"] = data["tables"]["camera"]["nll"]
    (saved / "calibration.json").write_text(json.dumps(data))
    _rehash(saved, "calibration.json")
    _refused(saved, "unknown surprise channel 'loudness' of 'camera'")
    del data["tables"]["camera"]["loudness"]
    data["presence"]["camera"] = 1.5
    (saved / "calibration.json").write_text(json.dumps(data))
    _rehash(saved, "calibration.json")
    _refused(saved, r"presence of 'camera' must be in \[0, 1\]")


def test_all_nan_calibration_and_normalization_are_refused(saved):
    data = json.loads((saved / "calibration.json").read_text())
    data = {**data, **{k: {m: float("nan") for m in data[k]} for k in ("mean", "std", "threshold")}}
    (saved / "calibration.json").write_text(json.dumps(data))
    _rehash(saved, "calibration.json")
    _refused(saved, "calibration.json is invalid")
    norm = json.loads((saved / "normalization.json").read_text())
    first = next(iter(norm))
    norm[first]["std"] = [0.0] * len(norm[first]["std"])
    (saved / "normalization.json").write_text(json.dumps(norm))
    _rehash(saved, "normalization.json")
    _refused(saved, "normalization.json entry .* is invalid")


def test_the_model_id_follows_the_content(saved):
    original = load_bundle(saved)
    assert original.model_id == bundle_mod.model_id_for("hostile", original.content_hash)
    data = json.loads((saved / "calibration.json").read_text())
    data["threshold"]["total"] += 1.0
    (saved / "calibration.json").write_text(json.dumps(data))
    _rehash(saved, "calibration.json")                    # the manifest keeps its old model_id field
    altered = load_bundle(saved)
    assert _manifest(saved)["model_id"] == original.model_id
    assert altered.model_id != original.model_id and altered.content_hash != original.content_hash


def test_within_roots(tmp_path, saved):
    assert bundle_mod.within_roots(saved, [str(tmp_path)]) == saved.resolve()
    with pytest.raises(BundleError, match="outside the allowed bundle folders"):
        bundle_mod.within_roots("/etc", [str(tmp_path)])
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(BundleError, match="outside the allowed"):
        bundle_mod.within_roots(tmp_path / "link", [str(tmp_path)])
    with pytest.raises(BundleError, match="outside the allowed"):
        bundle_mod.within_roots(tmp_path / ".." / "elsewhere", [str(tmp_path)])
