"""Anomaly scores from per-stream surprise, and their calibration on normal data.

Each observed stream m is predicted from the others (and, in a temporal model, from the past). Its
*surprise* has two channels:

* ``nll``: -log p(x_m | .) in the model's standardised features;
* ``error``: the squared prediction error summed over the features, in the sensor's own units. It
  stays meaningful where the NLL swings on normal data: features that are nearly constant in training
  (taxels that rarely touch) get a tiny normalisation std, so one normal contact moves the NLL a lot.

Calibration keeps each channel's empirical distribution on normal held-out data (sorted values at up
to :data:`TABLE_POINTS` probability levels). A value's score is its normal quantile: the probit of the
empirical CDF, linear between stored points and extended past the largest one with the slope of the
upper tail, so scores stay ordered beyond the calibration data. A stream scores the larger of its two
channels. A stream the caller *expects* (the node: it published, then stayed silent for its
``absence_after``) but that is missing scores the probit of how rarely it was missing on normal data: a
silent sensor is evidence too. The total combines two
statistics of the stream scores, each calibrated the same way on the normal data, and keeps the larger:
the largest stream score (one stream clearly off, e.g. a dropped object's taxels) and their sum /
sqrt(count) (several streams a little off together, e.g. a collision's sound, jolt and image).

Calibrations written before these tables (``mean``/``std`` of the NLL only) keep their behaviour: the
z-score of the NLL per stream and the sum over streams / sqrt(count) as total.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from .fallback import FallbackTable

CHANNELS = ("nll", "error")
TOTAL_STATISTICS = ("max", "sum")   # the largest stream score; the sum of the scores / sqrt(count)
TABLE_POINTS = 257              # stored points of each channel's empirical quantile function
MAX_TABLE_POINTS = 4096         # what a loaded calibration may hold
UPPER_TAIL_FROM = 0.9           # the slope past the last point: from this level to the last
TOTAL = "total"


@dataclass
class QuantileTable:
    """A channel's empirical distribution: sorted ``values`` at normal quantiles ``probits``, and the
    probit-per-unit ``slope`` that extends it past the largest value."""

    values: list[float]
    probits: list[float]
    slope: float

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values, "probits": self.probits, "slope": self.slope}

    @classmethod
    def fit(cls, sample: np.ndarray) -> "QuantileTable":
        v = np.sort(np.asarray(sample, dtype=np.float64))
        levels = (np.arange(v.size) + 0.5) / v.size
        pick = np.unique(np.round(np.linspace(0, v.size - 1, min(v.size, TABLE_POINTS))).astype(int))
        values = v[pick]
        probits = torch.special.ndtri(torch.from_numpy(levels[pick])).numpy()
        start = int(np.searchsorted(levels[pick], UPPER_TAIL_FROM).clip(0, max(len(pick) - 2, 0)))
        rise, run = probits[-1] - probits[start], values[-1] - values[start]
        slope = float(rise / run) if run > 0 and rise > 0 else 1.0 / max(float(np.std(v)), 1e-6)
        return cls(values.tolist(), probits.tolist(), slope)

    def problem(self) -> str | None:
        """Why this table cannot score (a hand-edited or hostile file), or None."""
        v, p = np.asarray(self.values, dtype=np.float64), np.asarray(self.probits, dtype=np.float64)
        if not 1 <= v.size <= MAX_TABLE_POINTS or v.size != p.size:
            return f"needs 1 to {MAX_TABLE_POINTS} values and as many probits (has {v.size} and {p.size})"
        if not (np.isfinite(v).all() and np.isfinite(p).all() and math.isfinite(self.slope) and self.slope > 0):
            return "values, probits and slope must be finite, and the slope > 0"
        if (np.diff(v) < 0).any() or (np.diff(p) < 0).any():
            return "values and probits must be sorted ascending"
        return None

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Normal quantile of ``x`` (B,) under this distribution (NaN stays NaN); one-off use: the scores
        of a calibration go through :class:`StackedTables`."""
        return StackedTables([self], x).score(x.reshape(1, -1))[0].reshape(x.shape)


