"""What a model family is: its objective, the networks it adds, its inference rule, its training stages
and its row of the survey's Table 1, in one object the rest of the code asks (never a name check).

Experts layout (what :meth:`MultimodalVAE.experts` returns, ``(R, B, D)``): rows ``0..M-1`` are the
unimodal encoders q(z | x_m) in model order (a family without unimodal encoders leaves prior
placeholders there); rows ``M..`` are the family's subset encoders q(z | X_S), in the order of
:meth:`Family.subsets`, filled for the rows where every modality of S is observed.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from . import posterior as post
from .latent_distributions import GaussianLatent, distribution_named
from .registry import FamilyError

if TYPE_CHECKING:
    from .vae import ModelConfig, MultimodalVAE

# the batch entry of per-row class labels (-1: none), for families that use labels (``uses_labels``)
LABELS = "__labels__"


@dataclass
class ObjectiveOutput:
    """``loss`` is per sample (B,) and is minimised; ``terms`` holds per-sample diagnostics (B,).

    Reduction is explicit and the same everywhere: per-sample values, then the caller takes the mean.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ExportPart:
    """One network as an exportable part (ONNX), for the engine's export and the bundle."""

    stem: str                       # file name stem, e.g. "onnx_camera_encoder"
    module: nn.Module
    args: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]


@dataclass(frozen=True)
class Properties:
    """The survey's Table 1 columns for one family, plus where it comes from."""

    aggregated_inference: str          # how q(z | X_S) is formed, in words ("PoE", "joint encoder", ...)
    missing_modalities: bool           # inference from every non-empty subset
    modality_specific_latents: bool    # private latents per modality beside the shared one
    end_to_end: bool                   # one training stage
    scalability: str                   # parameter growth in M: "linear", "exponential", "pairwise"
    reference: str
    equations: str = ""                # the survey's equation numbers, where known
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Stage:
    """A training stage: the parameters it trains (name prefixes; empty = all) and its default share of
    the epochs. ``objective_stage`` is passed to the family objective as ``stage=``."""

    name: str
    trains: tuple[str, ...] = ()
    share: float = 1.0
    description: str = ""

    def trains_parameter(self, name: str) -> bool:
        return not self.trains or any(name == p or name.startswith(p + ".") for p in self.trains)


ObjectiveFn = Callable[..., ObjectiveOutput]
# how a family trains by default: gradient-norm clip (0: none) and epochs of the linear KL warm-up.
# ``mdgm-ros train`` (where the config leaves them out) and ``bench zoo`` both use
# ``Family.training_defaults()``: TRAINING_DEFAULTS updated by the family's ``reference_training``
TRAINING_DEFAULTS = {"grad_clip": 10.0, "warmup_epochs": 5.0}
REFERENCE_TRAINING_KEYS = tuple(TRAINING_DEFAULTS)


