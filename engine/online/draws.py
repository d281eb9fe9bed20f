"""Posterior draws for a bank: an InferenceData, a dict of draws or one parameter set -> (draw, param)."""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from ..spec import as_spec, param_names


def posterior_draws(spec, posterior) -> np.ndarray:
    """(draw, param) from an arviz.InferenceData (variables named as `param_names`, dims
    (chain, draw)), a dict name → draws (S,) or scalar, or an array (S, k) / (k,)."""
    spec = as_spec(spec)
    names = param_names(spec)
    group = getattr(posterior, "posterior", None)
    if group is not None:   # arviz.InferenceData
        missing = [n for n in names if n not in group.data_vars]
        if missing:
            raise ValueError(f"the posterior has no variable(s) {missing}; the spec needs {names}")
        cols = [np.asarray(group[n].values, dtype=float).reshape(-1) for n in names]
    elif isinstance(posterior, Mapping):
        unknown = set(posterior) - set(names)
        missing = [n for n in names if n not in posterior]
        if unknown or missing:
            raise ValueError(f"posterior names do not match the spec: missing {missing}, unknown "
                             f"{sorted(unknown)}; the spec needs {names}")
        cols = [np.atleast_1d(np.asarray(posterior[n], dtype=float)).reshape(-1) for n in names]
        sizes = {c.size for c in cols}
        if len(sizes - {1}) > 1:
            raise ValueError(f"posterior draws have different lengths {sorted(sizes)}; give each parameter "
                             "the same number of draws (or a scalar)")
        n = max(sizes) if sizes else 1
        cols = [np.broadcast_to(c, (n,)) for c in cols]
    else:
        arr = np.atleast_2d(np.asarray(posterior, dtype=float))
        if arr.shape[-1] != len(names):
            raise ValueError(f"posterior array must be (draws, {len(names)}) for {names}, got {arr.shape}")
        cols = list(arr.T)
    draws = np.stack(cols, axis=-1) if cols else np.zeros((1, 0))
    if not np.all(np.isfinite(draws)):
        bad = names[int(np.argwhere(~np.isfinite(draws))[0, 1])]
        raise ValueError(f"posterior draws of {bad!r} contain NaN or inf")
    return draws


def fit_priors(posterior) -> dict | None:
    """The priors a fit of `engine.fit_nuts` used ({name: {"dist": …, args}}, from the
    InferenceData's attrs), so that a rejuvenation move targets the same posterior; None for
    other inputs."""
    text = (getattr(posterior, "attrs", None) or {}).get("priors")
    return json.loads(text) if isinstance(text, str) else None

