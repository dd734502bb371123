"""Model bundles: round trip, named errors for corrupt/truncated/mismatched bundles, atomic writes."""
import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import prepared

from mdgm_ros.core import BundleError, Fuser, calibrate_anomaly, load_bundle, save_bundle
from mdgm_ros.core.engine import bundle as bundle_mod
from mdgm_ros.core.engine import loop as training


@pytest.fixture
def saved(tmp_path, small_model_factory):
    model = small_model_factory("mopoe")
    feats, mask, data = prepared(model, 64, seed=0)
    training.fit_normalization(model, feats, mask)
    calibration = calibrate_anomaly(model, training.normalize_features(model, feats), mask)
    path = save_bundle(tmp_path / "model", model, calibration, name="test")
    return path, model, calibration, data


def _rehash(path: Path) -> None:
    """Rewrite the manifest's hashes, as if a consistent but wrong bundle had been written."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in manifest["files"]}
    manifest["content_hash"] = bundle_mod.content_hash(manifest["files"])
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_gives_identical_outputs(saved):
    path, model, calibration, data = saved
    assert sorted(p.name for p in path.iterdir()) == ["calibration.json", "config.json", "manifest.json",
                                                      "normalization.json", "weights.safetensors"]
    loaded = load_bundle(path)
    assert loaded.model_id.startswith("test-") and len(loaded.content_hash) == 64
    assert loaded.model.config.to_dict() == model.config.to_dict()
    raw = {k: torch.from_numpy(v[:4]) for k, v in data.raw.items()}
    mask = torch.tensor([[True, True, False, True]] * 2 + [[True, False, True, True]] * 2)
    a, b = Fuser(model.eval(), calibration)(raw, mask), Fuser(loaded.model, loaded.calibration)(raw, mask)
    assert torch.equal(a.latent_mean, b.latent_mean) and torch.equal(a.latent_std, b.latent_std)
    assert torch.equal(a.scores.nan_to_num(), b.scores.nan_to_num())
    assert all(torch.equal(a.imputed[k].mean, b.imputed[k].mean) for k in a.imputed)


def test_flipped_byte_names_the_corrupt_file(saved):
    path = saved[0]
    blob = bytearray((path / "weights.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (path / "weights.safetensors").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="weights.safetensors is corrupt or truncated"):
        load_bundle(path)


def test_truncated_weights_are_named(saved):
    path = saved[0]
    blob = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(blob[:100])
    with pytest.raises(BundleError, match="weights.safetensors is corrupt or truncated"):
        load_bundle(path)
    _rehash(path)                       # even with matching hashes, the parser names the file
    with pytest.raises(BundleError, match="weights.safetensors cannot be read"):
        load_bundle(path)


def test_missing_parts_are_named(saved, tmp_path):
    path = saved[0]
    (path / "calibration.json").unlink()
    with pytest.raises(BundleError, match="calibration.json is missing"):
        load_bundle(path)
    (path / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(path)
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nowhere")


def test_mismatched_config_is_named(saved):
    path = saved[0]
    config = json.loads((path / "config.json").read_text())
    config["latent_dim"] = 12
    (path / "config.json").write_text(json.dumps(config))
    _rehash(path)
    with pytest.raises(BundleError, match="does not match config.json: shape mismatch"):
        load_bundle(path)


def test_invalid_config_and_wrong_format_version(saved):
    path = saved[0]
    config = json.loads((path / "config.json").read_text())
    config["fusion"] = "sum"
    (path / "config.json").write_text(json.dumps(config))
    _rehash(path)
    with pytest.raises(BundleError, match="config.json is invalid"):
        load_bundle(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(path)


def test_format_1_bundles_read_with_the_options_that_version_meant(tmp_path, small_model_factory):
    """Version 1 stored only the options that were set: an MMVAE bundle of then had the fixed prior,
    though MMVAE now learns its prior by default. Version 2 writes the option."""
    model = small_model_factory("mmvae", family_options={"learn_prior": False})
    path = save_bundle(tmp_path / "old", model)
    assert json.loads((path / "config.json").read_text())["family_options"] == {"learn_prior": False}
    config = json.loads((path / "config.json").read_text())
    config["family_options"] = {}                                     # as version 1 wrote it
    (path / "config.json").write_text(json.dumps(config))
    _rehash(path)
    with pytest.raises(BundleError, match="does not match config.json"):   # read as version 2: a prior is missing
        load_bundle(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(path).model
    assert "prior" not in loaded.extra and loaded.config.family_options["learn_prior"] is False
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    default = small_model_factory("mmvae")
    assert "prior" in default.extra and json.loads(
        (save_bundle(tmp_path / "new", default) / "config.json").read_text())["family_options"]["learn_prior"]


def test_expected_modalities_must_match(saved):
    with pytest.raises(BundleError, match="do not match the expected"):
        load_bundle(saved[0], expect_modalities=["camera", "joints"])


class _Bomb:
    def __reduce__(self):
        return (Path.touch, (Path(_Bomb.marker),))


def test_loading_never_unpickles(saved, tmp_path):
    path = saved[0]
    _Bomb.marker = str(tmp_path / "exploded")
    (path / "weights.safetensors").write_bytes(pickle.dumps({"w": _Bomb()}))
    _rehash(path)
    with pytest.raises(BundleError, match="weights.safetensors cannot be read"):
        load_bundle(path)
    assert not (tmp_path / "exploded").exists()


def test_non_finite_weights_are_refused(saved):
    path, model = saved[0], saved[1]
    from safetensors.torch import save_file
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[first][0] = float("nan")
    save_file(state, str(path / "weights.safetensors"))
    _rehash(path)
    with pytest.raises(BundleError, match="non-finite"):
        load_bundle(path)


def test_overwrite_is_atomic_and_a_failed_write_keeps_the_old_bundle(saved, monkeypatch, small_model_factory):
    path, model, calibration, _ = saved
    old_hash = load_bundle(path).content_hash
    other = small_model_factory("mopoe", latent_dim=4)

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "_write_contents", explode)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(path, other)
    monkeypatch.undo()
    assert load_bundle(path).content_hash == old_hash
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    save_bundle(path, other, name="test")
    assert load_bundle(path).model.latent_dim == 4
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_the_shipped_default_loads_bit_for_bit_without_a_warning():
    """models/default (written before the core's split and the family rename) loads with no warning:
    every stored tensor equals the model's, its config (old key names) reads as the same config, and
    a bundle saved from it again holds the same weights."""
    import warnings

    from safetensors.torch import load_file

    folder = Path(__file__).resolve().parents[1] / "models" / "default"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle = load_bundle(folder)
    stored = load_file(folder / "weights.safetensors")
    state = bundle.model.state_dict()
    assert set(stored) <= set(state)
    for name, tensor in stored.items():
        assert torch.equal(state[name], tensor), name
    old = json.loads((folder / "config.json").read_text())
    new = bundle.model.config.to_dict()
    assert new["family"] == old.get("objective", old.get("family"))
    assert new["family_options"] == old.get("objective_options", old.get("family_options"))
    assert {k: v for k, v in new.items() if not k.startswith("family")} == \
        {k: v for k, v in old.items() if not k.startswith("objective") and not k.startswith("family")}


def test_an_old_objective_key_in_a_config_is_read_with_a_warning_and_both_keys_are_refused():
    from mdgm_ros.core import ModalitySpec, ModelConfig, SpecError

    data = {"modalities": [ModalitySpec("j", "vector", (3,)).to_dict()], "objective": "mopoe"}
    with pytest.warns(DeprecationWarning, match="'objective' is now called 'family'"):
        assert ModelConfig.from_dict(data).family == "mopoe"
    with pytest.warns(DeprecationWarning, match="ModelConfig.objective is now called ModelConfig.family"):
        assert ModelConfig.from_dict(data, warn=False).objective == "mopoe"
    with pytest.raises(SpecError, match="both 'objective' and 'family'"):
        ModelConfig.from_dict({**data, "family": "mvae"})
