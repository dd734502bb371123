"""Model families: the registry, Table 1 properties backed by behaviour, stages, and short training."""
import itertools
import json

import numpy as np
import pytest
import torch
from conftest import assert_onnx_round_trip

from mdgm_ros.core import (
    Fuser,
    ModalitySpec,
    ModelConfig,
    MultimodalVAE,
    compute_objective,
    conditional_log_likelihood,
    impute,
    iwae_log_likelihood,
)
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine import synthetic
from mdgm_ros.core.families import FAMILIES, FamilyError, get_family
from mdgm_ros.core.families.table import families_command, markdown_table
from mdgm_ros.core.model.family import LABELS

NAMES = list(FAMILIES)
MULTI_STAGE = [n for n, f in FAMILIES.items() if len(f.stages) > 1]


def vector_specs(n_mod: int, dim: int = 6, hidden=(32, 32)) -> tuple[ModalitySpec, ...]:
    return tuple(ModalitySpec(f"m{j}", "vector", (dim,), scale=0.3, learn_scale=True, hidden=hidden)
                 for j in range(n_mod))


def make_model(family: str, n_mod: int = 3, latent_dim: int = 4, **kw) -> MultimodalVAE:
    torch.manual_seed(0)
    return MultimodalVAE(ModelConfig(vector_specs(n_mod, **kw), latent_dim=latent_dim, family=family))


def subsets(n_mod: int):
    for k in range(1, n_mod + 1):
        for combo in itertools.combinations(range(n_mod), k):
            mask = torch.zeros(n_mod, dtype=torch.bool)
            mask[list(combo)] = True
            yield mask


# ----------------------------------------------------------------------------- the table
def test_families_table_lists_every_registered_family():
    lines = []
    assert families_command(as_json=True, write=lines.append) == 0
    rows = json.loads(lines[0])["families"]
    assert [r["family"] for r in rows] == NAMES
    for row in rows:
        assert isinstance(row["missing_modalities"], bool) and isinstance(row["end_to_end"], bool)
        assert row["reference"] and row["aggregated_inference"] and row["stages"]
    table = markdown_table()
    assert all(f"| {name} |" in table for name in NAMES)
    assert "| jvae | joint encoder q(z\\|X) only | × |" in table


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        ModelConfig(vector_specs(2), family="nope")


@pytest.mark.parametrize("name", NAMES)
def test_every_family_names_its_options_and_refuses_one_it_does_not_take(name):
    """Its defaults and the common contrastive term are options; a misspelt one is refused when the
    config is made, naming the family's options, instead of failing at the first training step."""
    family = get_family(name)
    known = family.option_names()
    if known is None:                                    # the objective takes **kwargs
        return
    assert set(family.option_defaults) <= set(known) and "contrastive" in known
    assert family.table_row()["options"] == known                       # `mdgm-ros families --json`
    with pytest.raises(ValueError, match=f"{name} has no objective option 'nope' \\(its options: "):
        ModelConfig(vector_specs(3), family=name, family_options={"nope": 1})
    if name in ("jmvae", "m2vae", "vaevae"):             # read by the model when it builds its encoders
        ModelConfig(vector_specs(3), family=name, family_options={"subsets": [["m0", "m1"]]})