@dataclass(frozen=True)
class Family:
    """A family whose inference aggregates the unimodal experts (PoE, MoE or MoPoE by the model's
    fusion). Subclasses override the inference rule and the networks; see :mod:`.surrogate`."""

    name: str
    objective_fn: ObjectiveFn
    properties: Properties
    fusions: tuple[str, ...] = ("poe",)
    default_fusion: str = "poe"
    stages: tuple[Stage, ...] = (Stage("joint"),)
    eval_options: Mapping[str, Any] = field(default_factory=dict)
    unimodal_encoders: bool = True
    posterior_options: tuple[str, ...] = ("gaussian",)   # choices of the option ``posterior``, default first
    # options that shape the networks, written into every config (so bundles record them), and their
    # values in bundles of format version 1, which stored only the options that were set
    option_defaults: Mapping[str, Any] = field(default_factory=dict)
    format1_option_defaults: Mapping[str, Any] = field(default_factory=dict)
    # how the family's reference implementation trains where it departs from TRAINING_DEFAULTS (keys of
    # REFERENCE_TRAINING_KEYS): the family's default schedule in ``mdgm-ros train`` and ``bench zoo``
    reference_training: Mapping[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- capabilities
    # What the rest of the code asks a family, declared here with their defaults (a family overrides
    # them as fields or methods, never through an undeclared attribute):
    uses_labels: ClassVar[bool] = False        # its objective reads the batch's LABELS entry
    temporal: ClassVar[bool] = False           # a state-space family (the engine's filter and sequence training)
    private_latent_dims: ClassVar[int] = 0     # default size of each modality's private latent s_m

    def modality_latent(self, model: "MultimodalVAE", name: str, z: torch.Tensor) -> torch.Tensor:
        """Map the shared z into modality ``name``'s own latent space before decoding (identity by
        default; families whose modalities have latent spaces of their own override it)."""
        return z

    @property
    def own_latent_spaces(self) -> bool:
        """Does the family map z into per-modality spaces (:meth:`modality_latent` overridden)?"""
        return type(self).modality_latent is not Family.modality_latent

    def extra_export_parts(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor]) -> list[ExportPart]:
        """The family's networks beyond encoders, decoders and subset encoders, as exportable parts."""
        return []

    def option_types(self) -> dict[str, Any] | None:
        """The typed objective options: name -> (annotation, default) from the objective function's
        signature (plus the common options); None where the function takes ``**kwargs``."""
        names = self.option_names()
        if names is None:
            return None
        params = inspect.signature(self.objective_fn).parameters
        out = {}
        for name in names:
            p = params.get(name)
            default = self.option_defaults.get(name, None if p is None or p.default is p.empty else p.default)
            annotation = "Any" if p is None or p.annotation is p.empty else p.annotation
            out[name] = (annotation if isinstance(annotation, str)
                         else getattr(annotation, "__name__", str(annotation)),
                         default)
        return out

    # ---------------------------------------------------------------- description
    @property
    def doc(self) -> str:
        module = __import__(self.objective_fn.__module__, fromlist=["__doc__"])
        return (module.__doc__ or "").strip()

    def inference_rule(self, config: "ModelConfig | None" = None) -> str:
        return self.properties.aggregated_inference

    def table_row(self) -> dict[str, Any]:
        return {"family": self.name, **self.properties.to_dict(), "fusions": list(self.fusions),
                "stages": [s.name for s in self.stages], "inference": self.inference_rule(),
                "reference_training": dict(self.reference_training),
                "training_defaults": self.training_defaults(),
                "options": self.option_names(),                   # None: any (the objective takes **kwargs)
                "option_types": {name: {"type": kind, "default": default}
                                 for name, (kind, default) in (self.option_types() or {}).items()}}

    def training_defaults(self) -> dict[str, float]:
        """The gradient-norm clip and the KL warm-up epochs the family trains with unless told otherwise."""
        return {**TRAINING_DEFAULTS, **{k: float(v) for k, v in self.reference_training.items()}}

    def __post_init__(self) -> None:
        unknown = set(self.reference_training) - set(REFERENCE_TRAINING_KEYS)
        if unknown:
            raise ValueError(f"family {self.name!r}: unknown reference_training keys {sorted(unknown)} "
                             f"(known: {', '.join(REFERENCE_TRAINING_KEYS)})")

    # ---------------------------------------------------------------- networks
    def subsets(self, config: "ModelConfig") -> list[tuple[str, ...]]:
        """Subsets with their own encoder network (rows M.. of the experts), in model order."""
        return []

    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        """Networks beyond encoders, decoders and subset encoders (bridges, heads...)."""
        return {}

    def own_step_parameters(self, model: "MultimodalVAE") -> list[nn.Parameter]:
        """Parameters the family steps with an optimiser of its own (an adversary, e.g. a discriminator),
        after each training step on :meth:`own_loss`, with :meth:`own_optimizer`. None by default."""
        return []

    def own_optimizer(self, model: "MultimodalVAE") -> torch.optim.Optimizer:
        """The optimiser of :meth:`own_step_parameters` (asked only when there are some)."""
        raise FamilyError(f"{self.name} steps no parameters of its own")

    def own_loss(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                 generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The losses :meth:`own_optimizer` minimises after each training step, named ({}: none this batch)."""
        return {}

    def unimodal_encoder(self, model: "MultimodalVAE", name: str
                         ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """What computes expert row ``name`` (q(z | x_name)); None: the family has none (prior
        placeholders, which its inference rule never reads)."""
        return model.encoders[name] if name in model.encoders else None

    def closed_form_poe(self, model: "MultimodalVAE") -> bool:
        """Is q(z | X_S) the PoE of the unimodal experts (with the prior by the config's rule) for the
        observed set and its leave-one-out sets (the Fuser's closed-form fast path)?"""
        return model.fusion != "moe"

    # ---------------------------------------------------------------- objective
    # options every family takes: Shi et al.'s contrastive term (:mod:`.contrastive`)
    COMMON_OPTIONS = ("contrastive",)
    # the objective function's arguments that are not options
    NOT_OPTIONS = ("model", "feats", "mask", "beta", "generator", "stage")

    def option_names(self) -> tuple[str, ...] | None:
        """The objective options the family takes: its objective function's keyword arguments (plus
        :attr:`COMMON_OPTIONS`); None where that function takes ``**kwargs``."""
        params = inspect.signature(self.objective_fn).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return tuple(sorted({p.name for p in params if p.name not in self.NOT_OPTIONS} | set(self.COMMON_OPTIONS)))

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`FamilyError` naming an option the family does not take (a typo would otherwise
        surface as a TypeError at the first training step)."""
        known = self.option_names()
        unknown = sorted(set(options) - set(known)) if known is not None else []
        if unknown:
            raise FamilyError(f"{self.name} has no objective option {', '.join(map(repr, unknown))} "
                              f"(its options: {', '.join(known)})")

    def objective(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                  beta: float = 1.0, generator: torch.Generator | None = None, stage: str | None = None,
                  **options: Any) -> ObjectiveOutput:
        """Per-sample loss; ``stage`` (a stage name) selects the stage's terms, None the full objective.
        A family of several stages gets ``stage=`` in its objective function; a one-stage family does not."""
        if len(self.stages) > 1:
            options["stage"] = stage
        return self.objective_fn(model, feats, mask, beta=beta, generator=generator, **options)

    # ---------------------------------------------------------------- inference rule
    def check_inference(self, model: "MultimodalVAE", mask: torch.Tensor) -> None:
        """Raise :class:`FamilyError` for observed sets the family cannot condition on."""

    def latent_distribution(self, config: "ModelConfig") -> GaussianLatent:
        """The distribution of the experts, the priors and the mixture (:mod:`..latent_distributions`):
        Gaussian, or what the objective option ``posterior`` names for a family that offers a choice."""
        name = config.family_options.get("posterior", self.posterior_options[0])
        if len(self.posterior_options) == 1 and "posterior" in config.family_options:
            raise FamilyError(f"{self.name} has no objective option 'posterior' (its latents are "
                              f"{self.posterior_options[0]})")
        if name not in self.posterior_options:
            raise FamilyError(f"{self.name}: objective option 'posterior' must be one of "
                              f"{list(self.posterior_options)}, got {name!r}")
        return distribution_named(name)

    def posterior_summary(self, model: "MultimodalVAE", mu: torch.Tensor, logvar: torch.Tensor,
                          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | X_mask): (B, D) each."""
        n = len(model.names)
        if model.fusion == "moe":
            mean, log_var = post.mixture_moments(mu[:n], logvar[:n], mask)
            prior_mean, prior_logvar = self.prior_moments(model, mean)
            empty = ~mask.any(1, keepdim=True)
            return torch.where(empty, prior_mean, mean), torch.where(empty, prior_logvar, log_var)
        return model.subset_posterior(mu[:n], logvar[:n], mask)

    def posterior_samples(self, model: "MultimodalVAE", mu: torch.Tensor, logvar: torch.Tensor,
                          mask: torch.Tensor, n_samples: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q(z | X_mask): (K, B, D). MoE draws each sample's expert uniformly among the observed."""
        if model.fusion != "moe":
            q_mu, q_lv = self.posterior_summary(model, mu, logvar, mask)
            return post.reparameterize(q_mu, q_lv, n_samples, generator)
        dist = model.latent_dist
        mu, logvar = mu[:len(model.names)], logvar[:len(model.names)]
        all_z = dist.stratified(mu, logvar, n_samples, generator)                       # (M, K, B, D)
        weights = mask.float() + (~mask.any(1, keepdim=True)).float()                   # empty row: any
        pick = torch.multinomial(weights, n_samples, replacement=True, generator=generator).t()  # (K, B)
        batch_idx = torch.arange(mask.shape[0], device=mask.device).expand(n_samples, -1)
        k_idx = torch.arange(n_samples, device=mask.device)[:, None].expand(-1, mask.shape[0])
        z = all_z[pick, k_idx, batch_idx]
        empty = ~mask.any(1)
        prior = dist.sample(*self.prior_moments(model, z), generator=generator)
        return torch.where(empty[None, :, None], prior, z)

    def prior_moments(self, model: "MultimodalVAE", like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z), shaped as ``like`` (..., D): the latent distribution's fixed
        prior (N(0, I), or Laplace(0, 1)) by default."""
        return torch.zeros_like(like), model.latent_dist.prior_logvar(like)

    def prior_log_prob(self, model: "MultimodalVAE", z: torch.Tensor) -> torch.Tensor:
        """log p(z) of the shared latent for z (..., D): (...). N(0, I) by default."""
        return model.latent_dist.prior_log_prob(z)

    def latent_description(self, config: "ModelConfig") -> dict[str, Any]:
        """What the published latent's mean and std are (the node's model_info)."""
        if self.latent_distribution(config).name == "laplace":
            return {"distribution": "Laplace experts (softmax-normalised scales), prior Laplace(0, 1)",
                    "mean": "posterior mean", "std": "posterior standard deviation (sqrt(2) x the Laplace scale)"}
        return {"distribution": "Gaussian", "mean": "posterior mean", "std": "posterior standard deviation"}

    def posterior_log_prob(self, model: "MultimodalVAE", z: torch.Tensor, mu: torch.Tensor,
                           logvar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log q(z | X_mask) for z (K, B, D), matching :meth:`posterior_samples`: (K, B)."""
        if model.fusion != "moe":
            q_mu, q_lv = self.posterior_summary(model, mu, logvar, mask)
            return post.gaussian_log_prob(z, q_mu, q_lv)
        dist = model.latent_dist
        mu, logvar = mu[:len(model.names)], logvar[:len(model.names)]
        prior = self.prior_log_prob(model, z)
        mixture = dist.mixture_log_prob(z, mu, logvar, mask | ~mask.any(1, keepdim=True))
        return torch.where(mask.any(1)[None, :], mixture, prior)
