"""``mdgm-ros evaluate``: imputation against baselines, anomaly detection per fault kind, latent statistics.

Errors are mean squared errors in *standardised feature units* (each channel / joint field / mel band /
taxel divided by its training spread), so one number per modality is comparable across modalities;
audio is compared as log-mel spectrogram. Baselines: ``baseline_mean`` predicts the per-element
training mean; ``baseline_last`` holds the last value seen before the modality went missing.

Offline protocol (bags): every fault-free sample with all modalities present is imputed once per
modality from the other three, as if that modality had dropped out at the start of its
``dropout_s`` block (so 'last seen' is 0 to ``dropout_s`` old). Live protocol (the demo): what the
fusion node published during scripted outages of each stream, against the bag's ground truth at the
published stamps.

Anomaly AUROC / average precision use the total score; 'overall' pools the content faults.
``stream_dropout`` is reported on its own and not pooled: a stream that stops is reported by its
presence (diagnostics, a NaN score), not by how unusual the data looks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.engine import ranges
from ..core.engine.inference import predictive_imputation
from ..core.engine.uncertainty import uncertainty_summary
from ..core.families.temporal import is_temporal
from ..data.dataset import AlignedDataset
from ..data.labels import DEFAULT_LABEL_TOPIC
from . import temporal_vs_frame
from .eval_model import EvalModel, batched, load_eval_model
from .metrics import ABSENCE_AFTER_S, NS, anomaly_metrics, mse, offline_scores


def json_safe(value: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, recursively (strict JSON for report files)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _summary(model_err: torch.Tensor, mean_err: torch.Tensor, last_err: torch.Tensor) -> dict[str, Any]:
    return {"model": float(model_err.mean()), "baseline_mean": float(mean_err.mean()),
            "baseline_last": float(last_err.mean()), "samples": int(model_err.shape[0])}


# ----------------------------------------------------------------------------- offline imputation
def _block_last_rows(data: AlignedDataset, dropout_s: float) -> np.ndarray:
    """For each row, the row just before its dropout block began (-1 if none in the same bag)."""
    last = np.full(len(data), -1)
    for bag in np.unique(data.bag):
        rows = np.flatnonzero(data.bag == bag)
        rows = rows[np.argsort(data.stamps[rows])]
        block = (data.stamps[rows] - data.stamps[rows[0]]) // int(dropout_s * NS)
        starts = np.r_[0, np.flatnonzero(np.diff(block)) + 1]
        first_of_block = starts[np.searchsorted(starts, np.arange(len(rows)), side="right") - 1]
        before = first_of_block - 1
        last[rows] = np.where(before >= 0, rows[np.clip(before, 0, None)], -1)
    return last


def _steps_since_last(data: AlignedDataset, last: np.ndarray) -> np.ndarray:
    """For each row with a last row (:func:`_block_last_rows`), how many aligned samples of its bag lie
    after that row up to and including it (the steps since the stream was last seen); 0 without one."""
    since = np.zeros(len(data), int)
    for bag in np.unique(data.bag):
        rows = np.flatnonzero(data.bag == bag)
        rows = rows[np.argsort(data.stamps[rows])]
        position = np.empty(len(data), int)
        position[rows] = np.arange(len(rows))
        has = last[rows] >= 0
        since[rows[has]] = position[rows[has]] - position[last[rows[has]]]
    return since


def offline_imputation(em: EvalModel, data: AlignedDataset, dropout_s: float = 1.0,
                       batch: int = 256) -> dict[str, dict[str, Any]]:
    model = em.model
    names = list(model.names)
    raw = data.float_raw()
    clean = (data.fault == "") & ~data.near_fault & data.mask.all(1)
    last = _block_last_rows(data, dropout_s)
    since = _steps_since_last(data, last)
    report = {}
    for j, name in enumerate(names):
        rows = np.flatnonzero(clean & (last >= 0))
        rows = rows[data.mask[last[rows], j]]
        errs = {"model": [], "mean": [], "last": []}
        deviations, stds = [], []
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            feats = {n: em.features(n, raw[n][part]) for n in names}
            mask = torch.ones(len(part), len(names), dtype=torch.bool, device=model.device)
            mask[:, j] = False
            with torch.no_grad():
                imputed = predictive_imputation(model, feats, mask, [name], em.bundle.calibration)[name]
            pred, truth = imputed.mean, feats[name]
            deviations.append((pred - truth).reshape(len(part), -1).cpu().numpy())
            stds.append(imputed.std.expand_as(pred).reshape(len(part), -1).cpu().numpy())
            errs["model"].append(mse(pred, truth))
            errs["mean"].append(mse(em.mean_prediction(name).expand_as(truth), truth))
            errs["last"].append(mse(em.features(name, raw[name][last[part]]), truth))
        if not rows.size:
            continue
        errors = np.stack([torch.cat(errs[k]).cpu().numpy() for k in ("model", "mean", "last")])
        stds_all = np.concatenate(stds)
        report[name] = {**_summary(*(torch.from_numpy(e) for e in errors)),
                        **temporal_vs_frame.published_errors(em, name, since[rows], errors,
                                                             np.square(stds_all).mean(1)),
                        **uncertainty_summary(np.concatenate(deviations), np.concatenate(stds))}
    return report


# ----------------------------------------------------------------------------- summary
def summary_lines(report: dict[str, Any]) -> list[str]:
    """What ``mdgm-ros evaluate`` and the demo print."""
    lines = [f"warning: {w}" for w in report.get("warnings", [])] + [f"note: {n}" for n in report.get("notes", [])]
    lines += ["imputation error (standardised MSE; lower is better); its predictive std: the share of true values "
              "inside the 90 % interval, and its rank correlation with the error per sample:",
              f"  {'modality':9s} {'model':>8s} {'mean':>8s} {'last':>8s} {'90% cov':>8s} {'rank':>6s} "
              f"{'published':>9s}  samples"]
    for name, v in report["imputation"].items():
        coverage, rank = v.get("coverage_90", np.nan), v.get("std_error_spearman", np.nan)
        published = f"{v['published']:9.3f}" if "published" in v else f"{'-':>9s}"
        lines.append(f"  {name:9s} {v['model']:8.3f} {v['baseline_mean']:8.3f} "
                     f"{v['baseline_last']:8.3f} {_pct(coverage):>8s} {_number(rank):>6s} {published}  {v['samples']}")
    a = report["anomaly"]
    lines.append(f"anomaly: AUROC {a['auroc']:.3f}  AP {a['average_precision']:.3f}  "
                 f"({a['fault_samples']} fault / {a['samples']} samples)")
    if "threshold" in a:
        lines.append(f"  at the calibrated threshold {a['threshold']:.3g}: detects {_pct(a['detected_at_threshold'])} "
                     f"of fault samples, false alarms on {_pct(a['false_alarms_at_threshold'])} of normal samples")
    if a["per_fault"]:
        lines.append(f"  {'fault':17s} {'AUROC':>6s} {'AP':>6s} {'detected':>9s} {'events':>7s} {'delay':>7s}  samples")
    for kind, v in a["per_fault"].items():
        events = f"{v['events_detected']}/{v['events']}" if "events" in v else "-"
        delay = f"{v['median_delay_s']:.2f}s" if np.isfinite(v.get("median_delay_s", np.nan)) else "-"
        lines.append(f"  {kind:17s} {v['auroc']:6.3f} {v['average_precision']:6.3f} "
                     f"{_pct(v.get('detected_at_threshold', np.nan)):>9s} {events:>7s} {delay:>7s}  {v['samples']}"
                     f"{'' if v['pooled'] else ' (not pooled)'}")
    if not a["per_fault"] and not report.get("notes"):
        lines.append("  no fault labels in these bags: AUROC needs labels (a BAG.labels.yaml sidecar, see "
                     "`mdgm-ros label`, or a label topic)")
    for key, v in report.get("prediction", {}).items():
        lines.append(f"live prediction {key}: model {v['temporal']:.3f} vs nothing changes {v['nothing_changes']:.3f} "
                     f"({v['samples']} samples, the latents the node published)")
    if "temporal" in report:
        lines += temporal_vs_frame.summary_lines(report["temporal"])
    for name, v in report.get("out_of_range", {}).items():
        lines.append(f"out of its training range: {name} in {_pct(v['normal'])} of normal and {_pct(v['fault'])} of "
                     "fault samples")
    lat = report["latent"]
    lines.append(f"latent: {lat['active_dims']}/{lat['dim']} active dims, "
                 f"mean posterior std {lat['mean_posterior_std']:.3f}")
    return lines


def _number(value: float) -> str:
    return f"{value:.2f}" if value is not None and np.isfinite(value) else "-"


def _pct(value: float) -> str:
    return f"{value:.1%}" if np.isfinite(value) else "-"


# ----------------------------------------------------------------------------- offline latents and report
def offline_latents(em: EvalModel, data: AlignedDataset) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation (N, D) given each row's observed modalities."""
    def step(feats, mask):
        mean, logvar = em.model.posterior_summary(*em.model.experts(feats, mask), mask)
        return mean, torch.exp(0.5 * logvar)
    means, stds = batched(em, data, step)
    return means, stds


