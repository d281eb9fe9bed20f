"""The model shared by the fleet tests (its data: the `fleet` fixture in conftest.py)."""

from __future__ import annotations

import engine


SPEC = {"irregular": True, "level": {"kind": "local_level"},
        "seasonal": [{"period": 6, "form": "trig", "harmonics": 1, "stochastic": True}]}
NAMES = engine.param_names(SPEC)
