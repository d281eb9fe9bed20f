"""Server hooks: a browser leaving mid-message is one log line; other task errors still reach asyncio."""

from __future__ import annotations

import asyncio
import gc
import logging

from tornado.websocket import WebSocketClosedError

from app.app_hooks import ignore_closed_websockets


def test_closed_websocket_is_one_line_and_other_errors_pass(caplog):
    loop = asyncio.new_event_loop()
    try:
        ignore_closed_websockets(loop)

        async def send_to_closed_socket():
            raise WebSocketClosedError()

        async def really_broken():
            raise RuntimeError("a real bug")

        with caplog.at_level(logging.INFO):
            for coro in (send_to_closed_socket(), really_broken()):
                task = loop.create_task(coro)
                loop.run_until_complete(asyncio.wait([task]))
                del task                     # never retrieved: asyncio reports it when collected
            gc.collect()
        asyncio_errors = [r for r in caplog.records if r.name == "asyncio"]
        assert len(asyncio_errors) == 1 and "a real bug" in str(asyncio_errors[0].exc_info[1])
        assert any("disconnected while a message" in r.getMessage() for r in caplog.records
                   if r.name == "streamssm.app")
    finally:
        loop.close()


def test_a_session_leaves_panels_process_wide_stylesheet_fallback_alone():
    """The fallback is the process's, set once when the server loads; a session sets only its own document."""
    import panel.reactive
    from bokeh.document import Document

    from app.app_hooks import link_detached_stylesheets_here, serve_stylesheets_locally

    saved = panel.reactive.CDN_DIST
    try:
        panel.reactive.CDN_DIST = "sentinel/"
        doc = Document()
        serve_stylesheets_locally(doc)
        assert panel.reactive.CDN_DIST == "sentinel/"
        assert not doc.template_variables["dist_url"].startswith("http")
        link_detached_stylesheets_here()
        assert panel.reactive.CDN_DIST == doc.template_variables["dist_url"]
    finally:
        panel.reactive.CDN_DIST = saved


def test_one_hook_shuts_down_every_view_model_then_the_worker(monkeypatch):
    """The dashboard builds every view-model of a session; its shutdown stops each, then the worker."""
    from app.dashboard import App
    from app.workers import SessionWorker

    app = App(worker=SessionWorker("test-app-shutdown"))
    assert app.stream.worker is app.worker and app.fleet.worker is app.worker
    stopped = []
    for model in app.jobs():
        monkeypatch.setattr(model, "shutdown", lambda m=model: stopped.append(m) or app.worker.closed)
    app.shutdown()
    assert stopped == app.jobs() and app.worker.closed
