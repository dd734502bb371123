"""The calibration a bundle carries, measured on held-out data: by ``mdgm-ros train`` at the end of training
(its held-out blocks), and by ``mdgm-ros calibrate`` for a trained bundle on bags it has not seen.

What it holds (``calibration.json``): the anomaly scores' quantile tables and thresholds (a temporal model's
one-step predictive scores over held-out runs), each modality's factor on its predictive std for 90 %
intervals, how far ahead a temporal model's predicted latent beats "nothing changes", and the fallback
table (per outage length, the error of the model's imputation and of the training mean and last-value
baselines: :mod:`~mdgm_ros.core.engine.fallback`). ``mdgm-ros calibrate`` also fits training bounds
(:mod:`~mdgm_ros.core.engine.ranges`) where a bundle written before them has none, from the bags' range.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..core import AnomalyCalibration, BundleError, MultimodalVAE, calibrate_anomaly, load_bundle, save_bundle
from ..core.engine import fallback
from ..core.engine import filter as core_temporal
from ..core.engine import loop as core_training
from ..core.engine.bundle import CALIBRATION, CONFIG, MANIFEST, NORMALIZATION, WEIGHTS
from ..core.engine.inference import calibrate_predictive_scale, frame_imputer
from ..core.engine.uncertainty import STD_KINDS
from ..core.engine.windows import window_index
from ..core.families.temporal import is_temporal
from ..core.model.modalities import BOUNDED_KINDS, Normalization, range_bounds
from ..data.dataset import AlignedDataset

CALIBRATION_WINDOW_S = 20.0      # held-out runs are cut into windows of at most this long
FALLBACK_OUTAGE_S = 3.0          # the longest outage the fallback table resolves (longer ones: its last bucket)
WRITTEN = {MANIFEST, CONFIG, WEIGHTS, NORMALIZATION, CALIBRATION}


class CalibrateError(RuntimeError):
    """Calibration cannot run on the given data; the message names the fix."""


def held_out_windows(data: AlignedDataset, rate: float, window: int) -> np.ndarray:
    """(W, T) row indices of the runs of consecutive samples of ``data`` (a gap of more than 3 sample
    periods, a bag or a left-out fault span starts a new one), cut into windows of up to
    CALIBRATION_WINDOW_S (-1 padding): what the calibrations that need time order run over."""
    gap = 3.0 / rate if rate > 0 else 0.5
    long = max(window, int(CALIBRATION_WINDOW_S * rate) if rate > 0 else 4 * window)
    return window_index(data.stamps, data.bag, np.zeros(len(data), int), long, long, gap)


def normalized_means(model: MultimodalVAE, means: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's training mean (un-normalised features) in the model's normalised features."""
    with torch.no_grad():
        return {n: model.normalize(n, v.float().to(model.device)).cpu() for n, v in means.items()}


