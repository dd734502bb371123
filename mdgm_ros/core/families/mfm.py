r"""MFM, multimodal factorisation model (Tsai et al. 2019; the survey's eq. 32): an observed label y, a
modality-invariant factor c (= F_y) shared by every modality and the label, a modality-specific factor
s_m (= F_a(m)) per modality, trained as a Wasserstein autoencoder (MMD between the aggregate
posterior and the prior instead of a KL per sample), with surrogate inference networks for missing
modalities.

.. math::
    p(X, y) = \\int p(c)\\,p(y|c)\\prod_m p(s_m)\\,p(x_m|c, s_m)\\qquad
    c \\sim q(c|X),\\ s_m \\sim q(s_m|x_m)

    \\mathcal{L}(X, y) = \\mathbb{E}\\Big[\\sum_{m\\in O}\\lambda_m\\log p(x_m|c, s_m) + \\kappa\\log p(y|c)\\Big]
        - \\beta\\lambda_{MMD}\\Big[\\mathrm{MMD}_k\\big(q(c), p(c)\\big)
            + \\sum_m\\mathrm{MMD}_k\\big(q(s_m), p(s_m)\\big)\\Big]
        + \\eta\\sum_{m}\\log q\\big(\\mathrm{sg}[\\bar c(X)]\\,\\big|\\,x_m\\big)\\qquad\\text{(eq. 32)}

q(c|X) is the multimodal encoder (a joint encoder over all modalities) on complete rows; q(c|x_m) are
the *surrogate inference networks*: trained (last term, on complete rows, sg = stop-gradient, c̄ the
multimodal encoder's mean) to predict the multimodal factor from one modality; a row with missing
modalities takes c from the product of its observed surrogates. p(y|c) is a linear softmax head on c
(rows with a label y >= 0: the digit on PolyDigits, the task phase ``/sim/task_phase`` in bags; a bag
without phases trains with the label term off). MMD_k is the unbiased squared MMD of the batch's codes
against as many prior samples with the inverse multiquadratic kernel k(a, b) = C / (C + |a-b|²),
C = 2·dim (Tolstikhin et al.); being a batch quantity it is added to every row. The encoders are
Gaussian (a random-encoder WAE), so the posterior has a variance for sampling and likelihoods.

Options: ``mmd_weight`` (λ_MMD, 10.0), ``kappa`` (label weight, 1.0), ``eta`` (surrogate weight, 1.0),
``n_labels`` (classes of the head, 16). Inference: c as the surrogate families (full set: q(c|X);
one modality: its surrogate; other subsets: product of the surrogates), s_m: q(s_m|x_m).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
from torch import nn

from ..model import posterior as post
from ..model.family import LABELS, ExportPart, ObjectiveOutput, Properties
from .private import PrivateFamily, private_reconstruction
from .surrogate import SurrogateFamily, joint_row, masked

if TYPE_CHECKING:
    from ..model.vae import MultimodalVAE


def prior_samples(n: int, dim: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn((n, dim), generator=generator, device=like.device).to(like.dtype)


def imq_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    scale = 2.0 * a.shape[-1]
    return scale / (scale + torch.cdist(a, b) ** 2)


def mmd(codes: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Unbiased squared MMD between codes (n, D) and prior samples (n, D); 0 for n < 2."""
    n = codes.shape[0]
    if n < 2:
        return codes.sum() * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=codes.device)
    within = (imq_kernel(codes, codes)[off].sum() + imq_kernel(prior, prior)[off].sum()) / (n * (n - 1))
    return within - 2.0 * imq_kernel(codes, prior).mean()


def objective(model: "MultimodalVAE", feats: Mapping[str, torch.Tensor], mask: torch.Tensor,
              beta: float = 1.0, generator: torch.Generator | None = None, mmd_weight: float = 10.0,
              kappa: float = 1.0, eta: float = 1.0, n_labels: int = 16) -> ObjectiveOutput:
    n_mod, full = len(model.names), mask.all(1)
    mu, logvar = model.experts(feats, mask)
    s_mu, s_lv = model.private_experts(feats, mask)
    sur_mu, sur_lv = post.product_of_experts(mu[:n_mod], logvar[:n_mod], mask, include_prior=False)
    row = joint_row(model)
    c_mu = torch.where(full[:, None], mu[row], sur_mu)
    c_lv = torch.where(full[:, None], logvar[row], sur_lv)
    c = post.reparameterize(c_mu, c_lv, generator=generator)
    s = post.reparameterize(s_mu, s_lv, generator=generator)
    recon = private_reconstruction(model, feats, c, s, mask)
    terms: dict[str, torch.Tensor] = {"recon": recon.detach()}
    value = recon
    labels = feats.get(LABELS)
    if labels is not None and kappa:
        known = labels >= 0
        logp = torch.log_softmax(model.extra["label_head"](c), -1).gather(-1, labels.clamp_min(0)[:, None])[:, 0]
        terms["label_loglik"] = masked(logp, known).detach()
        value = value + kappa * masked(logp, known)
    target = mu[row].detach()
    surrogate = sum(masked(post.gaussian_log_prob(target, mu[j], logvar[j]), full) for j in range(n_mod))
    divergence = mmd(c, prior_samples(c.shape[0], c.shape[-1], c, generator))
    for j in range(n_mod):
        rows = mask[:, j].nonzero(as_tuple=True)[0]
        codes = s[j].index_select(0, rows)
        divergence = divergence + mmd(codes, prior_samples(codes.shape[0], codes.shape[-1], codes, generator))
    value = value + eta * surrogate - beta * mmd_weight * divergence
    terms.update(surrogate=surrogate.detach(), mmd=divergence.detach().expand(mask.shape[0]),
                 objective=value.detach())
    return ObjectiveOutput(-value, terms)


@dataclass(frozen=True)
class MFMFamily(PrivateFamily, SurrogateFamily):
    uses_labels: ClassVar[bool] = True

    def build_networks(self, model: "MultimodalVAE") -> dict[str, nn.Module]:
        n_labels = int(model.config.family_options.get("n_labels", 16))
        return {"label_head": nn.Linear(model.latent_dim, n_labels)}

    def inference_rule(self, config=None) -> str:
        return ("c: full set: the multimodal encoder; one modality: its surrogate; other subsets: product of "
                "the surrogates; s_m: q(s_m|x_m), missing s_m: N(0, I)")

    def extra_export_parts(self, model: "MultimodalVAE", feats: Mapping[str, torch.Tensor]) -> list[Any]:
        batch = next(iter(feats.values())).shape[0]
        c = torch.zeros(batch, model.latent_dim, device=model.device)
        return [ExportPart("onnx_label_head", model.extra["label_head"], (c,), ["z"], ["logits"])]


FAMILY = MFMFamily(
    name="mfm", objective_fn=objective,
    properties=Properties(
        aggregated_inference="multimodal encoder; surrogate inference networks for missing modalities",
        missing_modalities=True, modality_specific_latents=True, end_to_end=True, scalability="linear",
        reference="Tsai et al. 2019, multimodal factorisation model (MFM)", equations="eq. 32",
        notes="label y observed (digit on PolyDigits, /sim/task_phase in bags; a bag without phases trains "
              "with the label term off); WAE objective with MMD to the prior; surrogates regress the "
              "multimodal factor"))
