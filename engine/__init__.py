"""StreamSSM engine: exact Bayesian structural state space models in JAX.

The public API: the names in `__all__` below, and the sub-namespaces it lists (`engine.kalman`,
`engine.online`, `engine.fleet`, ...), each of which lists its own public names in `__all__`.
Nothing else is public; importing the engine changes no process-wide setting but float64
(the on-disk compile cache is switched on by whoever owns the process:
`enable_compilation_cache`).
"""

import jax

jax.config.update("jax_enable_x64", True)


from .spec import ModelSpec, SpecificationWarning, TREND_KINDS, param_names  # noqa: E402
from .system import System, build_system, check_finite, layout  # noqa: E402
from .components import ComponentSelector, component_selectors  # noqa: E402
from .model import (DiffuseConditioningWarning, FilterResult, Forecast, SmoothedComponents,  # noqa: E402
                    diffuse_conditioning, filter_series, forecast,
                    loglik, loglik_many, loglik_terms, simulate, smooth)
from .mle import MLEResult, fit_mle  # noqa: E402
from .priors import FAMILIES as PRIOR_FAMILIES, default_priors, resolve_priors  # noqa: E402
from .bayes import FitCancelled, MAPResult, fit_map, fit_nuts, log_posterior, make_model, pointwise_loglik  # noqa: E402
from .diagnostics import Diagnosis, diagnose, from_netcdf, spec_of, to_netcdf  # noqa: E402
from .posterior import (Band, PosteriorForecast, PredictiveCheck, posterior_components,  # noqa: E402
                        posterior_forecast, posterior_matrix, predictive_residuals)
from .online import (Bank, Belief, OnlineConfig, OnlineFilter, OnlineForecast, OnlineInfo, RejuvenationConfig,  # noqa: E402
                     component_names, make_bank, posterior_draws, init as online_init, step as online_step,
                     step_many as online_step_many, catch_up as online_catch_up, forecast as online_forecast)
from .persist import DurableFilter  # noqa: E402
from .stream import StreamBatch, StreamError, StreamRunner  # noqa: E402
from .data import DataError, catalogue_entry, list_datasets, load_dataset, read_table  # noqa: E402
from .demo import DEMO_STREAMS, DemoEvent, DemoStream, Fleet, demo_stream, list_demo_streams, make_fleet  # noqa: E402
from .fleet import FleetCancelled, FleetResult, SeriesTable, fit_many  # noqa: E402
from .compiled import enable_compilation_cache, trim_compiled  # noqa: E402
from .nongaussian import ApproxModel, ImportanceResult  # noqa: E402
from .impact import ImpactResult, OnlineImpact, causal_impact  # noqa: E402
from .compare import ComparisonStep, ModelSet, compare_online  # noqa: E402
from . import (background, cluster, compare, compiled, cores, data, demo, fleet, hmm, impact, kalman, mle,  # noqa: E402
               model, nongaussian, online, parallel, persist, regimes, rejuvenation, spec, stream, system, transforms)

NAMESPACES = ("background", "cluster", "compare", "compiled", "cores", "data", "demo", "fleet", "hmm", "impact",
              "kalman", "mle", "model", "nongaussian", "online", "parallel", "persist", "regimes", "rejuvenation",
              "spec", "stream", "system", "transforms")

__all__ = [
    *NAMESPACES,
    "ModelSpec", "SpecificationWarning", "TREND_KINDS", "param_names", "System", "build_system", "layout",
    "check_finite", "ComponentSelector", "component_selectors", "SeriesTable",
    "DiffuseConditioningWarning", "diffuse_conditioning", "FilterResult", "Forecast", "SmoothedComponents",
    "filter_series", "forecast", "loglik", "ApproxModel", "ImportanceResult",
    "loglik_many", "loglik_terms", "simulate", "smooth",
    "Bank", "Belief", "OnlineConfig", "RejuvenationConfig", "OnlineFilter", "OnlineForecast", "OnlineInfo", "component_names",
    "make_bank", "posterior_draws", "online_init", "online_step", "online_step_many", "online_catch_up",
    "online_forecast", "DurableFilter", "StreamBatch", "StreamError", "StreamRunner",
    "MLEResult", "fit_mle", "PRIOR_FAMILIES", "default_priors", "resolve_priors", "FitCancelled", "MAPResult",
    "fit_map", "fit_nuts", "log_posterior", "make_model", "pointwise_loglik", "Diagnosis", "diagnose",
    "from_netcdf", "spec_of", "to_netcdf", "Band", "PosteriorForecast", "PredictiveCheck",
    "posterior_components", "posterior_forecast", "posterior_matrix", "predictive_residuals",
    "DataError", "catalogue_entry", "list_datasets", "load_dataset", "read_table",
    "DEMO_STREAMS", "DemoEvent", "DemoStream", "Fleet", "demo_stream", "list_demo_streams", "make_fleet",
    "FleetCancelled", "FleetResult", "fit_many", "enable_compilation_cache", "trim_compiled",
    "causal_impact", "OnlineImpact", "ImpactResult", "ModelSet", "ComparisonStep", "compare_online",
]
