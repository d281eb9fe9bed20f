"""Bokeh/Panel server lifecycle hooks for the directory-format app in ``app/``.

``panel serve app`` calls these once when the server starts and stops, and everything that
is process-wide is decided here, once, never by a session: the app's modules (the engine
with JAX, HoloViews' Bokeh backend) are imported at start-up so that the first visitor does
not wait for them; JAX keeps compiled programs on disk; Panel's stylesheet fallback points
at this server; the shipped datasets' Quick fits are compiled in a low-priority background
thread (`app.warmup`; STREAMSSM_WARMUP=0 turns it off), so a first visitor's fit finds them
compiled. What the process starts for all sessions (a local Ray, started by the first fleet
job that needs it, and the warm-up) is stopped on unload. Each session's worker logs
"session <id> closed: N worker thread(s) still alive" when the session ends
(see ``app/workers.py``).
"""

import logging
import os

log = logging.getLogger("streamssm.app")
# `panel serve` sets INFO only on the "bokeh" logger; make ours visible too.
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)


def on_server_loaded(server_context):
    import app.dashboard  # noqa: F401  (see the module docstring)
    from tornado.ioloop import IOLoop

    import engine

    engine.enable_compilation_cache()
    link_detached_stylesheets_here()
    ignore_closed_websockets(IOLoop.current().asyncio_loop)
    if os.environ.get("STREAMSSM_WARMUP", "1") != "0":
        from app.warmup import start_warmup

        _, server_context.streamssm_warmup_stop = start_warmup()
    log.info("StreamSSM server loaded")


def ignore_closed_websockets(loop) -> None:
    """Log a browser that left while the server was writing to it as one line, not a traceback.

    Tornado sends each websocket message in a task; when the page has just been closed the task
    fails with WebSocketClosedError, nobody awaits it, and asyncio prints "Task exception was
    never retrieved" with two tracebacks (bokeh/bokeh#7619). Nothing is lost: the session is
    being destroyed anyway. Every other unhandled exception still goes to the previous handler.
    """
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    previous = loop.get_exception_handler()

    def handler(loop, context):
        if isinstance(context.get("exception"), (WebSocketClosedError, StreamClosedError)):
            log.info("a browser disconnected while a message was being sent to it")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def on_server_unloaded(server_context):
    from engine import cluster

    stop_warmup = getattr(server_context, "streamssm_warmup_stop", None)
    if stop_warmup is not None:
        stop_warmup.set()   # the warm-up thread ends before its next dataset
    cluster.shutdown()   # a local Ray the fleet jobs started belongs to the server, and ends with it
    log.info("StreamSSM server unloaded")


def link_detached_stylesheets_here() -> None:
    """Point Panel's process-wide stylesheet fallback at this server's copy, not the CDN.

    A hidden tab's models are detached from their document, and Panel re-links the stylesheets
    of a detached model it updates to `panel.reactive.CDN_DIST`, which fails offline. One value
    for the whole process, so it is set once when the server loads (a relative path, valid for
    every session's page).
    """
    from panel.io.resources import get_dist_path, use_cdn
    import panel.reactive

    if not use_cdn():
        panel.reactive.CDN_DIST = get_dist_path(cdn=False)


def serve_stylesheets_locally(doc) -> None:
    """Make a session's components link Panel's stylesheets from this server, never the CDN.

    Panel records where its stylesheets live (`dist_url`) on a document only while rendering
    the HTML page of that session. When the browser's websocket arrives after that session
    was already discarded as unused (a slow page load, or a short `--unused-session-lifetime`),
    Bokeh builds a fresh session for it that never had a page rendered, and every stylesheet
    then falls back to cdn.holoviz.org (failing offline). Setting it up front covers both paths.
    """
    from panel.io.resources import get_dist_path, use_cdn

    if doc is not None and not use_cdn():
        doc.template_variables.setdefault("dist_url", get_dist_path(cdn=False))
