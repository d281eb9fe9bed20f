"""Online engine: O(1) Bayesian updates of a bank of Kalman filters, one per posterior draw.

After a fit, each of S posterior draws θ_s keeps its own exact (diffuse-initialised) Kalman
belief; a new observation costs one batched Kalman step for the whole bank and re-weights the
draws by their one-step predictive density (sequential importance sampling of the static
parameters, as in IBIS). The predictive of y_t is the mixture Σ_s w_s N(μ_s, F_s).

The package, by job:

* `state`      — `OnlineConfig` (static settings), `Bank` (the draws' systems), `Belief`;
* `bank`       — the pure kernel: `make_bank`, `init`, `step`, `step_many`, `catch_up`, `forecast`,
                 and `select_step`, which picks the cheapest exact step for an update;
* `covariance` — the forms each draw's P is held in (dense, packed, Cholesky);
* `report`     — the per-step `OnlineInfo` (bands, PIT, innovation, anomaly, CUSUM, components);
* `mixture`    — moments and quantiles of mixtures of Gaussians;
* `draws`      — posterior draws from an InferenceData, a dict or one parameter set;
* `history`    — the host-side history, and bringing a belief over a stretch of it;
* `filter`     — `OnlineFilter`, the stateful wrapper a stream uses; its rejuvenation is
                 scheduled by a `Rejuvenator` (`engine.rejuvenation`, `RejuvenationConfig`).
"""

from ..rejuvenation import RejuvenationConfig, Rejuvenator
from .bank import (OnlineForecast, Prediction, StepFlags, catch_up, forecast, init, make_bank, predict_step,
                   select_step, standard_step, steady_step, step, step_flags, step_many, phase_of_flags)
from .draws import fit_priors, posterior_draws
from .filter import OnlineFilter
from .mixture import BAND_LEVELS, PROBS, mixture_moments, mixture_quantiles
from .report import OnlineInfo, component_names
from .state import Bank, Belief, OnlineConfig, as_config

__all__ = [
    "OnlineConfig", "as_config", "Bank", "Belief", "OnlineInfo", "OnlineForecast",
    "make_bank", "init", "step", "predict_step", "Prediction", "standard_step", "steady_step", "step_many",
    "catch_up", "forecast",
    "StepFlags", "step_flags", "phase_of_flags", "select_step",
    "OnlineFilter", "RejuvenationConfig", "Rejuvenator", "posterior_draws", "fit_priors", "component_names",
    "PROBS", "BAND_LEVELS", "mixture_moments", "mixture_quantiles",
]
