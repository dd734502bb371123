"""Falling back to a simple baseline where the model's imputation is expected to do worse.

A missing stream can be imputed three ways: by the model (from the other streams, and in a temporal model
from the past), by the last value seen before it went missing, or by its training mean. Which is best
depends on the modality and on how long the stream has been missing: a joint vector held for 0.1 s is
hard to beat, an audio spectrogram 2 s old is not. The bundle measures it.

Calibration (:func:`calibrate_fallback`, held-out runs of consecutive rows): every modality in turn is
withheld over outages of up to ``max_steps`` steps, placed one after the other in each run, with the
stream seen on the step before each outage. On every step of an outage the model's imputation (the
temporal filter through the run with that mask, or a per-frame model from the row's other streams), the
last value and the training mean are compared with the truth (mean squared error of the standardised
features, as ``mdgm-ros evaluate`` scores them), and the errors are averaged per bucket of steps since
the stream was last seen (:func:`bucket_edges`). The table (:class:`FallbackTable`) travels with the
bundle's calibration (``fallback``).

Live (:class:`FallbackPolicy`): a missing stream's imputation is the source with the lowest expected
error for its outage so far (the model unless a baseline did better on at least :data:`MIN_SAMPLES`
held-out steps of that bucket). The model's expected error is its held-out error scaled by how this
step's predicted variance compares with the bucket's mean predicted variance at calibration, so a
confident imputation keeps its place and an unsure one gives way. A caller may also mark rows whose
imputation it does not trust (``untrusted``): they get the better baseline. (The fusion node does not:
handing every imputation made from a flagged stream to a baseline made the published audio 15–25 % worse
on unseen simulator seeds, as flags on normal data are mostly false alarms.) A baseline's
std is its calibrated error (root mean square, in sensor units), so its interval says how far it was
off on held-out data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .windows import gather_rows, windows_per_batch

MODEL, LAST, MEAN = "model", "last_value", "training_mean"
SOURCES = (MODEL, LAST, MEAN)
MIN_SAMPLES = 30              # held-out steps a bucket needs before a baseline may replace the model there
GROWTH = 1.4                  # the buckets' widths grow geometrically (short outages resolved finely)
RATIO_LIMITS = (0.1, 10.0)    # how far one sample's predicted variance may move the model's expected error


def bucket_edges(max_steps: int) -> list[int]:
    """Upper edges (steps since the stream was last seen, inclusive) of the buckets up to ``max_steps``:
    1, 2, 3, 4, 5, 7, 10, 14, ... ; a longer outage falls in the last bucket."""
    edges, value = [], 1.0
    while not edges or edges[-1] < max_steps:
        edge = min(max_steps, int(math.floor(value)))
        if not edges or edge > edges[-1]:
            edges.append(edge)
        value = max(value * GROWTH, value + 1)
    return edges


@dataclass
class FallbackTable:
    """Per modality and bucket of outage steps: the held-out mean squared error (standardised features)
    of the model's imputation and of both baselines, and how many held-out steps each bucket had."""

    steps: list[int]                                         # the buckets' upper edges
    error: dict[str, dict[str, list[float]]] = field(default_factory=dict)   # modality -> source -> MSE
    samples: dict[str, list[int]] = field(default_factory=dict)
    # modality -> the mean predicted variance (calibrated predictive std squared, standardised features) of
    # the model's imputation per bucket: what scales the model's expected error to one sample's std
    variance: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "error": self.error, "samples": self.samples,
                "variance": self.variance, "min_samples": MIN_SAMPLES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FallbackTable":
        return cls([int(s) for s in data["steps"]],
                   {m: {s: [float(v) for v in values] for s, values in by_source.items()}
                    for m, by_source in (data.get("error") or {}).items()},
                   {m: [int(v) for v in values] for m, values in (data.get("samples") or {}).items()},
                   {m: [float(v) for v in values] for m, values in (data.get("variance") or {}).items()})

    def problem(self) -> str | None:
        steps = self.steps
        if not steps or any(not isinstance(s, int) or s < 1 for s in steps) or steps != sorted(set(steps)):
            return f"fallback.steps must be increasing whole numbers >= 1 (is {steps!r})"
        for name, by_source in self.error.items():
            if set(by_source) != set(SOURCES):
                return f"fallback.error of {name!r} must give {', '.join(SOURCES)} (gives {', '.join(by_source)})"
            for source, values in by_source.items():
                if len(values) != len(steps) or not all(math.isfinite(v) and v >= 0 for v in values):
                    return f"fallback.error {name}/{source} must hold {len(steps)} finite errors >= 0"
            if len(self.samples.get(name, [])) != len(steps):
                return f"fallback.samples of {name!r} must hold {len(steps)} counts"
        for name, values in self.variance.items():
            if len(values) != len(steps) or not all(math.isfinite(v) and v > 0 for v in values):
                return f"fallback.variance of {name!r} must hold {len(steps)} finite variances > 0"
        return None

    def bucket(self, steps_missing: np.ndarray) -> np.ndarray:
        """The bucket of each outage length (steps since last seen, >= 1)."""
        return np.minimum(np.searchsorted(np.asarray(self.steps), steps_missing, side="left"), len(self.steps) - 1)

    def choice(self, name: str, steps_missing: np.ndarray, trusted: np.ndarray | None = None,
               variance: np.ndarray | None = None) -> np.ndarray:
        """Per row, the index into :data:`SOURCES` to publish for ``name`` missing for ``steps_missing``
        steps (>= 1); ``trusted`` False: the model's imputation is not trusted (the better baseline);
        ``variance``: each row's predicted variance of the model's imputation (calibrated predictive std
        squared, averaged over elements, standardised features), which scales the model's held-out
        error to that row (:data:`RATIO_LIMITS`) where the table measured the bucket's mean variance."""
        steps_missing = np.asarray(steps_missing)
        by_source = self.error.get(name)
        if by_source is None:
            return np.zeros(steps_missing.shape, int)
        bucket = self.bucket(steps_missing)
        errors = np.asarray([by_source[s] for s in SOURCES])[:, bucket]      # (3, B)
        if variance is not None and name in self.variance:
            ratio = np.asarray(variance, np.float64) / np.asarray(self.variance[name])[bucket]
            errors[0] = errors[0] * np.clip(np.nan_to_num(ratio, nan=1.0), *RATIO_LIMITS)
        enough = np.asarray(self.samples[name])[bucket] >= MIN_SAMPLES
        best = np.where(enough, np.argmin(errors, 0), 0)
        if trusted is not None:
            baseline = 1 + np.argmin(errors[1:], 0)
            best = np.where(np.asarray(trusted), best, baseline)
        return best

    def expected_error(self, name: str, source: int, steps_missing: np.ndarray) -> np.ndarray:
        """The calibrated mean squared error (standardised features) of ``SOURCES[source]``."""
        return np.asarray(self.error[name][SOURCES[source]])[self.bucket(np.asarray(steps_missing))]

    def describe(self, name: str) -> str:
        """Which source each bucket publishes, e.g. ``"last_value up to 4 steps, model after"``."""
        if name not in self.error:
            return "model (not calibrated)"
        picks = [SOURCES[int(c)] for c in self.choice(name, np.asarray(self.steps))]
        parts, start = [], 0
        for i in range(1, len(picks) + 1):
            if i == len(picks) or picks[i] != picks[start]:
                upper = f"up to {self.steps[i - 1]} steps" if i < len(picks) else "after"
                parts.append(f"{picks[start]} {upper}")
                start = i
        return ", ".join(parts) if len(parts) > 1 else picks[0]