def observed_means(feats: Mapping[str, torch.Tensor], mask: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """Per-element mean of each modality's features over the rows where it was observed."""
    return {name: feats[name][mask[:, j]].double().mean(0).float().contiguous() for j, name in enumerate(names)
            if bool(mask[:, j].any())}


def calibrate_model(model: MultimodalVAE, feats: dict[str, torch.Tensor], mask: torch.Tensor, windows: np.ndarray,
                    means: Mapping[str, torch.Tensor], quantile: float, rate: float,
                    log: Callable[[str], None]) -> AnomalyCalibration | None:
    """Everything ``calibration.json`` holds, on held-out normalised features (N, ...) with presence ``mask``
    (N, M), cut into ``windows`` (:func:`held_out_windows`); ``means``: the training means in normalised
    features; ``rate``: the alignment's steps per second (0: none, then outages of 30 steps). None for a
    family that infers only from all modalities (it has no scores to calibrate)."""
    temporal = is_temporal(model)
    on_device = {k: v.to(model.device) for k, v in feats.items()}
    if temporal:
        log(f"calibrating one-step predictive anomaly scores on {len(windows)} held-out runs "
            f"({len(mask)} fault-free samples)")
        calibration = core_temporal.calibrate_predictive_anomaly(model, feats, mask, quantile=quantile,
                                                                 windows=torch.as_tensor(windows))
    elif model.family.properties.missing_modalities:        # scores need inference without each modality
        log(f"calibrating anomaly scores on {len(mask)} held-out fault-free samples")
        calibration = calibrate_anomaly(model, on_device, mask.to(model.device), quantile=quantile)
    else:
        log(f"no anomaly calibration: the {model.family.name} family infers only from all modalities")
        return None
    if temporal:
        calibration.predictive_scale = core_temporal.calibrate_predictive_scale_sequences(
            model, feats, mask, torch.as_tensor(windows))
        calibration.prediction = core_temporal.calibrate_prediction_horizon(model, feats, mask,
                                                                            torch.as_tensor(windows))
        log(f"the predicted latent beats 'nothing changes' on held-out data up to "
            f"{calibration.prediction['useful']} steps ahead (the node publishes at most these)")
    else:
        calibration.predictive_scale = calibrate_predictive_scale(model, on_device, mask.to(model.device))
    log("predictive std scales for 90 % intervals on held-out data: "
        + ", ".join(f"{n} {s:.2f}" for n, s in calibration.predictive_scale.items()))
    steps = max(1, int(round(FALLBACK_OUTAGE_S * rate))) if rate > 0 else 30
    with_std = [n for n in model.names if model.specs[n].kind in STD_KINDS]
    imputer = (core_temporal.sequence_imputer if temporal else frame_imputer)(model, calibration, with_std)
    table = fallback.calibrate_fallback(model, feats, mask, torch.as_tensor(windows), means, imputer, steps,
                                        names=[n for n in model.names if n in means])
    if table.error:
        calibration.fallback = table.to_dict()
        log("imputation published per outage length (held-out errors; the node's 'fallback' parameter): "
            + "; ".join(f"{n}: {table.describe(n)}" for n in table.error))
    return calibration


# ----------------------------------------------------------------------------- mdgm-ros calibrate
def recalibrate_bundle(model_path: str | Path, bag_paths: list[str], out: str | Path, quantile: float | None = None,
                       device: str = "cpu", params_file: str | Path | None = None,
                       overrides: dict[str, Any] | None = None, label_topic: str | None = None,
                       log: Callable[[str], None] = print) -> Path:
    """The bundle at ``model_path`` with its calibration measured anew on ``bag_paths`` (their fault-free
    samples, read with the stream settings the bundle was trained with), written to ``out``; its weights,
    normalisation, ONNX files and training means unchanged (training bounds fitted from the bags where it
    has none). Bags it was trained on are refused: its thresholds would be too tight for new data."""
    from ..config_files import config_path
    from ..data import bags
    from ..data.dataset import EVALUATE_FIXES, check_bags, default_cache_dir, load_bags
    from ..evaluation.evaluate import DEFAULT_LABEL_TOPIC
    from ..streams.params import ParameterError, bundle_mismatches, fusion_params_for_bundle

    source = Path(model_path)
    try:
        bundle = load_bundle(source, device=device)
    except BundleError as err:
        raise CalibrateError(str(err)) from None
    model, extra = bundle.model, dict(bundle.manifest.get("extra") or {})
    training = extra.get("training", {})
    trained_on = set(training.get("bag_hashes", []))
    seen = [b for b in bag_paths if bags.content_hash(b) in trained_on]
    try:
        params, contradicted = fusion_params_for_bundle(source, params_file, overrides,
                                                        fallback_file=config_path("fusion.yaml"))
    except ParameterError as err:
        raise CalibrateError(f"stream parameters: {err}") from None
    problems = [f"{b} was used to train this model: calibrate on bags it has not seen (its thresholds would be "
                "too tight for new data)" for b in seen]
    problems += bundle_mismatches(params, list(model.config.modalities),
                                  lambda name, size: "but the model takes another size: the parameters must give "
                                                     "the joints / fields it was trained with")
    if problems:
        raise CalibrateError("; ".join(problems))
    for text in contradicted:
        log(f"warning: parameter {text}")
    check_bags(bag_paths, params, absent_ok=[], fixes=EVALUATE_FIXES)
    data = load_bags(bag_paths, params, list(model.config.modalities), default_cache_dir(), log=log,
                     label_topic=label_topic or training.get("label_topic") or DEFAULT_LABEL_TOPIC)
    clean = data.subset(~data.near_fault)
    missing = [n for j, n in enumerate(model.names) if int(clean.mask[:, j].sum()) < 2]
    if len(clean) < 2 or missing:
        raise CalibrateError(f"too little fault-free data in the bags ({len(clean)} samples; "
                             f"{', '.join(missing) or 'every stream'} seen in fewer than 2): record more")
    log(f"{len(data)} samples, {len(clean)} fault-free ({len(data) - len(clean)} in or near fault spans left out)")
    raw, mask = core_training.raw_to_features(model, clean.float_raw()), torch.from_numpy(clean.mask).clone()
    _fit_missing_bounds(model, raw, mask, log)
    feats = core_training.normalize_features(model, raw)
    alignment = training.get("alignment", {})
    rate = float(alignment.get("output_rate") or params.output_rate or 0.0)
    window = int((extra.get("temporal") or {}).get("window") or 8)
    windows = held_out_windows(clean, rate, window)
    if len(windows) == 0:
        raise CalibrateError("the bags hold no run of consecutive fault-free samples to calibrate on")
    means = bundle.training_means()
    old = bundle.calibration
    calibration = calibrate_model(model, feats, mask, windows, normalized_means(model, means),
                                  quantile or (old.quantile if old is not None else 0.99), rate, log)
    extra["calibration"] = {"bags": [str(Path(b).absolute()) for b in bag_paths],
                            "bag_hashes": [bags.content_hash(b) for b in bag_paths], "samples": len(clean),
                            "from_model": bundle.model_id}

    def attach(folder: Path) -> None:             # every other file of the source bundle, as it was
        for name in bundle.manifest["files"]:
            if name not in WRITTEN:
                shutil.copyfile(source / name, folder / name)

    written = save_bundle(out, model, calibration, name=bundle.manifest.get("name") or Path(out).name, extra=extra,
                          attach=attach)
    log(f"bundle written: {written}")
    return written


def _fit_missing_bounds(model: MultimodalVAE, raw: Mapping[str, torch.Tensor], mask: torch.Tensor,
                        log: Callable[[str], None]) -> None:
    """Training bounds for the vector and tactile modalities of a bundle written before them: the range of
    the calibration bags' values, widened as training widens the training range."""
    fitted = []
    for j, name in enumerate(model.names):
        spec = model.specs[name]
        norm = spec.normalization
        if spec.kind not in BOUNDED_KINDS or norm is None or norm.low is not None or not bool(mask[:, j].any()):
            continue
        x = raw[name][mask[:, j]].double()
        low, high = range_bounds(x.amin(0).numpy(), x.amax(0).numpy(), spec.kind)
        model.set_normalization(name, Normalization(norm.mean, norm.std, low, high))
        fitted.append(name)
    if fitted:
        log(f"this bundle had no training bounds for {', '.join(fitted)}: fitted from the calibration bags' range")
