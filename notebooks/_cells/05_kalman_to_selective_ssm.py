# %% [markdown]
# # 5. From Kalman filters to selective state space models
#
# The Kalman filter and the "state space models" of deep learning (S4, Mamba) share one
# skeleton: a **linear recurrence** $h_t = A_t h_{t-1} + b_t$. This notebook shows
#
# 1. how a linear recurrence, sequential by nature, runs in parallel with an **associative scan**;
# 2. that the Kalman filter's mean, once its gain has settled, is such a recurrence, and scans the same way;
# 3. what Mamba's **input-dependent ("selective")** parameters change — and how the Kalman filter
#    with missing data is already a (very simple) selective model.

# %%
import os
import time

import holoviews as hv
import jax
import jax.numpy as jnp
import numpy as np

import engine

hv.extension("bokeh", inline=True)
FAST = os.environ.get("STREAMSSM_FAST") == "1"
T = 2_000 if FAST else 1_000_000
key = jax.random.key(0)

# %% [markdown]
# ## 1. A linear recurrence, two ways
#
# $h_t = a_t h_{t-1} + b_t$ with $h_0 = 0$. Sequentially, step $t$ waits for step $t-1$:
# $T$ steps, one after the other. But the map $h \mapsto a h + b$ composes with another such map
# into a third one:
#
# $$(a_2, b_2) \circ (a_1, b_1) = (a_2 a_1,\; a_2 b_1 + b_2),$$
#
# and composition is **associative**. So all prefixes $(a_t, b_t) \circ \dots \circ (a_1, b_1)$ —
# whose $b$ part is exactly $h_t$ — can be computed by a parallel prefix scan in $O(\log T)$ rounds
# (Blelloch 1990). `jax.lax.associative_scan` does exactly that.