# --------------------------------------------------------------------------- calibration
# (window features (B, T, ...), window mask (B, T, M), modality, rows (batch index, step index)) -> the model's
# imputation at those rows (N, *fshape) and its calibrated predictive std (N, *fshape), or None for no std
Imputer = Callable[[Mapping[str, torch.Tensor], torch.Tensor, str, tuple[np.ndarray, np.ndarray]],
                   tuple[torch.Tensor, "torch.Tensor | None"]]


@torch.no_grad()
def calibrate_fallback(model, feats: Mapping[str, torch.Tensor], mask: torch.Tensor, windows: torch.Tensor,
                       means: Mapping[str, torch.Tensor], impute: Imputer, max_steps: int, pause: int = 5,
                       batch_size: int | None = None, names: Sequence[str] | None = None) -> FallbackTable:
    """The table of :class:`FallbackTable` from held-out windows (W, T) of rows (-1: padding) of the
    normalised features ``feats`` (N, ...) and presence ``mask`` (N, M); ``means``: each modality's
    training mean in normalised features; ``impute`` (:data:`Imputer`): the model's imputation of a
    modality and its predictive std (whose mean square per bucket the table keeps). Outages of ``max_steps`` steps,
    ``pause`` steps apart (the stream seen on the step before each). The imputers:
    :func:`~.filter.sequence_imputer` and :func:`~.inference.frame_imputer`."""
    edges = bucket_edges(max_steps)
    table = FallbackTable(edges)
    for j, name in enumerate(names or model.names):
        j = list(model.names).index(name)
        sums = np.zeros((len(SOURCES), len(edges)))
        counts = np.zeros(len(edges), int)
        variances = np.zeros(len(edges))
        batch_size = batch_size or windows_per_batch(windows)
        for start in range(0, windows.shape[0], batch_size):
            chunk = windows[start:start + batch_size]
            part, seen, _ = gather_rows(feats, mask, chunk, None, model.device)
            since, last_step = _outages(seen[:, :, j].cpu().numpy(), max_steps, pause)
            if not (since > 0).any():
                continue
            withheld = seen.clone()
            withheld[:, :, j] &= torch.from_numpy(since == 0).to(seen.device)
            rows = np.nonzero((since > 0) & seen[:, :, j].cpu().numpy())
            imputed, std = impute(part, withheld, name, rows)
            truth = part[name][rows]
            last = part[name][rows[0], last_step[rows]]
            candidates = (imputed, last, means[name].to(truth).expand_as(truth))
            buckets = table.bucket(since[rows])
            if std is not None:
                np.add.at(variances, buckets, row_variance(std.expand_as(truth)))
            for s, value in enumerate(candidates):
                error = (value - truth).square().reshape(len(truth), -1).mean(1).double().cpu().numpy()
                np.add.at(sums[s], buckets, error)
            np.add.at(counts, buckets, 1)
        if counts.sum() == 0:
            continue
        errors = sums / np.maximum(counts, 1)
        for b in range(len(edges)):             # an empty bucket takes the nearest shorter one's errors
            if counts[b] == 0 and b > 0:
                errors[:, b] = errors[:, b - 1]
        table.error[name] = {s: [float(v) for v in errors[i]] for i, s in enumerate(SOURCES)}
        table.samples[name] = [int(c) for c in counts]
        if variances.any():
            mean_variance = variances / np.maximum(counts, 1)
            for b in range(len(edges)):
                if counts[b] == 0 and b > 0:
                    mean_variance[b] = mean_variance[b - 1]
            if (mean_variance > 0).all():
                table.variance[name] = [float(v) for v in mean_variance]
    return table