class StackedTables:
    """Several :class:`QuantileTable` as padded per-segment tensors, scored in one batched search: the
    per-step cost of R tables is that of one (the live node scores 2 channels x M streams + 2 totals).

    Segment i of row r starts at ``start[r, i]`` with probit ``level[r, i]`` and rises with
    ``rise[r, i]``: segment 0 is everything up to the first value (flat at the first probit), segments
    1..n-1 interpolate between stored points, segment n is the upper tail past the last point (its
    slope); padding repeats the tail. A score is one search, three gathers and one multiply-add."""

    def __init__(self, tables: list[QuantileTable], like: torch.Tensor):
        width = max(2, max(len(t.values) for t in tables))
        values = np.full((len(tables), width), np.inf)
        start = np.zeros((len(tables), width + 1))
        level = np.zeros((len(tables), width + 1))
        rise = np.zeros((len(tables), width + 1))
        for r, t in enumerate(tables):
            v, p = np.asarray(t.values, dtype=np.float64), np.asarray(t.probits, dtype=np.float64)
            n = v.size
            values[r, :n] = v
            start[r, 0], level[r, 0] = v[0], p[0]
            run = np.diff(v)
            start[r, 1:n], level[r, 1:n] = v[:-1], p[:-1]
            rise[r, 1:n] = np.where(run > 1e-12, np.diff(p) / np.maximum(run, 1e-12), 0.0)
            start[r, n:], level[r, n:], rise[r, n:] = v[-1], p[-1], t.slope
        options = {"dtype": like.dtype, "device": like.device}
        self.values = torch.from_numpy(values).to(**options)
        self.start, self.level, self.rise = (torch.from_numpy(a).to(**options) for a in (start, level, rise))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(R, B) values -> (R, B) normal quantiles, row r under table r (NaN stays NaN)."""
        segment = torch.searchsorted(self.values, x.contiguous())
        return self.level.gather(1, segment) + (x - self.start.gather(1, segment)).clamp_min(0.0) \
            * self.rise.gather(1, segment)


@dataclass
class _Stacked:
    streams: StackedTables
    stream_of_row: list[int]                 # which modality each stream table scores
    channel_of_row: list[int]                # and which surprise channel
    totals: StackedTables | None             # "max" and "sum", in TOTAL_STATISTICS order
    absence: torch.Tensor                    # (M,) each modality's absence score
    complete: bool                           # every stream has a table for every channel, in order


@dataclass
class AnomalyCalibration:
    """Per-modality statistics of the surprise on normal data, and thresholds (quantiles of the
    scores) for each modality and for the total. ``tables`` (modality -> channel -> table) and
    ``presence`` (modality -> fraction of normal rows where it was observed) are absent in
    calibrations written before them; such calibrations score with ``mean``/``std`` of the NLL."""

    mean: dict[str, float]
    std: dict[str, float]
    threshold: dict[str, float]
    quantile: float = 0.99
    n_samples: int = 0
    count: int = 0
    tables: dict[str, dict[str, QuantileTable]] = field(default_factory=dict)
    presence: dict[str, float] = field(default_factory=dict)
    # modality -> the factor on its moment-matched predictive std that makes the central 90 % interval
    # cover 90 % of held-out truth (:mod:`.uncertainty`); absent: 1
    predictive_scale: dict[str, float] = field(default_factory=dict)
    # temporal models: how far ahead the predicted latent beats "nothing changes" on held-out data
    # (:func:`~.filter.calibrate_prediction_horizon`: "useful" steps and the errors per step); absent: unknown
    prediction: dict[str, Any] = field(default_factory=dict)
    # per modality and outage length, the held-out error of the model's imputation and of the training mean
    # and last-value baselines (:mod:`.fallback`); absent: the model's imputation is always published
    fallback: dict[str, Any] = field(default_factory=dict)
    _stacked: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def stacked(self, names: list[str], channels: int, like: torch.Tensor) -> "_Stacked":
        """The tables of ``names`` and their first ``channels`` channels, made once per dtype and device."""
        key = (tuple(names), channels, like.dtype, like.device, id(self.tables), tuple(self.presence.items()))
        if key not in self._stacked:
            rows = [(j, k, self.tables[n][c]) for j, n in enumerate(names) for k, c in enumerate(CHANNELS[:channels])
                    if c in self.tables.get(n, {})]
            totals = [self.tables[TOTAL][t] for t in TOTAL_STATISTICS if t in self.tables.get(TOTAL, {})]
            self._stacked[key] = _Stacked(
                StackedTables([t for *_, t in rows], like), [j for j, *_ in rows], [k for _, k, _ in rows],
                StackedTables(totals, like) if totals else None,
                torch.tensor([self.absence_score(n) for n in names], dtype=like.dtype, device=like.device),
                [j for j, *_ in rows] == [j for j in range(len(names)) for _ in range(channels)])
        return self._stacked[key]

    def to_dict(self) -> dict[str, Any]:
        out = {"mean": self.mean, "std": self.std, "threshold": self.threshold,
               "quantile": self.quantile, "n_samples": self.n_samples, "count": self.count}
        if self.tables:
            out["scoring"] = "quantile"
            out["tables"] = {m: {c: t.to_dict() for c, t in chans.items()} for m, chans in self.tables.items()}
            out["presence"] = self.presence
        if self.predictive_scale:
            out["predictive_scale"] = self.predictive_scale
        if self.prediction:
            out["prediction"] = self.prediction
        if self.fallback:
            out["fallback"] = self.fallback
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AnomalyCalibration":
        tables = {m: {c: QuantileTable([float(v) for v in t["values"]], [float(p) for p in t["probits"]],
                                       float(t["slope"])) for c, t in chans.items()}
                  for m, chans in (data.get("tables") or {}).items()}
        return cls(mean={k: float(v) for k, v in data["mean"].items()},
                   std={k: float(v) for k, v in data["std"].items()},
                   threshold={k: float(v) for k, v in data["threshold"].items()},
                   quantile=float(data.get("quantile", 0.99)), n_samples=int(data.get("n_samples", 0)),
                   count=int(data.get("count", 0)), tables=tables,
                   presence={k: float(v) for k, v in (data.get("presence") or {}).items()},
                   predictive_scale={k: float(v) for k, v in (data.get("predictive_scale") or {}).items()},
                   prediction=dict(data.get("prediction") or {}),
                   fallback=dict(data.get("fallback") or {}))

    def problem(self) -> str | None:
        """What is wrong with the quantile tables and presence rates (None: nothing)."""
        for name, channels in self.tables.items():
            for channel, table in channels.items():
                known = TOTAL_STATISTICS if name == TOTAL else CHANNELS
                if channel not in known:
                    return f"unknown surprise channel {channel!r} of {name!r} (known: {', '.join(known)})"
                problem = table.problem()
                if problem:
                    return f"table {name}/{channel}: {problem}"
        for name, rate in self.presence.items():
            if not 0.0 <= rate <= 1.0:
                return f"presence of {name!r} must be in [0, 1] (is {rate})"
        for name, scale in self.predictive_scale.items():
            if not (math.isfinite(scale) and scale > 0):
                return f"predictive_scale of {name!r} must be finite and > 0 (is {scale})"
        useful = self.prediction.get("useful", 0)
        if not isinstance(useful, int) or isinstance(useful, bool) or not 0 <= useful <= 100000:
            return f"prediction.useful must be a whole number of steps >= 0 (is {useful!r})"
        if self.fallback:
            try:
                return self.fallback_table.problem()
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                return f"fallback is malformed: {type(err).__name__}: {err}"
        return None

    @property
    def fallback_table(self) -> "FallbackTable | None":
        """The held-out errors of the model and both baselines per outage length (None: not measured)."""
        return FallbackTable.from_dict(self.fallback) if self.fallback else None

    @property
    def useful_horizon(self) -> int | None:
        """Steps ahead at which the predicted latent beat "nothing changes" at calibration (None: not measured)."""
        return int(self.prediction["useful"]) if "useful" in self.prediction else None

    def absence_score(self, name: str) -> float:
        """Probit of how rarely ``name`` was missing on normal data (at most 1 / (count + 1))."""
        missing = max(1.0 - self.presence.get(name, 1.0), 1.0 / (self.count + 1))
        return float(torch.special.ndtri(torch.tensor(1.0 - min(missing, 0.5), dtype=torch.float64)))


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
# model -> modality -> ((normalisation std tensor, scale version, dtype, device), (weights, factor, offset))
_LOCATION_TERMS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def stream_surprise(model, name: str, feats: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """(..., B, 2): [-log p(x | decoded), squared error of the decoded mean in sensor units]."""
    spec = model.specs[name]
    if spec.likelihood in ("gaussian", "laplace") and feats.dtype == decoded.dtype:
        return _location_surprise(model, name, spec.likelihood, feats, decoded, len(spec.feature_shape))
    ll = model.log_likelihood(name, feats, decoded)
    mean, _ = model.output_moments(name, decoded)
    _, scale = model.normalization_stats(name)
    n_feature_dims = len(model.specs[name].feature_shape)
    error = ((mean - feats) * scale).pow(2).flatten(-n_feature_dims).sum(-1)
    return torch.stack([-ll, error.to(ll.dtype)], -1)


def _location_surprise(model, name: str, likelihood: str, feats: torch.Tensor, decoded: torch.Tensor,
                       n_feature_dims: int) -> torch.Tensor:
    """:func:`stream_surprise` of a Gaussian or Laplace decoder (its mean is its location) from one
    difference x - loc: its squares summed plainly (the Gaussian NLL) and weighted by the squared
    normalisation std in one matrix-vector product (the error), with the scale's terms added once --
    the same numbers as the element-wise log-density in a few operations (a live step scores every
    observed stream)."""
    diff = (feats - decoded).flatten(-n_feature_dims)
    squared = diff.square()
    weights, factor, offset = _location_terms(model, name, likelihood, diff)
    nll = (squared if likelihood == "gaussian" else diff.abs()).sum(-1) * factor + offset
    return torch.stack([nll, squared @ weights], -1)


def _location_terms(model, name: str, likelihood: str, like: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, factor, offset): the squared normalisation std broadcast over the features and
    flattened (N,), which turns squared feature errors into squared errors in sensor units, and the
    decoder scale's share of the NLL, -log p = factor * sum(d^2 or |d|) + offset. Kept per std tensor (a
    new normalisation is a new tensor), scale version, dtype and device, made outside inference mode
    so they serve in any autograd mode; with autograd on, factor and offset are made afresh, so that
    gradients reach the scale."""
    _, std = model.normalization_stats(name)
    version = model.log_scales[name]._version
    per_model = _LOCATION_TERMS.setdefault(model, {})
    hit = per_model.get(name)
    if hit is None or hit[0][0] is not std or hit[0][1:] != (version, like.dtype, like.device):
        with torch.inference_mode(False), torch.no_grad():
            shape = model.specs[name].feature_shape
            weights = std.detach().clone().to(like.device, like.dtype).square().expand(shape).reshape(-1).contiguous()
            hit = ((std, version, like.dtype, like.device), (weights, *_scale_terms(model, name, likelihood, like)))
        per_model[name] = hit
    if torch.is_grad_enabled():
        return hit[1][0], *_scale_terms(model, name, likelihood, like)
    return hit[1]


