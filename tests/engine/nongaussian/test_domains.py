"""The ranges of the observation families' and the regimes' parameters in `engine.domains.check_params`."""

from __future__ import annotations

import numpy as np
import pytest

from engine.domains import check_params

LEVEL = {"level": "local_level"}


@pytest.mark.parametrize("spec, params, message", [
    ({**LEVEL, "observation": "student_t"}, [1.0, 0.1, 0.0], r"parameter nu.observation = 0 is out of range \(0, ∞\)"),
    ({**LEVEL, "observation": "negative_binomial"}, [0.1, -0.5],
     r"parameter alpha.observation = -0.5 is out of range \(0, ∞\) \(the negative binomial's dispersion\)"),
    ({**LEVEL, "observation": "student_t"}, [0.0, 0.1, 4.0], r"sigma2.irregular = 0.0: it is the Student-t's scale²"),
    ({**LEVEL, "regimes": {"outlier": True}}, [1.0, 0.1, 1.2, 5.0], r"prob.outlier = 1.2 is outside .*\[0, 1\)"),
    ({**LEVEL, "regimes": {"outlier": True}}, [1.0, 0.1, 0.1, -5.0], r"scale.outlier = -5.0 is outside .*\[0, ∞\)"),
    ({**LEVEL, "regimes": {"outlier": True, "level_shift": True}}, [1.0, 0.1, 0.6, 5.0, 0.5, 5.0],
     r"regimes' probabilities \(prob.outlier = 0.6, prob.level_shift = 0.5\) sum to 1.1 ≥ 1"),
    (LEVEL, [0.0, 0.0], r"every variance .* is 0"),
])
def test_out_of_range_values_are_refused_by_name(spec, params, message):
    with pytest.raises(ValueError, match=message):
        check_params(spec, np.array(params))


def test_a_count_model_with_every_variance_zero_is_valid():
    """A deterministic signal still has a likelihood when the noise is the count's own."""
    check_params({**LEVEL, "observation": "poisson"}, np.array([0.0]))
    check_params({**LEVEL, "observation": "negative_binomial"}, np.array([0.0, 0.3]))
    check_params({**LEVEL, "regimes": {"outlier": True}}, np.array([1.0, 0.1, 0.0, 0.0]))
