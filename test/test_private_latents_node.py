"""A bundle with private latents from `mdgm-ros train` on a simulator bag, run by the fusion node over real
DDS: the shared c on ~/latent, each observed modality's s_m on ~/latent_private/<modality>, both in
model_info."""
from __future__ import annotations

import json

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_env import ROOT, FusionRun, spin_until

from mdgm_ros.core import load_bundle
from mdgm_ros.training.trainer import run_training


def test_the_fusion_node_publishes_each_modality_s_private_latent(sim_bag, tmp_path):

    from mdgm_ros.msg import Latent, ModelInfo

    bundle = tmp_path / "mmjsd_ms"
    run_training([str(sim_bag[0])], ROOT / "config" / "train.yaml", bundle, device="cpu", show_bar=False,
                 overrides={"training.epochs": 1, "data.block_s": 3.0, "export.onnx": False, "data.cache": False,
                            "model_overrides.fusion": None, "model_overrides.family": "mmjsd_ms",
                            "model_overrides.private_dim": 3}, log=lambda m: None)
    model = load_bundle(bundle).model
    assert model.private_dim == 3
    # the bag it learned from, looped (streams of other data would be out of its training range)
    run = FusionRun.start(bundle, tmp_path, "-p", "use_sim_time:=true", probe_name="private_probe",
                          streams_module="mdgm_ros", stream_args=("play", str(sim_bag[0]), "--loop", "--clock"))
    node, probe = run.node, run.probe
    got: dict[str, list] = {"latent": [], "info": [], **{n: [] for n in model.names}}
    probe.create_subscription(Latent, "/mdgm_fusion/latent", got["latent"].append, 50)
    for name in model.names:
        probe.create_subscription(Latent, f"/mdgm_fusion/latent_private/{name}", got[name].append, 50)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    probe.create_subscription(ModelInfo, "/mdgm_fusion/model_info", got["info"].append, latched)
    try:
        assert spin_until(probe, lambda: len(got["latent"]) >= 5 and got["info"]
                          and all(len(got[n]) >= 3 for n in model.names), 120), \
            (str({k: len(v) for k, v in got.items()}) + (tmp_path / "node.log").read_text()[-2000:])
        assert len(got["latent"][-1].mean) == model.latent_dim
        for name in model.names:
            msg = got[name][-1]
            assert len(msg.mean) == 3 and len(msg.std) == 3 and min(msg.std) > 0
            assert list(msg.modalities) == list(model.names) and msg.present[model.names.index(name)]
        details = json.loads(got["info"][-1].details_json)
        assert (details["latent_private"]["dim"] == 3
                and details["latent_private"]["topic"] == "~/latent_private/<modality>")
        assert node.poll() is None
    finally:
        run.stop()