# ----------------------------------------------------------------------------- missing modalities
@pytest.mark.parametrize("name", NAMES)
def test_inference_from_every_subset_or_a_clear_refusal(name):
    model = make_model(name).eval()
    family = model.family
    feats = {n: torch.randn(4, 6) for n in model.names}
    for subset in subsets(3):
        mask = subset.expand(4, -1).clone()
        targets = [n for j, n in enumerate(model.names) if not bool(subset[j])]
        if not family.properties.missing_modalities and targets:
            with pytest.raises(FamilyError, match=repr(name)):
                impute(model, feats, mask, targets)
            with pytest.raises(FamilyError, match=repr(name)):
                Fuser(model)({n: feats[n] for j, n in enumerate(model.names) if subset[j]}, mask)
            continue
        with torch.no_grad():
            mean, logvar = model.posterior_summary(*model.experts(model.complete(feats, mask), mask), mask)
            assert torch.isfinite(mean).all() and torch.isfinite(logvar).all()
            for imp in impute(model, feats, mask, targets, n_samples=3).values():
                assert torch.isfinite(imp.mean).all() and torch.isfinite(imp.std).all()
            assert torch.isfinite(iwae_log_likelihood(model, feats, mask, n_samples=5)).all()
            if targets:
                target = (~subset).expand(4, -1)
                assert torch.isfinite(conditional_log_likelihood(model, feats, mask, target, 5)).all()
        result = Fuser(model)({n: feats[n] for j, n in enumerate(model.names) if subset[j]}, mask)
        assert torch.isfinite(result.latent_mean).all() and set(result.imputed) == set(targets)


def test_surrogate_rule_uses_the_joint_encoder_for_the_full_set_and_surrogates_otherwise():
    model = make_model("jmvae").eval()
    feats = {n: torch.randn(2, 6) for n in model.names}
    full = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        mu, logvar = model.experts(feats, full)
        joint = model.subset_encoders["m0__m1__m2"](*(feats[n] for n in model.names))
        assert torch.allclose(model.posterior_summary(mu, logvar, full)[0], joint[0])
        single = torch.tensor([[False, True, False]] * 2)
        assert torch.allclose(model.posterior_summary(mu, logvar, single)[0], mu[1])
        pair = torch.tensor([[True, False, True]] * 2)
        prec = torch.exp(-logvar[0]) + torch.exp(-logvar[2])
        expected = (mu[0] * torch.exp(-logvar[0]) + mu[2] * torch.exp(-logvar[2])) / prec
        assert torch.allclose(model.posterior_summary(mu, logvar, pair)[0], expected, atol=1e-5)


def test_listed_subsets_get_their_own_encoder():
    model = MultimodalVAE(ModelConfig(vector_specs(3), latent_dim=4, family="m2vae",
                                      family_options={"subsets": [["m2", "m0"]]}))
    assert model.subset_names == [("m0", "m1", "m2"), ("m0", "m2")]
    out = compute_objective(model, {n: torch.randn(3, 6) for n in model.names}, torch.ones(3, 3, dtype=torch.bool))
    assert "elbo_m0+m2" in out.terms and "kl_joint_m0+m2" in out.terms
    with pytest.raises(ValueError, match="between 2 and 2"):
        MultimodalVAE(ModelConfig(vector_specs(3), family="jmvae", family_options={"subsets": [["m0"]]}))


# ----------------------------------------------------------------------------- scalability
def parameter_counts(name: str, **options) -> list[int]:
    counts = []
    for n_mod in range(2, 7):
        config = ModelConfig(vector_specs(n_mod, hidden=(8,)), latent_dim=2, family=name, **options)
        counts.append(sum(p.numel() for p in MultimodalVAE(config).parameters()))
    return counts


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_grows_as_the_scalability_column_says(name):
    scalability = FAMILIES[name].properties.scalability
    counts = parameter_counts(name)
    steps = [b - a for a, b in zip(counts, counts[1:])]
    if scalability.startswith("linear") or "parameters linear" in scalability:      # pairwise: says which
        assert max(steps) - min(steps) <= 0.02 * min(steps), counts
    else:
        assert scalability.startswith("quadratic") or "parameters quadratic" in scalability, scalability
        second = [b - a for a, b in zip(steps, steps[1:])]
        assert min(second) > 0 and max(second) - min(second) <= 0.02 * min(second), counts


