"""Bokeh/Panel server lifecycle hooks for the directory-format app in ``app/``.

``panel serve app`` calls these once when the server starts and stops. The app's
modules (the engine with JAX, HoloViews' Bokeh backend) are imported at start-up so
that the first visitor does not wait for them. Each session's worker logs
"session <id> closed: N worker thread(s) still alive" when the session ends
(see ``app/workers.py``).
"""

import logging

log = logging.getLogger("streamssm.app")
# `panel serve` sets INFO only on the "bokeh" logger; make ours visible too.
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)


def on_server_loaded(server_context):
    import app.dashboard  # noqa: F401  (see the module docstring)
    log.info("StreamSSM server loaded")


def on_server_unloaded(server_context):
    log.info("StreamSSM server unloaded")
