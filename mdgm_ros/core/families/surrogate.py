"""Joint encoders with surrogate unimodal encoders (the survey's sec. 5.1.1): the shared machinery of
JVAE, JMVAE, TELBO, M²VAE and VAEVAE.

Networks: one joint encoder q(z | X) over all M modalities (a subset encoder, built from the network
factories) and, except for JVAE, a unimodal surrogate q(z | x_m) per modality (the model's ordinary
per-modality encoders). More subset encoders are built on demand for the subsets the config lists
(``family_options["subsets"] = [["camera", "joints"], ...]``); every subset with its own encoder is
a *unit* of the objective, like the single modalities.

Inference rule for an observed set S: S = all modalities -> the joint encoder; S a listed subset (or a
single modality) -> its own encoder; any other S -> the product of the unimodal surrogates of S (no
prior expert), the fallback the survey leaves open (the exact rule needs 2^M - 1 encoders). JVAE has no
surrogates and refuses every S but the full set with a :class:`FamilyError`.

Training rows: the joint terms need every modality, so they count only on complete rows; a unit's
terms count on the rows where the unit's modalities are observed. ``beta`` (the warm-up) scales every
KL term, including the joint-to-surrogate KLs (times ``alpha``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..model import posterior as post
from ..model.family import Family, FamilyError, ObjectiveOutput
from .common import weighted_reconstruction

if TYPE_CHECKING:
    from ..model.vae import ModelConfig, MultimodalVAE


@dataclass(frozen=True)
class Unit:
    """A subset with its own encoder: its label, bool mask (M,) and row in the experts stack."""

    label: str
    subset: torch.Tensor
    row: int


def listed_subsets(config: "ModelConfig") -> list[tuple[str, ...]]:
    """The extra subsets named in the config, validated, in model order."""
    names = config.names
    out: list[tuple[str, ...]] = []
    for entry in config.family_options.get("subsets", []) or []:
        if isinstance(entry, str) or not all(isinstance(n, str) for n in entry):
            raise FamilyError(f"objective option 'subsets' must be lists of modality names, got {entry!r}")
        unknown = sorted(set(entry) - set(names))
        if unknown:
            raise FamilyError(f"objective option 'subsets' names unknown modalities {unknown}")
        subset = tuple(n for n in names if n in entry)
        if not 2 <= len(subset) < len(names):
            raise FamilyError(f"subset {list(entry)} must have between 2 and {len(names) - 1} modalities "
                              "(single modalities and the full set always have an encoder)")
        if subset not in out:
            out.append(subset)
    return out


@dataclass(frozen=True)
class SurrogateFamily(Family):
    """A family with a joint encoder, optional subset encoders and unimodal surrogates (``surrogates``:
    whether single modalities have a posterior of their own -- an encoder, or a bridge)."""

    surrogates: bool = True

    def subsets(self, config: "ModelConfig") -> list[tuple[str, ...]]:
        return [config.names, *listed_subsets(config)]

    def closed_form_poe(self, model: "MultimodalVAE") -> bool:
        return False

    def inference_rule(self, config: "ModelConfig | None" = None) -> str:
        if not self.surrogates:
            return "full set: the joint encoder; any other subset is refused"
        return ("full set: the joint encoder; single modality or listed subset: its own encoder; "
                "other subsets: product of the unimodal surrogates (no prior expert)")

    def option_names(self) -> tuple[str, ...] | None:
        names = super().option_names()
        return None if names is None else tuple(sorted({*names, "subsets"}))

    def objective(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                  beta: float = 1.0, generator: torch.Generator | None = None, stage: str | None = None,
                  **options: Any) -> ObjectiveOutput:
        options.pop("subsets", None)              # read by the model when it builds the encoders
        return super().objective(model, feats, mask, beta=beta, generator=generator, stage=stage, **options)

    def check_inference(self, model: "MultimodalVAE", mask: torch.Tensor) -> None:
        if self.surrogates:
            return
        partial = mask.any(1) & ~mask.all(1)
        if bool(partial.any()):
            row = int(partial.nonzero()[0, 0])
            seen = [n for j, n in enumerate(model.names) if bool(mask[row, j])]
            raise FamilyError(f"family {self.name!r} has only a joint encoder over all modalities "
                              f"{list(model.names)}: it cannot infer from the subset {seen} "
                              "(Table 1: no missing modalities)")

    def posterior_summary(self, model: "MultimodalVAE", mu: torch.Tensor, logvar: torch.Tensor,
                          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inference(model, mask)
        n = len(model.names)
        q_mu, q_lv = post.product_of_experts(mu[:n], logvar[:n], mask, include_prior=False)
        for j, subset in enumerate(model.subset_masks(mask.device)):
            exact = (mask == subset).all(1, keepdim=True)
            q_mu = torch.where(exact, mu[n + j], q_mu)
            q_lv = torch.where(exact, logvar[n + j], q_lv)
        return q_mu, q_lv


# ----------------------------------------------------------------------------- objective pieces
def units(model: "MultimodalVAE") -> list[Unit]:
    """The single modalities (if the family has surrogates) and the listed subsets, not the full set."""
    n = len(model.names)
    eye = torch.eye(n, dtype=torch.bool, device=model.device)
    out = [Unit(name, eye[j], j) for j, name in enumerate(model.names)] if model.family.surrogates else []
    for j, subset in enumerate(model.subset_masks(model.device)):
        if not bool(subset.all()):
            label = "+".join(model.subset_names[j])
            out.append(Unit(label, subset, n + j))
    return out


def joint_row(model: "MultimodalVAE") -> int:
    return len(model.names) + model.subset_names.index(model.names)


def gaussian_elbo(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], q_mu: torch.Tensor,
                  q_lv: torch.Tensor, recon_mask: torch.Tensor, beta: float,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_q[sum_{m in recon_mask} lambda_m log p(x_m|z)], KL(q || p)), one sample: (B,), (B,)."""
    z = post.reparameterize(q_mu, q_lv, generator=generator)
    return weighted_reconstruction(model, feats, z, recon_mask), post.kl_to_standard_normal(q_mu, q_lv)