def test_listing_every_subset_makes_the_surrogate_families_exponential():
    """The check above can fail: with an encoder for every subset the growth is not linear."""
    counts = []
    for n_mod in range(3, 7):
        names = [f"m{j}" for j in range(n_mod)]
        every = [list(c) for k in range(2, n_mod) for c in itertools.combinations(names, k)]
        config = ModelConfig(vector_specs(n_mod, hidden=(8,)), latent_dim=2, family="jmvae",
                             family_options={"subsets": every})
        counts.append(sum(p.numel() for p in MultimodalVAE(config).parameters()))
    steps = [b - a for a, b in zip(counts, counts[1:])]
    assert steps[-1] > 2 * steps[0]


# ----------------------------------------------------------------------------- end-to-end / stages
@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_means_one_stage_and_every_parameter_trains_in_some_stage(name):
    family = FAMILIES[name]
    assert family.properties.end_to_end == (len(family.stages) == 1)
    model = make_model(name)
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert any(stage.trains_parameter(pname) for stage in family.stages), pname


def _snapshot(model, prefix):
    return {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith(prefix)}


def _changed(before, model):
    params = dict(model.named_parameters())
    return any(not torch.equal(v, params[k]) for k, v in before.items())


def _data(model, n=128, seed=0):
    data = synthetic.make_dataset(model.config.modalities, n, seed=seed)
    feats = training.raw_to_features(model, data.raw)
    mask = torch.from_numpy(data.mask)
    training.fit_normalization(model, feats, mask)
    return _with_labels(model, training.normalize_features(model, feats), data), mask


def _with_labels(model, feats, data):
    """Families with a label head (Tian et al.) get class labels: the cell of the hidden factor c on a
    4 x 4 grid (as the digit on PolyDigits, the task phase in bags)."""
    if getattr(model.family, "uses_labels", False):
        cells = np.clip(((data.factors + 1) * 2).astype(int), 0, 3)
        feats = {**feats, LABELS: torch.from_numpy(cells[:, 0] * 4 + cells[:, 1])}
    return feats


@pytest.mark.parametrize("name", MULTI_STAGE)
def test_multistage_training_trains_each_stage_s_parameters_only_and_resumes_inside_a_stage(name):
    model = make_model(name)
    feats, mask = _data(model)
    config = training.TrainConfig(epochs=4, batch_size=32, seed=1)
    trainer = training.Trainer(model, config)
    assert trainer.stage_epochs == [2, 2] and trainer.stage.name == model.family.stages[0].name
    first, second = model.family.stages
    frozen_first = {k: v for k, v in _snapshot(model, "").items() if not first.trains_parameter(k)}
    trainer.run_epoch(feats, mask)
    assert frozen_first and not _changed(frozen_first, model)
    trainer.run_epoch(feats, mask)
    assert trainer.stage.name == second.name
    state = trainer.state_dict()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert state["stage"] == second.name
    frozen_second = {k: v for k, v in _snapshot(model, "").items() if not second.trains_parameter(k)}
    record = trainer.run_epoch(feats, mask)
    assert record.stage == second.name and not _changed(frozen_second, model)
    assert all(p.requires_grad for p in model.parameters())        # the stage's freeze is undone
    after = {k: v.clone() for k, v in model.state_dict().items()}
    # resume from the checkpoint at the start of the second stage: the same epoch, bit for bit
    resumed_model = make_model(name)
    resumed_model.load_state_dict(weights)
    for n in model.names:
        resumed_model.set_normalization(n, model.specs[n].normalization)
    resumed = training.Trainer(resumed_model, config)
    resumed.load_state_dict(state)
    assert resumed.stage.name == second.name
    resumed.run_epoch(feats, mask)
    assert all(torch.equal(after[k], v) for k, v in resumed_model.state_dict().items())


def test_advance_stage_ends_a_stage_early_and_stage_epochs_must_add_up():
    model = make_model("telbo")
    trainer = training.Trainer(model, training.TrainConfig(epochs=6, stage_epochs=(4, 2)))
    assert trainer.stage.name == "joint" and trainer.advance_stage()
    assert trainer.epoch == 4 and trainer.stage.name == "unimodal" and not trainer.advance_stage()
    with pytest.raises(ValueError, match="summing to epochs=6"):
        training.Trainer(model, training.TrainConfig(epochs=6, stage_epochs=(4, 1)))
    assert training.Trainer(make_model("mvae"), training.TrainConfig(epochs=3)).stage_epochs == [3]


