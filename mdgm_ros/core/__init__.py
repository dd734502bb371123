"""The pure model core: torch + numpy only (no rclpy, no ROS message types), in three one-way floors.

- :mod:`.model`: modalities, networks, posteriors, likelihoods and estimators, the multimodal VAE, the
  :class:`~.model.family.Family` interface and the family registry;
- :mod:`.families`: the concrete families (one module each) and their shared helpers; importing the
  package registers them;
- :mod:`.engine`: the objective, the one training loop and sequence training, inference and anomaly
  scores, the temporal filter, export, bundles and atomic file writes.

Each floor imports only the floors below it. The names below are the public API.
"""
import importlib as _importlib
import warnings as _warnings

from .engine.bundle import Bundle, BundleError, load_bundle, save_bundle, verify_bundle
from .engine.filter import FilterState, TemporalFilter, filter_sequence
from .engine.inference import (
    AnomalyCalibration,
    Fuser,
    FusionResult,
    Imputation,
    anomaly_scores,
    calibrate_anomaly,
    conditional_log_likelihood,
    impute,
)
from .engine.loop import BetaSchedule, TrainConfig, Trainer, fit_normalization, select_device, train
from .engine.objective import compute_objective
from .engine.sequence import train_sequences
from .families import OBJECTIVES
from .model import (
    FAMILIES,
    AudioOptions,
    FamilyError,
    ModalitySpec,
    ModelConfig,
    MultimodalVAE,
    Normalization,
    ObjectiveOutput,
    SpecError,
    default_robot_modalities,
    get_family,
    register_family,
    register_network,
)
from .model.estimators import iwae_log_likelihood

# modules of the core before it was split into floors: still importable from here for one release
_MOVED = {
    "anomaly": "engine.anomaly", "atomic": "engine.atomic", "bundle": "engine.bundle", "concrete": "model.concrete",
    "export": "engine.export", "inference": "engine.inference", "latent_distributions": "model.latent_distributions",
    "likelihoods": "model.likelihoods", "metrics": "engine.metrics", "modalities": "model.modalities",
    "networks": "model.networks", "posterior": "model.posterior", "synthetic": "engine.synthetic",
    "synthetic_sequences": "engine.synthetic_sequences", "temporal": "engine.filter", "training": "engine.loop",
    "windows": "engine.windows",
}


def __getattr__(name: str):
    if name in _MOVED:
        _warnings.warn(f"mdgm_ros.core.{name} is now mdgm_ros.core.{_MOVED[name]}; the old name goes in the "
                       "next release", DeprecationWarning, stacklevel=2)
        return _importlib.import_module(f"{__name__}.{_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnomalyCalibration", "AudioOptions", "FAMILIES", "FamilyError", "get_family", "register_family",
    "register_network", "BetaSchedule", "Bundle", "BundleError", "FusionResult", "Fuser",
    "Imputation", "ModalitySpec", "ModelConfig", "MultimodalVAE", "Normalization", "OBJECTIVES",
    "ObjectiveOutput", "SpecError", "FilterState", "TemporalFilter", "filter_sequence", "train_sequences",
    "TrainConfig", "Trainer", "anomaly_scores", "calibrate_anomaly",
    "compute_objective", "conditional_log_likelihood", "default_robot_modalities", "fit_normalization",
    "impute", "iwae_log_likelihood", "load_bundle", "save_bundle", "select_device", "train",
    "verify_bundle",
]
