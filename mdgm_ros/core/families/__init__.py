"""Model families: one module per training objective, each with its objective in its docstring.

==========  ======  =====================================================================
objective   fusion  module
==========  ======  =====================================================================
``elbo``    any     :mod:`.elbo`   joint VAE ELBO over the observed set
``mvae``    poe     :mod:`.mvae`   joint + unimodal + k sub-sampled subset ELBOs
``mopoe``   mopoe   :mod:`.mopoe`  mixture of subset PoEs, KL upper bound
``mmvae``   moe     :mod:`.mmvae`  stratified looser IWAE with DReG
``mmjsd``   moe     :mod:`.mmjsd`  JS divergence with a dynamic PoE prior
==========  ======  =====================================================================

:func:`compute_objective` drops rows with no observed modality (they carry no information; their
loss is 0) and returns per-sample values for the whole batch.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..model import MultimodalVAE
from . import elbo, mmjsd, mmvae, mopoe, mvae
from .common import ObjectiveOutput

OBJECTIVES: dict[str, Callable[..., ObjectiveOutput]] = {
    "elbo": elbo.objective, "mvae": mvae.objective, "mopoe": mopoe.objective,
    "mmvae": mmvae.objective, "mmjsd": mmjsd.objective,
}


def compute_objective(model: MultimodalVAE, feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
                      beta: float = 1.0, generator: torch.Generator | None = None,
                      name: str | None = None, **options: Any) -> ObjectiveOutput:
    """Per-sample objective of ``name`` (default: the model's configured objective and options)."""
    name = name or model.config.objective
    opts = {**model.config.objective_options, **options} if name == model.config.objective else options
    fn = OBJECTIVES[name]
    feats = model.complete(feats, mask)
    rows = mask.any(1)
    if bool(rows.all()):
        return fn(model, feats, mask, beta=beta, generator=generator, **opts)
    idx = rows.nonzero(as_tuple=True)[0]
    out = fn(model, {k: v.index_select(0, idx) for k, v in feats.items()}, mask.index_select(0, idx),
             beta=beta, generator=generator, **opts)

    def scatter(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mask.shape[0], dtype=values.dtype, device=values.device).index_copy(0, idx, values)

    return ObjectiveOutput(scatter(out.loss), {k: scatter(v) for k, v in out.terms.items()})


__all__ = ["OBJECTIVES", "ObjectiveOutput", "compute_objective"]
