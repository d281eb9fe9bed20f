"""Live model comparison: several models stream one source side by side, scored as they go.

Each model is an `OnlineFilter` (a bank of posterior draws). Every observation y_t gives each
model k its log predictive density ℓ_k,t = log Σ_s w_s p(y_t | y_{1:t-1}, θ_s) (the bank's
`OnlineInfo.log_pred`), the increment of its log evidence. Over the stream:

* the running log predictive score L_k = Σ_t ℓ_k,t (the prequential score of Dawid; a log
  Bayes factor between two models is L_i − L_j);
* for each pair, the difference D_ij = L_i − L_j with a standard error √(n · var_t(ℓ_i,t − ℓ_j,t)),
  as for pointwise ELPD differences (it treats the per-step differences as exchangeable,
  which they are not quite: read it as a scale, not as an exact test);
* posterior model probabilities p(M_k | stream) ∝ π_k exp(L_k). The prior π (uniform unless
  given) is over the models *after* the history each was fitted on: L_k is the evidence of
  the stream given that history (a conditional Bayes factor), not of the whole series;
* an event when the ranking flips: the leader changes once a challenger's log posterior odds
  against the current leader exceed `margin` nats (hysteresis, so that two models in a tie do
  not flip at every step).

Steps where some model's predictive is still diffuse (improper) are not scored for any model
(their "densities" are not comparable), nor are missing observations. Everything is O(K²) per
observation on top of the K banks' own O(1) updates.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from .online import OnlineFilter
from .spec import as_spec

__all__ = ["ModelSet", "ComparisonStep", "compare_online"]


class ComparisonStep(NamedTuple):
    """The comparison after one observation (host values)."""

    t: int                    # observations consumed by the set (0-based index of this one)
    scored: bool              # this step entered the scores (observed, every model proper)
    log_pred: np.ndarray      # (model,) this step's log predictive densities
    score: np.ndarray         # (model,) running log predictive scores L_k
    probability: np.ndarray   # (model,) posterior model probabilities
    leader: str               # the current leader (after this step)
    flipped: bool             # the leader changed at this step


class ModelSet:
    """K ≥ 2 models on one stream with running scores, model probabilities and ranking-flip events.

    models: a mapping name → `OnlineFilter` (each already caught up on its history). prior:
    mapping name → prior probability (normalised here; uniform by default). margin: the log
    posterior odds (nats) by which a challenger must beat the leader for a flip. Events
    (`events`, and `on_event(event)`) are dicts with kind "ranking_flip", t, previous, leader,
    probability.
    """

    def __init__(self, models: Mapping[str, OnlineFilter], *, prior: Mapping[str, float] | None = None,
                 margin: float = 1.0, on_event: Callable[[dict], None] | None = None):
        if not isinstance(models, Mapping) or not 2 <= len(models) <= 8:
            raise ValueError(f"models must map 2 to 8 names to OnlineFilters, got {type(models).__name__} "
                             f"of {len(models) if hasattr(models, '__len__') else '?'}")
        self.names = [str(n) for n in models]
        self.filters = list(models.values())
        for name, f in zip(self.names, self.filters):
            if not isinstance(f, OnlineFilter):
                raise ValueError(f"models[{name!r}] must be an engine.OnlineFilter, got {type(f).__name__}")
        k = len(self.names)
        if prior is None:
            self.prior = np.full(k, 1.0 / k)
        else:
            unknown = set(map(str, prior)) - set(self.names)
            missing = set(self.names) - set(map(str, prior))
            if unknown or missing:
                raise ValueError(f"prior names must match the models: missing {sorted(missing)}, unknown "
                                 f"{sorted(unknown)}")
            p = np.array([float(prior[n]) for n in self.names])
            if not np.all(np.isfinite(p)) or np.any(p <= 0):
                raise ValueError(f"prior probabilities must be positive and finite, got {dict(zip(self.names, p))}")
            self.prior = p / p.sum()
        if not np.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be a finite number of nats ≥ 0, got {margin}")
        self.margin = float(margin)
        self.on_event = on_event
        self.events: list[dict] = []
        self.score = np.zeros(k)
        self.n_scored = 0
        self.t = 0
        # Welford's running mean and sum of squares of each pair's per-step difference
        self._diff_mean = np.zeros((k, k))
        self._diff_m2 = np.zeros((k, k))
        self._leader = int(np.argmax(self.prior))
        self.history: list[np.ndarray] = []   # scored steps' log predictive densities (model,)

    @classmethod
    def from_posteriors(cls, specs: Mapping[str, object], posteriors: Mapping[str, object], y_history=None,
                        exog_history=None, **kwargs) -> "ModelSet":
        """One `OnlineFilter.from_posterior` per model (same history; exog_history a DataFrame when
        the models regress on different columns). kwargs: the constructor's."""
        if set(specs) != set(posteriors):
            raise ValueError(f"specs and posteriors must name the same models: {sorted(specs)} against "
                             f"{sorted(posteriors)}")
        filters = {name: OnlineFilter.from_posterior(spec, posteriors[name], y_history,
                                                     _columns(spec, exog_history, name))
                   for name, spec in specs.items()}
        return cls(filters, **kwargs)

    # -- reading ---------------------------------------------------------------------------
    @property
    def leader(self) -> str:
        return self.names[self._leader]

    @property
    def probability(self) -> np.ndarray:
        """(model,) posterior model probabilities π_k e^{L_k} / Σ_j π_j e^{L_j}."""
        logp = np.log(self.prior) + self.score
        return np.exp(logp - logsumexp(logp))

    def differences(self) -> pd.DataFrame:
        """Each pair's score difference L_i − L_j and its standard error, one row per pair (i < j)."""
        rows = []
        k = len(self.names)
        for i in range(k):
            for j in range(i + 1, k):
                var = self._diff_m2[i, j] / (self.n_scored - 1) if self.n_scored > 1 else np.nan
                rows.append({"model": self.names[i], "other": self.names[j],
                             "difference": self.score[i] - self.score[j],
                             "se": float(np.sqrt(self.n_scored * var)) if self.n_scored > 1 else np.nan})
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """Per model: score, prior, posterior probability and rank (1 = best)."""
        prob = self.probability
        order = np.argsort(-prob)
        rank = np.empty(len(order), int)
        rank[order] = np.arange(1, len(order) + 1)
        return pd.DataFrame({"score": self.score, "prior": self.prior, "probability": prob, "rank": rank},
                            index=pd.Index(self.names, name="model"))

    # -- updating ----------------------------------------------------------------------------
    def update(self, y, exog=None) -> ComparisonStep:
        """Feed one observation (NaN: missing) to every model; exog: an array row shared by all, or a
        mapping/Series column → value from which each model takes its own columns."""
        infos = [f.update(y, _columns(f.spec, exog, name)) for name, f in zip(self.names, self.filters)]
        log_pred = np.array([float(i.log_pred) for i in infos])
        proper = not any(bool(i.diffuse) for i in infos)
        return self._score(log_pred, proper and bool(np.isfinite(y)))

    def update_many(self, ys, exog=None) -> list[ComparisonStep]:
        """`update` for each of a stretch of observations (each model takes them in one micro-batch)."""
        ys = np.asarray(ys, dtype=float).reshape(-1)
        infos = [f.update_many(ys, _columns(f.spec, exog, name, many=True)) for name, f in
                 zip(self.names, self.filters)]
        log_pred = np.stack([np.asarray(i.log_pred, dtype=float).reshape(-1) for i in infos], axis=1)
        diffuse = np.stack([np.asarray(i.diffuse).reshape(-1) for i in infos], axis=1).any(axis=1)
        return [self._score(log_pred[t], (not diffuse[t]) and bool(np.isfinite(ys[t]))) for t in range(len(ys))]

    def _score(self, log_pred: np.ndarray, scored: bool) -> ComparisonStep:
        t = self.t
        self.t += 1
        flipped = False
        if scored:
            self.score = self.score + log_pred
            self.n_scored += 1
            d = log_pred[:, None] - log_pred[None, :]
            delta = d - self._diff_mean
            self._diff_mean += delta / self.n_scored
            self._diff_m2 += delta * (d - self._diff_mean)
            self.history.append(log_pred)
            logp = np.log(self.prior) + self.score
            best = int(np.argmax(logp))
            if best != self._leader and logp[best] - logp[self._leader] > self.margin:
                previous, self._leader = self._leader, best
                flipped = True
                event = {"kind": "ranking_flip", "t": t, "previous": self.names[previous],
                         "leader": self.names[best], "probability": float(self.probability[best])}
                self.events.append(event)
                if self.on_event is not None:
                    self.on_event(event)
        return ComparisonStep(t, scored, log_pred, self.score.copy(), self.probability, self.leader, flipped)

    def close(self):
        """End every model's background work (rejuvenation threads)."""
        for f in self.filters:
            f.close()


