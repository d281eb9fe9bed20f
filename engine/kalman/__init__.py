"""Exact-diffuse univariate Kalman filter and smoother over a batch of systems.

Everything here works on a batch-last layout (`batch_last`): the series of a fleet or the
posterior draws of the online bank are the last axis of every array, and a single series is a
batch of one. A filter's life has three phases (`Phase`), and one decision (`phase_of`) picks
the phase of the whole batch's next step, or next chunk of steps, from its state:

* DIFFUSE  — some member has not yet identified its diffuse initial states: Koopman's
  exact-diffuse update (as statsmodels does it) gives the step's outputs, de Jong's augmented
  filter runs beside it, and once a member's diffuse directions are identified its belief
  collapses to the augmented filter's proper one and its log-likelihood term takes the exact
  value of the phase (`augmented`, `diffuse_step`). So the phase is exact even where Koopman's
  pivots fall to round-off (nearly collinear diffuse directions), and equals Koopman's where not;
* STANDARD — no member diffuse: the covariance update of P;
* STEADY   — every member's P has converged and y is observed: P stays at its fixed point
  and only the mean moves, a ← T(a + K v), which is O(m) per step.

The step and scan variants are one family: each runs one phase (or decides it) on one
representation of P — dense, its Cholesky factor (`sqrt=True`: P carries L with P = L Lᵀ,
updated by `ops.tria`), the packed upper triangle (`pack`), or dense in fused rows: one
(batch,) row per entry around the scalar observation (F, v, 1/F: `scalar_observe`), so that XLA
fuses the whole update into a few elementwise loops over the batch:

| variant                    | module   | phase               | P                     | form | tangent              |
|----------------------------|----------|---------------------|-----------------------|------|----------------------|
| `step`                     | steps    | `phase_of` decides  | dense or Cholesky     | step | autodiff             |
| `diffuse_step`             | steps    | DIFFUSE             | dense or Cholesky     | step | autodiff             |
| `full_step`                | steps    | DIFFUSE or STANDARD | dense or Cholesky     | step | autodiff             |
| `steady_step`              | steps    | STEADY              | fixed (K, F carried)  | step | autodiff             |
| `standard_step_fused`      | steps    | STANDARD            | dense, fused rows     | step | autodiff             |
| `standard_step_packed`     | packed   | STANDARD            | packed upper triangle | step | autodiff             |
| `diffuse_scan`             | steps    | DIFFUSE (Koopman)   | dense or Cholesky     | scan | autodiff             |
| `augmented_scan`           | augmented| DIFFUSE (de Jong)   | dense or Cholesky     | scan | autodiff             |
| `diffuse_scan_custom_jvp`  | tangents | DIFFUSE             | dense                 | scan | hand-written         |
| `standard_scan`            | steps    | STANDARD            | dense or Cholesky     | scan | autodiff             |
| `standard_scan_custom_jvp` | tangents | STANDARD            | dense                 | scan | hand-written         |
| `steady_scan`              | steps    | STEADY              | fixed (K, F given)    | scan | autodiff             |
| `run`                      | scan     | per step or chunk   | dense or Cholesky     | scan | its path's           |
| `run_chunked`              | scan     | per chunk           | dense or Cholesky     | scan | hand-written (dense) |
| `mean_pass`                | scan     | gains given         | none: shared K_t, F_t | scan | autodiff             |
| `smooth_full`              | smoother | backward pass       | dense                 | scan | autodiff             |
| `smooth_one`               | smoother | backward pass       | dense                 | scan | autodiff             |

`observe` and `predict` are the halves of `full_step`; `diffuse_step` is `full_step` in the diffuse
phase with `augmented_step` and `collapse_state` after it, and `run_chunked` runs a diffuse chunk
as `diffuse_scan_custom_jvp`, `augmented_scan` and one `collapse_state` at its end (Koopman's
steps alone where `koopman_exact` says they are exact for the spec and data: `run`'s `augmented`);
`diffuse_scan_custom_jvp` falls back to plain autodiff where P∞ has a tangent (cycle and AR models); `ops.tria` has a rule of its own.

When each is chosen:

* `run` filters one series (no kept steps, a fixed design) with `run_chunked`: a diffuse head,
  then one `phase_of` decision per CHUNK_STEPS steps, each chunk one phase's scan (the custom
  JVP ones in dense mode, the plain ones in sqrt mode). Batches, kept steps (`keep=True`, for
  the smoother and the app) and time-varying designs scan `step`, one decision per step, over a
  head that holds the diffuse phase, then `settled_step` (no augmented filter in the carry)
  unless a member is still diffuse.
* The online bank (`engine.online`) takes `step` (so `diffuse_step`) in the diffuse phase, `standard_step_fused`
  (small banks) or `standard_step_packed` (large ones) in the standard phase and `steady_step`
  in the steady one. The fleet (`engine.fleet`) runs `diffuse_step` over a
  prefix and `standard_step_fused` after it. The parallel filter (`engine.parallel`) runs `run`
  over the diffuse prefix and vectorises `observe` over time after it.
* `mean_pass` serves many series that share one system and one missing-data pattern (the
  gains of one member's kept `run`); `smooth_full` smooths one member's kept `run`: states,
  disturbances and the r/N recursions from one backward pass (`smooth_one`: the states alone;
  `disturbances`: the smoothed disturbances from r, N and the gains).

Modules: `state` (FilterState, Augmented, StepInfo, Phase, StepKind, init, phase_of, tolerances),
`augmented` (the augmented filter's step, scan and collapse), `ops`
(batch-last algebra), `steps`, `packed`, `tangents`, `scan`, `smoother`.
"""

