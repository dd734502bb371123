"""Every family of the registry through the user's path: `mdgm-ros train` on two simulator bags, one
of them recorded without the tactile glove (the topic absent from the whole bag), writes a bundle, and a
running fusion_node loads each bundle through ~/reload_model and publishes its latents over
real DDS (one node process, another for the streams, the probe in this one)."""
from __future__ import annotations

import time

import pytest
from ros_env import ROOT, FusionRun, call, spin_until
from test_training_ux import rewrite_bag

from mdgm_ros.core import load_bundle
from mdgm_ros.core.families import FAMILIES
from mdgm_ros.training.trainer import run_training

ONE_EPOCH = {"training.epochs": 1, "data.block_s": 3.0, "export.onnx": False, "model_overrides.fusion": None}
# bundle name -> (family, objective options): every family with its defaults, and DMVAE-Lee's concrete c
VARIANTS = {**{name: (name, {}) for name in FAMILIES}, "dmvae_lee-concrete": ("dmvae_lee", {"shared": "concrete"})}


@pytest.fixture(scope="module")
def family_bundles(sim_bag, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:      # both bags aligned once, in a private cache
        patch.setenv("MDGM_ROS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield _train_every_family(sim_bag, tmp_path_factory)


def _train_every_family(sim_bag, tmp_path_factory):
    roots = tmp_path_factory.mktemp("family_bundles")
    no_tactile = rewrite_bag(sim_bag[0], tmp_path_factory.mktemp("gloveless") / "no_tactile", {"/tactile": None})
    out = {}
    for name, (family, options) in VARIANTS.items():
        path = roots / name
        lines: list[str] = []
        run_training([str(sim_bag[0]), str(no_tactile)], ROOT / "config" / "train.yaml", path, device="cpu",
                     show_bar=False, log=lines.append,
                     overrides={**ONE_EPOCH, "model_overrides.family": family,
                                **({"model_overrides.family_options": options} if options else {}),
                                "data.absent_ok": ["tactile"]})
        assert any("no_tactile: no tactile (data.absent_ok): trained as missing" in line for line in lines), name
        out[name] = path
    return roots, out


def test_train_writes_a_bundle_of_every_family(family_bundles):
    _, bundles = family_bundles
    for name, path in bundles.items():
        bundle = load_bundle(path)
        family, options = VARIANTS[name]
        assert bundle.model.config.family == family and bundle.model.family.name == family
        assert all(bundle.model.config.family_options.get(k) == v for k, v in options.items()), name
        assert (bundle.calibration is not None) == bundle.model.family.properties.missing_modalities, family
        training = bundle.manifest["extra"]["training"]
        assert len(training["bags"]) == 2 and training["absent_ok"] == ["tactile"], family


def test_evaluate_runs_on_every_family(family_bundles, sim_bag, tmp_path):
    from mdgm_ros.evaluation.evaluate import evaluate_bags

    _, bundles = family_bundles
    for family in ("jvae", "telbo", "bridged", "dmvae_lee-concrete"):
        report = evaluate_bags(bundles[family], [str(sim_bag[0])],
                               plots=tmp_path / family, log=lambda m: None)
        assert report["latent"]["samples"] > 0 and (tmp_path / family / "latent_2d.png").is_file(), family
        if load_bundle(bundles[family]).model.family.properties.missing_modalities:
            assert set(report["imputation"]) == {"camera", "joints", "audio", "tactile"} and not report["notes"]
        else:
            assert report["imputation"] == {} and "infers only from all modalities" in report["notes"][0]


def test_the_fusion_node_runs_every_family_bundle_over_dds(family_bundles, tmp_path):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from std_srvs.srv import Trigger

    from mdgm_ros.msg import Latent

    roots, bundles = family_bundles
    first = bundles["mvae"]
    run = FusionRun.start(first, tmp_path, "-p", f"bundle_roots:=['{roots}']", probe_name="family_probe")
    node, probe = run.node, run.probe
    seen: dict[str, int] = {}
    last_mean: dict[str, list[float]] = {}

    def on_latent(message):
        seen[message.model_id] = seen.get(message.model_id, 0) + 1
        last_mean[message.model_id] = list(message.mean)

    private_seen: dict[str, int] = {}

    def on_private(message):
        private_seen[message.model_id] = private_seen.get(message.model_id, 0) + 1

    probe.create_subscription(Latent, "/mdgm_fusion/latent", on_latent, 50)
    probe.create_subscription(Latent, "/mdgm_fusion/latent_private/tactile", on_private, 50)
    setter = probe.create_client(SetParameters, "/mdgm_fusion/set_parameters")
    reload = probe.create_client(Trigger, "/mdgm_fusion/reload_model")
    try:
        for family, path in bundles.items():
            bundle = load_bundle(path)
            model_id = bundle.model_id
            value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(path))
            assert call(probe, setter, SetParameters.Request(parameters=[Parameter(name="bundle", value=value)]),
                        timeout=30).results[0].successful, family
            answer = call(probe, reload, Trigger.Request(), timeout=120)
            assert answer.success, (family, answer.message)
            since = time.monotonic()
            assert spin_until(probe, lambda: seen.get(model_id, 0) >= 3, 60), \
                f"{family}: no latents from {model_id} {time.monotonic() - since:.0f} s after the reload; " \
                + (tmp_path / "node.log").read_text()[-2000:]
            if bundle.model.private_dim:                        # the private latents reach the wire too
                assert spin_until(probe, lambda: private_seen.get(model_id, 0) >= 1, 30), \
                    f"{family}: nothing on ~/latent_private/tactile from {model_id}"
            if VARIANTS[family][1].get("shared") == "concrete":     # one group: category probabilities
                assert abs(sum(last_mean[model_id]) - 1.0) < 1e-3 and min(last_mean[model_id]) >= 0.0, family
            assert node.poll() is None
    finally:
        run.stop()
