r"""The contrastive objective of Shi et al. 2021 (the survey's eq. 33), an extra term for any joint
family: a related pair (x_i, x_j) must be more likely under the model than unrelated ones.

Per observed pair of modalities (i, j) and per direction, with N' negatives drawn from the batch
(the other rows that observe the pair, shifted by n = 1..N'):

.. math::
    C_{i\\to j} = \\log \\hat p(x_i, x_j) - \\log \\sum_{n=1}^{N'} \\hat p(x_i, x_j^{(n)}),\\qquad
    C_{j\\to i} = \\log \\hat p(x_i, x_j) - \\log \\sum_{n=1}^{N'} \\hat p(x_i^{(n)}, x_j)

    \\mathcal{L} = \\mathcal{L}_{family}(X_O) + w\\sum_{\\{i,j\\}\\subseteq O}\\big(C_{i\\to j} + C_{j\\to i}\\big)

Every log p̂ is the IWAE estimate with the family's own posterior given {x_i, x_j} as the proposal
(K samples, :func:`mdgm_ros.core.inference.iwae_log_likelihood`, differentiable). The family's
objective keeps the likelihood of related pairs from collapsing with the negatives' (Shi et al.'s γ
weight on log p). Rows that observe fewer than two modalities add nothing, so unpaired
single-modality rows train the family's own terms only.

Switched on by ``family_options: {contrastive: {weight: 1.0, negatives: 4, K: 4}}``
(:func:`~mdgm_ros.core.families.compute_objective` adds it, in every training stage).
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..model.estimators import iwae_log_likelihood
from ..model.family import ObjectiveOutput

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE

DEFAULTS = {"weight": 1.0, "negatives": 4, "K": 4}


def checked_options(options: Any) -> dict[str, Any]:
    if options is True:
        options = {}
    if not isinstance(options, Mapping) or set(options) - set(DEFAULTS):
        raise ValueError(f"objective option 'contrastive' must map some of {sorted(DEFAULTS)} to values, "
                         f"got {options!r}")
    out = {**DEFAULTS, **options}
    if out["weight"] < 0 or int(out["negatives"]) < 1 or int(out["K"]) < 1:
        raise ValueError(f"contrastive: weight >= 0, negatives >= 1 and K >= 1, got {dict(options)}")
    return out


def pair_log_likelihood(model: "MultimodalVAE", x_i: torch.Tensor, x_j: torch.Tensor, i: int, j: int, K: int,
                        generator: torch.Generator | None) -> torch.Tensor:
    """IWAE log p̂(x_i, x_j) per row with the posterior given the pair: (P,)."""
    rows = x_i.shape[0]
    mask = torch.zeros((rows, len(model.names)), dtype=torch.bool, device=x_i.device)
    mask[:, [i, j]] = True
    return iwae_log_likelihood(model, {model.names[i]: x_i, model.names[j]: x_j}, mask, K, generator)


def pair_term(model: "MultimodalVAE", x_i: torch.Tensor, x_j: torch.Tensor, i: int, j: int,
              negatives: int, K: int, generator: torch.Generator | None) -> torch.Tensor:
    """C_{i->j} + C_{j->i} per row of a batch where every row observes both: (P,)."""
    positive = pair_log_likelihood(model, x_i, x_j, i, j, K, generator)
    shifts = range(1, min(negatives, x_i.shape[0] - 1) + 1)
    # row b of wrong[n]: log p̂(x_i^b, x_j^{b+n}); direction j->i for row b is wrong[n] at row b - n
    wrong = [pair_log_likelihood(model, x_i, x_j.roll(-n, 0), i, j, K, generator) for n in shifts]
    forward = torch.logsumexp(torch.stack(wrong), 0)
    backward = torch.logsumexp(torch.stack([w.roll(n, 0) for n, w in zip(shifts, wrong)]), 0)
    return 2 * positive - forward - backward


def add_term(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor, out: ObjectiveOutput,
             options: Mapping[str, Any], generator: torch.Generator | None = None) -> ObjectiveOutput:
    """``out`` with the weighted contrastive term subtracted from its loss (and reported as a term)."""
    opts = checked_options(options)
    total = torch.zeros_like(out.loss)
    for i, j in itertools.combinations(range(len(model.names)), 2):
        rows = (mask[:, i] & mask[:, j]).nonzero(as_tuple=True)[0]
        if rows.numel() < 2:
            continue
        x_i, x_j = (feats[model.names[k]].index_select(0, rows) for k in (i, j))
        value = pair_term(model, x_i, x_j, i, j, int(opts["negatives"]), int(opts["K"]), generator)
        total = total.index_add(0, rows, value.to(total.dtype))
    terms = {**out.terms, "contrastive": total.detach()}
    return ObjectiveOutput(out.loss - float(opts["weight"]) * total, terms)