def _scale_terms(model, name: str, likelihood: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_scale = model.log_scale(name).to(like.dtype)
    count = like.shape[-1]
    if likelihood == "gaussian":
        return 0.5 * torch.exp(-2.0 * log_scale), count * (log_scale + _HALF_LOG_2PI)
    return torch.exp(-log_scale), count * (log_scale + _LOG_2)


def empty_surprise(batch: int, n_modalities: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((batch, n_modalities, len(CHANNELS)), float("nan"), dtype=like.dtype, device=like.device)


def standardize_scores(model, surprise: torch.Tensor, calibration: AnomalyCalibration | None,
                       expected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, 2) surprise (or (B, M) NLLs) -> per-modality scores (B, M), NaN where missing and not
    scored as absent, and the total (B,), NaN if no stream has a score. ``expected`` (B, M) bool: the
    streams whose absence counts (None: none)."""
    surprise = surprise if surprise.dim() == 3 else surprise.unsqueeze(-1)
    nll = surprise[..., 0]
    if calibration is None:
        return nll, _sum_total(nll)
    if not calibration.tables:
        mean = torch.tensor([calibration.mean[n] for n in model.names], dtype=nll.dtype, device=nll.device)
        std = torch.tensor([calibration.std[n] for n in model.names], dtype=nll.dtype, device=nll.device)
        return (nll - mean) / std, _sum_total((nll - mean) / std)
    stacked = calibration.stacked(list(model.names), surprise.shape[-1], nll)
    n_mod, channels = nll.shape[1], surprise.shape[-1]
    if stacked.complete:                          # every table there, rows in (modality, channel) order
        scored = stacked.streams.score(surprise.reshape(surprise.shape[0], -1).T)                # (R, B)
        per_channel = scored.reshape(n_mod, channels, -1)
        scores = per_channel[:, 0] if channels == 1 else torch.fmax(per_channel[:, 0], per_channel[:, 1])
        scores = scores.T.contiguous()
    else:
        scored = stacked.streams.score(surprise[:, stacked.stream_of_row, stacked.channel_of_row].T)
        scores = torch.full_like(nll, float("nan"))
        for r, j in enumerate(stacked.stream_of_row):
            scores[:, j] = torch.fmax(scores[:, j], scored[r])
    if expected is not None:
        absent = expected.to(scores.device) & torch.isnan(nll)
        scores = torch.where(absent, stacked.absence.expand_as(scores), scores)
    return scores, _combined_total(scores, stacked.totals)


def _sum_total(scores: torch.Tensor) -> torch.Tensor:
    """Sum of the scores present / sqrt(their count) per row; NaN where none is (0 / 0)."""
    return scores.nansum(1) / (~torch.isnan(scores)).sum(1).to(scores.dtype).sqrt()


def _max_total(scores: torch.Tensor) -> torch.Tensor:
    """The largest score present per row; NaN where none is."""
    largest = scores.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf).amax(1)
    return torch.where(torch.isnan(scores).all(1), math.nan, largest)


def _total_statistics(scores: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"max": _max_total(scores), "sum": _sum_total(scores)}


def _combined_total(scores: torch.Tensor, totals: StackedTables | None) -> torch.Tensor:
    """The larger of the calibrated statistics (the plain max while they are not calibrated yet)."""
    if totals is None:
        return _max_total(scores)
    statistics = _total_statistics(scores)
    scored = totals.score(torch.stack([statistics[name] for name in TOTAL_STATISTICS]))
    return torch.fmax(scored[0], scored[1])


def calibration_from_nll(model, surprise: torch.Tensor, quantile: float = 0.99,
                         n_samples: int = 0) -> AnomalyCalibration:
    """Anomaly calibration from normal-data surprise (N, M, 2), or NLLs alone (N, M); NaN where a
    modality is missing: per channel the quantile table, per modality the NLL's mean/std and how often
    it was observed, and the ``quantile`` of the scores as thresholds."""
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    values = surprise.detach().cpu().double()
    values = values if values.dim() == 3 else values.unsqueeze(-1)
    arr = values.numpy()
    mean, std, tables, presence = {}, {}, {}, {}
    for j, name in enumerate(model.names):
        observed = ~np.isnan(arr[:, j, 0])
        if observed.sum() < 2:
            raise ValueError(f"anomaly calibration needs >= 2 samples where {name!r} is observed")
        column = arr[observed, j, 0]
        mean[name], std[name] = float(column.mean()), float(max(column.std(), 1e-6))
        presence[name] = float(observed.mean())
        tables[name] = {c: QuantileTable.fit(arr[observed, j, k]) for k, c in enumerate(CHANNELS[:arr.shape[2]])}
    calibration = AnomalyCalibration(mean, std, {}, quantile, n_samples, int(arr.shape[0]), tables, presence)
    expected = torch.ones(values.shape[:2], dtype=torch.bool)
    scores, _ = standardize_scores(model, values, calibration, expected)
    tables[TOTAL] = {name: QuantileTable.fit(statistic[~torch.isnan(statistic)].numpy())
                     for name, statistic in _total_statistics(scores).items()}
    calibration._stacked.clear()
    scores, total = standardize_scores(model, values, calibration, expected)
    for j, name in enumerate(model.names):
        column = scores[:, j][~torch.isnan(values[:, j, 0])]
        calibration.threshold[name] = float(torch.quantile(column, quantile))
    calibration.threshold[TOTAL] = float(torch.quantile(total[~torch.isnan(total)], quantile))
    return calibration


def describe(calibration: AnomalyCalibration | None) -> dict[str, str]:
    """What a published score and total mean under ``calibration`` (for a node's model_info)."""
    if calibration is None:
        return {"score": "-log p(x_m | others) in standardised features (uncalibrated; NaN if missing)",
                "total": "sum of the scores / sqrt(count)"}
    if not calibration.tables:
        return {"score": "z-score of -log p(x_m | others) on normal data (NaN if missing)",
                "total": "sum of the scores / sqrt(count)"}
    return {"score": "normal quantile (probit) of the stream's surprise on normal data, the larger of its NLL "
                     "and its squared prediction error in sensor units; a stream silent for absence_after s after "
                     "it published scores how rare its absence was; otherwise NaN while missing",
            "total": "normal quantile of the larger of two calibrated statistics of the stream scores: their "
                     "maximum, and their sum / sqrt(count)"}

