"""The temporal model against the per-frame model on one test bag (``mdgm-ros evaluate --compare``, the demo).

Protocol. The bag's aligned samples are split into runs of consecutive samples (:mod:`..core.windows`:
a gap or a backwards stamp starts a new run, and the filter a fresh state). For each outage length L
(0.5, 1, 1.5 and 3 s by default) every modality in turn is withheld over spans of L seconds, placed
round-robin in the fault-free stretches (the next span starts 1 s after the last one ends); the
temporal model filters through the whole run with that mask (so it has the memory of the stream
before the outage and the other streams during it), the per-frame model sees each frame's other
streams. Both are scored on the same rows: standardised MSE against the truth, next to the training
mean and the last value seen before the span. Anomaly scores: the temporal model's one-step predictive
scores with every recorded stream, the per-frame model's leave-one-out scores; AUROC / AP pooled and
per fault (:func:`.metrics.anomaly_metrics`). Prediction: the 1-step latent prediction against the
next filtered latent, and the joints decoded 10 steps ahead against the recorded joints, each against
"nothing changes" (the current latent, the current joints).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.engine import filter as tp
from ..core.engine import ranges
from ..core.engine.fallback import row_variance
from ..core.engine.uncertainty import STD_KINDS, uncertainty_summary
from ..core.engine.windows import runs
from ..core.families.temporal import is_temporal, poe_with_prior, state_coverage, state_dim, state_experts
from ..data.dataset import AlignedDataset
from .eval_model import EvalModel
from .metrics import ABSENCE_AFTER_S, absent_long_enough, anomaly_metrics, mse, offline_scores

OUTAGES_S = (0.5, 1.0, 1.5, 3.0)
CHUNK = 256


@dataclass
class Experts:
    """Every row's standardised features and unimodal experts (M, N, D; a temporal model's over its
    state, (M, N, S)), computed once."""

    feats: dict[str, torch.Tensor]
    mean: torch.Tensor
    logvar: torch.Tensor


@torch.no_grad()
def row_experts(em: EvalModel, data: AlignedDataset) -> Experts:
    model = em.model
    raw = data.float_raw()
    feats, means, logvars = {n: [] for n in model.names}, [], []
    for start in range(0, len(data), CHUNK):
        sl = slice(start, start + CHUNK)
        mask = torch.from_numpy(data.mask[sl]).to(model.device)
        part = model.complete({n: em.features(n, raw[n][sl]) for n in model.names}, mask)
        mu, lv = state_experts(model, part, mask) if is_temporal(model) else model.experts(part, mask)
        means.append(mu[:len(model.names)])
        logvars.append(lv[:len(model.names)])
        for n in model.names:
            feats[n].append(part[n])
    return Experts({n: torch.cat(v) for n, v in feats.items()}, torch.cat(means, 1), torch.cat(logvars, 1))


def data_runs(data: AlignedDataset, max_gap_s: float) -> list[np.ndarray]:
    return runs(data.stamps, data.bag, np.zeros(len(data), int), max_gap_s)


@torch.no_grad()
def filter_rows(model, experts: Experts, mask: np.ndarray, run_rows: list[np.ndarray]
                ) -> dict[str, torch.Tensor]:
    """The filter over every run (fresh state at each run's start), with presence ``mask`` (N, M):
    per row the prediction (prior) and the filtered posterior over the state, (N, S) each."""
    n, dim = mask.shape[0], state_dim(model)
    coverage = state_coverage(model, model.device)
    out = {k: torch.zeros(n, dim, device=model.device) for k in ("prior_mean", "prior_logvar", "mean", "logvar")}
    present = torch.from_numpy(mask).to(model.device)
    for rows in run_rows:
        state = tp.initial_state(model, 1)
        for row in rows.tolist():
            prediction = tp.predict(model, state)
            q_mu, q_lv = poe_with_prior(experts.mean[:, row:row + 1], experts.logvar[:, row:row + 1],
                                        present[row:row + 1], prediction.mean, prediction.logvar, coverage)
            state = tp.FilterState(q_mu, q_lv, torch.ones(1, dtype=torch.bool, device=model.device))
            for key, value in (("prior_mean", prediction.mean), ("prior_logvar", prediction.logvar),
                               ("mean", q_mu), ("logvar", q_lv)):
                out[key][row] = value[0]
    return out


def schedule(data: AlignedDataset, run_rows: list[np.ndarray], names: list[str], outage_s: float,
             rate: float) -> list[tuple[str, np.ndarray, int]]:
    """(modality, outage rows, row of the last value seen) round-robin over the fault-free stretches."""
    length, pause = max(1, int(round(outage_s * rate))), max(1, int(round(rate)))
    clean = (data.fault == "") & ~data.near_fault
    spans, turn = [], 0
    for rows in run_rows:
        i = pause
        while i + length <= len(rows):
            span = rows[i:i + length]
            name = names[turn % len(names)]
            j = names.index(name)
            if clean[span].all() and clean[rows[i - 1]] and data.mask[rows[i - 1], j]:
                spans.append((name, span, int(rows[i - 1])))
                turn += 1
                i += length + pause
            else:
                i += max(1, pause // 4)
    return spans


@torch.no_grad()
def _imputation(temporal: EvalModel, frame: EvalModel | None, data: AlignedDataset, ex_t: Experts,
                ex_f: Experts | None, run_rows, outage_s: float, rate: float,
                entered: np.ndarray | None = None) -> dict[str, Any]:
    names = list(temporal.model.names)
    spans = schedule(data, run_rows, names, outage_s, rate)
    mask = (data.mask if entered is None else entered).copy()
    for name, span, _ in spans:
        mask[span, names.index(name)] = False
    filtered = filter_rows(temporal.model, ex_t, mask, run_rows)
    report = {}
    for j, name in enumerate(names):
        mine = [(span[data.mask[span, j]], last, np.arange(1, len(span) + 1)[data.mask[span, j]])
                for n, span, last in spans if n == name]
        if not mine:
            continue
        rows = np.concatenate([r for r, _, _ in mine])
        last = np.concatenate([np.full(len(r), lr) for r, lr, _ in mine])
        since = np.concatenate([k for _, _, k in mine])          # steps since the stream was last seen
        truth = ex_t.feats[name][rows]
        pred_t = tp.decode_latents(temporal.model, filtered["mean"][rows], [name])[name].mean
        std_t = tp.imputation_std(temporal.model, name, filtered["mean"][rows], filtered["logvar"][rows], pred_t,
                                  temporal.bundle.calibration)
        errors = torch.stack([mse(pred_t, truth), mse(temporal.mean_prediction(name).expand_as(truth), truth),
                              mse(ex_t.feats[name][last], truth)]).cpu().numpy()       # model, mean, last
        entry = {"temporal": float(errors[0].mean()),
                 **uncertainty_summary((pred_t - truth).reshape(len(rows), -1).cpu().numpy(),
                                       std_t.expand_as(pred_t).reshape(len(rows), -1).cpu().numpy()),
                 "baseline_mean": float(errors[1].mean()), "baseline_last": float(errors[2].mean()),
                 **published_errors(temporal, name, since, errors, row_variance(std_t.expand_as(pred_t))),
                 "samples": int(len(rows)), "outages": len(mine)}
        if frame is not None and ex_f is not None:
            entry["per_frame"] = float(mse(_frame_impute(frame, ex_f, mask, rows, name), ex_f.feats[name][rows]).mean())
        report[name] = entry
    return report


def published_errors(em: EvalModel, name: str, since: np.ndarray, errors: np.ndarray,
                     variance: np.ndarray | None = None, untrusted: np.ndarray | None = None) -> dict[str, float]:
    """What the node publishes with ``fallback`` on (the bundle's table, :mod:`~mdgm_ros.core.engine.fallback`):
    ``published``, the mean error of the source it picks for each row ``since`` (steps since the stream was
    last seen) from ``errors`` (3, N: model, training mean, last value), given each row's predicted variance
    of the model's imputation (the kinds whose std the node publishes; ``untrusted``: rows whose imputation a
    caller does not trust, as :meth:`~mdgm_ros.core.engine.fallback.FallbackTable.choice` takes them), and
    ``fallback_rate``, the share of rows it publishes a baseline.
    Bundles without a table, and image modalities (the node publishes no source for them), publish the
    model's."""
    calibration = em.bundle.calibration
    table = None if calibration is None else calibration.fallback_table
    if table is None or name not in table.error or em.model.specs[name].kind not in STD_KINDS:
        return {"published": float(errors[0].mean()), "fallback_rate": 0.0}
    trusted = None if untrusted is None else ~np.asarray(untrusted, bool)
    choice = table.choice(name, since, trusted, variance)     # SOURCES order: model, last value, training mean
    pick = np.choose(choice, [errors[0], errors[2], errors[1]])
    return {"published": float(pick.mean()), "fallback_rate": float((choice > 0).mean())}


def _frame_impute(frame: EvalModel, ex: Experts, mask: np.ndarray, rows: np.ndarray, name: str) -> torch.Tensor:
    from ..core.engine.inference import impute

    outs = []
    for start in range(0, len(rows), CHUNK):
        part = rows[start:start + CHUNK]
        m = torch.from_numpy(mask[part]).to(frame.model.device)
        outs.append(impute(frame.model, {n: v[part] for n, v in ex.feats.items()}, m, [name])[name].mean)
    return torch.cat(outs)


def out_of_range_rows(em: EvalModel, ex: Experts, data: AlignedDataset
                      ) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """(N, M) the recorded streams outside their training range (:mod:`~mdgm_ros.core.engine.ranges`),
    and each bounded modality's excess (N,)."""
    outside, over = ranges.outside_rows(em.model, ex.feats, torch.from_numpy(data.mask).to(em.model.device))
    return outside.cpu().numpy(), over


@torch.no_grad()
def temporal_scores(em: EvalModel, ex: Experts, data: AlignedDataset, filtered: dict[str, torch.Tensor],
                    absence_after_s: float = ABSENCE_AFTER_S, entered: np.ndarray | None = None,
                    over: dict[str, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(total (N,), per-modality (N, M)) one-step predictive scores with every recorded stream;
    ``entered``/``over``: the streams that enter (the others out of range) and their excess
    (:func:`out_of_range_rows`), scored as the node scores them."""
    from ..core.engine.inference import standardize_scores

    model, totals, scores = em.model, [], []
    absent = torch.from_numpy(absent_long_enough(data, absence_after_s)).to(model.device)
    entered = data.mask if entered is None else entered
    for start in range(0, len(data), CHUNK):
        sl = slice(start, start + CHUNK)
        mask = torch.from_numpy(entered[sl]).to(model.device)
        surprise = tp.predictive_surprise(model, {n: v[sl] for n, v in ex.feats.items()}, ex.mean[:, sl],
                                          ex.logvar[:, sl], mask, filtered["prior_mean"][sl],
                                          filtered["prior_logvar"][sl])
        s, total = standardize_scores(model, surprise, em.bundle.calibration, absent[sl])
        if over:
            s, total = ranges.score_out_of_range(model.names, em.bundle.calibration, s, total,
                                                 {n: v[sl] for n, v in over.items()})
        scores.append(s.cpu().numpy())
        totals.append(total.cpu().numpy())
    return np.concatenate(totals), np.concatenate(scores)


@torch.no_grad()
def prediction_errors(em: EvalModel, ex: Experts, data: AlignedDataset, filtered: dict[str, torch.Tensor],
                      run_rows, horizon: int = 10, every: int = 3) -> dict[str, Any]:
    model = em.model
    clean = (data.fault == "") & ~data.near_fault
    nxt, ahead = [], []
    for rows in run_rows:
        nxt += [(a, b) for a, b in zip(rows[:-1], rows[1:]) if clean[a] and clean[b]]
        ahead += [(a, b) for a, b in zip(rows[:-horizon:every], rows[horizon::every]) if clean[a] and clean[b]]
    out: dict[str, Any] = {}
    if nxt:
        a, b = (np.asarray(x) for x in zip(*nxt))
        dim = model.latent_dim                           # the shared latent, as published on ~/latent
        target = filtered["mean"][b, :dim]
        out["latent_1_step"] = {"temporal": float(mse(filtered["prior_mean"][b, :dim], target).mean()),
                                "nothing_changes": float(mse(filtered["mean"][a, :dim], target).mean()),
                                "samples": int(len(a))}
    if "joints" in model.names and ahead:
        j = model.names.index("joints")
        a, b = (np.asarray(x) for x in zip(*ahead))
        keep = data.mask[a, j] & data.mask[b, j]
        a, b = a[keep], b[keep]
        preds = []
        for start in range(0, len(a), CHUNK):
            part = a[start:start + CHUNK]
            state = tp.FilterState(filtered["mean"][part], filtered["logvar"][part],
                                   torch.ones(len(part), dtype=torch.bool, device=model.device))
            mean, _ = tp.predict_ahead(model, state, horizon)
            preds.append(tp.decode_latents(model, mean[:, -1], ["joints"])["joints"].mean)
        truth = ex.feats["joints"][b]
        out[f"joints_{horizon}_step"] = {"temporal": float(mse(torch.cat(preds), truth).mean()),
                                         "nothing_changes": float(mse(ex.feats["joints"][a], truth).mean()),
                                         "samples": int(len(a))}
    return out


def compare(temporal: EvalModel, frame: EvalModel | None, data: AlignedDataset, rate: float,
            outages_s=OUTAGES_S, out_dir: Path | None = None, title: str = "",
            absence_after_s: float = ABSENCE_AFTER_S) -> dict[str, Any]:
    """The whole comparison (see the module docstring) as a report; with ``out_dir``, the fault
    timeline of both models' scores (``fault_timeline_compare.png``)."""
    if not is_temporal(temporal.model):
        raise ValueError(f"{temporal.bundle.model_id} is not a temporal model")
    run_rows = data_runs(data, 3.0 / rate)
    ex_t = row_experts(temporal, data)
    ex_f = row_experts(frame, data) if frame is not None else None
    outside, over = out_of_range_rows(temporal, ex_t, data)
    entered = data.mask & ~outside                   # the streams whose experts enter, as in the node
    imputation = {f"{s:g}": _imputation(temporal, frame, data, ex_t, ex_f, run_rows, s, rate, entered)
                  for s in outages_s}
    filtered = filter_rows(temporal.model, ex_t, entered, run_rows)
    total_t, _ = temporal_scores(temporal, ex_t, data, filtered, absence_after_s, entered, over)
    valid = ~(data.near_fault & (data.fault == ""))
    cal_t = temporal.bundle.calibration
    anomaly = {"temporal": anomaly_metrics(total_t, data.fault, valid, cal_t.threshold["total"] if cal_t else None,
                                           data.stamps, data.bag)}
    totals = {"temporal": total_t}
    if frame is not None:
        total_f, _ = offline_scores(frame, data, absence_after_s)
        cal_f = frame.bundle.calibration
        anomaly["per_frame"] = anomaly_metrics(total_f, data.fault, valid, cal_f.threshold["total"] if cal_f else None,
                                               data.stamps, data.bag)
        totals["per_frame"] = total_f
    report = {"temporal_model": temporal.bundle.model_id, "per_frame_model": frame.bundle.model_id if frame else None,
              "outages_s": list(outages_s), "imputation": imputation, "anomaly": anomaly,
              "prediction": prediction_errors(temporal, ex_t, data, filtered, run_rows), "runs": len(run_rows)}
    if out_dir is not None:
        from . import plots
        thresholds = {"temporal": cal_t.threshold["total"] if cal_t else None}
        if frame is not None and frame.bundle.calibration:
            thresholds["per_frame"] = frame.bundle.calibration.threshold["total"]
        report["plots"] = {"fault_timeline_compare": str(plots.compare_timeline(
            Path(out_dir) / "fault_timeline_compare.png", data.stamps, totals, thresholds, data.labels,
            int(data.stamps.min()), title or f"{temporal.bundle.model_id} vs per-frame"))}
    return report


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The temporal model's targets: it beats both baselines on every modality at every outage length,
    and the per-frame model on tactile; pooled AUROC >= 0.95, object_drop >= 0.90; predictions beat
    'nothing changes'."""
    failures = []
    for length, per in report["imputation"].items():
        for name, v in per.items():
            if not (v["temporal"] < v["baseline_mean"] and v["temporal"] < v["baseline_last"]):
                failures.append(f"{name} at {length} s: temporal {v['temporal']:.3f} vs mean {v['baseline_mean']:.3f}, "
                                f"last {v['baseline_last']:.3f}")
            if name == "tactile" and "per_frame" in v and not v["temporal"] < v["per_frame"]:
                failures.append(f"tactile at {length} s: temporal {v['temporal']:.3f} "
                                f"vs per-frame {v['per_frame']:.3f}")
    a = report["anomaly"]["temporal"]
    if not a["auroc"] >= 0.95:
        failures.append(f"pooled AUROC {a['auroc']:.3f} < 0.95")
    drop = a["per_fault"].get("object_drop", {}).get("auroc", float("nan"))
    if not drop >= 0.90:
        failures.append(f"object_drop AUROC {drop:.3f} < 0.90")
    for key, v in report["prediction"].items():
        if not v["temporal"] < v["nothing_changes"]:
            failures.append(f"{key}: {v['temporal']:.3f} vs nothing changes {v['nothing_changes']:.3f}")
    return {"passed": not failures, "failures": failures}


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"temporal {report['temporal_model']} vs per-frame {report['per_frame_model']} "
             "(imputation: standardised MSE during outages; lower is better):",
             f"  {'outage':>6s} {'modality':9s} {'temporal':>8s} {'frame':>8s} {'mean':>8s} {'last':>8s} "
             f"{'published':>9s} {'fallback':>8s}  samples"]
    for length, per in report["imputation"].items():
        for name, v in per.items():
            frame = f"{v['per_frame']:8.3f}" if "per_frame" in v else f"{'-':>8s}"
            lines.append(f"  {length + ' s':>6s} {name:9s} {v['temporal']:8.3f} {frame} {v['baseline_mean']:8.3f} "
                         f"{v['baseline_last']:8.3f} {v['published']:9.3f} {v['fallback_rate']:8.1%}  {v['samples']}")
    for model, a in report["anomaly"].items():
        per = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in a["per_fault"].items())
        lines.append(f"anomaly {model}: AUROC {a['auroc']:.3f} AP {a['average_precision']:.3f}; per fault: {per}")
    for key, v in report["prediction"].items():
        lines.append(f"prediction {key}: temporal {v['temporal']:.3f} vs nothing changes {v['nothing_changes']:.3f} "
                     f"({v['samples']} samples)")
    verdict_ = report.get("verdict")          # the project's own targets: the demo adds them, evaluate does not
    if verdict_ is not None:
        lines.append("temporal-model targets: " +
                     ("all met" if verdict_["passed"] else "NOT met: " + "; ".join(verdict_["failures"])))
    return lines


__all__ = ["OUTAGES_S", "compare", "summary_lines", "verdict"]
