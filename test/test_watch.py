"""``mdgm-ros echo`` and ``mdgm-ros watch`` over real DDS: the shipped models/default in a fusion node
process, the synthetic streams in another, each command in a child process of its own on the same
private ROS domain (the live view in a pseudo-terminal)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml
from ros_env import ROOT, FusionRun, spin_until
from terminal import run_in_terminal

MODALITIES = ("camera", "joints", "audio", "tactile")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    """The fusion node on models/default and the synthetic streams, once the node publishes latents."""
    from mdgm_ros.msg import Latent

    tmp = tmp_path_factory.mktemp("watch")
    run = FusionRun.start(ROOT / "models" / "default", tmp, probe_name="watch_probe")
    latents = []
    run.probe.create_subscription(Latent, "/mdgm_fusion/latent", latents.append, 10)
    try:
        assert spin_until(run.probe, lambda: len(latents) > 3, 60), run.node_log()
        yield run
    finally:
        run.stop()


def _mdgm(run: FusionRun, *args: str, timeout: float = 40.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdgm_ros", *args], cwd=ROOT, env=run.env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_of_echo_and_watch_exits_0_without_starting_ros():
    code = ("import sys\nfrom mdgm_ros.cli import main\n"
            "for command in ('echo', 'watch'):\n"
            "    try:\n        main([command, '--help'])\n"
            "    except SystemExit as exit_:\n        assert exit_.code == 0, exit_.code\n"
            "assert 'rclpy' not in sys.modules\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: mdgm-ros echo" in done.stdout and "usage: mdgm-ros watch" in done.stdout
    assert "--max-items" in done.stdout and "--plain" in done.stdout
    assert time.monotonic() - started < 20


def test_messages_become_dicts_in_field_order_with_sequences_shortened():
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import Image

    from mdgm_ros.msg import AnomalyScores
    from mdgm_ros.ros.watch import check_field, message_to_dict, select_field, to_json, to_yaml

    msg = AnomalyScores(model_id="m", modalities=["a", "b"], score=[0.1, float("nan")], flagged=[False, False])
    data = message_to_dict(msg)
    assert list(data)[:3] == ["header", "model_id", "modalities"] and data["score"][0] == 0.1   # float32 digits
    assert json.loads(to_json(data))["score"] == [0.1, None]                                   # NaN -> null
    image = Image(height=2, width=20, encoding="mono8", step=20, data=bytes(range(40)))
    assert message_to_dict(image, max_items=3)["data"] == [0, 1, 2, "... +37 more (40 in all)"]
    assert message_to_dict(image, no_arr=True)["data"] == "<sequence type: uint8, length: 40>"
    assert yaml.safe_load(to_yaml(message_to_dict(image, max_items=2)))["encoding"] == "mono8"
    assert message_to_dict(DiagnosticStatus(level=DiagnosticStatus.WARN))["level"] == 1
    assert select_field(msg, check_field(AnomalyScores, "score.0"))[0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="has no field 'nope'"):
        check_field(AnomalyScores, "header.nope")


def test_echo_lists_the_topics_with_types_and_publishers(fusion):
    done = _mdgm(fusion, "echo")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "/mdgm_fusion/latent" in lines, done.stdout
    assert "mdgm_ros/msg/Latent" in lines["/mdgm_fusion/latent"]
    assert "1 publisher," in lines["/mdgm_fusion/latent"]
    assert "mdgm_ros/msg/ModelInfo" in lines["/mdgm_fusion/model_info"]
    assert "sensor_msgs/msg/Image" in lines["/camera/image_raw"] and "1 subscriber" in lines["/camera/image_raw"]
    assert "diagnostic_msgs/msg/DiagnosticArray" in lines["/diagnostics"]


def test_echo_once_prints_one_latent_as_yaml(fusion):
    done = _mdgm(fusion, "echo", "/mdgm_fusion/latent", "--once")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.endswith("\n---\n") and done.stdout.count("\n---\n") == 1
    message = yaml.safe_load(done.stdout.split("\n---\n")[0])
    assert list(message)[:4] == ["header", "model_id", "modalities", "present"]
    assert set(message["header"]) == {"stamp", "frame_id"} and message["header"]["stamp"]["sec"] > 0
    assert message["model_id"].startswith("default-") and message["modalities"] == list(MODALITIES)
    assert len(message["mean"]) == len(message["std"]) == 16 and all(s > 0 for s in message["std"])
    assert isinstance(message["step"], int)


def test_echo_json_count_field_and_an_absent_topic(fusion):
    done = _mdgm(fusion, "echo", "/mdgm_fusion/latent", "--json", "-n", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r["mean"]) == 16 and r["modalities"] == list(MODALITIES) for r in rows)
    assert rows[0]["header"]["stamp"] != rows[2]["header"]["stamp"]

    done = _mdgm(fusion, "echo", "/mdgm_fusion/anomaly", "--field", "score", "--once")
    assert done.returncode == 0, done.stderr[-2000:]
    scores = yaml.safe_load(done.stdout.split("\n---\n")[0])
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores), done.stdout

    done = _mdgm(fusion, "echo", "/mdgm_fusion/model_info", "--once", "--field", "modalities", "--max-items", "2")
    assert done.returncode == 0, done.stderr[-2000:]           # latched: the reliable, transient local answer
    assert yaml.safe_load(done.stdout.split("\n---\n")[0]) == ["camera", "joints", "... +2 more (4 in all)"]

    started = time.monotonic()
    done = _mdgm(fusion, "echo", "mdgm_fusion/nothing_here", "--timeout", "4")    # time to discover the graph
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "/mdgm_fusion/nothing_here" in lines[0], done.stderr
    assert "/mdgm_fusion/latent" in lines[0] and "/diagnostics" in lines[0]
    assert time.monotonic() - started < 20


def test_watch_once_prints_a_plain_summary(fusion):
    done = _mdgm(fusion, "watch", "--once")
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert text.startswith("== /mdgm_fusion") and "model default-" in text and "family temporal_ms" in text
    assert re.search(r"^latent {2}dim 16 {2}step \d+", text, re.MULTILINE), text
    assert re.search(r"^ +[+-]\d+\.\d\d .* mean$", text, re.MULTILINE) and "z15" in text
    # each stream: whether it entered the posterior (the synthetic joints lie outside the shipped default's
    # training range: left out, "no", and imputed), its input rate, a finite score against its threshold
    for name in MODALITIES:
        row = re.search(rf"^{name} +\w+ +(yes|no) +(\d+\.\d) Hz +(\S+ Hz|-) +(-?\d+\.\d\d) +(-?\d+\.\d\d) "
                        r"+(ok|ANOMALY)$", text, re.MULTILINE)
        assert row and float(row.group(2)) > 0, (name, text)
        assert row.group(1) == "yes" or row.group(3) != "-", (name, text)     # left out: imputed
    outputs = re.search(r"^outputs {2}latent (\d+\.\d) Hz", text, re.MULTILINE)
    assert outputs and float(outputs.group(1)) > 0, text
    assert "prediction: horizon 10 steps" in text
    assert re.search(r"^ +OK +model: publishing$", text, re.MULTILINE), text


def test_watch_draws_the_live_view_in_a_terminal_and_ctrl_c_exits_130(fusion):
    env = {k: v for k, v in fusion.env.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"

    def ready(screen: str) -> bool:
        plain = ANSI.sub("", screen)
        words = ("latent (step", "publishing", "prediction: horizon", " Hz", *MODALITIES)
        return all(word in plain for word in words) and re.search(r"│ *(ok|ANOMALY) *│", plain) is not None

    code, screen = run_in_terminal(["-m", "mdgm_ros", "watch"], cwd=ROOT, env=env, timeout=60, interrupt_when=ready)
    plain = ANSI.sub("", screen)
    assert code == 130, plain[-3000:]
    assert "\x1b[" in screen                                      # colours and cursor movement
    assert "Traceback" not in plain and "interrupted" not in plain
    for word in ("/mdgm_fusion", "modalities", "threshold", "diagnostics", "prediction: horizon 10", "total", " Hz"):
        assert word in plain, (word, plain[-3000:])
    assert re.search(r"│ *(ok|ANOMALY) *│", plain), plain[-3000:]


def test_echo_runs_until_ctrl_c_and_exits_130(fusion):
    """A Ctrl-C may land while rclpy takes a message (pybind11 then raises a RuntimeError): still 130."""
    code, screen = run_in_terminal(["-m", "mdgm_ros", "echo", "/mdgm_fusion/latent", "--field", "step"], cwd=ROOT,
                                   env=fusion.env, timeout=60, interrupt_when=lambda text: text.count("---") >= 5)
    plain = ANSI.sub("", screen)
    assert code == 130, plain[-3000:]
    assert "Traceback" not in plain and plain.count("---") >= 5
