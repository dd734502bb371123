"""The multimodal VAE: per-modality encoders/decoders, a feature pipeline and the fused posterior.

Data flow: raw sensor arrays --:meth:`MultimodalVAE.features`--> normalised features
--:meth:`experts`--> stacked Gaussian experts (M, B, D) --:meth:`posterior`--> the fused posterior
(PoE, MoE or MoPoE, see :mod:`mdgm_ros.core.posterior`) --:meth:`decode`--> likelihood locations.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from . import likelihoods, posterior
from .modalities import ModalitySpec, Normalization, SpecError, check_unique, checked_fields
from .networks import LogMelFrontEnd, build_network
from .registry import FAMILIES, get_family

FUSIONS = ("poe", "moe", "mopoe")


def __getattr__(name: str):
    """``DEFAULT_FUSION`` / ``OBJECTIVE_FUSIONS`` as views of the family registry (first API)."""
    if name not in ("DEFAULT_FUSION", "OBJECTIVE_FUSIONS"):
        raise AttributeError(name)
    if name == "DEFAULT_FUSION":
        return {n: f.default_fusion for n, f in FAMILIES.items()}
    return {n: f.fusions for n, f in FAMILIES.items()}


def _normalized_bounds(norm: Normalization | None) -> torch.Tensor | None:
    if norm is None or norm.low is None or norm.high is None:
        return None
    low, high = (norm.low - norm.mean) / norm.std, (norm.high - norm.mean) / norm.std
    return torch.from_numpy(np.stack([0.5 * (low + high), 1.0 / (high - low)]).astype(np.float32))


@dataclass(frozen=True)
class ModelConfig:
    modalities: tuple[ModalitySpec, ...]
    latent_dim: int = 16
    family: str = "mvae"                       # the model family (a name in the family registry)
    fusion: str | None = None                  # None: the family's default fusion
    # Does the PoE of a proper subset of the modalities include the N(0, I) prior expert? (The product
    # of all modalities always does.) None: family default -- True for MVAE, False for MoPoE (as the reference).
    proper_subsets_include_prior: bool | None = None
    family_options: Mapping[str, Any] = field(default_factory=dict)     # the family's objective options
    # builders by name (mdgm_ros.core.networks.register_network): {"<modality>": {"encoder": {"name":
    # ..., **options}, "decoder": {...}}, "subset": {"name": ..., **options}}; empty = the defaults
    networks: Mapping[str, Any] = field(default_factory=dict)
    # size of each modality's private latent s_m (families with modality-specific latents; decoders
    # then take [c, s_m]); None: the family's default, 0 for families without private latents
    private_dim: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        check_unique(self.modalities)
        try:
            family = get_family(self.family)
        except ValueError as err:
            raise SpecError(f"family: {err}") from None
        fusion = self.fusion or family.default_fusion
        if fusion not in family.fusions:
            raise SpecError(f"family {self.family!r} needs fusion in {family.fusions}, got {fusion!r}")
        object.__setattr__(self, "fusion", fusion)
        if self.proper_subsets_include_prior is None:
            object.__setattr__(self, "proper_subsets_include_prior", fusion != "mopoe")
        if not (isinstance(self.latent_dim, int) and 1 <= self.latent_dim <= 1024):
            raise SpecError(f"latent_dim must be an integer in [1, 1024], got {self.latent_dim!r}")
        if len(self.modalities) > 8:
            raise SpecError("at most 8 modalities (subset enumeration grows as 2^M)")
        if not isinstance(self.family_options, Mapping):
            raise SpecError(f"family_options must be a mapping, got {type(self.family_options).__name__}")
        object.__setattr__(self, "family_options", {**family.option_defaults, **self.family_options})
        try:
            family.check_options(self.family_options)
        except ValueError as err:
            raise SpecError(f"family_options: {err}") from None
        object.__setattr__(self, "networks", _checked_networks(self.networks, self.names))
        object.__setattr__(self, "private_dim", _checked_private_dim(self.private_dim, family))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def to_dict(self) -> dict[str, Any]:
        return {"modalities": [m.to_dict() for m in self.modalities], "latent_dim": self.latent_dim,
                "family": self.family, "fusion": self.fusion,
                "proper_subsets_include_prior": self.proper_subsets_include_prior,
                "family_options": dict(self.family_options), "networks": dict(self.networks),
                **({"private_dim": self.private_dim} if self.private_dim else {})}

    # the deprecated spellings (the first releases called the family the objective)
    @property
    def objective(self) -> str:
        _deprecated("ModelConfig.objective", "ModelConfig.family")
        return self.family

    @property
    def objective_options(self) -> Mapping[str, Any]:
        _deprecated("ModelConfig.objective_options", "ModelConfig.family_options")
        return self.family_options

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], warn: bool = True) -> "ModelConfig":
        """A config from its dict; the old keys ``objective`` / ``objective_options`` are read as
        ``family`` / ``family_options`` (with a DeprecationWarning unless ``warn`` is False: bundles
        written before the rename load silently)."""
        data = renamed_keys(data, "model config", warn)
        kwargs = checked_fields(cls, data, ("modalities",), "model config")
        kwargs["modalities"] = tuple(ModalitySpec.from_dict(m) for m in data["modalities"])
        return cls(**kwargs)


RENAMED = {"objective": "family", "objective_options": "family_options"}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is now called {new}; the old name goes in the next release", DeprecationWarning,
                  stacklevel=3)


def renamed_keys(data: Any, label: str, warn: bool = True) -> Any:
    """``data`` with the old keys (``objective``, ``objective_options``) under their new names;
    both spellings of one key is a SpecError."""
    if not isinstance(data, Mapping) or not any(old in data for old in RENAMED):
        return data
    out = dict(data)
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise SpecError(f"{label}: both {old!r} and {new!r} given (use {new!r})")
            if warn:
                _deprecated(f"{label} key {old!r}", repr(new))
            out[new] = out.pop(old)
    return out


_dataclass_init = ModelConfig.__init__


@functools.wraps(_dataclass_init)
def _init_accepting_old_names(self, *args: Any, **kwargs: Any) -> None:
    _dataclass_init(self, *args, **renamed_keys(kwargs, "ModelConfig"))


ModelConfig.__init__ = _init_accepting_old_names


def _checked_private_dim(value: Any, family: Any) -> int:
    default = int(family.private_latent_dims or 0)
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1024:
        raise SpecError(f"private_dim must be an integer in [0, 1024], got {value!r}")
    if bool(value) != bool(default):
        state = "needs private latents (private_dim >= 1)" if default else "has no private latents (private_dim 0)"
        raise SpecError(f"family {family.name!r} {state}, got private_dim={value}")
    return value


def _checked_networks(networks: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(networks, Mapping):
        raise SpecError(f"networks must be a mapping, got {type(networks).__name__}")
    for key, value in networks.items():
        if key != "subset" and key not in names:
            raise SpecError(f"networks: {key!r} is neither a modality {list(names)} nor 'subset'")
        entries = {"subset": value} if key == "subset" else value
        if not isinstance(entries, Mapping) or (key != "subset" and set(entries) - {"encoder", "decoder", "private"}):
            raise SpecError(f"networks[{key!r}] must map 'encoder'/'decoder'/'private' to {{'name': ..., **options}}")
        for entry in entries.values():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name", "default"), str):
                raise SpecError(f"networks[{key!r}]: each entry is {{'name': <registered builder>, **options}}")
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in networks.items()}


class MultimodalVAE(nn.Module):
    """Per-modality encoders/decoders plus what the family adds: subset encoders (``subset_encoders``,
    keyed by the modality names joined with ``__``) and other networks (``extra``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.family = get_family(config.family)
        self.specs = {m.name: m for m in config.modalities}
        self.names = config.names
        self.latent_dim = config.latent_dim
        self.fusion = config.fusion
        nets = config.networks
        self.encoders = nn.ModuleDict({
            m.name: build_network("encoder", nets.get(m.name, {}).get("encoder"), m, config.latent_dim)
            for m in config.modalities if self.family.unimodal_encoders})
        self.private_dim = int(config.private_dim or 0)
        self.decoders = nn.ModuleDict({
            m.name: build_network("decoder", nets.get(m.name, {}).get("decoder"), m,
                                  config.latent_dim + self.private_dim)
            for m in config.modalities})
        # q(s_m | x_m): one encoder per modality (role "encoder", config key "private"); none without s_m
        self.private_encoders = nn.ModuleDict({
            m.name: build_network("encoder", nets.get(m.name, {}).get("private"), m, self.private_dim)
            for m in config.modalities if self.private_dim})
        try:
            self.subset_names = self.family.subsets(config)
        except ValueError as err:
            raise SpecError(str(err)) from None
        self.subset_encoders = nn.ModuleDict({
            "__".join(subset): build_network("subset", nets.get("subset"),
                                             [self.specs[n] for n in subset], config.latent_dim)
            for subset in self.subset_names})
        try:                                              # a bad family option 'posterior' fails here
            self.latent_dist = self.family.latent_distribution(config)
        except ValueError as err:
            raise SpecError(str(err)) from None
        self.extra = nn.ModuleDict(self.family.build_networks(self))
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
        self.register_buffer(f"_norm_bounds_{spec.name}", _normalized_bounds(norm), persistent=False)

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
        bounds = _normalized_bounds(norm)
        setattr(self, f"_norm_bounds_{name}", None if bounds is None else bounds.to(device))

    def normalization_stats(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"_norm_mean_{name}"), getattr(self, f"_norm_std_{name}")

    def feature_bounds(self, name: str) -> torch.Tensor | None:
        """(2, *shape): the middle of the bounds of the modality's normalised features and 1 / their
        distance (:class:`Normalization`); None for a modality without bounds."""
        return getattr(self, f"_norm_bounds_{name}")

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
    def subset_masks(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The family's subset encoders as bool masks (J, M), in ``subset_names`` order."""
        out = torch.zeros((len(self.subset_names), len(self.names)), dtype=torch.bool, device=device)
        for j, subset in enumerate(self.subset_names):
            out[j, [self.names.index(n) for n in subset]] = True
        return out

    def experts(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked experts (R, B, D): the M unimodal encoders, then the family's subset encoders (see
        :mod:`mdgm_ros.core.families.base`). A row is encoded only where its modalities are present;
        elsewhere it holds the prior's numbers, which the aggregation functions never read. The second
        tensor is each expert's log-variance (the family's latent distribution reads the encoders'
        second output, :mod:`.latent_distributions`)."""
        mus, logvars = [], []
        for j, name in enumerate(self.names):
            encoder = self.family.unimodal_encoder(self, name)
            mu, logvar = self._encode_rows(encoder, [feats[name]] if encoder else [], mask[:, j])
            mus.append(mu)
            logvars.append(logvar)
        for subset, columns in zip(self.subset_names, self.subset_masks(mask.device)):
            rows = (mask | ~columns).all(1)
            encoder = self.subset_encoders["__".join(subset)]
            mu, logvar = self._encode_rows(encoder, [feats[n] for n in subset], rows)
            mus.append(mu)
            logvars.append(logvar)
        return torch.stack(mus), self.latent_dist.from_encoder(torch.stack(logvars))

    def private_experts(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The private posteriors q(s_m | .) stacked (M, B, P), by the family's rule (default: the
        modality's private encoder); rows where m is missing hold N(0, I)'s numbers, never read."""
        return self.family.private_posteriors(self, feats, mask)

    def _encode_rows(self, encoder: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None,
                     inputs: list[torch.Tensor], rows: torch.Tensor,
                     dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = rows.shape[0]
        dtype = inputs[0].dtype if inputs else None      # a float64 model keeps float64 placeholders
        mu = torch.zeros((batch, dim or self.latent_dim), device=rows.device, dtype=dtype)
        logvar = torch.zeros_like(mu)
        if encoder is None or not bool(rows.any()):
            return mu, logvar
        if bool(rows.all()):
            mu, logvar = encoder(*inputs)
        else:
            idx = rows.nonzero(as_tuple=True)[0]
            enc_mu, enc_lv = encoder(*(x.index_select(0, idx) for x in inputs))
            mu, logvar = mu.index_copy(0, idx, enc_mu), logvar.index_copy(0, idx, enc_lv)
        return mu, posterior.clamp_logvar(logvar)

    def subset_posterior(self, mu: torch.Tensor, logvar: torch.Tensor, subset: torch.Tensor,
                         present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian q(z | X_subset): the subset's PoE (the prior rule follows the config)."""
        present = subset if present is None else present
        return posterior.subset_product_of_experts(mu, logvar, subset, present,
                                                   bool(self.config.proper_subsets_include_prior))

    def posterior_summary(self, mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the model's posterior given the observed set ``mask``: the family's
        inference rule (aggregating families -- PoE and MoPoE: the observed set's PoE; MoE: the
        moment-matched mixture of the observed experts)."""
        return self.family.posterior_summary(self, mu, logvar, mask)

    # ----------------------------------------------------------------- decoding / likelihood
    def decode(self, name: str, z: torch.Tensor, private: torch.Tensor | None = None) -> torch.Tensor:
        """Likelihood location of ``name`` from the shared z (..., D); with private latents the decoder
        takes [z, s_m], s_m = ``private`` (broadcast to z's leading dims) or, if None, the mean of the
        family's generation prior for s_m (cross-modal generation by the mean). A family whose
        modalities have latent spaces of their own (AVAE) maps z into ``name``'s space first."""
        if self.family.own_latent_spaces:
            z = self.family.modality_latent(self, name, z)
        if self.private_dim:
            if private is None:
                private = self.family.private_prior(self, name)[0].to(z.dtype)
            z = torch.cat([z, private.expand(*z.shape[:-1], self.private_dim)], dim=-1)
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
