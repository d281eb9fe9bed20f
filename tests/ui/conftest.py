"""Fixtures for browser tests: a live ``panel serve app`` server and a
Playwright page driving Debian's headless Chromium.

Browser tests need ``/usr/bin/chromium`` (``make chromium`` installs it).
Without it they are skipped locally and fail under CI.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
# `panel serve app` serves the directory-format app under /<dirname>.
APP_ROUTE = "/app"
SERVER_START_TIMEOUT_S = 360.0   # a busy 2-core machine imports the app and renders its first page slowly
FIRST_PAGE_TIMEOUT_S = 60.0      # one request for the page while it starts (each session builds every tab)
# How long a server's Ray driver keeps trying to reach a Ray it has lost before it ends its
# process (Ray's gcs_rpc_server_reconnect_timeout_s): Ray's default, and the test server's,
# shorter, so that a test of what the server does after that grace period waits seconds, not minutes.
RAY_DEFAULT_RECONNECT_S = 60
RAY_RECONNECT_S = 15


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_tail(path: Path, limit: int = 8000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no server log>"
    return text[-limit:]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@dataclass(frozen=True)
class PanelServer:
    url: str
    log_path: Path
    ray_reconnect_s: int   # the grace period of its Ray driver for a lost Ray

    def log(self) -> str:
        """Everything the server has printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def serve_app(log_path: Path, warm_up: bool = False, ray_reconnect_s: int = RAY_DEFAULT_RECONNECT_S):
    """Run ``python -m panel serve app`` on a free loopback port (its output in log_path) until the block ends.

    warm_up: let the server compile the shipped datasets' Quick fits in the background, as
    `make serve` does (off by default: the tests' own fits then have both cores).
    ray_reconnect_s: the server's grace period for a lost Ray."""
    port = _free_port()
    host = "127.0.0.1"
    cmd = [
        sys.executable, "-m", "panel", "serve", "app",
        "--address", host,
        "--port", str(port),
        f"--allow-websocket-origin={host}:{port}",
        f"--allow-websocket-origin=localhost:{port}",
        # end closed sessions within about a second, so tests can see their workers stop
        "--check-unused-sessions", "500",
        "--unused-session-lifetime", "500",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", BOKEH_RESOURCES="server",
               STREAMSSM_WARMUP="1" if warm_up else "0", RAY_gcs_rpc_server_reconnect_timeout_s=str(ray_reconnect_s))
    url = f"http://{host}:{port}{APP_ROUTE}"

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        last_error: Exception | None = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"panel serve exited early with code {proc.returncode}\n"
                    f"command: {' '.join(cmd)}\n--- server output ---\n{_read_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=FIRST_PAGE_TIMEOUT_S) as resp:
                    if resp.status == 200:
                        break
            except urllib.error.HTTPError as exc:
                # The server is up but the app is broken: no point waiting.
                raise RuntimeError(
                    f"panel serve answered {url} with HTTP {exc.code}\n"
                    f"--- server output ---\n{_read_tail(log_path)}"
                ) from exc
            except (urllib.error.URLError, OSError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"panel serve did not answer {url} within {SERVER_START_TIMEOUT_S:.0f}s "
                    f"(last error: {last_error!r})\n--- server output ---\n{_read_tail(log_path)}"
                )
            time.sleep(0.5)
        yield PanelServer(url=url, log_path=log_path, ray_reconnect_s=ray_reconnect_s)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def panel_server(tmp_path_factory) -> PanelServer:
    """The served app for the test session."""
    with serve_app(tmp_path_factory.mktemp("panel-server") / "server.log", ray_reconnect_s=RAY_RECONNECT_S) as server:
        yield server


@pytest.fixture(scope="session")
def app_url(panel_server) -> str:
    """URL of the served app, e.g. ``http://127.0.0.1:PORT/app``."""
    return panel_server.url


@pytest.fixture(scope="session")
def browser():
    """A headless Debian Chromium driven by Playwright (no browser download)."""
    if not os.path.exists(CHROMIUM):
        msg = f"{CHROMIUM} not found; run `make chromium`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def run_short_nuts(page, chains: int, warmup: int, draws: int) -> None:
    """On the Fit tab: set the NUTS sizes, press Run NUTS, wait for the (short fit's) warning box."""
    for label, value in (("Chains", chains), ("Warmup", warmup), ("Draws", draws)):
        box = page.get_by_label(label)
        box.fill(str(value))
        box.press("Enter")
    page.get_by_role("button", name="Run NUTS").click()
    page.locator(".fit-untrustworthy").first.wait_for(state="visible", timeout=400_000)


def collect_console_errors(page) -> list[str]:
    """A list that fills with the page's console errors and uncaught exceptions as they happen."""
    errors: list[str] = []

    def on_console(msg):
        if msg.type == "error":
            where = msg.location.get("url", "") if msg.location else ""
            errors.append(f"console: {msg.text} [{where}]")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors


@pytest.fixture
def page(browser):
    """A fresh Playwright page; ``page.console_errors`` collects console errors
    and uncaught page exceptions seen during the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.console_errors = collect_console_errors(page)
    try:
        yield page
    finally:
        context.close()
