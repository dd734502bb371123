"""The networks of a model as exportable parts (ONNX/TensorRT), whatever its family.

Each part is a module with example inputs and input/output names: the per-modality decoders
(z -> likelihood location; with private latents z = [c, s_m]), the unimodal encoders (normalised
features -> mu, logvar), the private encoders q(s_m | x_m) (same signature) and every network the
family adds (subset/joint encoders take one feature tensor per modality, in model order;
bridged single-modality posteriors are wrapped as modules). Exporters loop over :func:`export_parts`
instead of assuming one encoder per modality.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.family import ExportPart
from ..model.vae import MultimodalVAE


class UnimodalPosterior(nn.Module):
    """q(z | x_name) as the family computes it (e.g. through a bridge), as one module."""

    def __init__(self, model: MultimodalVAE, name: str):
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.family.unimodal_encoder(self.model, self.name)(x)


class OwnSpaceDecoder(nn.Module):
    """p(x_name | z) for a family whose modalities have latent spaces of their own (AVAE, Tian et al.):
    z is mapped into name's space, then decoded (:meth:`MultimodalVAE.decode`), as one module."""

    def __init__(self, model: MultimodalVAE, name: str):
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.name, z)


def export_parts(model: MultimodalVAE, batch: int = 2) -> list[ExportPart]:
    device = model.device
    feats = {n: torch.zeros(batch, *model.specs[n].feature_shape, device=device) for n in model.names}
    z = torch.zeros(batch, model.latent_dim + model.private_dim, device=device)    # [c, s_m] with private latents
    parts = []
    for name in model.names:
        own_space = model.family.own_latent_spaces
        encoder = model.encoders[name] if name in model.encoders and not own_space else None
        if encoder is None and model.family.unimodal_encoder(model, name) is not None:
            encoder = UnimodalPosterior(model, name)
        if encoder is not None:
            parts.append(ExportPart(f"onnx_{name}_encoder", encoder, (feats[name],), ["features"], ["mu", "logvar"]))
        decoder = OwnSpaceDecoder(model, name) if own_space else model.decoders[name]
        parts.append(ExportPart(f"onnx_{name}_decoder", decoder, (z,), ["z"], ["loc"]))
        if name in model.private_encoders:
            parts.append(ExportPart(f"onnx_{name}_private_encoder", model.private_encoders[name], (feats[name],),
                                    ["features"], ["mu", "logvar"]))
    for subset in model.subset_names:
        key = "__".join(subset)
        parts.append(ExportPart(f"onnx_subset_{key}_encoder", model.subset_encoders[key],
                                tuple(feats[n] for n in subset), [f"features_{n}" for n in subset],
                                ["mu", "logvar"]))
    parts.extend(model.family.extra_export_parts(model, feats))      # the family's other networks
    return parts