def row_variance(std: torch.Tensor) -> np.ndarray:
    """Each row's mean predicted variance over its elements (N, ...) -> (N,), float64."""
    return std.reshape(len(std), -1).double().square().mean(1).cpu().numpy()


def _outages(seen: np.ndarray, length: int, pause: int) -> tuple[np.ndarray, np.ndarray]:
    """For windows (B, T) of where a stream was seen: outages of ``length`` steps placed one after the
    other, each after a step where the stream was seen and ``pause`` steps after the last one ended;
    (steps since the stream was last seen (B, T), 0 outside the outages; the step it was last seen)."""
    batch, steps = seen.shape
    since = np.zeros((batch, steps), int)
    last = np.zeros((batch, steps), int)
    for b in range(batch):
        t = 1
        while t < steps:
            if not seen[b, t - 1]:
                t += 1
                continue
            end = min(t + length, steps)
            since[b, t:end] = np.arange(1, end - t + 1)
            last[b, t:end] = t - 1
            t = end + pause
    return since, last


# --------------------------------------------------------------------------- live
@dataclass
class Published:
    """What a step published for each imputed modality: the source index per row (into :data:`SOURCES`)."""

    source: dict[str, np.ndarray] = field(default_factory=dict)

    def name_of(self, name: str, row: int = 0) -> str:
        return SOURCES[int(self.source[name][row])] if name in self.source else MODEL


