"""Bokeh/Panel server lifecycle hooks for the directory-format app in ``app/``.

``panel serve app`` calls these once when the server starts and stops. They
only log for now; server-wide resources (e.g. a Ray connection) will be
opened and closed here later.
"""

import logging

log = logging.getLogger("streamssm.app")
# `panel serve` sets INFO only on the "bokeh" logger; make ours visible too.
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)


def on_server_loaded(server_context):
    log.info("StreamSSM server loaded")


def on_server_unloaded(server_context):
    log.info("StreamSSM server unloaded")
