"""`mdgm-ros train / evaluate / label` as a user at a terminal runs them: the progress bar on, one clear
line for each mistake before any epoch, a strict config, sidecar labels on a real-format bag."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from terminal import run_in_terminal

from mdgm_ros.data.bags import BagWriter, messages
from mdgm_ros.training.config import TrainError, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "data.cache=false", "--set", "data.block_s=3.0", "--device", "cpu"]


def mdgm(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdgm_ros", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def rewrite_bag(src: Path, dst: Path, renames: dict[str, str | None], storage: str = "mcap") -> Path:
    """A copy of ``src`` with topics renamed (None: dropped), as another robot would record it."""
    with BagWriter(dst, storage=storage) as bag:
        for topic, stamp, msg in messages(src):
            new = renames.get(topic, topic)
            if new is not None:
                bag.write(new, stamp, msg)
    return dst


@pytest.fixture(scope="module")
def bags(sim_bag, tmp_path_factory):
    root = tmp_path_factory.mktemp("user_bags")
    src = sim_bag[0]
    return {
        "realsense": rewrite_bag(src, root / "realsense", {"/camera/image_raw": "/camera/color/image_raw"}),
        "no_audio": rewrite_bag(src, root / "no_audio", {"/audio": None}),
        "wrong_type": rewrite_bag(src, root / "wrong_type", {"/audio": None, "/tactile": "/audio"}),
        "unlabelled": rewrite_bag(src, root / "unlabelled", {"/sim/fault_labels": None, "/sim/task_phase": None}),
    }


def test_cli_trains_with_the_progress_bar_on_in_a_terminal(sim_bag, tmp_path):
    out = tmp_path / "model"
    code, screen = run_in_terminal(["-m", "mdgm_ros", "train", "--bags", str(sim_bag[0]), "--out", str(out),
                                    "--epochs", "2", *FAST], cwd=ROOT, timeout=900)
    assert code == 0, screen[-3000:]
    assert "epoch 1/2:" in screen and "batch/s" in screen         # the tqdm bar was drawn
    assert "nats/dim" in screen and "pybullet build time" not in screen
    assert (out / "manifest.json").is_file()


def test_a_config_in_the_old_objective_spelling_still_trains_with_one_warning_line(sim_bag, tmp_path):
    """A train config written before the rename (objective / objective_options) trains, and the command
    says once per key what the new name is."""
    doc = yaml.safe_load((ROOT / "config" / "train.yaml").read_text())
    overrides = doc["model_overrides"]
    overrides["objective"], overrides["objective_options"] = overrides.pop("family"), overrides.pop("family_options")
    doc["model"] = str(ROOT / "config" / "model.yaml")
    doc["fusion_params"] = str(ROOT / "config" / "fusion.yaml")
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "model"
    done = mdgm("train", "--bags", str(sim_bag[0]), "--config", str(config), "--out", str(out), "--epochs", "1", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: model_overrides key 'objective' is now called 'family'; the old name goes in "
                        "the next release",
                        "warning: model_overrides key 'objective_options' is now called 'family_options'; the old "
                        "name goes in the next release"], done.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["family"] == "mopoe"


@pytest.mark.parametrize("case, extra, expected", [
    ("realsense", [], "has no camera messages on /camera/image_raw (sensor_msgs/msg/Image): point it at one of "
                      "them with --set fusion_overrides.camera.topic=/camera/color/image_raw"),
    ("no_audio", [], "has no audio messages on /audio (std_msgs/msg/Float32MultiArray)"),
    ("no_audio", ["--set", "data.absent_ok=[audio]"], "audio (/audio) is absent from every bag"),
    ("wrong_type", [], "audio topic /audio carries sensor_msgs/msg/Image, but audio.message_type "
                       "float32_multiarray reads std_msgs/msg/Float32MultiArray"),
    ("missing", [], "does not exist"),
    ("sim", ["--set", "training.epoch=1"], "training: unknown field 'epoch' (did you mean 'epochs'?)"),
    ("sim", ["--set", "trainin.epochs=1"], "unknown field 'trainin' (did you mean 'training'?)"),
    ("sim", ["--set", "training.lr=fast"], "training.lr: expected float, got 'fast'"),
    ("sim", ["--set", "fusion_overrides.camera.topc=/x"], "unknown parameters ['camera.topc']"),
    ("sim", ["--set", "training.epochs"], "--set 'training.epochs': expected section.key=value"),
])
def test_each_user_mistake_is_one_clear_line_before_any_epoch(bags, sim_bag, tmp_path, case, extra, expected):
    bag = {"sim": sim_bag[0], "missing": tmp_path / "no_such_bag"}.get(case) or bags[case]
    done = mdgm("train", "--bags", str(bag), "--out", str(tmp_path / "m"), "--epochs", "1", *FAST, *extra)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    if case == "wrong_type":          # the tactile taxels recorded on /audio: two problems, reported together
        error = done.stderr[done.stderr.index("error: "):]
        assert error.startswith("error: 2 problems") and expected in error, error
        assert "no tactile messages on /tactile" in error and len(error.strip().splitlines()) == 3, error
    else:
        assert lines[-1].startswith("error: ") and expected in lines[-1], lines[-1]
    assert "Traceback" not in done.stderr and not any(line.startswith("epoch ") for line in lines)
    assert not (tmp_path / "m").exists()


def test_a_bag_may_lack_a_modality_on_purpose_when_others_have_it(bags, sim_bag, tmp_path):
    done = mdgm("train", "--bags", str(sim_bag[0]), str(bags["no_audio"]), "--out", str(tmp_path / "m"),
                "--epochs", "1", *FAST, "--set", "data.absent_ok=[audio]")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no_audio: no audio (data.absent_ok): trained as missing in this bag" in done.stderr


def test_a_copied_train_config_finds_the_shipped_includes_and_unknown_keys_are_refused(tmp_path):
    copy = tmp_path / "train.yaml"
    shutil.copy(ROOT / "config" / "train.yaml", copy)
    settings = TrainSettings.from_file(copy, {"training.seed": 7})
    assert settings.opt.seed == 7 and settings.model.names == ("camera", "joints", "audio", "tactile")
    doc = yaml.safe_load(copy.read_text())
    doc["data"]["val_fractoin"] = 0.2
    copy.write_text(yaml.safe_dump(doc))
    with pytest.raises(TrainError, match=r"data: unknown field 'val_fractoin' \(did you mean 'val_fraction'\?\)"):
        TrainSettings.from_file(copy)
    doc["data"].pop("val_fractoin")
    doc["model"] = "missing_model.yaml"
    copy.write_text(yaml.safe_dump(doc))
    with pytest.raises(TrainError, match="'missing_model.yaml' is neither next to"):
        TrainSettings.from_file(copy)
    # another family than the config's: its fusion does not fit, and the error says what to set
    other = {"model_overrides.family": "dmvae_lee"}
    with pytest.raises(TrainError,
                       match=r"needs fusion in \('poe',\), got 'mopoe' .*--set model_overrides.fusion=null"):
        TrainSettings.from_file(ROOT / "config" / "train.yaml", other)
    assert TrainSettings.from_file(ROOT / "config" / "train.yaml",
                                   {**other, "model_overrides.fusion": None}).model.fusion == "poe"


def test_the_clip_and_the_warm_up_the_config_leaves_out_are_the_familys_and_a_set_value_wins():
    shipped = ROOT / "config" / "train.yaml"
    mopoe = TrainSettings.from_file(shipped)
    assert mopoe.model.family == "mopoe" and (mopoe.opt.grad_clip, mopoe.beta.warmup_epochs) == (10.0, 5.0)
    mvae = {"model_overrides.family": "mvae", "model_overrides.fusion": None}
    settings = TrainSettings.from_file(shipped, mvae)          # MultiVae's MVAE: no clip, 10-epoch warm-up
    assert (settings.opt.grad_clip, settings.beta.warmup_epochs) == (0.0, 10.0)
    assert settings.train.grad_clip == 0.0
    settings = TrainSettings.from_file(shipped, {**mvae, "training.grad_clip": 2.5, "training.beta.warmup_epochs": 1})
    assert (settings.opt.grad_clip, settings.beta.warmup_epochs) == (2.5, 1.0)
    temporal = TrainSettings.from_file(ROOT / "config" / "train_temporal.yaml")     # its own schedule, written out
    assert (temporal.opt.grad_clip, temporal.beta.warmup_epochs) == (10.0, 2.0)


def test_label_command_and_evaluate_on_a_real_format_bag(bags, trained_bundle, sim_bag, tmp_path):
    bag = bags["unlabelled"]
    done = mdgm("label", str(bag), "--add", "3.0:5.5:collision", "--add", "9.0:10.5:camera_blackout")
    assert done.returncode == 0, done.stderr
    sidecar = bag.with_name(bag.name + ".labels.yaml")
    assert yaml.safe_load(sidecar.read_text())["labels"][0] == {"kind": "collision", "start": 3.0, "end": 5.5}
    assert oct(stat.S_IMODE(sidecar.stat().st_mode)) == oct(0o666 & ~_umask())
    bad = mdgm("label", str(bag), "--add", "30:31:collision")
    assert bad.returncode == 2 and "the bag lasts" in bad.stderr
    bad = mdgm("label", str(bag), "--add", "5:3:collision")
    assert bad.returncode == 2 and "needs finite start <= end" in bad.stderr

    report = mdgm("evaluate", "--model", str(trained_bundle[0]), "--bags", str(bag), "--json")
    assert report.returncode == 0, report.stderr[-2000:]
    per_fault = json.loads(report.stdout)["anomaly"]["per_fault"]
    assert set(per_fault) == {"collision", "camera_blackout"}
    for entry in per_fault.values():
        assert entry["events"] == 1 and 0.0 <= entry["detected_at_threshold"] <= 1.0
    assert "was used to train this model" not in report.stderr

    text = mdgm("evaluate", "--model", str(trained_bundle[0]), "--bags", str(sim_bag[0]))
    assert text.returncode == 0, text.stderr[-2000:]
    assert "was used to train this model" in text.stdout
    assert "at the calibrated threshold" in text.stdout and "detected" in text.stdout and "delay" in text.stdout


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bundles_are_readable_by_a_node_running_as_another_user(trained_bundle):
    folder = trained_bundle[0]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~_umask()
    for file in folder.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~_umask(), file.name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all(Path(b).is_absolute() for b in manifest["extra"]["training"]["bags"])


def test_corrupt_messages_stop_training_naming_the_topic_unless_max_corrupt_allows_them(sim_bag, tmp_path):
    bag = rewrite_bag(sim_bag[0], tmp_path / "damaged", {}, storage="sqlite3")
    db = sqlite3.connect(next(bag.glob("*.db3")))
    ids = [r[0] for r in db.execute("SELECT m.id FROM messages m JOIN topics t ON m.topic_id = t.id "
                                    "WHERE t.name = '/tactile' ORDER BY m.id LIMIT 80")]        # 5 % of 1600
    db.executemany("UPDATE messages SET data = ? WHERE id = ?", [(b"\x00\x01\xff\xff\xff\x7f", i) for i in ids])
    db.commit()
    db.close()
    done = mdgm("train", "--bags", str(bag), "--out", str(tmp_path / "m"), "--epochs", "1", *FAST)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and line.startswith("error: ") and "messages on /tactile do not deserialise" in line
    assert "--max-corrupt" in line and "Traceback" not in done.stderr
    done = mdgm("train", "--bags", str(bag), "--out", str(tmp_path / "m"), "--epochs", "1", *FAST,
                "--max-corrupt", "0.1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'/tactile:corrupt': 80" in done.stderr
