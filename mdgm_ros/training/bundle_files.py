"""Files a trained bundle carries beside the model, written by both ways of training (in memory,
:mod:`.trainer`; streamed from shards, :mod:`.streaming`) and read by ``mdgm-ros evaluate``: the
networks as ONNX and the training means (:data:`TRAINING_MEANS`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core import MultimodalVAE
from ..core.engine.bundle import TRAINING_MEANS
from ..core.engine.export import export_parts

__all__ = ["TRAINING_MEANS", "export_onnx"]


def export_onnx(model: MultimodalVAE, folder: Path) -> list[str]:
    """Every network of the model's family (encoders: normalised features -> mu, logvar; decoders: z ->
    likelihood location; joint/subset encoders, bridges; see :func:`~mdgm_ros.core.engine.export.export_parts`)
    as ONNX, batch dimension dynamic, for TensorRT on Jetson. Audio features are the log-mel spectrogram."""
    import warnings

    model = model.eval()
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for part in export_parts(model):
            file = folder / f"{part.stem}.onnx"
            torch.onnx.export(part.module, part.args, str(file), input_names=part.inputs, output_names=part.outputs,
                              dynamic_axes={name: {0: "batch"} for name in (*part.inputs, *part.outputs)},
                              dynamo=False, opset_version=17)
            written.append(file.name)
    return written