def masked(value: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.where(rows, value, torch.zeros_like(value))


def joint_terms(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
                logvar: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Complete rows (B,), the joint reconstruction and KL(q(z|X) || p) on them (0 elsewhere)."""
    full = mask.all(1)
    row = joint_row(model)
    recon, kl = gaussian_elbo(model, feats, mu[row], logvar[row], mask & full[:, None], 1.0, generator)
    return full, masked(recon, full), masked(kl, full)


def unit_elbos(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mu: torch.Tensor,
               logvar: torch.Tensor, mask: torch.Tensor, beta: float, generator: torch.Generator | None,
               terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over units U of ELBO(X_U) (reconstructing U only) on the rows that observe U: (B,)."""
    total = torch.zeros(mask.shape[0], dtype=mu.dtype, device=mu.device)
    for unit in units(model):
        rows = (mask | ~unit.subset).all(1)
        recon_mask = unit.subset.expand_as(mask) & rows[:, None]
        recon, kl = gaussian_elbo(model, feats, mu[unit.row], logvar[unit.row], recon_mask, beta, generator)
        value = masked(recon - beta * kl, rows)
        terms[f"elbo_{unit.label}"] = value.detach()
        total = total + value
    return total


def joint_to_unit_kls(model: "MultimodalVAE", mu: torch.Tensor, logvar: torch.Tensor, full: torch.Tensor,
                      terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over units U of KL(q(z|X) || q(z|X_U)) on complete rows: (B,)."""
    row = joint_row(model)
    total = torch.zeros(full.shape[0], dtype=mu.dtype, device=mu.device)
    for unit in units(model):
        kl = masked(post.kl_gaussians(mu[row], logvar[row], mu[unit.row], logvar[unit.row]), full)
        terms[f"kl_joint_{unit.label}"] = kl.detach()
        total = total + kl
    return total
