"""~/reload_model under attack, over real DDS across processes: every hostile bundle is refused with its
reason, the node stays up and keeps publishing the old model's latents, a bundle outside
``bundle_roots`` is refused, and a slow load runs in the background while the latents keep flowing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest
from ros_env import FusionRun, call, spin_until
from test_fusion_node import _bundle

from mdgm_ros.core.engine import bundle as bundle_mod

SECRET = b"TOPSECRET-outside-the-bundle\n"
SLOW_EXTRA_BYTES = 400 << 20          # sparse; hashing it takes a noticeable fraction of a second


def _relist(path, name: str, digest: str | None = None) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][name] = digest or hashlib.sha256((path / name).read_bytes()).hexdigest()
    manifest["content_hash"] = bundle_mod.content_hash(manifest["files"])
    (path / "manifest.json").write_text(json.dumps(manifest))


def _hostile(roots, good):
    """name -> (bundle path, expected words of the refusal)."""
    cases = {}

    def copy(name):
        path = roots / name
        shutil.copytree(good, path)
        return path

    outside = roots.parent / "outside.txt"
    outside.write_bytes(SECRET)
    path = copy("dotdot")
    _relist(path, "../outside.txt", hashlib.sha256(SECRET).hexdigest())
    cases["dotdot"] = (path, "not a plain file name")
    path = copy("absolute")
    _relist(path, str(outside), hashlib.sha256(SECRET).hexdigest())
    cases["absolute"] = (path, "not a plain file name")
    path = copy("symlink")
    (path / "extra").symlink_to(outside)
    _relist(path, "extra", hashlib.sha256(SECRET).hexdigest())
    cases["symlink"] = (path, "extra is a symbolic link")
    path = copy("procmem")
    (path / "mem").symlink_to("/proc/self/mem")
    _relist(path, "mem", "0" * 64)
    cases["procmem"] = (path, "mem is a symbolic link")
    path = copy("fifo")
    os.mkfifo(path / "pipe")
    _relist(path, "pipe", "0" * 64)
    cases["fifo"] = (path, "pipe is not a regular file")
    path = copy("longname")
    _relist(path, "n" * 4000, "0" * 64)
    cases["longname"] = (path, "too long")
    cases["enametoolong"] = (roots / ("x" * 300), "File name too long")
    path = copy("nancalib")
    data = json.loads((path / "calibration.json").read_text())
    data["std"] = {k: float("nan") for k in data["std"]}
    (path / "calibration.json").write_text(json.dumps(data))
    _relist(path, "calibration.json")
    cases["nancalib"] = (path, "calibration.json is invalid")
    path = copy("huge")
    with open(path / "huge.bin", "wb") as fh:
        fh.truncate(3 << 30)
    _relist(path, "huge.bin", "0" * 64)
    cases["huge"] = (path, "over the limit")
    cases["outside_roots"] = (roots.parent / "elsewhere", "outside the allowed bundle folders")
    shutil.copytree(good, roots.parent / "elsewhere")
    cases["etc"] = ("/etc", "outside the allowed bundle folders")
    return cases


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from mdgm_ros.msg import Latent, ModelInfo

    tmp = tmp_path_factory.mktemp("reload")
    roots = tmp / "roots"
    good = _bundle(roots / "model_a", 8, 0)
    run = FusionRun.start(good, tmp, probe_name="reload_probe")
    node, probe = run.node, run.probe
    record = {"latent": [], "info": []}
    probe.create_subscription(Latent, "/mdgm_fusion/latent", lambda m: record["latent"].append(time.monotonic()), 50)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    probe.create_subscription(ModelInfo, "/mdgm_fusion/model_info", lambda m: record["info"].append(m), latched)
    try:
        assert spin_until(probe, lambda: record["latent"], 90), (tmp / "node.log").read_text()[-3000:]
        yield {"probe": probe, "record": record, "node": node, "tmp": tmp, "roots": roots, "good": good}
    finally:
        run.stop()


def _reload(ros, path):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from std_srvs.srv import Trigger

    probe = ros["probe"]
    value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(path))
    setter = probe.create_client(SetParameters, "/mdgm_fusion/set_parameters")
    assert call(probe, setter, SetParameters.Request(parameters=[Parameter(name="bundle", value=value)]),
                timeout=30).results[0].successful
    return call(probe, probe.create_client(Trigger, "/mdgm_fusion/reload_model"), Trigger.Request(), timeout=60)


def test_hostile_bundles_are_refused_and_the_node_keeps_running(ros):
    cases = _hostile(ros["roots"], ros["good"])
    for name, (path, words) in cases.items():
        response = _reload(ros, path)
        assert not response.success and words in response.message, (name, response.message)
        assert SECRET.decode().strip() not in response.message
        assert hashlib.sha256(SECRET).hexdigest()[:8] not in response.message
        since = time.monotonic()
        assert spin_until(ros["probe"], lambda: any(t > since for t in ros["record"]["latent"]), 30), \
            f"no latent after the {name} reload: " + (ros["tmp"] / "node.log").read_text()[-2000:]
        assert ros["node"].poll() is None
    assert ros["record"]["info"][-1].latent_dim == 8


def test_bundle_roots_is_read_only(ros):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    probe = ros["probe"]
    value = ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=["/"])
    setter = probe.create_client(SetParameters, "/mdgm_fusion/set_parameters")
    result = call(probe, setter, SetParameters.Request(parameters=[Parameter(name="bundle_roots", value=value)]),
                  timeout=30).results[0]
    assert not result.successful and "read-only" in result.reason


def test_a_slow_load_runs_in_the_background_then_swaps(ros):
    slow = _bundle(ros["roots"] / "model_b", 6, 1)
    with open(slow / "padding.bin", "wb") as fh:
        fh.truncate(SLOW_EXTRA_BYTES)
    digest = hashlib.sha256()
    with open(slow / "padding.bin", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    _relist(slow, "padding.bin", digest.hexdigest())
    record = ros["record"]
    asked = time.monotonic()
    response = _reload(ros, slow)
    answered = time.monotonic()
    assert response.success, response.message
    model_id = bundle_mod.model_id_for("test6", json.loads((slow / "manifest.json").read_text())["content_hash"])
    assert model_id in response.message
    during = [t for t in record["latent"] if asked < t < answered]
    assert during, f"no latent during the {answered - asked:.2f} s reload: the load blocked the streams"
    assert spin_until(ros["probe"], lambda: record["info"][-1].model_id == model_id, 10)
