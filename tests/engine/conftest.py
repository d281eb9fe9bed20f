"""Known engine defects, tracked in the engine-core issue: these tests are expected to fail until fixed."""

import pytest

KNOWN_DEFECTS: dict[str, str] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        reason = KNOWN_DEFECTS.get(item.name) or KNOWN_DEFECTS.get(item.originalname)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
