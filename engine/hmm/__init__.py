"""Discrete-state hidden Markov models in log space: filter, smoother, Viterbi, path sampling and a
parallel-in-time filter.

    z_0 ~ π,   z_{t+1} | z_t ~ A_t[z_t, ·],   ℓ_t(k) = log p(y_t | z_t = k)

Arguments are log-probabilities: `log_init` (state,), `log_trans` (state, state) or time-varying
(time − 1, state, state), `log_lik` (time, state) with a zero row for a missing y_t. Each function
takes one series; `jax.vmap` it over series or posterior draws (tests check that it vectorises).

| function          | module    | returns                                                     |
|-------------------|-----------|-------------------------------------------------------------|
| `init`, `step`    | forward   | online filtering, O(K²) per observation                     |
| `forward_filter`  | forward   | `HMMFilter`: log-likelihood, filtered and predicted         |
| `parallel_filter` | parallel  | the same by `lax.associative_scan` (O(log T) depth)         |
| `smooth`          | smoother  | `HMMSmoother`: smoothed marginals, pairwise on request      |
| `viterbi`         | viterbi   | `ViterbiPath`: the most probable path and its log joint     |
| `sample_paths`    | sampling  | posterior paths by forward filtering, backward sampling     |
"""

from .forward import HMMFilter, HMMState, HMMStepInfo, forward_filter, init, predict_from, step, transitions
from .parallel import parallel_filter
from .sampling import backward_sample, sample_paths
from .smoother import HMMSmoother, backward_messages, smooth
from .viterbi import ViterbiPath, viterbi

__all__ = [
    "HMMState", "HMMStepInfo", "HMMFilter", "HMMSmoother", "ViterbiPath",
    "init", "step", "forward_filter", "parallel_filter", "smooth", "backward_messages", "viterbi",
    "sample_paths", "backward_sample", "transitions", "predict_from",
]
