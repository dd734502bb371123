"""onnxruntime as the inference engine of a bundle's networks: the same fusion results as torch on CPU."""
from __future__ import annotations

import pytest
import torch

from mdgm_ros.core import Fuser, load_bundle
from mdgm_ros.core.engine import synthetic

pytest.importorskip("onnxruntime")
from mdgm_ros.onnx_engine import OrtNetwork, load_ort_bundle  # noqa: E402


def test_onnxruntime_networks_give_the_torch_fusion_results(trained_bundle):
    out, _ = trained_bundle
    reference = load_bundle(out)
    engine = load_ort_bundle(out, providers=["CPUExecutionProvider"])
    model = engine.model
    assert all(isinstance(model.encoders[n], OrtNetwork) and isinstance(model.decoders[n], OrtNetwork)
               for n in model.names)
    data = synthetic.make_dataset(model.config.modalities, 6, seed=2)
    raw = {k: torch.from_numpy(v) for k, v in data.raw.items()}
    for observed in ([True, True, False, True], [True, False, True, True]):
        mask = torch.tensor([observed] * 6)
        want = Fuser(reference.model, reference.calibration)(raw, mask)
        got = Fuser(model, engine.calibration)(raw, mask)
        torch.testing.assert_close(got.latent_mean, want.latent_mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.latent_std, want.latent_std, rtol=1e-4, atol=1e-4)
        for name, imputation in want.imputed.items():
            torch.testing.assert_close(got.imputed[name].mean, imputation.mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-3, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("objective,private_dim", [("temporal", None), ("temporal_ms", 3)])
def test_onnxruntime_runs_the_temporal_filter_as_torch_does(tmp_path, objective, private_dim):
    from conftest import small_specs

    from mdgm_ros.core import ModelConfig, MultimodalVAE, save_bundle
    from mdgm_ros.core.engine.filter import TemporalFilter
    from mdgm_ros.training.trainer import export_onnx

    torch.manual_seed(0)
    model = MultimodalVAE(ModelConfig(tuple(small_specs()), latent_dim=6, family=objective,
                                      private_dim=private_dim)).eval()
    out = save_bundle(tmp_path / objective, model, attach=lambda folder: export_onnx(model, folder))
    reference, engine = load_bundle(out).model, load_ort_bundle(out, providers=["CPUExecutionProvider"]).model
    assert isinstance(engine.extra["transition"], OrtNetwork)          # the transition runs in onnxruntime too
    data = synthetic.make_dataset(list(small_specs()), 5, seed=3)
    torch_filter, ort_filter = TemporalFilter(reference, horizon=3), TemporalFilter(engine, horizon=3)
    for t in range(5):                                                  # the state carries over: 5 steps
        raw = {k: torch.from_numpy(v[t:t + 1]) for k, v in data.raw.items()}
        mask = torch.tensor([[t % 3 != 0] + [True] * (len(model.names) - 1)])
        want, got = torch_filter(raw, mask), ort_filter(raw, mask)
        torch.testing.assert_close(got.latent_mean, want.latent_mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.predicted_mean, want.predicted_mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-3, atol=1e-3, equal_nan=True)


def test_a_bundle_without_onnx_files_is_a_clear_bundle_error(tmp_path):
    from conftest import small_specs

    from mdgm_ros.core import BundleError, ModelConfig, MultimodalVAE, save_bundle

    out = save_bundle(tmp_path / "plain", MultimodalVAE(ModelConfig(tuple(small_specs()), latent_dim=4)))
    with pytest.raises(BundleError, match="has no onnx_.*export.onnx: true"):
        load_ort_bundle(out, providers=["CPUExecutionProvider"])
