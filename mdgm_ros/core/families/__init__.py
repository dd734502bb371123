"""Model families: one module per family, each with its objective (and the survey's equation numbers)
in its docstring and a ``FAMILY`` object (:class:`.base.Family`) that carries the networks it adds,
its inference rule, its training stages and its row of the survey's Table 1.

The rest of the code asks ``model.family`` (or :func:`get_family`), never a family's name.
``mdgm-ros families`` prints the table (:mod:`.table`). A new family registers itself with
:func:`register_family` (no edit of the core needed).

:func:`compute_objective` drops rows with no observed modality (they carry no information; their
loss is 0) and returns per-sample values for the whole batch.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from . import bridged, elbo, jmvae, jvae, m2vae, mmjsd, mmvae, mopoe, mvae, telbo, temporal, temporal_ms, vaevae
from . import dmvae_daunhawer, dmvae_lee, mfm, mmjsd_ms, mmvae_plus, mopoe_ms, pvae
from . import avae, bivcca, cadavae, contrastive, scan, tian, yin
from .base import Family, FamilyError, Properties, Stage
from .common import ObjectiveOutput

FAMILIES: dict[str, Family] = {}
LABELS = tian.LABELS                # the batch entry of class labels, for families that use them


def register_family(family: Family, replace: bool = False) -> Family:
    if family.name in FAMILIES and not replace:
        raise ValueError(f"a family named {family.name!r} is already registered")
    if family.default_fusion not in family.fusions:
        raise ValueError(f"family {family.name!r}: default fusion {family.default_fusion!r} not in {family.fusions}")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r} (registered: {', '.join(FAMILIES)})") from None


for _module in (elbo, mvae, mopoe, mmvae, mmjsd, jvae, jmvae, telbo, m2vae, vaevae, bridged, temporal):
    register_family(_module.FAMILY)
register_family(temporal_ms.FAMILY)                                               # issue 11
for _module in (mopoe_ms, mmjsd_ms, mmvae_plus, pvae, dmvae_lee, dmvae_daunhawer, mfm):    # issue 12
    register_family(_module.FAMILY)

for _module in (yin, bivcca, cadavae, scan, avae, tian):     # coordinated models (issue 13)
    register_family(_module.FAMILY)

# name -> objective function (kept for callers of the first API)
OBJECTIVES: dict[str, Callable[..., ObjectiveOutput]] = {n: f.objective_fn for n, f in FAMILIES.items()}


def compute_objective(model, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                      beta: float = 1.0, generator: torch.Generator | None = None,
                      name: str | None = None, stage: str | None = None, **options: Any) -> ObjectiveOutput:
    """Per-sample objective of family ``name`` (default: the model's own, with its configured options);
    ``stage`` selects a training stage's terms (None: the whole objective)."""
    name = name or model.config.objective
    opts = {**model.config.objective_options, **options} if name == model.config.objective else options
    family = get_family(name)
    labels = feats.get(LABELS) if getattr(family, "uses_labels", False) else None
    feats = model.complete(feats, mask)
    if labels is not None:                          # per-row class labels (-1: none) for label heads
        feats[LABELS] = labels
    rows = mask.any(1)
    extra = opts.pop("contrastive", None)           # Shi et al.'s term over pairs, for any family

    def run(f, m):
        out = family.objective(model, f, m, beta=beta, generator=generator, stage=stage, **opts)
        return contrastive.add_term(model, f, m, out, extra, generator) if extra else out

    if bool(rows.all()):
        return run(feats, mask)
    idx = rows.nonzero(as_tuple=True)[0]
    out = run({k: v.index_select(0, idx) for k, v in feats.items()}, mask.index_select(0, idx))

    def scatter(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mask.shape[0], dtype=values.dtype, device=values.device).index_copy(0, idx, values)

    return ObjectiveOutput(scatter(out.loss), {k: scatter(v) for k, v in out.terms.items()})


__all__ = ["FAMILIES", "Family", "FamilyError", "OBJECTIVES", "ObjectiveOutput", "Properties", "Stage",
           "compute_objective", "get_family", "register_family"]
