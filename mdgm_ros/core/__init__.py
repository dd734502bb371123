"""The pure model core: torch + numpy only (no rclpy, no ROS message types).

Modules: :mod:`.modalities` (typed specs), :mod:`.networks` (encoders/decoders, log-mel front end),
:mod:`.posterior` (PoE / MoE / MoPoE aggregation), :mod:`.families` (one module per model family and
the registry the rest of the code asks), :mod:`.export` (every network as an exportable part),
:mod:`.model`, :mod:`.inference` (imputation, likelihoods, anomaly scores, the fusion step),
:mod:`.bundle` (safe model bundles), :mod:`.training`, :mod:`.synthetic`, :mod:`.temporal` (the temporal
family's filter, smoother, prediction and sequence training), :mod:`.synthetic_sequences`.
"""
from .bundle import Bundle, BundleError, load_bundle, save_bundle, verify_bundle
from .families import (FAMILIES, OBJECTIVES, FamilyError, ObjectiveOutput, compute_objective, get_family,
                       register_family)
from .inference import (AnomalyCalibration, FusionResult, Fuser, Imputation, anomaly_scores,
                        calibrate_anomaly, conditional_log_likelihood, impute, iwae_log_likelihood)
from .modalities import AudioOptions, ModalitySpec, Normalization, SpecError, default_robot_modalities
from .model import ModelConfig, MultimodalVAE
from .networks import register_network
from .temporal import FilterState, TemporalFilter, filter_sequence, train_sequences
from .training import BetaSchedule, TrainConfig, Trainer, fit_normalization, select_device, train

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
