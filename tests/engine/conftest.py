"""Known engine defects, tracked in the engine-core issue: these tests are expected to fail until fixed."""

import pytest

KNOWN_DEFECTS = {
    "test_model_without_stochastic_element_is_not_silently_degenerate":
        "a model with no stochastic element is accepted silently (statsmodels adds an irregular)",
    "test_param_names_every_level_kind[fixed_intercept]":
        "statsmodels adds an irregular to models with no stochastic element; the spec does not yet",
    "test_param_names_every_level_kind[fixed_slope]":
        "statsmodels adds an irregular to models with no stochastic element; the spec does not yet",
}


def pytest_collection_modifyitems(items):
    for item in items:
        reason = KNOWN_DEFECTS.get(item.name) or KNOWN_DEFECTS.get(item.originalname)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