class FallbackPolicy:
    """Applies a :class:`FallbackTable` to a live step's imputations (B rows, the modalities of ``model``):
    :meth:`observe` each step's streams that entered the posterior (their raw arrays: the last value),
    then :meth:`apply` to the step's result. ``enabled``: the modalities it may replace (the others keep
    the model's). :meth:`reset` forgets the last values (a clock jump, a new time line)."""

    def __init__(self, model, table: FallbackTable, means: Mapping[str, torch.Tensor],
                 enabled: Sequence[str] | None = None):
        self.model, self.table = model, table
        self.names = list(model.names)
        self.enabled = frozenset(self.names if enabled is None else enabled) & frozenset(table.error)
        self.means = {n: v.float() for n, v in means.items()}              # un-normalised features
        self.missing: np.ndarray | None = None         # (B, M) steps since each stream was last seen
        self.has_last: np.ndarray | None = None        # (B, M) whether a last value is held
        self._last_raw: dict[str, torch.Tensor] = {}   # the raw arrays last seen, (B, *shape)
        self._last_features: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.missing = self.has_last = None
        self._last_raw, self._last_features = {}, {}

    def observe(self, raw: Mapping[str, torch.Tensor], entered: np.ndarray) -> None:
        """One step's presence (B, M) of the streams that entered the posterior, and their raw arrays."""
        entered = np.asarray(entered, bool)
        if self.missing is None or self.missing.shape != entered.shape:
            self.missing = np.zeros(entered.shape, int)
            self.has_last = np.zeros(entered.shape, bool)
        self.missing = np.where(entered, 0, self.missing + 1)
        for j, name in enumerate(self.names):
            if name not in self.enabled or not entered[:, j].any():
                continue
            value = raw[name].detach().clone()           # the caller may reuse its buffers
            if name in self._last_raw and not entered[:, j].all():          # keep the other rows' last values
                value = torch.where(torch.from_numpy(entered[:, j]).to(value.device).view(-1, *[1] * (value.dim() - 1)),
                                    value, self._last_raw[name])
            self._last_raw[name] = value
            self._last_features.pop(name, None)
            self.has_last[:, j] |= entered[:, j]

    def last_value(self, name: str) -> torch.Tensor:
        """The last value seen of ``name`` in un-normalised features (B, *fshape)."""
        if name not in self._last_features:
            feats = self.model.features({name: self._last_raw[name].to(self.model.device)})[name]
            self._last_features[name] = self.model.denormalize(name, feats)
        return self._last_features[name]

    def apply(self, result, untrusted: np.ndarray | None = None, predictive: frozenset[str] = frozenset()
              ) -> Published:
        """Replace, in ``result.imputed`` (un-normalised features), the imputations of missing streams whose
        expected error says a baseline does better, or (``untrusted`` (B,) True) whose step's input was
        flagged as anomalous; their std becomes the baseline's calibrated error. ``predictive``: the
        modalities whose std in ``result`` is their calibrated predictive std (it then scales the model's
        expected error to the row). Returns the sources."""
        published = Published()
        if self.missing is None:
            return published
        trusted = None if untrusted is None else ~np.asarray(untrusted, bool)
        for name, imputation in result.imputed.items():
            j = self.names.index(name)
            missing = self.missing[:, j]
            if name not in self.enabled or not (missing > 0).any():
                continue
            variance = None
            if name in predictive:
                _, scale = self.model.normalization_stats(name)
                variance = row_variance(imputation.std.expand_as(imputation.mean) / scale.to(imputation.mean))
            choice = self.table.choice(name, np.maximum(missing, 1), trusted, variance)
            choice = np.where(missing > 0, choice, 0)
            no_last = (choice == 1) & ~self.has_last[:, j]
            if no_last.any():                            # nothing seen since the last reset: mean or model
                errors = self.table.error[name]
                bucket = self.table.bucket(np.maximum(missing, 1))
                mean_better = np.asarray(errors[MEAN])[bucket] < np.asarray(errors[MODEL])[bucket]
                distrust = np.zeros(len(missing), bool) if trusted is None else ~trusted
                choice = np.where(no_last, np.where(mean_better | distrust, 2, 0), choice)
            published.source[name] = choice
            if not choice.any():
                continue
            self._replace(name, imputation, choice, missing)
        return published

    def _replace(self, name: str, imputation, choice: np.ndarray, missing: np.ndarray) -> None:
        mean, std = imputation.mean, imputation.std
        std = std.expand_as(mean).clone()
        mean = mean.clone()
        _, scale = self.model.normalization_stats(name)
        scale = scale.to(mean)
        for source in (1, 2):
            rows = np.flatnonzero(choice == source)
            if not rows.size:
                continue
            index = torch.from_numpy(rows).to(mean.device)
            value = self.last_value(name) if source == 1 else self.means[name].to(mean).unsqueeze(0)
            value = value.to(mean).expand(len(mean), *mean.shape[1:])
            mean[index] = value[index]
            rms = torch.from_numpy(np.sqrt(self.table.expected_error(name, source, missing[rows]))).to(mean)
            std[index] = rms.view(-1, *[1] * (mean.dim() - 1)) * scale.expand_as(mean[index])
        imputation.mean, imputation.std = mean, std