def _columns(spec, exog, name: str, many: bool = False):
    """The exog a model takes: None without regression; its own columns from a mapping, a Series
    (one row) or a DataFrame (rows); an array is passed as it is."""
    spec = as_spec(spec)
    if spec.regression is None or exog is None:
        return None
    if not isinstance(exog, (Mapping, pd.Series, pd.DataFrame)):
        return exog
    cols = list(spec.exog_columns)
    missing = [c for c in cols if c not in exog]
    if missing:
        raise ValueError(f"exog has no column(s) {missing} for model {name!r}")
    if isinstance(exog, pd.DataFrame):
        return exog[cols].to_numpy(dtype=float)
    if many:
        return np.stack([np.asarray(exog[c], dtype=float) for c in cols], axis=-1)
    return np.array([float(exog[c]) for c in cols])


def compare_online(specs: Mapping[str, object], posteriors: Mapping[str, object], y_history, y_stream,
                   exog_history=None, exog_stream=None, **kwargs) -> tuple[ModelSet, list[ComparisonStep]]:
    """Stream `y_stream` through every model at once, one observation at a time: the `ModelSet`
    afterwards and each step's comparison. kwargs: `ModelSet`'s (prior, margin, on_event)."""
    models = ModelSet.from_posteriors(specs, posteriors, y_history, exog_history, **kwargs)
    ys = np.asarray(getattr(y_stream, "values", y_stream), dtype=float).reshape(-1)
    steps = []
    for t, y in enumerate(ys):
        row = None
        if exog_stream is not None:
            row = exog_stream.iloc[t] if isinstance(exog_stream, pd.DataFrame) else np.asarray(exog_stream)[t]
        steps.append(models.update(y, row))
    return models, steps