# ----------------------------------------------------------------------------- modality-specific
@pytest.mark.parametrize("name", NAMES)
def test_modality_specific_property_matches_the_latent_layout(name):
    """No family here has private latents: a family that claims them must declare their sizes."""
    family = FAMILIES[name]
    declared = getattr(family, "private_latent_dims", None)
    assert family.properties.modality_specific_latents == bool(declared)


# ----------------------------------------------------------------------------- short training
@pytest.mark.parametrize("name", NAMES)
def test_short_training_beats_the_mean_predictor_and_the_prior(name):
    torch.set_num_threads(1)
    model = make_model(name, latent_dim=4)
    feats, mask = _data(model, n=512, seed=0)
    test_feats, test_mask = _data_like(model, n=200, seed=1)
    config = training.TrainConfig(epochs=20, batch_size=64, lr=3e-3,
                                  beta=training.BetaSchedule("linear", 0.0, 1.0, 100), seed=0)
    training.train(model, feats, mask, config)
    model.eval()
    baseline = {n: float(((test_feats[n] - feats[n].mean(0)) ** 2).mean()) for n in model.names}
    with torch.no_grad():
        if not model.family.properties.missing_modalities:
            recon = impute(model, test_feats, test_mask, model.names)
            for n in model.names:
                assert float(((recon[n].mean - test_feats[n]) ** 2).mean()) < 0.5 * baseline[n], n
            return
        empty = torch.zeros_like(test_mask)
        for j, source in enumerate(model.names):
            cond = torch.zeros_like(test_mask)
            cond[:, j] = True
            targets = [n for n in model.names if n != source]
            imputed = impute(model, test_feats, cond, targets)
            for n in targets:
                mse = float(((imputed[n].mean - test_feats[n]) ** 2).mean())
                assert mse < 0.7 * baseline[n], (source, n, mse, baseline[n])
            target = ~cond
            gen = torch.Generator().manual_seed(0)
            given = conditional_log_likelihood(model, test_feats, cond, target, 16, gen).mean()
            prior = conditional_log_likelihood(model, test_feats, empty, target, 16, gen).mean()
            assert given > prior, (source, float(given), float(prior))


def _data_like(model, n, seed):
    data = synthetic.make_dataset(model.config.modalities, n, seed=seed)
    feats = training.raw_to_features(model, data.raw)
    return _with_labels(model, training.normalize_features(model, feats), data), torch.from_numpy(data.mask)


def test_get_family_answers_for_the_model_config():
    assert get_family("telbo").stages[1].trains_parameter("encoders.m0.head.weight")
    assert not get_family("telbo").stages[1].trains_parameter("subset_encoders.m0__m1.head.head.weight")


# ----------------------------------------------------------------------------- custom networks
class TinyEncoder(torch.nn.Module):
    def __init__(self, spec, latent_dim, width=5):
        super().__init__()
        self.net = torch.nn.Linear(spec.shape[0], 2 * latent_dim)
        self.width = width

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


class TinyDecoder(torch.nn.Module):
    def __init__(self, spec, latent_dim):
        super().__init__()
        self.net = torch.nn.Linear(latent_dim, spec.shape[0])

    def forward(self, z):
        return self.net(z)


class TinyJoint(torch.nn.Module):
    def __init__(self, specs, latent_dim):
        super().__init__()
        self.net = torch.nn.Linear(sum(s.shape[0] for s in specs), 2 * latent_dim)

    def forward(self, *xs):
        return self.net(torch.cat(xs, -1)).chunk(2, dim=-1)


