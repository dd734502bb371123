"""The multimodal VAE: per-modality encoders/decoders, a feature pipeline and the fused posterior.

Data flow: raw sensor arrays --:meth:`MultimodalVAE.features`--> normalised features
--:meth:`experts`--> stacked Gaussian experts (M, B, D) --:meth:`posterior`--> the fused posterior
(PoE, MoE or MoPoE, see :mod:`mdgm_ros.core.posterior`) --:meth:`decode`--> likelihood locations.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from . import likelihoods, posterior
from .modalities import ModalitySpec, Normalization, SpecError, check_unique, checked_fields
from .networks import LogMelFrontEnd, build_decoder, build_encoder

FUSIONS = ("poe", "moe", "mopoe")
# which fused posterior each training objective is defined for
OBJECTIVE_FUSIONS = {"elbo": FUSIONS, "mvae": ("poe",), "mopoe": ("mopoe",), "mmvae": ("moe",),
                     "mmjsd": ("moe",)}
DEFAULT_FUSION = {"elbo": "poe", "mvae": "poe", "mopoe": "mopoe", "mmvae": "moe", "mmjsd": "moe"}


@dataclass(frozen=True)
class ModelConfig:
    modalities: tuple[ModalitySpec, ...]
    latent_dim: int = 16
    objective: str = "mvae"
    fusion: str | None = None                  # None: the objective's own (DEFAULT_FUSION)
    # Does the PoE of a proper subset of the observed modalities include the N(0, I) prior expert?
    # None: family default -- True for PoE models (MVAE), False for MoPoE (as the reference code).
    proper_subsets_include_prior: bool | None = None
    objective_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        check_unique(self.modalities)
        if self.objective not in OBJECTIVE_FUSIONS:
            raise SpecError(f"objective {self.objective!r} not in {sorted(OBJECTIVE_FUSIONS)}")
        fusion = self.fusion or DEFAULT_FUSION[self.objective]
        if fusion not in OBJECTIVE_FUSIONS[self.objective]:
            raise SpecError(f"objective {self.objective!r} needs fusion in {OBJECTIVE_FUSIONS[self.objective]},"
                            f" got {fusion!r}")
        object.__setattr__(self, "fusion", fusion)
        if self.proper_subsets_include_prior is None:
            object.__setattr__(self, "proper_subsets_include_prior", fusion != "mopoe")
        if not (isinstance(self.latent_dim, int) and 1 <= self.latent_dim <= 1024):
            raise SpecError(f"latent_dim must be an integer in [1, 1024], got {self.latent_dim!r}")
        if len(self.modalities) > 8:
            raise SpecError("at most 8 modalities (subset enumeration grows as 2^M)")
        object.__setattr__(self, "objective_options", dict(self.objective_options))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def to_dict(self) -> dict[str, Any]:
        return {"modalities": [m.to_dict() for m in self.modalities], "latent_dim": self.latent_dim,
                "objective": self.objective, "fusion": self.fusion,
                "proper_subsets_include_prior": self.proper_subsets_include_prior,
                "objective_options": dict(self.objective_options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        kwargs = checked_fields(cls, data, ("modalities",), "model config")
        kwargs["modalities"] = tuple(ModalitySpec.from_dict(m) for m in data["modalities"])
        return cls(**kwargs)


class MultimodalVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.specs = {m.name: m for m in config.modalities}
        self.names = config.names
        self.latent_dim = config.latent_dim
        self.fusion = config.fusion
        self.encoders = nn.ModuleDict({m.name: build_encoder(m, config.latent_dim) for m in config.modalities})
        self.decoders = nn.ModuleDict({m.name: build_decoder(m, config.latent_dim) for m in config.modalities})
        self.front_ends = nn.ModuleDict({m.name: LogMelFrontEnd(m.audio) for m in config.modalities
                                         if m.kind == "audio" and m.audio is not None})
        self.log_scales = nn.ParameterDict({
            m.name: nn.Parameter(torch.tensor(float(np.log(m.scale))), requires_grad=m.learn_scale)
            for m in config.modalities})
        for spec in config.modalities:
            self._register_normalization(spec)

    # ----------------------------------------------------------------- normalisation & features
    def _register_normalization(self, spec: ModalitySpec) -> None:
        norm = spec.normalization
        mean = torch.zeros(()) if norm is None else torch.from_numpy(norm.mean)
        std = torch.ones(()) if norm is None else torch.from_numpy(norm.std)
        self.register_buffer(f"_norm_mean_{spec.name}", mean, persistent=False)
        self.register_buffer(f"_norm_std_{spec.name}", std, persistent=False)

    def set_normalization(self, name: str, norm: Normalization | None) -> None:
        spec = self.specs[name].with_normalization(norm)
        self.specs[name] = spec
        self.config = dataclasses.replace(
            self.config, modalities=tuple(spec if m.name == name else m for m in self.config.modalities))
        device = self.log_scales[name].device
        mean = torch.zeros(()) if norm is None else torch.from_numpy(norm.mean)
        std = torch.ones(()) if norm is None else torch.from_numpy(norm.std)
        setattr(self, f"_norm_mean_{name}", mean.to(device))
        setattr(self, f"_norm_std_{name}", std.to(device))

    def normalization_stats(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"_norm_mean_{name}"), getattr(self, f"_norm_std_{name}")

    def raw_features(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        """Raw sensor array (B, *shape) -> un-normalised features (B, *feature_shape)."""
        return self.front_ends[name](raw) if name in self.front_ends else raw

    def normalize(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        mean, std = self.normalization_stats(name)
        return (feats - mean) / std

    def denormalize(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        mean, std = self.normalization_stats(name)
        return feats * std + mean

    def features(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw arrays of the modalities given -> normalised model features."""
        return {name: self.normalize(name, self.raw_features(name, x)) for name, x in raw.items()}

    def complete(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fill absent modalities and the rows where a modality is missing with zeros.

        The zeros are never encoded (see :meth:`experts`) and their likelihood terms are masked out;
        they only keep tensors dense and NaN-free (a NaN, even masked, would poison gradients)."""
        batch = mask.shape[0]
        out = {}
        for j, name in enumerate(self.names):
            shape = (batch, *self.specs[name].feature_shape)
            x = feats.get(name)
            if x is None:
                out[name] = torch.zeros(shape, device=mask.device)
                continue
            if tuple(x.shape) != shape:
                raise ValueError(f"modality {name!r}: features of shape {tuple(x.shape)}, expected {shape}")
            keep = mask[:, j].reshape(batch, *([1] * (x.dim() - 1)))
            out[name] = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return out

    # ----------------------------------------------------------------- encoding / posterior
    def experts(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked experts (M, B, D). Only present rows are encoded; missing rows hold the prior's
        numbers, which the aggregation functions never read."""
        batch = mask.shape[0]
        mus, logvars = [], []
        for j, name in enumerate(self.names):
            column = mask[:, j]
            mu = torch.zeros((batch, self.latent_dim), device=mask.device)
            logvar = torch.zeros_like(mu)
            if bool(column.all()):
                mu, logvar = self.encoders[name](feats[name])
            elif bool(column.any()):
                rows = column.nonzero(as_tuple=True)[0]
                enc_mu, enc_lv = self.encoders[name](feats[name].index_select(0, rows))
                mu = mu.index_copy(0, rows, enc_mu)
                logvar = logvar.index_copy(0, rows, enc_lv)
            mus.append(mu)
            logvars.append(posterior.clamp_logvar(logvar))
        return torch.stack(mus), torch.stack(logvars)

    def subset_posterior(self, mu: torch.Tensor, logvar: torch.Tensor, subset: torch.Tensor,
                         present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian q(z | X_subset): the subset's PoE (the prior rule follows the config)."""
        present = subset if present is None else present
        return posterior.subset_product_of_experts(mu, logvar, subset, present,
                                                   bool(self.config.proper_subsets_include_prior))

    def posterior_summary(self, mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the model's posterior given the observed set ``mask``.

        PoE and MoPoE: the observed set's PoE (MoPoE generates from a subset through that subset's
        PoE). MoE: the moment-matched mixture of the observed experts."""
        if self.fusion == "moe":
            return posterior.mixture_moments(mu, logvar, mask)
        return self.subset_posterior(mu, logvar, mask)

    # ----------------------------------------------------------------- decoding / likelihood
    def decode(self, name: str, z: torch.Tensor) -> torch.Tensor:
        return self.decoders[name](z)

    def log_scale(self, name: str) -> torch.Tensor:
        return self.log_scales[name].clamp(-7.0, 5.0)

    def log_likelihood(self, name: str, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """log p(x_m | z) per sample (..., B) for normalised features ``x`` (B, *fshape)."""
        spec = self.specs[name]
        return likelihoods.per_sample_log_prob(spec.likelihood, x, loc, self.log_scale(name),
                                               len(spec.feature_shape))

    def output_moments(self, name: str, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        family = self.specs[name].likelihood
        return likelihoods.output_mean(family, loc), likelihoods.output_std(family, loc, self.log_scale(name))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
