"""The optimiser's coordinates: how a member's unconstrained vector z maps to its parameters.

MLE works on `transforms.constrain` coordinates scaled to each series (as `fit_mle`); MAP on
NumPyro's unconstrained coordinates of each series' priors, adding the log prior and the log
Jacobian (the potential `fit_map` minimises), whose exact Hessian is cheap. Each member carries
its own numbers `a` (its data scales, or its priors' arguments), so one compiled program serves
every member of a batch.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import biject_to

from ..priors import (FAMILIES, POSITIVE_FAMILIES, make_distribution, params_to_site_values, resolve_priors,
                      sample_sites, site_values_to_params)
from ..spec import ModelSpec, param_names
from ..transforms import constrain, scales


class Coordinates(NamedTuple):
    """How z (the optimiser's unconstrained vector) maps to parameters, per method (static)."""

    method: str                                   # 'mle' or 'map'
    sites: tuple[tuple[str, str, int], ...] = ()  # map: (site, family, n_args), z order (sorted)


def make_coordinates(spec: ModelSpec, method: str, priors) -> Coordinates:
    """The coordinates of a method: MLE's data-scaled ones, or MAP's over the priors' sample sites (sorted)."""
    if method != "map":
        return Coordinates("mle")
    fams = {n: p.family for n, p in resolve_priors(spec, None, None, priors).items()}
    return Coordinates("map", tuple((s, fams[s], len(FAMILIES[fams[s]][1])) for s in sorted(sample_sites(spec))))


def log_variance_masks(spec: ModelSpec, co: Coordinates) -> tuple[np.ndarray, np.ndarray]:
    """Which coordinates are log variances (σ² = c·exp(z)): (k,) bools in z order and in
    `param_names` order (the two differ for map, whose z follows the sorted sample sites)."""
    names = param_names(spec)
    if co.method == "mle":
        mask = np.array([n.startswith("sigma2.") for n in names], dtype=bool)
        return mask, mask
    positive = {s: s.startswith("sigma2.") and f in POSITIVE_FAMILIES for s, f, _ in co.sites}
    return (np.array([positive[s] for s, _, _ in co.sites], dtype=bool),
            np.array([positive.get(n, False) for n in names], dtype=bool))


def member_args(spec: ModelSpec, co: Coordinates, y: np.ndarray, x, priors) -> np.ndarray:
    """Per-series numbers of the coordinates: the data scales (mle) or the priors' arguments (map)."""
    if co.method == "mle":
        sc = scales(spec, y, x)
        return np.array([sc[n] for n in param_names(spec)], dtype=float)
    resolved = resolve_priors(spec, y, x, priors)
    return np.concatenate([np.asarray(resolved[s].args, dtype=float) for s, _, _ in co.sites]) \
        if co.sites else np.zeros(0)


def _site_args(co: Coordinates, a):
    """A member's numbers a split per sample site: site → (family, its arguments)."""
    out, i = {}, 0
    for site, family, n in co.sites:
        out[site] = (family, tuple(a[i + j] for j in range(n)))
        i += n
    return out


def to_params(spec: ModelSpec, co: Coordinates, z, a):
    """One member: z (k,) and its numbers a → parameters (k,) in `param_names` order."""
    if co.method == "mle":
        return constrain(spec, z, dict(zip(param_names(spec), a)))
    values = {}
    for i, (site, (family, args)) in enumerate(_site_args(co, a).items()):
        values[site] = biject_to(make_distribution(family, args).support)(z[i])
    return site_values_to_params(spec, values)


def log_prior(spec: ModelSpec, co: Coordinates, z, a):
    """One member: log p(θ(z)) + log |dθ/dz| (map), the non-likelihood part of −`fit_map`'s potential; 0 for mle."""
    if co.method == "mle":
        return jnp.zeros(())
    total = 0.0
    for i, (site, (family, args)) in enumerate(_site_args(co, a).items()):
        d = make_distribution(family, args)
        tr = biject_to(d.support)
        value = tr(z[i])
        total = total + d.log_prob(value) + tr.log_abs_det_jacobian(z[i], value)
    return total


def from_params(spec: ModelSpec, co: Coordinates, theta, a):
    """One member (map): parameters (k,) → z (k,), the inverse of `to_params`."""
    values = params_to_site_values(spec, theta)
    return jnp.stack([biject_to(make_distribution(fam, args).support).inv(values[site])
                      for site, (fam, args) in _site_args(co, a).items()])


@partial(jax.jit, static_argnames=("spec", "co"))
def params_of(spec, co, Z, A):
    """Parameters (series, k) of every member's z: Z (series, k), their numbers A (series, ·)."""
    return jax.vmap(partial(to_params, spec, co))(Z, A)


@partial(jax.jit, static_argnames=("spec", "co"))
def start_design(spec, co, U, A_mle, A):
    """The `fit_mle` start design U (start, k) in each member's coordinates: (start, series, k).

    For map, as `fit_map` does: each start is mapped to parameters at the member's data scale
    and back to the member's prior coordinates."""
    def one(u, a_mle, a):
        theta = constrain(spec, u, dict(zip(param_names(spec), a_mle)))
        return from_params(spec, co, theta, a) if co.method == "map" else u
    return jax.vmap(lambda u: jax.vmap(lambda am, a: one(u, am, a))(A_mle, A))(U)

