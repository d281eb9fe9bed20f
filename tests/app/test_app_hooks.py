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
