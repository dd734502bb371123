"""End-to-end example of the model core on synthetic shared-factor data (no ROS needed).

Trains a model on the four robot modalities with 20 % of the modalities missing at random, calibrates
anomaly scores on held-out normal data, then measures on a test split: imputation of each modality
from the other three against the training-mean predictor, and anomaly detection (AUROC / average
precision) on test rows where one modality was swapped with another row's (a cross-modal
inconsistency that no single stream shows) or hit by a noise burst. It saves the bundle, reloads it and
checks the reloaded model gives identical outputs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import (
    BetaSchedule,
    Fuser,
    ModelConfig,
    MultimodalVAE,
    TrainConfig,
    calibrate_anomaly,
    default_robot_modalities,
    impute,
    load_bundle,
    save_bundle,
    select_device,
    train,
)
from .core.engine import loop as training
from .core.engine import synthetic
from .core.engine.inference import anomaly_scores
from .core.engine.metrics import auroc, average_precision


@dataclass(frozen=True)
class ExampleSize:
    n_train: int
    n_val: int
    n_test: int
    epochs: int


FULL = ExampleSize(n_train=3000, n_val=400, n_test=400, epochs=25)
QUICK = ExampleSize(n_train=800, n_val=200, n_test=200, epochs=8)


def _split(data: synthetic.SyntheticData, model: MultimodalVAE) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return training.raw_to_features(model, data.raw), torch.from_numpy(data.mask)


def _imputation_report(model, feats, mask, train_feats, train_mask) -> dict[str, dict[str, float]]:
    """Per modality: MSE (raw feature units) of the model imputing it from the others vs the train mean."""
    report = {}
    with torch.no_grad():
        for j, name in enumerate(model.names):
            observed = mask.clone()
            observed[:, j] = False
            imputed = impute(model, training.normalize_features(model, feats), observed, [name])[name]
            prediction = model.denormalize(name, imputed.mean)
            truth = feats[name]
            train_mean = train_feats[name][train_mask[:, j]].mean(0)
            report[name] = {"model": float(((prediction - truth) ** 2).mean()),
                            "baseline_mean": float(((train_mean - truth) ** 2).mean())}
    return report


def _corrupt(data: synthetic.SyntheticData, names: list[str], seed: int) -> tuple[dict, np.ndarray, list]:
    """Corrupt half of the rows: one modality swapped with another row's, or a noise burst."""
    rng = np.random.default_rng(seed)
    raw = {k: v.copy() for k, v in data.raw.items()}
    n = len(data.mask)
    labels = np.zeros(n, bool)
    kinds: list[str | None] = [None] * n
    for row in rng.choice(n, n // 2, replace=False):
        name = names[rng.integers(len(names))]
        if rng.random() < 0.5:
            other = (row + 1 + rng.integers(n - 1)) % n
            raw[name][row] = data.raw[name][other]
            kinds[row] = f"swap_{name}"
        else:
            x = raw[name][row]
            raw[name][row] = np.clip(x + rng.normal(0, 0.3, x.shape), -1 if name == "audio" else -np.inf,
                                     1 if name in ("audio", "camera") else np.inf).astype(np.float32)
            kinds[row] = f"noise_{name}"
        labels[row] = True
    return raw, labels, kinds


def run_example(out: str | Path, quick: bool = False, family: str = "mvae", device: str = "auto",
                seed: int = 0) -> dict[str, Any]:
    size = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    specs = default_robot_modalities()
    model = MultimodalVAE(ModelConfig(tuple(specs), latent_dim=16, family=family)).to(select_device(device))
    train_data = synthetic.make_dataset(specs, size.n_train, seed=seed, missing_rate=0.2)
    val_data = synthetic.make_dataset(specs, size.n_val, seed=seed + 1)
    test_data = synthetic.make_dataset(specs, size.n_test, seed=seed + 2)

    train_feats, train_mask = _split(train_data, model)
    training.fit_normalization(model, train_feats, train_mask)
    val_feats, val_mask = _split(val_data, model)
    steps = size.epochs * -(-size.n_train // 64)
    config = TrainConfig(epochs=size.epochs, batch_size=64, lr=2e-3, seed=seed,
                         beta=BetaSchedule("linear", 0.0, 1.0, warmup_steps=steps // 3))
    started = time.perf_counter()
    history = train(model, training.normalize_features(model, train_feats), train_mask, config,
                    val=(training.normalize_features(model, val_feats), val_mask),
                    on_epoch=lambda r: print(f"epoch {r.epoch + 1}/{size.epochs} train {r.train_loss:.1f} "
                                             f"val {r.val_loss:.1f} beta {r.beta:.2f} ({r.seconds:.1f}s)",
                                             flush=True) and False)
    train_seconds = time.perf_counter() - started
    calibration = calibrate_anomaly(model, training.normalize_features(model, val_feats), val_mask)

    test_feats, test_mask = _split(test_data, model)
    imputation = _imputation_report(model, test_feats, test_mask, train_feats, train_mask)

    bad_raw, labels, kinds = _corrupt(test_data, list(model.names), seed + 3)
    bad_feats = training.normalize_features(model, training.raw_to_features(model, bad_raw))
    with torch.no_grad():
        scores, total = anomaly_scores(model, {k: v.to(model.device) for k, v in bad_feats.items()},
                                       test_mask.to(model.device), calibration)
    total_np = total.cpu().numpy()
    per_kind = {}
    for kind in sorted({k for k in kinds if k}):
        rows = np.array([k in (None, kind) for k in kinds])
        per_kind[kind] = auroc(labels[rows], total_np[rows])
    anomaly = {"auroc": auroc(labels, total_np), "average_precision": average_precision(labels, total_np),
               "per_fault": per_kind,
               "detected_at_threshold": float(np.mean(total_np[labels] > calibration.threshold["total"])),
               "false_alarms_at_threshold": float(np.mean(total_np[~labels] > calibration.threshold["total"]))}

    bundle_path = save_bundle(out / "model", model, calibration, name=f"example-{family}")
    identical = _reload_identical(bundle_path, model, calibration, test_data)
    report = {"family": family, "fusion": model.fusion, "device": str(model.device),
              "train_seconds": round(train_seconds, 1), "epochs": len(history),
              "final_val_loss": history[-1].val_loss, "imputation": imputation, "anomaly": anomaly,
              "bundle": str(bundle_path), "bundle_reload_identical": identical}
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "report.json")
    return report


def _reload_identical(path: Path, model: MultimodalVAE, calibration, data: synthetic.SyntheticData) -> bool:
    bundle = load_bundle(path, device=model.device)
    raw = {k: torch.from_numpy(v[:8]).to(model.device) for k, v in data.raw.items()}
    mask = torch.from_numpy(data.mask[:8]).to(model.device)
    mask[:, 2] = False
    a = Fuser(model, calibration)(raw, mask)
    b = Fuser(bundle.model, bundle.calibration)(raw, mask)
    return bool(torch.equal(a.latent_mean, b.latent_mean) and torch.equal(a.total_score, b.total_score)
                and all(torch.equal(a.imputed[k].mean, b.imputed[k].mean) for k in a.imputed))


def check_report(report: dict[str, Any], min_auroc: float = 0.8) -> list[str]:
    """The example's acceptance checks; returns the failures (empty = pass)."""
    failures = [f"imputation of {name}: model {v['model']:.4g} does not beat the mean {v['baseline_mean']:.4g}"
                for name, v in report["imputation"].items() if not v["model"] < v["baseline_mean"]]
    if report["anomaly"]["auroc"] < min_auroc:
        failures.append(f"anomaly AUROC {report['anomaly']['auroc']:.3f} < {min_auroc}")
    if not report["bundle_reload_identical"]:
        failures.append("the reloaded bundle does not reproduce the model's outputs")
    return failures
