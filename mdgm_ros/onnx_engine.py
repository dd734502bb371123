"""onnxruntime as an alternative inference engine for a bundle's networks.

A bundle carries every network of its model as ONNX (``onnx_<modality>_encoder.onnx``,
``onnx_<modality>_decoder.onnx``, private and subset encoders, the temporal transition; see
:func:`~mdgm_ros.core.export.export_parts`). :func:`load_ort_bundle` loads the bundle as usual, then
swaps each of those torch modules for an :class:`OrtNetwork` that runs the ONNX graph in an
onnxruntime session, so the family's own inference code (:class:`~mdgm_ros.core.Fuser`: posterior
fusion, imputation, anomaly scores) runs unchanged with onnxruntime doing the network work.
Providers default to what the installed onnxruntime offers, best first (TensorRT, CUDA, then CPU);
``providers=["CPUExecutionProvider"]`` pins the CPU. Front ends (audio log-mel) and the fusion
arithmetic stay in torch. The pip ``onnxruntime`` wheel is CPU-only; on a Jetson or GPU box install
``onnxruntime-gpu`` (it brings the CUDA and TensorRT providers) instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .core import load_bundle
from .core.export import UnimodalPosterior, export_parts

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED if p in available] or ["CPUExecutionProvider"]


class OrtNetwork(nn.Module):
    """One exported network as a module: torch tensors in, torch tensors out, onnxruntime inside."""

    def __init__(self, file: Path, inputs: Sequence[str], outputs: Sequence[str], providers: Sequence[str]):
        super().__init__()
        import onnxruntime as ort

        self.file, self.inputs, self.outputs = Path(file), list(inputs), list(outputs)
        self.session = ort.InferenceSession(str(file), providers=list(providers))

    def forward(self, *args: torch.Tensor) -> Any:
        feed = {name: np.ascontiguousarray(x.detach().float().cpu().numpy()) for name, x in zip(self.inputs, args)}
        results = [torch.from_numpy(r).to(args[0].device) for r in self.session.run(self.outputs, feed)]
        return results[0] if len(results) == 1 else tuple(results)


def _slot(model, part) -> tuple[nn.ModuleDict, str] | None:
    """(container, key) that holds the torch module of an exported part; None for a wrapper."""
    if isinstance(part.module, UnimodalPosterior):
        return None                               # a family computation around a network: stays in torch
    for container in (model.encoders, model.decoders, model.private_encoders, model.subset_encoders, model.extra):
        for key, module in container.items():
            if module is part.module:
                return container, key
    return None


def load_ort_bundle(path: str | Path, providers: Sequence[str] | None = None):
    """The bundle with its networks run by onnxruntime (an error if the bundle was saved without ONNX)."""
    bundle = load_bundle(path)
    folder = Path(path)
    providers = list(providers) if providers else default_providers()
    swapped = 0
    for part in export_parts(bundle.model):
        file = folder / f"{part.stem}.onnx"
        slot = _slot(bundle.model, part)
        if slot is None:
            continue
        if not file.is_file():
            raise FileNotFoundError(f"{folder} has no {file.name}: train with export.onnx: true for onnxruntime")
        container, key = slot
        container[key] = OrtNetwork(file, part.inputs, part.outputs, providers)
        swapped += 1
    bundle.model.eval()
    bundle.model.ort_networks = swapped
    return bundle