from .ops import (dense_cov, design_states, factor_psd, mat_vec, mat_z, outer, rows_apply, rows_z_dot, safe_sqrt,
                  symmetrize, tria, tria_batch_last, z_dot)
from .packed import pack, packed_entry, packed_mat_z, packed_pairs, standard_step_packed, unpack
from .scan import CHUNK_STEPS, mean_pass, run, run_chunked
from .smoother import SmootherOutput, SmoothResult, disturbances, smooth_full, smooth_one
from .state import (LOG_2PI, TOL_DIFFUSE, TOL_STEADY, Augmented, FilterState, Phase, StepInfo, StepKind,
                    augmented_init, batch_last, converged, init, phase_of)
from .augmented import (COLLAPSE_PIVOT, augmented_scan, augmented_step, collapse, collapse_state, koopman_exact,
                        koopman_pivots, reached_solve)
from .steps import (diffuse_scan, diffuse_step, full_step, observe, predict, scalar_observe, settled_step,
                    standard_scan, standard_step_fused, steady_scan, steady_step, step)
from .tangents import diffuse_scan_custom_jvp, standard_scan_custom_jvp

__all__ = [
    "FilterState", "Augmented", "StepInfo", "Phase", "StepKind", "SmoothResult", "SmootherOutput", "TOL_DIFFUSE",
    "TOL_STEADY", "LOG_2PI", "COLLAPSE_PIVOT",
    "CHUNK_STEPS", "batch_last", "init", "phase_of", "converged",
    "step", "diffuse_step", "settled_step", "full_step", "observe", "predict", "steady_step", "scalar_observe",
    "standard_step_fused", "standard_step_packed", "diffuse_scan", "diffuse_scan_custom_jvp", "standard_scan",
    "standard_scan_custom_jvp",
    "steady_scan", "run", "run_chunked", "mean_pass", "smooth_full", "smooth_one", "disturbances",
    "pack", "unpack", "packed_pairs", "packed_entry", "packed_mat_z",
    "augmented_init", "augmented_step", "augmented_scan", "collapse", "collapse_state", "reached_solve",
    "koopman_pivots", "koopman_exact",
    "tria", "tria_batch_last", "safe_sqrt", "factor_psd", "mat_vec", "outer", "symmetrize", "dense_cov", "z_dot",
    "mat_z", "rows_apply", "design_states", "rows_z_dot",
]

