"""onnxruntime as the inference engine of a bundle's networks: the same fusion results as torch on CPU."""
from __future__ import annotations

import pytest
import torch

from mdgm_ros.core import Fuser, load_bundle
from mdgm_ros.core import synthetic

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