def latent_stats(means: np.ndarray, stds: np.ndarray) -> dict[str, Any]:
    var = means.var(0)
    return {"dim": int(means.shape[1]), "samples": int(means.shape[0]),
            "active_dims": int((var > 0.01).sum()), "mean_abs_mean": float(np.abs(means).mean()),
            "variance_of_means": [round(float(v), 4) for v in var],
            "mean_posterior_std": float(stds.mean())}


def evaluate_offline(em: EvalModel, data: AlignedDataset, out_dir: Path | None = None,
                     dropout_s: float = 1.0, title: str = "", bag_names: list[str] | None = None,
                     absence_after_s: float = ABSENCE_AFTER_S) -> dict[str, Any]:
    from . import plots

    family = em.model.family
    notes = []
    if not family.properties.missing_modalities:          # e.g. JVAE: inference from all modalities only
        notes.append(f"the {family.name} family infers only from all modalities: {int((~data.mask.all(1)).sum())} "
                     "samples with a missing stream left out; no imputation or anomaly scores")
        data = data.subset(data.mask.all(1))
        total, scores = np.full(len(data), np.nan), np.full((len(data), len(em.model.names)), np.nan)
    else:
        total, scores = offline_scores(em, data, absence_after_s)
    valid = ~(data.near_fault & (data.fault == ""))            # settling after a fault: neither
    threshold = em.bundle.calibration.threshold["total"] if em.bundle.calibration else None
    means, stds = offline_latents(em, data)
    report = {"model_id": em.bundle.model_id, "samples": len(data),
              "imputation": offline_imputation(em, data, dropout_s) if not notes else {},
              "anomaly": anomaly_metrics(total, data.fault, valid, threshold, data.stamps, data.bag),
              "latent": latent_stats(means, stds), "notes": notes,
              "out_of_range": out_of_range_rates(em, data),
              "protocol": {"mode": "offline", "dropout_s": dropout_s}}
    if out_dir is not None:
        report["plots"] = plots.write_all(out_dir, em, data, total, scores, threshold, means,
                                          title or em.bundle.model_id, bag_names)
    return report


