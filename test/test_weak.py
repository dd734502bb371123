"""Weak supervision: the contrastive term (Shi et al. 2021, the survey's eq. 33) against its
definition on a tiny batch, rows with missing modalities, and the PolyDigits weak-supervision bench."""
import math

import numpy as np
import pytest
import torch

from mdgm_ros.core import ModalitySpec, ModelConfig, MultimodalVAE, compute_objective, iwae_log_likelihood
from mdgm_ros.core.families import contrastive
from mdgm_ros.core.model import posterior as post


@pytest.fixture
def mean_z(monkeypatch):
    monkeypatch.setattr(post, "reparameterize", lambda mu, logvar, n_samples=None, generator=None:
                        mu if n_samples is None else mu.expand(n_samples, *mu.shape))


def build(family="mvae", n_mod=2, **options):
    torch.manual_seed(2)
    specs = tuple(ModalitySpec(n, "vector", (d,), scale=0.7, hidden=(8,)) for n, d in zip("abc", (3, 4, 2)))[:n_mod]
    model = MultimodalVAE(ModelConfig(specs, latent_dim=2, family=family, family_options=options))
    return model, {n: torch.randn(4, model.specs[n].shape[0]) for n in model.names}


def log_p(model, x_a, x_b):
    mask = torch.ones(x_a.shape[0], 2, dtype=torch.bool)
    return iwae_log_likelihood(model, {"a": x_a, "b": x_b}, mask, n_samples=3)


@pytest.mark.parametrize("family", ["mvae", "mopoe", "yin"])
def test_contrastive_term_is_eq33_in_both_directions_with_shifted_negatives(mean_z, family):
    model, x = build(family)
    negatives = 2
    out = contrastive.pair_term(model, x["a"], x["b"], 0, 1, negatives, K=3, generator=None)
    rows = range(4)
    for b in rows:
        positive = log_p(model, x["a"][b:b + 1], x["b"][b:b + 1])
        forward = torch.logsumexp(torch.cat([log_p(model, x["a"][b:b + 1], x["b"][(b + n) % 4:(b + n) % 4 + 1])
                                             for n in range(1, negatives + 1)]), 0)
        backward = torch.logsumexp(torch.cat([log_p(model, x["a"][(b - n) % 4:(b - n) % 4 + 1], x["b"][b:b + 1])
                                              for n in range(1, negatives + 1)]), 0)
        expected = (positive - forward) + (positive - backward)
        assert torch.allclose(out[b], expected[0], atol=1e-4), (b, float(out[b]), float(expected))


def test_the_objective_option_adds_the_weighted_term_on_rows_that_observe_a_pair(mean_z):
    model, x = build("mvae", n_mod=3)
    mask = torch.tensor([[True, True, False], [True, True, True], [False, True, True], [True, False, False]])
    gen = lambda: torch.Generator().manual_seed(0)          # noqa: E731  (MVAE draws a subset)
    base = compute_objective(model, x, mask, generator=gen())
    options = {"weight": 0.5, "negatives": 3, "K": 2}
    with_term = compute_objective(model, x, mask, generator=gen(), contrastive=options)
    term = with_term.terms["contrastive"]
    assert term[3] == 0 and (term[:3] != 0).all()          # row 3 observes one modality: no pair
    assert torch.allclose(with_term.loss, base.loss - 0.5 * term, atol=1e-5)
    # by hand for the pair (a, b): rows 0 and 1 observe it, one negative each (the other row)
    pair = contrastive.pair_term(model, x["a"][:2], x["b"][:2], 0, 1, 3, 2, None)
    pair_bc = contrastive.pair_term(model, x["b"][1:3], x["c"][1:3], 1, 2, 3, 2, None)
    assert torch.allclose(term[0], pair[0], atol=1e-4)
    assert torch.allclose(term[2], pair_bc[1], atol=1e-4)
    configured, _ = build("mvae", n_mod=3, contrastive=options)
    configured.load_state_dict(model.state_dict())
    assert torch.allclose(compute_objective(configured, x, mask, generator=gen()).loss, with_term.loss, atol=1e-5)


def test_contrastive_gradients_flow_and_bad_options_are_clear():
    model, x = build("mopoe")
    mask = torch.ones(4, 2, dtype=torch.bool)
    loss = compute_objective(model, x, mask, contrastive={"negatives": 2}).loss.mean()
    loss.backward()
    assert all(p.grad is not None for p in model.encoders.parameters())
    for bad in ({"negative": 2}, {"K": 0}, "yes"):
        with pytest.raises(ValueError, match="contrastive"):
            compute_objective(model, x, mask, contrastive=bad)
    assert math.isfinite(float(loss.detach()))


# ----------------------------------------------------------------------------- the bench's data
def test_missing_at_random_keeps_one_modality_per_row_and_drops_about_p():
    from mdgm_ros.bench.weak import missing_at_random, paired_share

    mask = missing_at_random(4000, 5, 0.8, np.random.default_rng(0))
    assert mask.any(1).all() and abs(mask.mean() - (0.2 + 0.8 ** 5 / 5)) < 0.01    # + the kept ones
    assert missing_at_random(10, 3, 0.0, np.random.default_rng(0)).all()
    paired = paired_share(1000, 2, 0.1, np.random.default_rng(0))
    assert paired.all(1).sum() == 100 and (paired.sum(1) >= 1).all() and (paired.sum(1) <= 2).all()


def test_weak_bench_trains_on_incomplete_rows_and_reports_coherence():
    from mdgm_ros.bench.weak import WeakConfig, markdown, run_weak

    torch.set_num_threads(1)
    config = WeakConfig("missing", ("mvae",), 1, n_train=64, n_test=40, n_modalities=2, epochs=1, batch_size=32,
                        classifier_epochs=1, missing=(0.0, 0.5))
    report = run_weak(config)
    conditions = [r["condition"] for r in report["runs"]]
    assert conditions == ["0% missing", "50% missing", "complete rows of 50% missing"]
    rows = [r["train_rows"] for r in report["runs"]]
    assert rows[0] == rows[1] == 64 and rows[2] < 64
    assert 0.5 < report["runs"][1]["observed_share"] < 1.0
    assert all(0.0 <= r["coherence"][1] <= 1.0 for r in report["runs"])
    assert "| mvae | 50% missing |" in markdown(report)


def test_bench_weak_from_the_cli_writes_its_report_and_refuses_bad_shares(tmp_path, capsys):
    from mdgm_ros.cli import main

    torch.set_num_threads(1)
    assert main(["bench", "weak", "contrastive", "--quick", "--families", "mvae", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "weak_contrastive.json").is_file()
    assert main(["bench", "weak", "missing", "--missing", "0,1.5"]) == 2
    assert "error: --missing shares must be in [0, 1)" in capsys.readouterr().out