def test_custom_networks_plug_in_by_name_and_their_bundles_load_without_pickle(tmp_path):
    from mdgm_ros.core import load_bundle, save_bundle
    from mdgm_ros.core.model.networks import register_network

    register_network("encoder", "tiny_test", TinyEncoder, replace=True)
    register_network("decoder", "tiny_test", TinyDecoder, replace=True)
    register_network("subset", "tiny_test", TinyJoint, replace=True)
    networks = {"m0": {"encoder": {"name": "tiny_test", "width": 7}, "decoder": {"name": "tiny_test"}},
                "subset": {"name": "tiny_test"}}
    config = ModelConfig(vector_specs(2), latent_dim=3, family="jmvae", networks=networks)
    model = MultimodalVAE(config)
    assert isinstance(model.encoders["m0"], TinyEncoder) and model.encoders["m0"].width == 7
    assert isinstance(model.decoders["m0"], TinyDecoder) and isinstance(model.subset_encoders["m0__m1"], TinyJoint)
    assert not isinstance(model.encoders["m1"], TinyEncoder)
    loaded = load_bundle(save_bundle(tmp_path / "custom", model)).model
    assert loaded.config.networks == networks
    x = {n: torch.randn(2, 6) for n in model.names}
    mask = torch.ones(2, 2, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded.posterior_summary(*loaded.experts(x, mask), mask)[0],
                           model.posterior_summary(*model.experts(x, mask), mask)[0])
    with pytest.raises(ValueError, match="unknown encoder network 'missing'"):
        MultimodalVAE(ModelConfig(vector_specs(2), networks={"m0": {"encoder": {"name": "missing"}}}))
    with pytest.raises(ValueError, match="neither a modality"):
        ModelConfig(vector_specs(2), networks={"camera": {}})


@pytest.mark.parametrize("name", NAMES)
def test_every_family_round_trips_through_a_bundle(name, tmp_path):
    from mdgm_ros.core import load_bundle, save_bundle

    model = make_model(name).eval()
    loaded = load_bundle(save_bundle(tmp_path / name, model)).model
    assert loaded.family is model.family
    x = {n: torch.randn(2, 6) for n in model.names}
    mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded.experts(x, mask)[0], model.experts(x, mask)[0])


@pytest.mark.parametrize("name", ["mopoe", "jvae", "telbo", "bridged"])
def test_every_network_of_a_family_exports_to_onnx_and_matches_torch(name, tmp_path):
    pytest.importorskip("onnxruntime")

    from mdgm_ros.core.engine.export import export_parts

    model = make_model(name).eval()
    parts = export_parts(model)
    stems = {p.stem for p in parts}
    assert {f"onnx_{n}_decoder" for n in model.names} <= stems
    assert ({f"onnx_{n}_encoder" for n in model.names} <= stems) == model.family.properties.missing_modalities
    assert any(s.startswith("onnx_subset_") for s in stems) == bool(model.subset_names)
    assert_onnx_round_trip(parts, tmp_path)


def test_every_capability_the_code_asks_is_declared_on_every_family_with_typed_options():
    """What the rest of the code asks a family is declared on the interface (no getattr with a default):
    labels, the temporal filter, private latents, per-modality latent spaces, extra exported networks,
    and the options with their types and defaults."""
    for name, family in FAMILIES.items():
        assert isinstance(family.uses_labels, bool) and isinstance(family.temporal, bool), name
        assert isinstance(family.private_latent_dims, int) and family.private_latent_dims >= 0, name
        row = json.loads(json.dumps(family.table_row()))                  # JSON-clean, as `families --json`
        names = family.option_names()
        assert (row["options"] is None) == (names is None), name
        assert set(row["option_types"]) == set(names or ()), name
        assert all(set(v) == {"type", "default"} for v in row["option_types"].values()), name
    assert {n for n, f in FAMILIES.items() if f.own_latent_spaces} == {"avae", "tian"}
    assert {n for n, f in FAMILIES.items() if f.uses_labels} == {"mfm", "tian"}
    assert {n for n, f in FAMILIES.items() if f.temporal} == {"temporal", "temporal_ms"}
    assert FAMILIES["mmvae"].option_types()["K"] == ("int", 8)
