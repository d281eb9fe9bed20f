"""Live model comparison: scores against the exact conditional log-likelihood, concentration on
the model that generated the data, and a ranking flip where a stream changes regime."""

from __future__ import annotations

import numpy as np
import pytest

import engine

LEVEL = {"irregular": True, "level": {"kind": "local_level"}}
CONSTANT = {"irregular": True, "level": {"kind": "deterministic_constant"}}
TRUE = {"sigma2.irregular": 1.0, "sigma2.level": 0.5}
NO_MOVES = engine.RejuvenationConfig(automatic=False)


def _filters(models: dict, y_history) -> dict:
    return {name: engine.OnlineFilter.from_posterior(spec, params, y_history, rejuvenation=NO_MOVES)
            for name, (spec, params) in models.items()}


def _random_walk_plus_noise(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, np.sqrt(TRUE["sigma2.level"]), n)) + rng.normal(0, 1, n)


def test_scores_are_the_conditional_log_likelihoods_and_the_differences_have_their_se():
    """With one draw per model, L_k is log p(stream | history, θ_k) = loglik(all) − loglik(history)
    (the batch filter), the pair difference is L_i − L_j and its se √(n var(ℓ_i − ℓ_j))."""
    y = _random_walk_plus_noise(0, 80)
    models = {"level": (LEVEL, TRUE), "constant": (CONSTANT, {"sigma2.irregular": 4.0}),
              "quiet": (LEVEL, {"sigma2.irregular": 1.5, "sigma2.level": 0.05})}
    ms = engine.ModelSet(_filters(models, y[:30]))
    y[50] = np.nan
    steps = [ms.update(v) for v in y[30:]]
    for k, (name, (spec, params)) in enumerate(models.items()):
        ref = float(engine.loglik(spec, params, y) - engine.loglik(spec, params, y[:30]))
        assert ms.score[k] == pytest.approx(ref, rel=1e-9)
    assert not steps[20].scored and ms.n_scored == 49
    lp = np.array(ms.history)
    diff = ms.differences().set_index(["model", "other"])
    d = lp[:, 0] - lp[:, 2]
    assert diff.loc[("level", "quiet"), "difference"] == pytest.approx(d.sum(), rel=1e-12)
    assert diff.loc[("level", "quiet"), "se"] == pytest.approx(np.sqrt(len(d) * d.var(ddof=1)), rel=1e-9)
    np.testing.assert_allclose(ms.probability, np.exp(ms.score - np.logaddexp.reduce(ms.score)), rtol=1e-12)
    assert ms.table().loc[ms.leader, "rank"] == 1


def test_probabilities_concentrate_on_the_model_that_made_the_data():
    """Data from the local level model with TRUE parameters; three candidates under a stated prior
    that favours the others 4:1 each. After 300 observations the generating model holds > 99%."""
    y = _random_walk_plus_noise(1, 330)
    models = {"constant": (CONSTANT, {"sigma2.irregular": 4.0}),
              "quiet": (LEVEL, {"sigma2.irregular": 1.5, "sigma2.level": 0.05}),
              "true": (LEVEL, TRUE)}
    ms = engine.ModelSet(_filters(models, y[:30]), prior={"constant": 4, "quiet": 4, "true": 1})
    steps = ms.update_many(y[30:])
    assert steps[0].leader != "true" or steps[0].probability[2] < 0.5
    assert ms.leader == "true" and ms.probability[2] > 0.99
    # and it concentrates as the stream grows: the log odds for it rise from one stretch to the next
    p_true = np.array([s.probability[2] for s in steps])
    log_odds = np.log(p_true) - np.log1p(-p_true)
    means = [log_odds[i:i + 100].mean() for i in (0, 100, 200)]
    assert means[0] < means[1] < means[2]


def test_the_ranking_flips_when_the_regime_changes():
    """A stream of white noise that becomes a random walk: the constant model leads first; the
    local level takes over after the change: one flip event, after it, through on_event too."""
    rng = np.random.default_rng(2)
    calm = rng.normal(0, 1, 150)
    moving = calm[-1] + np.cumsum(rng.normal(0, 0.8, 150)) + rng.normal(0, 1, 150)
    y = np.concatenate([calm, moving])
    seen = []
    models = {"constant": (CONSTANT, {"sigma2.irregular": 1.0}), "level": (LEVEL, TRUE)}
    ms = engine.ModelSet(_filters(models, y[:20]), on_event=seen.append)
    steps = [ms.update(v) for v in y[20:]]
    flips = [s for s in steps if s.flipped]
    assert ms.events == seen and [e["kind"] for e in seen] == ["ranking_flip"]
    assert seen[0]["previous"] == "constant" and seen[0]["leader"] == "level"
    assert flips[0].t >= 130 and steps[125].leader == "constant"   # t counts the set's own observations


def test_compare_online_with_regressors_and_bad_inputs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 1))
    y = 2 * x[:, 0] + _random_walk_plus_noise(3, 60)
    reg = {"irregular": True, "level": {"kind": "local_level"}, "regression": {"columns": ["x"]}}
    import pandas as pd
    frame = pd.DataFrame({"x": x[:, 0]})
    ms, steps = engine.compare_online({"reg": reg, "plain": LEVEL},
                                      {"reg": dict(TRUE, **{"beta.x": 2.0}), "plain": TRUE},
                                      y[:30], y[30:], frame.iloc[:30], frame.iloc[30:])
    assert len(steps) == 30 and ms.leader == "reg"
    with pytest.raises(ValueError, match="2 to 8"):
        engine.ModelSet({"one": ms.filters[0]})
    with pytest.raises(ValueError, match="prior names"):
        engine.ModelSet(dict(zip(ms.names, ms.filters)), prior={"reg": 1.0})
    with pytest.raises(ValueError, match="margin"):
        engine.ModelSet(dict(zip(ms.names, ms.filters)), margin=-1)
