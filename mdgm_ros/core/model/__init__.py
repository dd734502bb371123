"""The model floor: modalities, networks, posteriors, likelihoods, the multimodal VAE, the
:class:`~.family.Family` interface every family implements, and the family registry.

Nothing here imports a concrete family or the engine: the families (:mod:`mdgm_ros.core.families`)
build on this floor and register themselves; the engine (:mod:`mdgm_ros.core.engine`) builds on both.
"""
from .family import LABELS, ExportPart, Family, FamilyError, ObjectiveOutput, Properties, Stage
from .modalities import AudioOptions, ModalitySpec, Normalization, SpecError, default_robot_modalities
from .networks import register_network
from .registry import FAMILIES, get_family, register_family
from .vae import ModelConfig, MultimodalVAE

__all__ = [
    "AudioOptions", "ExportPart", "FAMILIES", "Family", "FamilyError", "LABELS", "ModalitySpec", "ModelConfig",
    "MultimodalVAE", "Normalization", "ObjectiveOutput", "Properties", "SpecError", "Stage",
    "default_robot_modalities", "get_family", "register_family", "register_network",
]