# %%
def combine(earlier, later):
    """Compose two affine maps h -> a h + b (earlier first). Works elementwise on any shape."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


@jax.jit
def recurrence_sequential(a, b):
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h
    return jax.lax.scan(step, jnp.zeros_like(b[0]), (a, b))[1]


@jax.jit
def recurrence_parallel(a, b):
    return jax.lax.associative_scan(combine, (a, b))[1]


ka, kb = jax.random.split(key)
a = jax.random.uniform(ka, (T,), minval=0.5, maxval=1.0)
b = jax.random.normal(kb, (T,))
h_seq, h_par = recurrence_sequential(a, b), recurrence_parallel(a, b)
print(f"T = {T}: max |sequential - parallel| = {float(jnp.max(jnp.abs(h_seq - h_par))):.1e}")

# associativity, checked on three random maps
x, y_, z = [(np.random.default_rng(i).normal(), np.random.default_rng(i + 10).normal()) for i in range(3)]
print("associative:", np.allclose(combine(combine(x, y_), z), combine(x, combine(y_, z))))

# %%
def best_time(f, *args, repeat=3):
    f(*args).block_until_ready()                      # compile first
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times)


t_seq, t_par = best_time(recurrence_sequential, a, b), best_time(recurrence_parallel, a, b)
print(f"{jax.devices()[0].platform}: sequential {t_seq * 1e3:.2f} ms, associative scan {t_par * 1e3:.2f} ms")

# %% [markdown]
# On a CPU the sequential loop is usually as fast or faster: the scan does about twice the
# arithmetic and a CPU has few cores to share it. On a GPU, with thousands of cores, the
# $O(\log T)$ depth wins by orders of magnitude for long series.

# %% [markdown]
# ## 2. The Kalman filter's mean is a linear recurrence
#
# For a state space model $y_t = Z\alpha_t + \varepsilon_t$, $\alpha_{t+1} = T\alpha_t + \eta_t$,
# the predicted state mean obeys
#
# $$a_{t+1} = T a_t + T K_t (y_t - Z a_t) = \underbrace{T (I - K_t Z)}_{A_t}\, a_t + \underbrace{T K_t y_t}_{b_t}.$$
#
# The gain $K_t = P_t Z^\top / F_t$ depends on the covariance $P_t$ only — not on the data — and
# converges quickly to a fixed $K$. With a fixed gain, $A_t = A$ is constant and the mean is a
# linear recurrence in the state vector: the same scan applies with matrix products
# $(A_2, b_2) \circ (A_1, b_1) = (A_2 A_1, A_2 b_1 + b_2)$. (The covariance recursion can be
# parallelised as well, with a more elaborate operator: Särkkä & García-Fernández, 2021.)
#
# We take a local linear trend model (level and slope), find its steady-state gain with the
# engine, and filter a simulated series both ways.

# %%
spec = {"irregular": True, "level": {"kind": "local_linear_trend"}}
params = {"sigma2.irregular": 1.0, "sigma2.level": 0.1, "sigma2.trend": 0.001}
n = 500 if FAST else 20_000
y = np.asarray(engine.simulate(jax.random.key(1), spec, params, n))

res = engine.filter_series(spec, params, y)
system = engine.build_system(spec, params)
T_mat, Z = np.asarray(system.transition), np.asarray(system.design)
P_ss = np.asarray(res.predicted_cov[-1])               # converged predicted covariance
K = P_ss @ Z / (Z @ P_ss @ Z + float(system.obs_var))  # steady-state gain (filtered form)
A = T_mat @ (np.eye(2) - np.outer(K, Z))
print("steady-state gain K =", K.round(4), "\nA = T (I - K Z) =\n", A.round(4))


def matrix_combine(earlier, later):
    A1, b1 = earlier
    A2, b2 = later
    return A2 @ A1, jnp.einsum("...ij,...j->...i", A2, b1) + b2


@jax.jit
def fixed_gain_parallel(y, a1):
    As = jnp.broadcast_to(jnp.asarray(A), (len(y), 2, 2))
    bs = jnp.asarray(T_mat @ K)[None, :] * y[:, None]
    bs = bs.at[0].add(jnp.asarray(A) @ a1)             # fold the initial state into the first map
    return jax.lax.associative_scan(matrix_combine, (As, bs))[1]   # a_2, ..., a_{n+1}


@jax.jit
def fixed_gain_sequential(y, a1):
    def step(a, obs):
        a = jnp.asarray(A) @ a + jnp.asarray(T_mat @ K) * obs
        return a, a
    return jax.lax.scan(step, a1, y)[1]


# start both from the engine's state at step 50, after the exact filter has converged
t0 = 50
a1 = jnp.asarray(res.predicted_mean[t0])
par = fixed_gain_parallel(jnp.asarray(y[t0:]), a1)
seq = fixed_gain_sequential(jnp.asarray(y[t0:]), a1)
exact = np.asarray(res.predicted_mean[t0 + 1:])
print(f"max |parallel - sequential| = {float(jnp.max(jnp.abs(par - seq))):.1e}")
print(f"max |fixed-gain scan - engine's exact filter| = {np.max(np.abs(np.asarray(par[:-1]) - exact)):.1e}")

# %%
steps = np.arange(t0 + 1, n)
(hv.Scatter((np.arange(n), y), "t", "y", label="y").opts(color="lightgray", size=2)
 * hv.Curve((steps, exact[:, 0]), "t", "y", label="engine: exact filter").opts(color="black", line_width=3)
 * hv.Curve((steps, np.asarray(par[:-1, 0])), "t", "y", label="fixed-gain associative scan")
   .opts(color="orange", line_dash="dashed")
 ).opts(width=750, height=280, title="Predicted level: exact filter vs parallel fixed-gain filter",
        legend_position="top_left")

# %% [markdown]
# The fixed-gain filter *is* exponential smoothing (Holt's method, here); the Kalman filter
# tells us which smoothing constants are optimal for the model, and what uncertainty goes with them.
#
# ## 3. Selective state space models
#
# A Mamba layer (Gu & Dao, 2023) runs, for each channel, a diagonal linear recurrence
#
# $$h_t = \bar A_t \odot h_{t-1} + \bar B_t\, x_t, \qquad o_t = C_t^\top h_t,
#   \qquad \bar A_t = e^{\Delta_t A},\; \bar B_t = (1 - e^{\Delta_t A})/(-A) \cdot B_t,$$
#
# where $A < 0$ is fixed but the step size $\Delta_t = \mathrm{softplus}(w^\top u_t + c)$ and
# $B_t, C_t$ are computed **from the input** $u_t$. Earlier SSMs (S4) kept them fixed: a linear
# time-invariant filter, like our fixed-gain Kalman filter. Input dependence lets the model
# choose, token by token, to **keep** its state ($\Delta_t \to 0$: $\bar A_t \to 1$, $\bar B_t \to 0$)
# or to **overwrite** it ($\Delta_t$ large: $\bar A_t \to 0$).
#
# The recurrence stays linear in $h$ — $\bar A_t$ depends on the input, never on $h$ — so the
# associative scan still applies. That is the point of the design: selectivity without giving
# up parallel training.
#
# With $A = -1, B = 1$ the update reads $h_t = (1 - k_t) h_{t-1} + k_t x_t$ with $k_t = 1 - e^{-\Delta_t}$:
# **a Kalman update for a local level with gain $k_t$.** The Kalman gain is set by the model
# and by which observations are present: $K_t = 0$ at a missing observation (keep), large after a
# gap (overwrite). Mamba learns a map from the input to its gain instead.

# %%
@jax.jit
def selective_scan(x, delta, A=-1.0, B=1.0):
    """Mamba-style diagonal SSM (one channel, one state), zero-order-hold discretisation."""
    a_bar = jnp.exp(delta * A)
    b_bar = (1 - a_bar) / (-A) * B
    return jax.lax.associative_scan(combine, (a_bar, b_bar * x))[1]


# A task that needs selection: remember the latest *marked* value, ignore the rest.
n_sel = 400
rng = np.random.default_rng(2)
values = rng.normal(size=n_sel)
marked = rng.random(n_sel) < 0.05
target = np.zeros(n_sel)
for t in range(n_sel):
    target[t] = values[t] if marked[t] else (target[t - 1] if t else 0.0)


def error(out):
    return float(np.sqrt(np.mean((np.asarray(out) - target) ** 2)))


# time-invariant (S4-like): one Δ for every step; pick the best on a grid
grid = np.logspace(-3, 1, 41)
lti_errors = [error(selective_scan(values, np.full(n_sel, d))) for d in grid]
best = int(np.argmin(lti_errors))
lti = selective_scan(values, np.full(n_sel, grid[best]))
# selective: Δ_t = softplus(w · marked_t + c), with a large w and a negative c
delta_sel = np.asarray(jax.nn.softplus(20.0 * marked - 10.0))
sel = selective_scan(values, delta_sel)
print(f"RMSE, best time-invariant Δ={grid[best]:.3g}: {lti_errors[best]:.3f}")
print(f"RMSE, selective Δ_t:                       {error(sel):.3f}")

# the same recurrence, one step at a time, as a check on the scan
h, seq = 0.0, []
for x_t, d_t in zip(values, delta_sel):
    h = np.exp(-d_t) * h + (1 - np.exp(-d_t)) * x_t
    seq.append(h)
np.testing.assert_allclose(sel, seq, atol=1e-12)

# %% [markdown]
# No single $\Delta$ does the job: a large one follows every input, a small one forgets the marked
# values as slowly as it learns them; the best fixed choice is close to not responding at all.
# The selective model keeps its state between marks and overwrites it at each mark.

# %%
t = np.arange(n_sel)
idx = np.flatnonzero(marked)
(hv.Scatter((t, values), "t", "x", label="input").opts(color="lightgray", size=3)
 * hv.Scatter((idx, values[idx]), "t", "x", label="marked").opts(color="red", size=6)
 * hv.Curve((t, target), "t", "x", label="target").opts(color="black", line_width=3, interpolation="steps-post")
 * hv.Curve((t, np.asarray(lti)), "t", "x", label="time-invariant").opts(color="steelblue")
 * hv.Curve((t, np.asarray(sel)), "t", "x", label="selective").opts(color="orange", line_dash="dashed")
 ).opts(width=750, height=300, legend_position="top_left", title="Remember the last marked value")

# %% [markdown]
# ### The Kalman filter's own selectivity
#
# The engine's filter on the Nile with two gaps: the effective gain
# $K_t = (a_{t|t} - a_t)/v_t$ is zero through the gaps (keep the state) and jumps after each
# gap (the state is uncertain: overwrite it with the new data). This is selection by the
# *pattern* of the data; Mamba's selection responds to the data's *values*.

# %%
nile = engine.load_dataset("nile")
flow = nile["flow"].to_numpy(dtype=float, copy=True)
flow[20:40] = np.nan
flow[60:80] = np.nan
ll_spec = {"irregular": True, "level": {"kind": "local_level"}}
fr = engine.filter_series(ll_spec, {"sigma2.irregular": 15099.0, "sigma2.level": 1469.1}, flow)
innov = np.asarray(fr.innovation)
observed = ~np.isnan(flow)
gain = np.zeros(len(flow))
gain[observed] = (np.asarray(fr.filtered_mean[:, 0]) - np.asarray(fr.predicted_mean[:, 0]))[observed] / innov[observed]
hv.Curve((nile.index.year, gain), "year", "gain").opts(width=750, height=220, color="darkred",
                                                      title="Kalman gain on the Nile with gaps")

# %% [markdown]
# ## Summary
#
# | | Kalman filter | S4 (LTI SSM) | Mamba (selective SSM) |
# |---|---|---|---|
# | recurrence | $a_{t+1} = T(I-K_tZ)a_t + TK_ty_t$ | $h_t = \bar A h_{t-1} + \bar B x_t$ | $h_t = \bar A_t h_{t-1} + \bar B_t x_t$ |
# | coefficients from | the model and the missing pattern | learned, fixed in time | learned functions of the input |
# | parallel in time | mean: associative scan; covariance: Särkkä & García-Fernández | convolution or scan | associative scan |
# | uncertainty | exact Gaussian posterior | none | none |
#
# The engine's parallel-in-time filter (for long series on a GPU) uses the same
# associative-scan idea, with the exact Kalman covariances.
