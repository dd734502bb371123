"""Model families: one module per family, each with its objective (and the survey's equation numbers)
in its docstring and a ``FAMILY`` object (:class:`mdgm_ros.core.model.family.Family`) that carries the networks it adds,
its inference rule, its training stages and its row of the survey's Table 1.

The rest of the code asks ``model.family`` (or :func:`get_family`), never a family's name.
``mdgm-ros families`` prints the table (:mod:`.table`). A new family registers itself with
:func:`register_family` (no edit of the core needed). Importing this package registers every family
below; the registry itself lives in the model floor (:mod:`mdgm_ros.core.model.registry`).
"""
from __future__ import annotations

from typing import Callable

from ..model.family import LABELS, Family, FamilyError, ObjectiveOutput, Properties, Stage
from ..model.registry import FAMILIES, get_family, register_family
from . import (
    avae,
    bivcca,
    bridged,
    cadavae,
    dmvae_daunhawer,
    dmvae_lee,
    elbo,
    jmvae,
    jvae,
    m2vae,
    mfm,
    mmjsd,
    mmjsd_ms,
    mmvae,
    mmvae_plus,
    mopoe,
    mopoe_ms,
    mvae,
    pvae,
    scan,
    telbo,
    temporal,
    temporal_ms,
    tian,
    vaevae,
    yin,
)

for _module in (elbo, mvae, mopoe, mmvae, mmjsd, jvae, jmvae, telbo, m2vae, vaevae, bridged, temporal):
    register_family(_module.FAMILY)
register_family(temporal_ms.FAMILY)
for _module in (mopoe_ms, mmjsd_ms, mmvae_plus, pvae, dmvae_lee, dmvae_daunhawer, mfm):    # modality-specific latents
    register_family(_module.FAMILY)
for _module in (yin, bivcca, cadavae, scan, avae, tian):                                 # coordinated models
    register_family(_module.FAMILY)

# name -> objective function (kept for callers of the first API)
OBJECTIVES: dict[str, Callable[..., ObjectiveOutput]] = {n: f.objective_fn for n, f in FAMILIES.items()}


__all__ = ["FAMILIES", "LABELS", "Family", "FamilyError", "OBJECTIVES", "ObjectiveOutput", "Properties", "Stage",
           "get_family", "register_family"]
