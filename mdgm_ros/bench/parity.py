"""``mdgm-ros bench parity``: this package's model families against MultiVae's, same networks, same initial
weights, the same coherence code.

For each family both libraries have (:data:`PARITY_FAMILIES`) and each seed:

- this package's model is built and trained as ``bench zoo`` does (:func:`.zoo.train_family`) under the
  comparison's protocol: PolyDigits, the 768-256-256 perceptrons of :mod:`.zoo` (``networks="mlp"``),
  latent 20, Laplace(0.75) on per-channel standardised pixels (as ``bench zoo``; ``--raw-pixels``: on raw
  [0, 1] pixels, where both libraries' JMVAE and DMVAE stay near chance at 12 epochs; MultiVae's model
  gets the same standardised images and its outputs are mapped back), KL weight 1 from the first step,
  Adam 1e-3, batch 64,
  no gradient clipping;
- the same untrained model is built again from the same seed and its encoders and decoders (private
  encoders and the joint encoder where the family has them) are deep-copied into MultiVae's model of that
  family (:func:`copy_networks`, :func:`build_multivae`), which trains with a plain loop over the same
  batches in the same order (:func:`train_multivae`);
- both are measured by :func:`.zoo.subset_coherence` with the same classifiers: conditional coherence for
  k = 1..4 given modalities, decoding the latent mean and one sample of z (MultiVae's side through its own
  ``encode`` and ``decode``).

MultiVae is an optional extra, never a dependency: this module imports without it, and the command
refuses in one line where it is absent (``pip install multivae==1.0.3``). With ``--out`` every finished
(family, seed, library) row is kept in ``OUT/rows/`` and read back by a later run of the same protocol
and the same source of the family's module.
What the two libraries' objectives still do differently is listed per family in the report's notes.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..core import MultimodalVAE
from ..core.engine import loop as training
from ..core.engine.atomic import write_atomically, write_text_atomically
from ..core.families import get_family
from ..data.polydigits import PolyDigits, make_polydigits
from ..interrupts import exit_code
from . import zoo

MULTIVAE_PIN = "1.0.3"
INSTALL = f"pip install multivae=={MULTIVAE_PIN}"
PARITY_FAMILIES = ("mvae", "mopoe", "jmvae", "dmvae_lee", "mmvae", "mmvae_plus", "telbo")
LIBRARIES = ("ours", "multivae")
DEFAULT_EPOCHS = 12
# this package's options for the comparison (before --option): the settings both libraries are run with
PARITY_OPTIONS: dict[str, dict[str, Any]] = {"mmvae": {"K": 2, "learn_prior": False}, "mmvae_plus": {"K": 2}}
# this package's ``posterior`` option -> MultiVae's ``prior_and_posterior_dist``
MULTIVAE_DIST = {"gaussian": "normal", "laplace": "laplace_with_softmax"}
# this package's MMVAE+ ``generation_prior`` -> MultiVae's ``reconstruction_option``
MULTIVAE_GENERATION = {"aux": "single_prior", "joint": "joint_prior"}
MULTIVAE_JMVAE_ALPHA = 0.1             # JMVAEConfig's default


class MultiVaeMissing(ValueError):
    """MultiVae is not installed (or does not import): the comparison cannot run."""


def multivae_version() -> str | None:
    """The installed MultiVae's version; None where it is not installed."""
    if importlib.util.find_spec("multivae") is None:
        return None
    try:
        return importlib.metadata.version("multivae")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def require_multivae() -> str:
    """MultiVae's version, after importing its models; :class:`MultiVaeMissing` (one line naming the fix)
    where it is absent or broken."""
    version = multivae_version()
    if version is None:
        raise MultiVaeMissing(f"MultiVae is not installed; the parity benchmark trains its models ({INSTALL})")
    try:
        importlib.import_module("multivae.models")
    except ImportError as err:
        raise MultiVaeMissing(f"MultiVae {version} does not import ({err}); {INSTALL}") from None
    return version


# ----------------------------------------------------------------------------- the copied networks
class EncoderCopy(nn.Module):
    """Copies of q(z | x_m)'s encoder and, for a family with private latents, of q(s_m | x_m)'s; their
    outputs under MultiVae's names (``embedding``, ``log_covariance``, ``style_embedding``,
    ``style_log_covariance``), raw (this package clamps log-variances later, MultiVae does not)."""

    def __init__(self, shared: nn.Module, private: nn.Module | None = None):
        super().__init__()
        self.shared = shared
        self.private = private

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.shared(x)
        out = {"embedding": mu, "log_covariance": logvar}
        if self.private is not None:
            style_mu, style_logvar = self.private(x)
            out.update(style_embedding=style_mu, style_log_covariance=style_logvar)
        return out


