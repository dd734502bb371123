r"""PVAE, partitioned VAE (Hsu & Glass 2018; the survey's eqs. 29-30): a multimodal encoder for the shared
c and for every private s_m, unimodal encoders q(c, s_m | x_m) = q(c|x_m) q(s_m|x_m), coherence KLs
between the two, and a hinge loss that makes the unimodal shared codes of a pair closer than those of
mismatched pairs.

.. math::
    q(c, S|X) = q(c|X)\\prod_m q(s_m|X),\\qquad q(c, s_m|x_m) = q(c|x_m)\\,q(s_m|x_m)\\qquad\\text{(eq. 29)}

    \\mathcal{L}(X) = \\mathcal{L}_{joint}(X) + \\sum_m \\mathcal{L}_m(x_m)
        - \\beta\\alpha\\sum_m\\Big[\\mathrm{KL}\\big(q(c|X)\\,\\|\\,q(c|x_m)\\big)
                            + \\mathrm{KL}\\big(q(s_m|X)\\,\\|\\,q(s_m|x_m)\\big)\\Big]
        - \\gamma\\sum_{m\\neq n}\\max\\big(0,\\ \\delta + d(\\mu_m^i, \\mu_n^i) - d(\\mu_m^i, \\mu_n^{i'})\\big)
        \\qquad\\text{(eq. 30)}

with the joint ELBO E_{q(c,S|X)}[Σ_m λ_m log p(x_m|c, s_m)] - β KL(q(c|X)||p(c)) - β Σ_m KL(q(s_m|X)||p(s_m)),
the unimodal ELBO E_{q(c,s_m|x_m)}[λ_m log p(x_m|c, s_m)] - β KL(q(c|x_m)||p) - β KL(q(s_m|x_m)||p),
μ_m^i the mean of q(c|x_m^i), d the squared Euclidean distance and i' = i+1 (mod B) the mismatched
row of the batch (the hinge's negative). The joint terms and coherence KLs count on complete rows, the
unimodal terms on the rows that observe m, the hinge on rows where i and i' observe m and n.
Options: ``alpha`` (1.0), ``gamma`` (1.0), ``margin`` (δ, 1.0). Networks: q(c|X) is the joint encoder
(as JMVAE's), q(S|X) one more network over all modalities (``extra["joint_private"]``, output M·P).

Inference: c as the surrogate families (full set: q(c|X); single modality: q(c|x_m); otherwise the
product of the unimodal experts); s_m: q(s_m|X) on complete rows, q(s_m|x_m) otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from ..model import posterior as post
from ..model.family import ExportPart, ObjectiveOutput, Properties
from ..model.networks import build_network
from .private import PrivateFamily, private_reconstruction
from .surrogate import SurrogateFamily, joint_row, masked

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE

JOINT_PRIVATE = "joint_private"


class JointPrivateEncoder(nn.Module):
    """q(S | X): every modality's features -> (B, M, P) means and log-variances (batch first, as exported)."""

    def __init__(self, net: nn.Module, n_mod: int, private_dim: int):
        super().__init__()
        self.net, self.n_mod, self.private_dim = net, n_mod, private_dim

    def forward(self, *feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(*feats)
        shape = (mu.shape[0], self.n_mod, self.private_dim)
        return mu.reshape(shape), post.clamp_logvar(logvar.reshape(shape))


def unimodal_private(model: "MultimodalVAE", feats, mask) -> tuple[torch.Tensor, torch.Tensor]:
    return PrivateFamily.private_posteriors(model.family, model, feats, mask)


def joint_private(model: "MultimodalVAE", feats, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """q(s_m | X) (M, B, P) on complete rows (prior numbers elsewhere)."""
    full = mask.all(1)
    shape = (len(model.names), mask.shape[0], model.private_dim)
    mu = torch.zeros(shape, device=mask.device, dtype=feats[model.names[0]].dtype)
    logvar = torch.zeros_like(mu)
    if not bool(full.any()):
        return mu, logvar
    idx = full.nonzero(as_tuple=True)[0]
    j_mu, j_lv = model.extra[JOINT_PRIVATE](*(feats[n].index_select(0, idx) for n in model.names))
    return mu.index_copy(1, idx, j_mu.transpose(0, 1)), logvar.index_copy(1, idx, j_lv.transpose(0, 1))


def hinge(mu: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """sum over ordered pairs m != n of max(0, margin + d(mu_m^i, mu_n^i) - d(mu_m^i, mu_n^{i+1})): (B,)."""
    n_mod, batch = mask.shape[1], mask.shape[0]
    total = torch.zeros(batch, dtype=mu.dtype, device=mu.device)
    if batch < 2:
        return total
    shifted_mask = mask.roll(-1, 0)
    for m in range(n_mod):
        for n in range(n_mod):
            if m == n:
                continue
            positive = ((mu[m] - mu[n]) ** 2).sum(-1)
            negative = ((mu[m] - mu[n].roll(-1, 0)) ** 2).sum(-1)
            rows = mask[:, m] & mask[:, n] & shifted_mask[:, n]
            total = total + masked(torch.relu(margin + positive - negative), rows)
    return total


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, alpha: float = 1.0,
              gamma: float = 1.0, margin: float = 1.0) -> ObjectiveOutput:
    mu, logvar = model.experts(feats, mask)
    s_mu, s_lv = unimodal_private(model, feats, mask)
    js_mu, js_lv = joint_private(model, feats, mask)
    full, row = mask.all(1), joint_row(model)
    terms: dict[str, torch.Tensor] = {}
    # joint ELBO on complete rows
    c = post.reparameterize(mu[row], logvar[row], generator=generator)
    s = post.reparameterize(js_mu, js_lv, generator=generator)
    joint = (private_reconstruction(model, feats, c, s, mask & full[:, None])
             - beta * post.kl_to_standard_normal(mu[row], logvar[row])
             - beta * post.kl_to_standard_normal(js_mu, js_lv).sum(0))
    value = terms["elbo_joint"] = masked(joint, full)
    coherence = torch.zeros_like(value)
    for j, name in enumerate(model.names):
        rows = mask[:, j]
        c_m = post.reparameterize(mu[j], logvar[j], generator=generator)
        s_m = post.reparameterize(s_mu[j], s_lv[j], generator=generator)
        own = torch.zeros_like(mask)
        own[:, j] = rows
        codes = s_m[None].expand(len(model.names), -1, -1)                # only row j is decoded
        elbo = (private_reconstruction(model, feats, c_m, codes, own)
                - beta * post.kl_to_standard_normal(mu[j], logvar[j])
                - beta * post.kl_to_standard_normal(s_mu[j], s_lv[j]))
        terms[f"elbo_{name}"] = masked(elbo, rows)
        value = value + terms[f"elbo_{name}"]
        kl = (post.kl_gaussians(mu[row], logvar[row], mu[j], logvar[j])
              + post.kl_gaussians(js_mu[j], js_lv[j], s_mu[j], s_lv[j]))
        coherence = coherence + masked(kl, full)
    contrast = hinge(mu[:len(model.names)], mask, margin)
    value = value - beta * alpha * coherence - gamma * contrast
    terms = {k: v.detach() for k, v in terms.items()}
    terms.update(coherence_kl=coherence.detach(), hinge=contrast.detach(), objective=value.detach())
    return ObjectiveOutput(-value, terms)


@dataclass(frozen=True)
class PVAEFamily(PrivateFamily, SurrogateFamily):
    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        n_mod, dim = len(model.names), model.private_dim
        net = build_network("subset", model.config.networks.get("subset"), list(model.config.modalities), n_mod * dim)
        return {JOINT_PRIVATE: JointPrivateEncoder(net, n_mod, dim)}

    def private_posteriors(self, model, feats, mask):
        s_mu, s_lv = unimodal_private(model, feats, mask)
        j_mu, j_lv = joint_private(model, feats, mask)
        full = mask.all(1)[None, :, None]
        return torch.where(full, j_mu, s_mu), torch.where(full, j_lv, s_lv)

    def inference_rule(self, config=None) -> str:
        return ("c: full set: q(c|X), one modality: q(c|x_m), otherwise the product of the unimodal experts; "
                "s_m: q(s_m|X) on complete rows, else q(s_m|x_m); missing s_m: N(0, I)")

    def extra_export_parts(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor]):
        return [ExportPart("onnx_joint_private_encoder", model.extra[JOINT_PRIVATE],
                           tuple(feats[n] for n in model.names), [f"features_{n}" for n in model.names],
                           ["mu", "logvar"])]


FAMILY = PVAEFamily(
    name="pvae", objective_fn=objective,
    properties=Properties(
        aggregated_inference="joint encoder q(c|X) q(S|X); unimodal q(c|x_m) q(s_m|x_m); other subsets: PoE",
        missing_modalities=True, modality_specific_latents=True, end_to_end=True,
        scalability="linear in parameters (the hinge runs over the M(M-1) ordered pairs)",
        reference="Hsu & Glass 2018, disentangling by partitioning (PVAE)", equations="eqs. 29-30",
        notes="private s_m (default 4 dims); coherence KLs joint->unimodal; hinge contrast on c "
              "(negatives: the next row of the batch)"))
