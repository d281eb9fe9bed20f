"""Models, data and parameter points shared by the Kalman filter tests.

The cases are built from the spec dict; the references each test compares with (statsmodels,
the augmented filter, finite differences, the per-step filter) are built independently.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import engine

from ..helpers import air, co2, default_params, nile, seatbelts, with_gaps


BETAS = {"beta.petrol_price": -2.0, "beta.law": -0.2}


def y_exog(data: str, gaps: bool):
    """(y, exog) for a data set name; gaps adds NaN runs to the series."""
    if data == "air":
        y, exog = air(), None
    elif data == "seatbelts":
        y, exog = seatbelts()
    elif data == "seatbelts_z":
        # petrol_price standardised: raw, it is ~0.1 and nearly constant, so its coefficient is
        # almost collinear with the level while diffuse and the smoothed covariances in that
        # phase lose up to ~4-6 digits in both statsmodels and the engine (checked against a
    # 200-digit reference); standardised, both agree with that reference to ~1e-11
        y, exog = seatbelts()
        x = exog["petrol_price"].to_numpy(dtype=float)
        exog = exog.assign(petrol_price=(x - x.mean()) / x.std())
    elif data == "co2":
        y, exog = co2(), None  # real gaps already
    elif data == "nile":
        y, exog = nile(), None
    else:
        raise KeyError(data)
    if gaps and data != "co2":
        y = with_gaps(y, (0, 5, 30, 31, 32, 90))
    return y, exog


# -- one spec per component and combination, and two parameter points for each -----------------
LL = {"kind": "local_level"}
LLT = {"kind": "local_linear_trend"}
CASES = {
    "dummy12": ({"level": LLT, "seasonal": [{"period": 12}]}, "air"),
    "trig12": ({"level": LL, "seasonal": [{"period": 12, "form": "trig", "harmonics": 3}]}, "air"),
    "trig12_trig4": ({"level": LL, "seasonal": [{"period": 12, "form": "trig", "harmonics": 3},
                                                {"period": 4, "form": "trig", "harmonics": 1}]}, "air"),
    "dummy12det_trig4": ({"level": LL, "seasonal": [{"period": 12, "stochastic": False},
                                                    {"period": 4, "form": "trig"}]}, "air"),
    "trig12det_trig4": ({"level": {"kind": "smooth_trend"},
                         "seasonal": [{"period": 12, "form": "trig", "harmonics": 2, "stochastic": False},
                                      {"period": 4, "form": "trig", "harmonics": 1}]}, "air"),
    "cycle_damped_stoch": ({"level": LL, "cycle": {"period_bounds": [6, 48], "damped": True,
                                                   "stochastic": True}}, "air"),
    "cycle_undamped_stoch": ({"level": LL, "cycle": {"damped": False, "stochastic": True}}, "air"),
    "cycle_damped_det": ({"level": LL, "cycle": {"damped": True, "stochastic": False}}, "air"),
    "cycle_undamped_det": ({"level": LL, "cycle": {"damped": False, "stochastic": False}}, "air"),
    "ar1": ({"level": LL, "autoregressive": {"order": 1}}, "air"),
    "ar3": ({"level": LLT, "autoregressive": {"order": 3}}, "air"),
    "seasonal_ar2_cycle": ({"level": LL, "seasonal": [{"period": 12}], "cycle": {"damped": True},
                            "autoregressive": {"order": 2}}, "air"),
    "no_irregular": ({"irregular": False, "level": LLT, "seasonal": [{"period": 12}]}, "air"),
    "random_walk_with_irregular": ({"irregular": True, "level": {"kind": "random_walk"}}, "air"),
    "reg_parameters": ({"level": LL, "seasonal": [{"period": 12}],
                        "regression": {"columns": ["petrol_price", "law"],
                                       "coefficients": "parameters"}}, "seatbelts"),
    "reg_state": ({"level": LL, "seasonal": [{"period": 12}],
                   "regression": {"columns": ["petrol_price", "law"], "coefficients": "state"}}, "seatbelts"),
    "co2_llt_dummy": ({"level": LLT, "seasonal": [{"period": 12}]}, "co2"),
    "co2_smooth_trig_ar1": ({"level": {"kind": "smooth_trend"},
                             "seasonal": [{"period": 12, "form": "trig", "harmonics": 2}],
                             "autoregressive": {"order": 1}}, "co2"),
}


def param_points(spec, y) -> list[np.ndarray]:
    """Two parameter points: variances relative to the data's scale, plausible other values."""
    names = engine.param_names(spec)
    dy = np.diff(y)
    v = float(np.nanvar(dy[np.isfinite(dy)]))
    return [default_params(names, variance=0.1 * v, beta=BETAS),
            default_params(names, variance=0.01 * v, ar=(-0.3, 0.2, 0.4), frequency=2 * np.pi / 12,
                           damping=0.7, beta={k: 0.5 * b for k, b in BETAS.items()})]


# -- gradients: parameter points, and the per-step filter as the reference ---------------------
GRAD_CASES = {
    "llt_dummy12": (CASES["dummy12"][0], np.array([3e-4, 7e-4, 1e-6, 5e-3])),
    "ll_cycle_ar1": ({"level": LL, "cycle": {"damped": True}, "autoregressive": {"order": 1}},
                     np.array([1e-3, 1e-3, 1e-4, 2e-4, 2 * np.pi / 40, 0.9, 0.5])),
}


# The single-series filter runs in chunks (exact-diffuse, standard or steady) and gives the
# standard and exact-diffuse chunks a hand-written tangent (the diffuse one only where T has no
# tangent: the cycle and AR cases take plain autodiff); the per-step filter behind filter_series is plain
# autodiff through one branch per step. Both must give the same derivatives in every regime.
def stepwise_loglik(spec, p, y, exog=None):
    """Log-likelihood from the per-step filter (one branch per step, plain autodiff): the reference."""
    return jnp.sum(engine.filter_series(spec, p, y, exog, filter="standard").loglik_terms)


def central_differences(f, p, rel_step=1e-5):
    fd = np.empty_like(p)
    for i in range(len(p)):
        e = np.zeros_like(p)
        e[i] = rel_step * abs(p[i])
        fd[i] = (float(f(p + e)) - float(f(p - e))) / (2 * e[i])
    return fd