class JointEncoderCopy(nn.Module):
    """A copy of the joint encoder q(z | X) (JMVAE, TELBO), fed a dict of every modality's input (MultiVae's
    joint-encoder interface) in this package's modality order."""

    def __init__(self, encoder: nn.Module, names: Sequence[str]):
        super().__init__()
        self.encoder = encoder
        self.names = tuple(names)

    def outputs(self, x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mu, logvar = self.encoder(*(x[n] for n in self.names))
        return {"embedding": mu, "log_covariance": logvar}


class DecoderCopy(nn.Module):
    """A copy of p(x_m | z) (z, or [c, s_m] with private latents, in that order as both libraries
    concatenate them) -> ``reconstruction``."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def outputs(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self.decoder(z)}


@dataclass
class CopiedNetworks:
    """Deep copies of a model's networks, by modality; ``joint``: its joint encoder, if it has one."""

    names: tuple[str, ...]
    encoders: dict[str, EncoderCopy]
    decoders: dict[str, DecoderCopy]
    joint: JointEncoderCopy | None
    latent_dim: int
    private_dim: int


def copy_networks(model: MultimodalVAE) -> CopiedNetworks:
    """Deep copies of ``model``'s unimodal encoders (with its private encoders), decoders and joint
    encoder, for MultiVae's model of the family: the same architecture with the same weights."""
    names = tuple(model.names)
    joint_key = "__".join(names)
    others = sorted(set(model.subset_encoders) - {joint_key})
    if others:
        raise ValueError(f"MultiVae's models have no encoders of the subsets {others}")
    missing = [n for n in names if n not in model.encoders]
    if missing:
        raise ValueError(f"family {model.config.family!r} has no unimodal encoders for {missing}")
    private = model.private_encoders
    encoders = {n: EncoderCopy(copy.deepcopy(model.encoders[n]),
                               copy.deepcopy(private[n]) if n in private else None) for n in names}
    decoders = {n: DecoderCopy(copy.deepcopy(model.decoders[n])) for n in names}
    joint = (JointEncoderCopy(copy.deepcopy(model.subset_encoders[joint_key]), names)
             if joint_key in model.subset_encoders else None)
    return CopiedNetworks(names, encoders, decoders, joint, model.latent_dim, model.private_dim)


@torch.no_grad()
def copy_difference(model: MultimodalVAE, copied: CopiedNetworks, inputs: Mapping[str, torch.Tensor],
                    encoder: Callable[[str, torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
                    decoder: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                    joint: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]] | None = None,
                    seed: int = 0) -> float:
    """Largest absolute difference between ``model``'s networks and the copies on ``inputs`` (raw
    features by modality) and on random latents: 0.0 when the copies are the same networks with the same
    weights. ``encoder``/``decoder``/``joint``: how the copies are called (default: :class:`EncoderCopy`
    and friends; MultiVae's wrappers from :func:`multivae_networks` can be checked the same way)."""
    encoder = encoder or (lambda name, x: copied.encoders[name].outputs(x))
    decoder = decoder or (lambda name, z: copied.decoders[name].outputs(z)["reconstruction"])
    joint = joint or (None if copied.joint is None else copied.joint.outputs)
    worst = 0.0

    def compare(ours: torch.Tensor, theirs: torch.Tensor) -> None:
        nonlocal worst
        worst = max(worst, float((ours - theirs).abs().max()))

    batch = next(iter(inputs.values())).shape[0]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((batch, copied.latent_dim + copied.private_dim), generator=gen).to(model.device)
    for name in copied.names:
        out = encoder(name, inputs[name])
        mu, logvar = model.encoders[name](inputs[name])
        compare(mu, out["embedding"])
        compare(logvar, out["log_covariance"])
        if name in model.private_encoders:
            s_mu, s_logvar = model.private_encoders[name](inputs[name])
            compare(s_mu, out["style_embedding"])
            compare(s_logvar, out["style_log_covariance"])
        compare(model.decoders[name](z), decoder(name, z))
    if joint is not None:
        mu, logvar = model.subset_encoders["__".join(copied.names)](*(inputs[n] for n in copied.names))
        out = joint(inputs)
        compare(mu, out["embedding"])
        compare(logvar, out["log_covariance"])
    return worst


def multivae_copy_difference(model: MultimodalVAE, mv_model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> float:
    """:func:`copy_difference` between ``model``'s networks and those MultiVae's model ``mv_model`` calls
    (its encoders, decoders and joint encoder): 0.0 when it holds the same networks with the same weights."""
    return copy_difference(model, copy_networks(model), inputs,
                           encoder=lambda n, x: mv_model.encoders[n](x),
                           decoder=lambda n, z: mv_model.decoders[n](z).reconstruction,
                           joint=getattr(mv_model, "joint_encoder", None))


@functools.lru_cache(maxsize=1)
def _wrapper_classes() -> tuple[type, type, type, type]:
    """MultiVae-compatible encoder, multi-latent encoder, joint encoder and decoder classes around the
    copies (pythae's and MultiVae's base classes; imported here, MultiVae being optional)."""
    from multivae.models.nn.base_architectures import BaseJointEncoder, BaseMultilatentEncoder
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self, copied: EncoderCopy, latent_dim: int):
            BaseEncoder.__init__(self)
            self.copied, self.latent_dim = copied, latent_dim

        def forward(self, x: torch.Tensor):
            return ModelOutput(**self.copied.outputs(x))

    class MultilatentEncoder(BaseMultilatentEncoder):
        def __init__(self, copied: EncoderCopy, latent_dim: int, style_dim: int):
            BaseMultilatentEncoder.__init__(self)
            self.copied, self.latent_dim, self.style_dim = copied, latent_dim, style_dim

        def forward(self, x: torch.Tensor):
            return ModelOutput(**self.copied.outputs(x))

    class JointEncoder(BaseJointEncoder):
        def __init__(self, copied: JointEncoderCopy, latent_dim: int):
            BaseJointEncoder.__init__(self)
            self.copied, self.latent_dim = copied, latent_dim

        def forward(self, x: dict):
            return ModelOutput(**self.copied.outputs(x))

    class Decoder(BaseDecoder):
        def __init__(self, copied: DecoderCopy):
            BaseDecoder.__init__(self)
            self.copied = copied

        def forward(self, z: torch.Tensor):
            return ModelOutput(**self.copied.outputs(z))

    return Encoder, MultilatentEncoder, JointEncoder, Decoder


def multivae_networks(copied: CopiedNetworks) -> tuple[dict[str, nn.Module], dict[str, nn.Module], nn.Module | None]:
    """The copies as MultiVae's encoders (multi-latent ones with private latents), decoders and joint
    encoder."""
    encoder, multilatent, joint, decoder = _wrapper_classes()
    encoders = {n: (multilatent(c, copied.latent_dim, copied.private_dim) if c.private is not None
                    else encoder(c, copied.latent_dim)) for n, c in copied.encoders.items()}
    decoders = {n: decoder(c) for n, c in copied.decoders.items()}
    return encoders, decoders, None if copied.joint is None else joint(copied.joint, copied.latent_dim)


# ----------------------------------------------------------------------------- MultiVae's models
def user_options(config: zoo.ZooConfig, name: str) -> dict[str, Any]:
    """The options ``--option`` gave family ``name`` (not the comparison's :data:`PARITY_OPTIONS`)."""
    return {k: v for k, v in config.family_options.get(name, {}).items()
            if (k, v) not in PARITY_OPTIONS.get(name, {}).items()}


def family_option(model: MultimodalVAE, key: str) -> Any:
    """The value of the objective option ``key`` that ``model`` trains with: its config's, else the
    family's default (None where the family has no such option)."""
    if key in model.config.family_options:
        return model.config.family_options[key]
    return (model.family.option_types() or {}).get(key, (None, None))[1]


def telbo_joint_epochs(model: MultimodalVAE, config: zoo.ZooConfig) -> int:
    """Epochs of TELBO's joint stage in this package's plan (MultiVae's ``warmup``, the same split)."""
    return training.stage_plan(model, training.TrainConfig(epochs=config.epochs))[0]


def build_multivae(name: str, model: MultimodalVAE, config: zoo.ZooConfig) -> tuple[nn.Module, list[str]]:
    """MultiVae's model of family ``name`` around copies of ``model``'s untrained networks (its options
    mirror ``model``'s where both libraries have them), and the notes on what still differs."""
    from multivae import models as mv

    copied = copy_networks(model)
    encoders, decoders, joint = multivae_networks(copied)
    names = list(model.names)
    option = functools.partial(family_option, model)
    common = dict(n_modalities=len(names), latent_dim=model.latent_dim,
                  input_dims={n: tuple(model.specs[n].shape) for n in names}, uses_likelihood_rescaling=False,
                  decoders_dist={n: model.specs[n].likelihood for n in names},
                  decoder_dist_params={n: {"scale": float(model.specs[n].scale)} for n in names})
    for n in names:
        if model.specs[n].likelihood not in ("laplace", "bernoulli") or model.specs[n].learn_scale:
            raise ValueError(f"modality {n}: the comparison needs a fixed-scale Laplace (or Bernoulli) likelihood")
    notes = family_notes(name, model, config)
    if name == "mvae":
        cfg = mv.MVAEConfig(**common, use_subsampling=True, k=int(option("k") or 0), warmup=0, beta=config.beta)
        return mv.MVAE(cfg, encoders=encoders, decoders=decoders), notes
    if name == "mopoe":
        return mv.MoPoE(mv.MoPoEConfig(**common, beta=config.beta), encoders=encoders, decoders=decoders), notes
    if name == "jmvae":
        alpha = float(user_options(config, name).get("alpha", MULTIVAE_JMVAE_ALPHA))
        cfg = mv.JMVAEConfig(**common, alpha=alpha, warmup=0, beta=config.beta)
        return mv.JMVAE(cfg, encoders=encoders, decoders=decoders, joint_encoder=joint), notes
    if name == "telbo":
        cfg = mv.TELBOConfig(**common, warmup=telbo_joint_epochs(model, config))
        return mv.TELBO(cfg, encoders=encoders, decoders=decoders, joint_encoder=joint), notes
    if name == "dmvae_lee":
        if (option("shared") or "gaussian") != "gaussian":
            raise ValueError("MultiVae's DMVAE has a Gaussian shared latent only (dmvae_lee.shared=gaussian)")
        cfg = mv.DMVAEConfig(**common, modalities_specific_dim={n: model.private_dim for n in names},
                             beta=config.beta)
        return mv.DMVAE(cfg, encoders=encoders, decoders=decoders), notes
    dist = MULTIVAE_DIST[option("posterior") or "gaussian"]
    if name == "mmvae":
        cfg = mv.MMVAEConfig(**common, K=int(option("K")), prior_and_posterior_dist=dist,
                             learn_prior=bool(option("learn_prior")), beta=config.beta, loss="dreg_looser")
        return mv.MMVAE(cfg, encoders=encoders, decoders=decoders), notes
    if name == "mmvae_plus":
        cfg = mv.MMVAEPlusConfig(**common, K=int(option("K")), prior_and_posterior_dist=dist,
                                 learn_shared_prior=bool(option("learn_prior")),
                                 learn_modality_prior=True, modalities_specific_dim=model.private_dim,
                                 reconstruction_option=MULTIVAE_GENERATION[option("generation_prior") or "aux"],
                                 beta=config.beta, loss="dreg_looser")
        return mv.MMVAEPlus(cfg, encoders=encoders, decoders=decoders), notes
    raise ValueError(f"no MultiVae counterpart for family {name!r} (parity compares {', '.join(PARITY_FAMILIES)})")


def family_notes(name: str, model: MultimodalVAE, config: zoo.ZooConfig) -> list[str]:
    """What still differs between the two libraries' versions of family ``name`` (networks and initial
    weights are the same)."""
    option = functools.partial(family_option, model)
    if name == "mvae":
        return [f"both: ELBO of all modalities + the {len(model.names)} unimodal ELBOs + k={option('k') or 0} "
                "random subset ELBOs, PoE with the prior expert"]
    if name == "mopoe":
        return ["both: KL bound over the 31 subsets in closed form; the prior expert only in the product of all",
                "reconstruction: this package samples one subset per tuple; MultiVae splits each batch over the 31 "
                "subsets in a fixed order (at batch 64: 2 tuples for each of the first 30, 4 for the last; a last "
                "batch of under 31 tuples goes whole to the last subset, all modalities)"]
    if name == "jmvae":
        given = user_options(config, name).get("alpha")
        ours, theirs = float(option("alpha")), float(MULTIVAE_JMVAE_ALPHA if given is None else given)
        alpha = (f"alpha {ours:g} (both{'' if given is None else ', --option'})" if ours == theirs
                 else f"alpha: this package {ours:g}, MultiVae {theirs:g} (each library's default)")
        return [alpha,
                "joint encoder: this package's (the default image body per modality, concatenated, a 128-unit MLP), "
                "given to MultiVae as its joint_encoder, so identical",
                "both: 2..M-1 given modalities: PoE of the unimodal encoders without the prior"]
    if name == "telbo":
        joint = telbo_joint_epochs(model, config)
        reset = ([f"MultiVae resets Adam at the start of epoch {joint} (its MultistageTrainer's "
                  "reset_optimizer_epochs, repeated here), one epoch before its unimodal stage; this package "
                  "keeps one optimiser"] if joint else [])
        return [f"both: {joint} epochs on the joint ELBO (joint encoder, decoders), then "
                f"{config.epochs - joint} on the unimodal ELBOs (unimodal encoders only)", *reset,
                "MultiVae's unimodal ELBO takes the joint encoder's log-variance where the unimodal one belongs "
                "in its KL term (run as it is)",
                "MultiVae's TELBO infers from one modality or from all only: its coherence is null for k = 2..4"]
    if name == "dmvae_lee":
        return [f"regulariser: this package's beta-TCVAE split with total-correlation weight "
                f"{option('tc_weight'):g} (minibatch-weighted sampling estimates); MultiVae's the closed-form KL",
                f"both: every private KL in each of the {len(model.names) + 1} ELBOs (the joint and each "
                "unimodal one); MultiVae draws s_m afresh for each, this package once for all",
                f"both: every modality reconstructed from every expert's c with its own s_m "
                f"(private dim {model.private_dim}); PoE with the prior for the joint and for inference, "
                "the unimodal experts alone in the unimodal ELBOs"]
    posterior = option("posterior") or "gaussian"
    notes = [f"both: K={option('K')} samples per expert, DReG, {posterior} posterior and prior "
             f"(MultiVae {MULTIVAE_DIST[posterior]})",
             "MultiVae's loss sums over the batch, this package's averages (Adam is almost blind to the scale)",
             "sampled z: MultiVae picks one given modality's expert per encode call (per 500 test tuples), "
             "this package one per tuple"]
    if name == "mmvae":
        learned = bool(option("learn_prior"))
        return [*notes, f"prior: {'learned scales' if learned else 'fixed'} (both)"]
    generation = option("generation_prior") or "aux"
    return [*notes, f"missing modalities' w from {'r_m' if generation == 'aux' else 'p'} "
                    f"(MultiVae reconstruction_option={MULTIVAE_GENERATION[generation]}); the r_m learn their scales "
                    f"(both); private dim {model.private_dim}"]


# ----------------------------------------------------------------------------- training and imputing
def train_multivae(mv_model: nn.Module, train: PolyDigits, config: zoo.ZooConfig, seed: int,
                   pixels: "Pixels | None" = None) -> dict[str, Any]:
    """MultiVae's model trained by a plain loop: Adam, the batches of this package's trainer (same
    generator, same order), ``epoch`` passed as MultiVae's trainer passes it (from 1), the optimiser
    reset at the model's ``reset_optimizer_epochs`` as its multistage trainer does. ``pixels``: the
    images as this package's model sees them (standardised), None: raw."""
    from multivae.data.datasets.base import MultimodalBaseDataset

    device = torch.device(config.device)
    mv_model.to(device)
    pixels = pixels or Pixels(None)
    data = {n: pixels.to_model(n, torch.from_numpy(train.images[n]).to(device)) for n in train.names}
    labels = torch.from_numpy(train.labels).to(device)
    torch.manual_seed(seed)
    np.random.seed(seed)
    order = torch.Generator().manual_seed(seed)
    resets = set(getattr(mv_model, "reset_optimizer_epochs", []) or [])
    optimizer = torch.optim.Adam(mv_model.parameters(), lr=config.lr)
    started, last = time.perf_counter(), None
    for epoch in range(1, config.epochs + 1):
        if epoch in resets:
            optimizer = torch.optim.Adam(mv_model.parameters(), lr=config.lr)
        mv_model.train()
        batches = training.batch_indices(len(train), config.batch_size, order)
        total = 0.0
        for i, idx in enumerate(batches):
            idx = idx.to(device)
            out = mv_model(MultimodalBaseDataset(data={n: x[idx] for n, x in data.items()}, labels=labels[idx]),
                           epoch=epoch, batch_ratio=i / len(batches))
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"non-finite MultiVae loss at epoch {epoch} step {i}")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            total += float(out.loss.detach())
        mv_model.update()
        last = total / max(len(batches), 1)
    seconds = time.perf_counter() - started
    mv_model.eval()
    return {"train_seconds": seconds, "samples_per_s": len(train) * config.epochs / max(seconds, 1e-9),
            "final_train_loss": last}