def out_of_range_rates(em: EvalModel, data: AlignedDataset) -> dict[str, dict[str, float]]:
    """Per bounded modality: the share of its normal and of its fault samples outside the training range
    (left out of the fusion and flagged, :mod:`~mdgm_ros.core.engine.ranges`)."""
    names = [n for n in em.model.names if em.model.feature_bounds(n) is not None]
    if not names or not len(data):
        return {}
    (outside,) = batched(em, data, lambda feats, mask: (ranges.outside_rows(em.model, feats, mask)[0],))
    normal, fault = (data.fault == "") & ~data.near_fault, data.fault != ""
    out = {}
    for name in names:
        j = em.model.names.index(name)
        seen = data.mask[:, j]
        out[name] = {"normal": float(outside[normal & seen, j].mean()) if (normal & seen).any() else float("nan"),
                     "fault": float(outside[fault & seen, j].mean()) if (fault & seen).any() else float("nan"),
                     "normal_samples": int((normal & seen).sum()), "fault_samples": int((fault & seen).sum())}
    return out


# ----------------------------------------------------------------------------- live (what the node published)
def _in_any(stamps: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    inside = np.zeros(len(stamps), bool)
    for start, end in spans:
        inside |= (stamps >= start) & (stamps < end)
    return inside


def live_imputation(em: EvalModel, truth: AlignedDataset, recording, outages: dict[str, list[tuple[int, int]]],
                    staleness_ns: dict[str, int]) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per modality: the node's imputations during its scripted outages vs the bag's ground truth.
    Also returns, per modality, (truth rows, imputed arrays) for the figures."""
    stamps = truth.stamps
    raw = truth.float_raw()
    clean = (truth.fault == "") & ~truth.near_fault
    report, pairs = {}, {}
    for j, name in enumerate(em.model.names):
        spans = outages.get(name, [])
        items = [(t, a) for t, a in recording.imputed.get(name, [])
                 if any(s <= t < e + staleness_ns.get(name, 0) for s, e in spans)]
        rows, preds, last_rows, stds = [], [], [], []
        published_std = getattr(recording, "imputed_std", {}).get(name, {})
        for t, array in items:
            row = int(np.searchsorted(stamps, t))
            if row >= len(stamps) or stamps[row] != t or not truth.mask[row, j] or not clean[row]:
                continue
            start = max(s for s, e in spans if s <= t)
            last = int(np.searchsorted(stamps, start)) - 1
            while last >= 0 and not truth.mask[last, j]:
                last -= 1
            if last < 0:
                continue
            rows.append(row)
            preds.append(array)
            last_rows.append(last)
            stds.append(published_std.get(t))
        if not rows:
            continue
        rows_a, last_a = np.asarray(rows), np.asarray(last_rows)
        truth_f = em.features(name, raw[name][rows_a])
        pred_raw = np.stack(preds)
        pred_f = em.standardize(name, pred_raw) if em.model.specs[name].kind == "audio" else em.features(name, pred_raw)
        report[name] = _summary(mse(pred_f, truth_f).cpu(),
                                mse(em.mean_prediction(name).expand_as(truth_f), truth_f).cpu(),
                                mse(em.features(name, raw[name][last_a]), truth_f).cpu())
        with_std = [i for i, std in enumerate(stds) if std is not None and std.size == pred_raw[i].size]
        if with_std:                                     # the published std, in standardised units
            scale = em.model.normalization_stats(name)[1].cpu().numpy()
            published = np.stack([np.broadcast_to(stds[i].reshape(pred_raw[i].shape) / scale, pred_raw[i].shape)
                                  for i in with_std])
            deviation = (pred_f - truth_f).cpu().numpy()[with_std]
            report[name].update(uncertainty_summary(deviation.reshape(len(with_std), -1),
                                                    published.reshape(len(with_std), -1)),
                                std_samples=len(with_std))
        pairs[name] = (rows_a, pred_raw)
    return report, pairs


def evaluate_live(em: EvalModel, truth: AlignedDataset, recording, outages: dict[str, list[tuple[int, int]]],
                  staleness_ns: dict[str, int], out_dir: Path | None = None,
                  source: str = "a bag replayed live through fusion_node") -> dict[str, Any]:
    """Metrics of a live replay. ``truth`` is the bag aligned at the published latent stamps."""
    from . import plots

    stamps, lat_mean, lat_std = recording.latent_arrays()
    if not np.array_equal(stamps, truth.stamps):
        raise ValueError("ground truth must be aligned at the recorded latent stamps")
    imputation, pairs = live_imputation(em, truth, recording, outages, staleness_ns)
    a_stamps, a_values = recording.anomaly_arrays()
    rows = np.searchsorted(stamps, a_stamps).clip(0, len(stamps) - 1)
    matched = stamps[rows] == a_stamps
    total = np.where(matched, a_values[:, 0], np.nan)
    all_spans = [(s, e + max(staleness_ns.values(), default=0)) for spans in outages.values() for s, e in spans]
    fault = truth.fault[rows]
    valid = matched & ~_in_any(a_stamps, all_spans) & ~(truth.near_fault[rows] & (fault == ""))
    threshold = em.bundle.calibration.threshold["total"] if em.bundle.calibration else None
    report = {"model_id": em.bundle.model_id, "published": {"latent": int(len(stamps)), "anomaly": int(len(a_stamps)),
              "imputed": {k: len(v) for k, v in recording.imputed.items()},
              "latent_prediction": len(recording.prediction),
              "prediction_horizon": _prediction_horizon(recording.model_info)},
              "imputation": imputation, "anomaly": anomaly_metrics(total, fault, valid, threshold, a_stamps),
              "latent": latent_stats(lat_mean, lat_std),
              "prediction": live_prediction(stamps, lat_mean, recording.prediction,
                                            ~_in_any(stamps, all_spans) & (truth.fault == "") & ~truth.near_fault),
              "protocol": {"mode": "live", "outages_s": {k: round(sum(e - s for s, e in v) / NS, 2)
                                                          for k, v in outages.items()}}}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = int(stamps.min())
        calibration = em.bundle.calibration
        title = f"{em.bundle.model_id} on {source}"
        files = {"anomaly_timeline": plots.anomaly_timeline(
            out_dir / "anomaly_timeline.png", a_stamps, total, truth.labels, threshold, t0,
            [((s - t0) / NS, (e - t0) / NS) for s, e in all_spans],
            per_modality={n: a_values[:, 1 + j] for j, n in enumerate(em.model.names)}, title=title,
            modality_thresholds=calibration.threshold if calibration else None)}
        camera = next((m.name for m in em.model.config.modalities if m.kind == "image" and m.name in pairs), None)
        if camera is not None:
            cam_rows, cam_pred = pairs[camera]
            pick = plots.pick_frames(8, np.arange(len(cam_rows)))
            files["camera_imputation"] = plots.camera_grid(
                out_dir / "camera_imputation.png", truth.float_raw()[camera][cam_rows[pick]], cam_pred[pick],
                f"{camera} published by the live node during its outages (imputed from the other streams)")
        files["latent_2d"] = plots.latent_2d(out_dir / "latent_2d.png", lat_mean, truth.phase,
                                             (truth.fault == "") & ~truth.near_fault, truth.fault,
                                             title=f"published latents, PCA of normal samples: {title}")
        report["plots"] = {k: str(v) for k, v in files.items()}
    return report


def live_prediction(stamps: np.ndarray, lat_mean: np.ndarray, predictions: list, clean: np.ndarray,
                    horizons: tuple[int, ...] = (1, 10)) -> dict[str, Any]:
    """The node's ~/latent_prediction against the latents it published later: the mean squared error of
    the k-th predicted step against the latent published at that step's stamp, beside "nothing changes"
    (the latent published with the prediction). A pair counts when both ends were published (the later
    within half a step of the predicted stamp) and are ``clean`` (no fault, no outage)."""
    if not predictions or len(stamps) < 2:
        return {}
    half_step = float(np.median(np.diff(stamps))) / 2
    out: dict[str, Any] = {}
    for k in horizons:
        usable = [p for p in predictions if len(p[1]) >= k]
        if not usable:
            continue
        now = _nearest_rows(stamps, np.asarray([p[0] for p in usable], np.int64), 0)
        later = _nearest_rows(stamps, np.asarray([p[1][k - 1] for p in usable], np.int64), half_step)
        keep = (now >= 0) & (later >= 0)
        keep[keep] &= clean[now[keep]] & clean[later[keep]]
        if not keep.any():
            continue
        predicted = np.stack([p[2][k - 1] for p, kept in zip(usable, keep) if kept])
        target = lat_mean[later[keep]]
        out[f"latent_{k}_step"] = {"temporal": float(((predicted - target) ** 2).mean()),
                                   "nothing_changes": float(((lat_mean[now[keep]] - target) ** 2).mean()),
                                   "samples": int(keep.sum())}
    return out


def _prediction_horizon(model_info: dict | None) -> int:
    """The k of ~/latent_prediction the node's model_info announces (0: a per-frame model, or none)."""
    announced = ((model_info or {}).get("temporal") or {}).get("latent_prediction") or {}
    return int(announced.get("horizon", 0))


def _nearest_rows(stamps: np.ndarray, targets: np.ndarray, tolerance_ns: float) -> np.ndarray:
    """Row of ``stamps`` (sorted) nearest each target, or -1 if farther than ``tolerance_ns``."""
    right = np.searchsorted(stamps, targets).clip(1, len(stamps) - 1)
    left = right - 1
    rows = np.where(np.abs(stamps[left] - targets) <= np.abs(stamps[right] - targets), left, right)
    return np.where(np.abs(stamps[rows] - targets) <= tolerance_ns, rows, -1)


# ----------------------------------------------------------------------------- the command
def evaluate_bags(model: str | Path, bag_paths: list[str], params_file: str | Path | None = None,
                  plots: str | Path | None = None, dropout_s: float = 1.0, device: str = "cpu",
                  label_topic: str | None = None, log=print, max_corrupt: float = 0.01,
                  compare: str | Path | None = None, outages_s: tuple[float, ...] | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole ``mdgm-ros evaluate``: the bags read with the stream settings the bundle was trained with
    (``params_file`` and ``overrides`` on top, each contradiction a warning), labels from the bags' label
    topic and sidecar files, a warning for bags the bundle was trained on. A temporal model is filtered
    over the bags (:mod:`.temporal_vs_frame`), against the per-frame bundle ``compare`` when given."""
    from ..config_files import config_path
    from ..data import bags
    from ..data.dataset import EVALUATE_FIXES, check_bags, default_cache_dir, load_bags
    from ..streams.params import ParameterError, bundle_mismatches, fusion_params_for_bundle

    em = load_eval_model(model, device)
    training = em.bundle.manifest.get("extra", {}).get("training", {})
    label_topic = label_topic or training.get("label_topic") or DEFAULT_LABEL_TOPIC
    try:
        params, contradicted = fusion_params_for_bundle(model, params_file, overrides,
                                                        fallback_file=config_path("fusion.yaml"))
    except ParameterError as err:
        raise ValueError(f"stream parameters: {err}") from None
    names = list(em.model.names)
    mismatches = bundle_mismatches(params, list(em.model.config.modalities),
                                   lambda name, size: f"but the model takes {_size_of(em, name)}: the parameters "
                                                      f"must give the joints / fields it was trained with")
    absent = check_bags(bag_paths, params, absent_ok=names, fixes=EVALUATE_FIXES, more=mismatches)
    warnings = [f"parameter {text}" for text in contradicted]
    warnings += [f"{bag} has no {', '.join(lacking)}: scored as missing" for bag, lacking in absent.items() if lacking]
    trained_on = set(training.get("bag_hashes", []))
    warnings += [f"{bag} was used to train this model: its figures say little about new data"
                 for bag in bag_paths if bags.content_hash(bag) in trained_on]
    for warning in warnings:
        log(f"warning: {warning}")
    data = load_bags(bag_paths, params, list(em.model.config.modalities), default_cache_dir(), log=log,
                     label_topic=label_topic, max_corrupt=max_corrupt)
    names = [Path(b).name for b in bag_paths]
    report = evaluate_offline(em, data, Path(plots) if plots else None, dropout_s,
                              title=f"{em.bundle.model_id} on {', '.join(names)}", bag_names=names,
                              absence_after_s=params.absence_after)
    report["warnings"] = warnings + [bags.damage_text(d) for d in map(bags.known_damage, bag_paths) if d]
    report["bags"] = [str(b) for b in bag_paths]
    if is_temporal(em.model):
        _add_temporal(report, em, load_eval_model(compare, device) if compare else None, data, params.output_rate,
                      outages_s, dropout_s, Path(plots) if plots else None, names, params.absence_after)
    elif compare:
        raise ValueError("--compare needs a temporal model as --model (the per-frame bundle goes to --compare)")
    return report


def _size_of(em: EvalModel, name: str) -> int:
    return int(next(m.shape[0] for m in em.model.config.modalities if m.name == name))


def _add_temporal(report: dict[str, Any], em: EvalModel, frame: EvalModel | None, data: AlignedDataset,
                  rate: float, outages_s, dropout_s: float, plots: Path | None, bag_names: list[str],
                  absence_after_s: float = ABSENCE_AFTER_S) -> None:
    """The temporal comparison; its filtered imputation (the outage closest to ``dropout_s``) and
    one-step predictive scores replace the per-frame rule's in the main report."""
    lengths = tuple(outages_s) if outages_s else temporal_vs_frame.OUTAGES_S
    comparison = temporal_vs_frame.compare(em, frame, data, rate, lengths, plots,
                                           title=f"anomaly scores on {', '.join(bag_names)}",
                                           absence_after_s=absence_after_s)
    report["temporal"] = comparison
    nearest = min(comparison["imputation"], key=lambda k: abs(float(k) - dropout_s))
    report["imputation"] = {n: {"model": v["temporal"], "baseline_mean": v["baseline_mean"],
                                "baseline_last": v["baseline_last"], "published": v["published"],
                                "fallback_rate": v["fallback_rate"], "samples": v["samples"],
                                "coverage_90": v["coverage_90"], "std_error_spearman": v["std_error_spearman"]}
                            for n, v in comparison["imputation"][nearest].items()}
    report["anomaly"] = comparison["anomaly"]["temporal"]
    report["protocol"] = {"mode": "offline, temporal filter", "dropout_s": float(nearest), "outages_s": list(lengths)}
    report.setdefault("plots", {}).update(comparison.get("plots", {}))
