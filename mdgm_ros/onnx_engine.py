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

from .core import BundleError, load_bundle
from .core.engine.export import UnimodalPosterior, export_parts

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED if p in available] or ["CPUExecutionProvider"]


def _session_options(threads: int):
    """``threads`` > 0: that many intra-op threads, one inter-op thread, and no spin-waiting between
    runs (a live node runs one small graph after another on cores shared with torch and DDS)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def providers_for(device: torch.device) -> list[str]:
    """The providers for a torch device: on CUDA the GPU ones available (TensorRT, CUDA) then the CPU;
    on the CPU the CPU only."""
    return default_providers() if device.type == "cuda" else ["CPUExecutionProvider"]


class OrtNetwork(nn.Module):
    """One exported network as a module: torch tensors in, torch tensors out, onnxruntime inside."""

    def __init__(self, file: Path, inputs: Sequence[str], outputs: Sequence[str], providers: Sequence[str],
                 threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        self.file, self.inputs, self.outputs = Path(file), list(inputs), list(outputs)
        self.session = ort.InferenceSession(str(file), _session_options(threads), providers=list(providers))

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


def load_ort_bundle(path: str | Path, providers: Sequence[str] | None = None, threads: int = 0, **load_options):
    """The bundle with its networks run by onnxruntime (an error if the bundle was saved without ONNX).
    ``threads``: intra-op threads per session (0: onnxruntime's default); ``load_options`` go to
    :func:`~mdgm_ros.core.load_bundle` (``device``, ``expect_modalities``)."""
    bundle = load_bundle(path, **load_options)
    folder = Path(path)
    providers = list(providers) if providers else default_providers()
    swapped = 0
    for part in export_parts(bundle.model):
        file = folder / f"{part.stem}.onnx"
        slot = _slot(bundle.model, part)
        if slot is None:
            continue
        if not file.is_file():
            raise BundleError(f"{folder} has no {file.name}: train with export.onnx: true for onnxruntime")
        container, key = slot
        try:
            container[key] = OrtNetwork(file, part.inputs, part.outputs, providers, threads)
        except Exception as err:                  # onnxruntime's own errors have no common base class
            raise BundleError(f"onnxruntime cannot load {file.name}: {err}") from err
        swapped += 1
    bundle.model.eval()
    bundle.model.ort_networks = swapped
    return bundle