@dataclass
class Pixels:
    """The pixels MultiVae's model is trained on and generates: this package's model's standardisation
    (per channel, fitted on the training tuples) where it has one, raw [0, 1] pixels where ``model`` is None
    or not normalised (``--raw-pixels``)."""

    model: MultimodalVAE | None

    @torch.no_grad()
    def to_model(self, name: str, images: torch.Tensor) -> torch.Tensor:
        return images if self.model is None else self.model.normalize(name, images.to(self.model.device))

    @torch.no_grad()
    def to_images(self, name: str, features: torch.Tensor) -> torch.Tensor:
        return features if self.model is None else self.model.denormalize(name, features)


def multivae_imputer(mv_model: nn.Module, names: Sequence[str], samples: int = 0,
                     pixels: Pixels | None = None) -> zoo.Imputer:
    """MultiVae's model as a :data:`.zoo.Imputer`: ``encode`` from the given modalities (the posterior
    mean, or one sample), then ``decode`` of the targets (private latents of the targets: the prior's
    mean or a sample of it, MultiVae's rule), both in ``pixels``' units. Modalities not given are handed
    over as zeros (a model that encodes every input keeps only the given subset's experts)."""
    from multivae.data.datasets.base import MultimodalBaseDataset

    pixels = pixels or Pixels(None)

    def imputer(given: dict[str, torch.Tensor], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        given = {n: pixels.to_model(n, x) for n, x in given.items()}
        first = next(iter(given.values()))
        inputs = MultimodalBaseDataset(data={n: given[n] if n in given else torch.zeros_like(first) for n in names})
        try:
            embedding = mv_model.encode(inputs, cond_mod=list(given), N=1, return_mean=not samples)
        except ValueError as err:                     # e.g. TELBO: one modality or all
            raise zoo.SubsetRefused(str(err)) from None
        decoded = mv_model.decode(embedding, modalities=list(targets))
        return {t: pixels.to_images(t, decoded[t]) for t in targets}
    return imputer


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """torch's and numpy's global generators seeded (MultiVae samples from them), restored afterwards."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def keyed(values: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """Coherence by k with string keys (as JSON keeps them)."""
    return None if values is None else {str(k): v for k, v in values.items()}


# ----------------------------------------------------------------------------- one row
def family_source(name: str) -> str:
    """A digest of the source of family ``name``'s module: a changed objective does not read back the rows
    of the old one."""
    module = sys.modules[get_family(name).objective_fn.__module__]
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]


def row_protocol(name: str, config: zoo.ZooConfig, library: str, version: str) -> dict[str, Any]:
    """What a stored row must match to be read back instead of run again (the family's source included)."""
    protocol = {"family": name, "library": library, "library_version": version, "epochs": config.epochs,
                "n_train": config.n_train, "n_test": config.n_test, "batch_size": config.batch_size,
                "lr": config.lr, "latent_dim": config.latent_dim, "networks": config.networks,
                "normalize": config.normalize, "beta": config.beta, "classifier_epochs": config.classifier_epochs,
                "protocol": zoo.training_protocol(name, config), "private_dim": config.private_dim,
                "option_defaults": {k: d for k, (_, d) in (get_family(name).option_types() or {}).items()},
                "family_source": family_source(name)}
    return json.loads(json.dumps(protocol, default=str))


def run_ours(name: str, train: PolyDigits, test: PolyDigits, classifiers: dict[str, nn.Module],
             config: zoo.ZooConfig, seed: int) -> dict[str, Any]:
    """This package's family trained as ``bench zoo`` trains it, then measured."""
    model, stats = zoo.train_family(name, train, config, seed)
    model.eval()
    measured = {f"coherence{suffix}": keyed(zoo.subset_coherence(zoo.model_imputer(model, samples), model.names,
                                                                   test, classifiers, model.device))
                for suffix, samples in (("", 0), ("_sampled", 1))}
    return {**measured, "train_seconds": stats["train_seconds"], "samples_per_s": stats["samples_per_s"],
            "final_train_loss": stats["final_train_loss"], "options": stats["protocol"]["options"]}


def run_multivae(name: str, train: PolyDigits, test: PolyDigits, classifiers: dict[str, nn.Module],
                 config: zoo.ZooConfig, seed: int) -> dict[str, Any]:
    """MultiVae's family from this package's untrained networks (same seed), trained and measured."""
    torch.manual_seed(seed)
    ours = zoo.build_model(name, config)
    mv_model, notes = build_multivae(name, ours, config)
    probe = {n: torch.from_numpy(train.images[n][:16]) for n in ours.names}
    difference = multivae_copy_difference(ours, mv_model, probe)
    if difference != 0.0:
        raise RuntimeError(f"{name}: MultiVae's copied networks differ from this package's by {difference:g}")
    pixels = Pixels(None)
    if config.normalize:                  # the standardisation this package's model fits (train_family)
        raw = {n: torch.from_numpy(train.images[n]) for n in ours.names}
        training.fit_normalization(ours, raw, torch.ones((len(train), len(ours.names)), dtype=torch.bool))
        pixels = Pixels(ours.to(config.device))
    stats = train_multivae(mv_model, train, config, seed, pixels)
    measured = {}
    for suffix, samples in (("", 0), ("_sampled", 1)):
        with seeded_global_rngs(0):
            measured[f"coherence{suffix}"] = keyed(zoo.subset_coherence(
                multivae_imputer(mv_model, ours.names, samples, pixels), ours.names, test, classifiers,
                config.device))
    config_dict = {k: v for k, v in vars(mv_model.model_config).items() if k != "custom_architectures"}
    return {**measured, **stats, "initial_networks_max_abs_difference": difference, "notes": notes,
            "multivae_config": json.loads(json.dumps(config_dict, default=str))}


# ----------------------------------------------------------------------------- the comparison
class RowStore:
    """``OUT/rows/``: one JSON file per finished (family, seed, library) and the classifiers of each seed;
    None: nothing kept."""

    def __init__(self, out: Path | None):
        self.root = None if out is None else Path(out) / "rows"

    def _path(self, name: str, seed: int, library: str) -> Path:
        return self.root / f"{name}_seed{seed}_{library}.json"

    def load(self, name: str, seed: int, library: str, protocol: Mapping[str, Any]) -> dict[str, Any] | None:
        if self.root is None or not self._path(name, seed, library).is_file():
            return None
        try:
            row = json.loads(self._path(name, seed, library).read_text())
        except ValueError:
            return None
        return row if row.get("protocol") == protocol else None

    def save(self, row: dict[str, Any]) -> None:
        if self.root is not None:
            write_text_atomically(self._path(row["family"], row["seed"], row["library"]),
                                  json.dumps(row, indent=2) + "\n")

    def classifiers(self, seed: int, key: Mapping[str, Any], fresh: Callable[[], tuple[dict, dict]],
                    device: str) -> tuple[dict[str, nn.Module], dict[str, float]]:
        """The seed's digit classifiers: read back where kept with the same ``key``, else ``fresh()``."""
        path = None if self.root is None else self.root / f"classifiers_seed{seed}.pt"
        if path is not None and path.is_file():
            saved = torch.load(path, map_location=device, weights_only=True)
            if saved.get("key") == json.dumps(key, sort_keys=True):
                nets = {}
                for name, state in saved["state"].items():
                    nets[name] = zoo.DigitClassifier().to(device)
                    nets[name].load_state_dict(state)
                    nets[name].eval()
                return nets, dict(saved["accuracy"])
        nets, accuracy = fresh()
        if path is not None:
            blob = {"key": json.dumps(key, sort_keys=True), "accuracy": accuracy,
                    "state": {n: net.state_dict() for n, net in nets.items()}}
            write_atomically(path, lambda tmp: torch.save(blob, tmp))
        return nets, accuracy


def run_parity(config: zoo.ZooConfig, seeds: Sequence[int], version: str, out: Path | None = None,
               log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Every family of the config on every seed, in both libraries; rows already in ``out`` are read back."""
    torch.set_num_threads(max(1, config.threads))
    store = RowStore(out)
    versions = {"ours": __version__, "multivae": version}
    runners = {"ours": run_ours, "multivae": run_multivae}
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    accuracy: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for seed in seeds:
        data: tuple[PolyDigits, PolyDigits] | None = None
        classifiers: dict[str, nn.Module] | None = None
        for name in config.families:
            for library in LIBRARIES:
                protocol = row_protocol(name, config, library, versions[library])
                row = store.load(name, seed, library, protocol)
                if row is None:
                    if data is None:
                        data = make_polydigits(config.n_train, config.n_test, config.n_modalities, seed=seed)
                        key = {"seed": seed, "n_train": config.n_train, "n_test": config.n_test,
                               "epochs": config.classifier_epochs}
                        classifiers, accuracy[str(seed)] = store.classifiers(
                            seed, key, lambda: zoo.seed_classifiers(*data, config, seed, None), config.device)
                        log(f"seed {seed}: classifier test accuracy {accuracy[str(seed)]}")
                    row = {"family": name, "seed": seed, "library": library, "protocol": protocol}
                    try:
                        row.update(runners[library](name, *data, classifiers, config, seed))
                    except FloatingPointError as err:         # a diverged run is a result, not a crash
                        row.update({"error": str(err), "coherence": None, "coherence_sampled": None})
                    store.save(row)
                else:
                    log(f"seed {seed} {name} {library}: read back from {store.root}")
                rows[(name, seed, library)] = row
                log(f"seed {seed} {name} {library}: coherence {row.get('coherence')}")
    return parity_report(config, seeds, version, rows, accuracy, time.perf_counter() - started)


def difference(ours: Mapping[str, float | None] | None, theirs: Mapping[str, float | None] | None
               ) -> dict[str, float | None] | None:
    """ours - MultiVae per k (None where either is null)."""
    if ours is None and theirs is None:
        return None
    ks = list(ours or theirs)
    return {k: None if (ours or {}).get(k) is None or (theirs or {}).get(k) is None else ours[k] - theirs[k]
            for k in ks}


def parity_report(config: zoo.ZooConfig, seeds: Sequence[int], version: str,
                  rows: Mapping[tuple[str, int, str], dict[str, Any]], accuracy: Mapping[str, Any],
                  wall_seconds: float) -> dict[str, Any]:
    """The report: one row per family and seed with both libraries' figures and their difference."""
    out = []
    for name in config.families:
        for seed in seeds:
            ours, theirs = rows[(name, seed, "ours")], rows[(name, seed, "multivae")]
            out.append({"family": name, "seed": seed, "ours": _side(ours), "multivae": _side(theirs),
                        "difference": {key: difference(ours.get(key), theirs.get(key))
                                       for key in ("coherence", "coherence_sampled")},
                        "notes": theirs.get("notes", [])})
    return {"benchmark": "parity", "dataset": "PolyDigits", "protocol": protocol(config),
            "seeds": list(seeds), "versions": {"torch": torch.__version__, "multivae": version,
                                               "mdgm_ros": __version__, "python": sys.version.split()[0]},
            "classifier_accuracy": dict(accuracy), "rows": out, "notes": COMMON_NOTES,
            "wall_seconds": wall_seconds}


def _side(row: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("coherence", "coherence_sampled", "train_seconds", "samples_per_s", "final_train_loss", "options",
            "initial_networks_max_abs_difference", "multivae_config", "error")
    return {k: row[k] for k in keep if k in row}


def protocol(config: zoo.ZooConfig) -> dict[str, Any]:
    return {"train_tuples": config.n_train, "test_tuples": config.n_test, "modalities": config.n_modalities,
            "networks": "768-256-256 ReLU perceptrons, heads mu and log-variance (bench zoo --networks mlp)",
            "latent_dim": config.latent_dim,
            "likelihood": "Laplace, scale 0.75, on "
                          + ("per-channel standardised" if config.normalize else "raw [0, 1]") + " pixels",
            "beta": config.beta, "kl_warmup": 0, "grad_clip": None, "optimizer": f"Adam lr {config.lr:g}",
            "batch_size": config.batch_size, "epochs": config.epochs, "classifier_epochs": config.classifier_epochs,
            "device": config.device, "family_options": config.family_options,
            "coherence": "k = 1..M-1 given modalities, every subset and every target outside it, plain accuracy of "
                         "the target's digit classifier; coherence: the latent mean decoded, coherence_sampled: one "
                         "sample of z (private latents of the targets: their prior's mean, resp. a sample)"}


COMMON_NOTES = [
    "same networks, same initial weights: MultiVae's encoders, decoders and joint encoders are deep copies of this "
    "package's untrained ones (checked equal on a batch before training)",
    "same batches in the same order; this package's AdamW has weight decay 0, i.e. Adam",
    "this package clamps encoder log-variances to [-10, 10]; MultiVae does not",
    "the same coherence code and classifiers for both; MultiVae's side through its encode (return_mean, or N=1) "
    "and decode; modalities not given are handed to it as zeros",
    "MultiVae's sampled encodings draw from torch's and numpy's global generators, seeded 0 per measurement",
]


# ----------------------------------------------------------------------------- output
def _ks(values: Mapping[str, float | None] | None, signed: bool = False) -> str:
    if not values:
        return "—"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return " / ".join("—" if v is None else fmt.format(v) for v in values.values())


def markdown(report: Mapping[str, Any]) -> str:
    """The comparison as Markdown tables: coherence (mean decoding, then sampled z), then training time."""
    lines = []
    for key, title in (("coherence", "latent mean decoded"), ("coherence_sampled", "one sample of z decoded")):
        lines += [f"Conditional coherence, {title}:", "",
                  "| family | seed | this project k=1/2/3/4 | MultiVae | difference |", "|---|---|---|---|---|"]
        for row in report["rows"]:
            lines.append(f"| {row['family']} | {row['seed']} | {_ks(row['ours'].get(key))} | "
                         f"{_ks(row['multivae'].get(key))} | {_ks(row['difference'][key], signed=True)} |")
        lines.append("")
    lines += ["Training:", "", "| family | seed | this project s (samples/s) | MultiVae s (samples/s) |",
              "|---|---|---|---|"]
    for row in report["rows"]:
        cells = [f"{side['train_seconds']:.1f} ({side['samples_per_s']:.0f})" if "train_seconds" in side
                 else side.get("error", "—") for side in (row["ours"], row["multivae"])]
        lines.append(f"| {row['family']} | {row['seed']} | {cells[0]} | {cells[1]} |")
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in report["notes"]]
    for name in dict.fromkeys(r["family"] for r in report["rows"]):
        notes = next(r["notes"] for r in report["rows"] if r["family"] == name)
        lines += [f"- {name}: {note}" for note in notes]
    versions = report["versions"]
    setup, epochs = report["protocol"], report["protocol"]["epochs"]
    lines += ["", f"torch {versions['torch']}, MultiVae {versions['multivae']}; {epochs} "
                  f"epoch{'' if epochs == 1 else 's'}, {setup['train_tuples']} train / {setup['test_tuples']} "
                  f"test tuples, seeds {', '.join(str(s) for s in report['seeds'])}"]
    return "\n".join(lines) + "\n"


def write_outputs(report: Mapping[str, Any], out: Path) -> None:
    """parity.json and parity.md in ``out`` (each written atomically)."""
    write_text_atomically(out / "parity.json", json.dumps(report, indent=2) + "\n")
    write_text_atomically(out / "parity.md", markdown(report))


# ----------------------------------------------------------------------------- CLI glue
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench parity`` (the CLI adds ``--json`` and ``--device``)."""
    parser.add_argument("--families", default=",".join(PARITY_FAMILIES),
                        help=f"comma-separated families (default: the {len(PARITY_FAMILIES)} both libraries have)")
    parser.add_argument("--seeds", default="1",
                        help="N seeds from --first-seed (as bench zoo), or a comma-separated list such as 0,1,2 "
                             "(one seed: '4,')")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed of --seeds N")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs of every model")
    parser.add_argument("--train-tuples", type=int, default=zoo.ZooConfig.n_train, help="training tuples")
    parser.add_argument("--test-tuples", type=int, default=zoo.ZooConfig.n_test, help="test tuples")
    parser.add_argument("--option", action="append", default=[], metavar="FAMILY.KEY=VALUE",
                        help="an option of one of this package's families, e.g. dmvae_lee.tc_weight=1 (repeatable; "
                             "jmvae.alpha, mvae.k, and the mmvae/mmvae_plus K, posterior, learn_prior and "
                             "generation_prior set MultiVae's counterpart too)")
    parser.add_argument("--out", default=None,
                        help="folder for parity.json and parity.md; finished rows are kept in OUT/rows/ and a "
                             "later run of the same protocol (and family source) reads them back")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="likelihood on raw [0, 1] pixels instead of per-channel standardised ones")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (300 train / 100 test tuples, 1 epoch): a smoke test, not numbers")


def parse_seeds(text: str, first_seed: int = 0) -> list[int]:
    """``"3"`` -> first_seed .. first_seed + 2; ``"0,1,2"`` -> those seeds."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(first_seed, first_seed + int(text)))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: a count N or a comma-separated list of seeds") from None
    if not seeds or min(seeds) < 0 or first_seed < 0 or len(set(seeds)) != len(seeds):
        raise ValueError("--seeds: at least one seed, none negative, none twice (and --first-seed >= 0)")
    return seeds


def parity_config_from_args(args: argparse.Namespace) -> tuple[zoo.ZooConfig, list[int]]:
    """The comparison's :class:`.zoo.ZooConfig` (its fixed protocol, the sizes the arguments give) and seeds."""
    families = tuple(f.strip() for f in str(args.families).split(",") if f.strip())
    unknown = sorted(set(families) - set(PARITY_FAMILIES))
    if unknown or not families:
        raise ValueError(f"parity compares the families {', '.join(PARITY_FAMILIES)}; got {unknown or 'none'}")
    seeds = parse_seeds(getattr(args, "seeds", "1"), int(getattr(args, "first_seed", 0) or 0))
    quick = bool(getattr(args, "quick", False))
    epochs = 1 if quick else int(getattr(args, "epochs", DEFAULT_EPOCHS))
    n_train = 300 if quick else int(getattr(args, "train_tuples", zoo.ZooConfig.n_train))
    n_test = 100 if quick else int(getattr(args, "test_tuples", zoo.ZooConfig.n_test))
    if epochs < 1 or n_train < 10 or n_test < 10:
        raise ValueError("--epochs must be >= 1, --train-tuples and --test-tuples >= 10")
    try:
        device = str(training.select_device(str(getattr(args, "device", "cpu") or "cpu")))
    except RuntimeError as err:
        raise ValueError(str(err)) from None
    given = zoo.parse_family_options(getattr(args, "option", []) or [])
    options = {f: {**PARITY_OPTIONS.get(f, {}), **given.get(f, {})} for f in {*PARITY_OPTIONS, *given}}
    config = zoo.ZooConfig(families=families, seeds=len(seeds), first_seed=seeds[0], n_train=n_train,
                           n_test=n_test, epochs=epochs, batch_size=64, lr=1e-3, latent_dim=20, warmup_steps=0,
                           warmup_start=0.0, beta=1.0, grad_clip=0.0, family_options=options,
                           normalize=not bool(getattr(args, "raw_pixels", False)),
                           classifier_epochs=1 if quick else zoo.ZooConfig.classifier_epochs,
                           threads=max(1, int(getattr(args, "threads", 1) or 1)), networks="mlp", device=device)
    zoo.check_family_options(config)
    return config, seeds


def parity_command(args: argparse.Namespace, write: Callable[[str], Any] = print,
                   log: Callable[[str], None] | None = None) -> int:
    """Run ``bench parity``; prints the Markdown tables (or JSON with ``--json``), progress on stderr."""
    log = log or zoo.log_to_stderr
    out = Path(args.out) if getattr(args, "out", None) else None
    try:
        version = require_multivae()
        config, seeds = parity_config_from_args(args)
        report = run_parity(config, seeds, version, out, log)
    except ValueError as err:
        log(f"error: {err}")
        return 2
    except KeyboardInterrupt as interrupt:
        if out is not None:
            log(f"interrupted: finished rows are in {out / 'rows'}; run the same command to continue")
        return exit_code(interrupt)
    if out is not None:
        write_outputs(report, out)
    write(json.dumps(report, indent=2) if getattr(args, "json", False) else markdown(report).rstrip("\n"))
    return 0
