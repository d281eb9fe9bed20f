"""A new user's walk through every tab of the served app, one screenshot per step.

    python -m tests.ui.walkthrough [--out DIR]                       (or `make walkthrough`)
    python -m tests.ui.walkthrough --out app/assets/screenshots      (or `make screenshots`: the README's)

Serves the app on a free loopback port and drives headless Chromium through it as someone new to it
would: Data (Nile, AirPassengers, Seatbelts, then a small CSV uploaded from a file), Model (back to
Nile, a local linear trend instead of a local level), Fit (a quick fit and its forecast, then a short
NUTS run of 2 chains × (100 warm-up + 100 draws), its diagnostics and posterior plots), Stream (play at
1 observation/s, pause, check that it stays paused, then play to the end as fast as possible),
Throughput, Learn (a few steps forward) and Fleet (a local run on the first series of the shipped US
employment table, and one series' drill-down).

Each step prints its time, its screenshot, the browser console's errors and any traceback the server
logged meanwhile. The exit status is 1 when a step failed, the console showed an error or the server
logged a traceback; a failed step still leaves its screenshot, and the walk goes on with the next.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from playwright.sync_api import Page, sync_playwright

from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, PanelServer, collect_console_errors, serve_app

VIEWPORT = {"width": 1280, "height": 1000}
SETTLE_MS = 2500            # Bokeh draws after the data arrives
SCROLL_SETTLE_MS = 500
NUTS = {"Chains": "2", "Warmup": "100", "Draws": "100"}
FLEET_DATASET, FLEET_SERIES = "us_employment", 12
LEARN_STEPS = 3
PAUSE_CHECK_MS = 3000       # a paused stream stays where it was paused
STREAMED = re.compile(r"(\d+) / (\d+) observations streamed")
UPLOAD_NAME = "walkthrough.csv"


def upload_csv() -> str:
    """A small monthly series, as a user's own file would be: a date column and one value column."""
    rows = ["month,visitors"]
    for i in range(48):
        season = (0, 3, 8, 14, 19, 24, 27, 25, 18, 11, 5, 1)[i % 12]
        rows.append(f"{2020 + i // 12}-{i % 12 + 1:02d}-01,{200 + 2 * i + season + (i * 7919) % 13 - 6}")
    return "\n".join(rows) + "\n"


def description(dataset: str) -> str:
    """The first words of a shipped dataset's description, as the Data tab shows it."""
    entries = json.loads((REPO_ROOT / "datasets" / "catalogue.json").read_text())
    text = next(e["description"] for e in entries if e["name"] == dataset)
    return " ".join(text.split()[:4])


# -- browser helpers ---------------------------------------------------------------------------------

def tab(page: Page, name: str) -> None:
    page.locator(".bk-tab", has_text=name).click()


def type_into(page: Page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")


def choose(page: Page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).select_option(option)


def streamed(page: Page) -> tuple[int, int]:
    """(observations streamed, observations to stream) from the Stream tab's status line."""
    m = STREAMED.search(page.get_by_text(STREAMED).first.inner_text())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.1)


# -- the steps ---------------------------------------------------------------------------------------
# Each step acts and waits for the page to show the outcome; it returns the text to scroll to the top
# of its screenshot (None: the top of the page).

def data_nile(page: Page, url: str, tmp: Path) -> str | None:
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text(description("nile")).first.wait_for(state="visible", timeout=180_000)
    page.locator("canvas").first.wait_for(state="attached")
    return None


def data_airpassengers(page: Page, url: str, tmp: Path) -> str | None:
    choose(page, "Dataset", "airpassengers")
    page.get_by_text(description("airpassengers")).first.wait_for(state="visible")
    return None


def data_seatbelts(page: Page, url: str, tmp: Path) -> str | None:
    choose(page, "Dataset", "seatbelts")
    page.get_by_text(description("seatbelts")).first.wait_for(state="visible")
    return None


def data_upload(page: Page, url: str, tmp: Path) -> str | None:
    path = tmp / UPLOAD_NAME
    path.write_text(upload_csv())
    page.locator("input[type=file][accept*=csv]").first.set_input_files(str(path))
    page.get_by_text(f"Uploaded file {UPLOAD_NAME}").first.wait_for(state="visible")
    page.locator("canvas").first.wait_for(state="attached")
    return None


def model(page: Page, url: str, tmp: Path) -> str | None:
    choose(page, "Dataset", "nile")
    page.get_by_text(description("nile")).first.wait_for(state="visible")
    tab(page, "Model")
    page.get_by_text('"local_level"').first.wait_for(state="visible")
    choose(page, "Level / trend", "local_linear_trend")
    page.get_by_text('"local_linear_trend"').first.wait_for(state="visible")
    page.get_by_text("sigma2.trend").first.wait_for(state="visible")   # its prior, in the priors list
    return None


def fit_quick(page: Page, url: str, tmp: Path) -> str | None:
    tab(page, "Fit")
    page.get_by_role("button", name="Quick fit (maximum likelihood)").click()
    page.locator(".fit-forecast", has_text="steps ahead from the quick fit").first.wait_for(
        state="visible", timeout=300_000)
    return "Decomposition"


def fit_nuts(page: Page, url: str, tmp: Path) -> str | None:
    for label, value in NUTS.items():
        type_into(page, label, value)
    page.get_by_role("button", name="Run NUTS").click()
    page.get_by_text("NUTS finished").first.wait_for(state="visible", timeout=600_000)
    page.get_by_text("Decomposition with posterior bands").first.wait_for(state="visible")
    return "Diagnostics"


def fit_posterior(page: Page, url: str, tmp: Path) -> str | None:
    page.get_by_text("Posterior", exact=True).first.wait_for(state="visible")
    return "Posterior"


def slider_to_start(page: Page, title: str) -> None:
    """Move a slider to its lowest value with the keyboard, as a user may."""
    group = page.locator(".bk-input-group", has=page.locator(".bk-slider-title", has_text=title))
    group.locator(".noUi-handle").first.press("Home")


def stream_paused(page: Page, url: str, tmp: Path) -> str | None:
    tab(page, "Stream")
    slider_to_start(page, "Speed (obs/s)")   # 1 observation per second: time to pause
    page.get_by_text(re.compile(r"Speed \(obs/s\): 1(\.0+)?$")).first.wait_for(state="visible")
    page.get_by_role("button", name="Play", exact=True).click()
    wait_until(lambda: streamed(page)[0] >= 3, 300, "the first observations to stream")
    page.get_by_role("button", name="Pause", exact=True).click()
    page.locator(".stream-status", has_text="paused").first.wait_for(state="visible")
    at_pause = streamed(page)[0]
    page.wait_for_timeout(PAUSE_CHECK_MS)
    status = page.get_by_text(STREAMED).first.inner_text()
    if not status.startswith("paused") or streamed(page)[0] != at_pause:
        raise AssertionError(f"paused at {at_pause} observations, {PAUSE_CHECK_MS / 1000:g} s later the "
                             f"status reads {status!r}")
    return None


def stream_finished(page: Page, url: str, tmp: Path) -> str | None:
    page.locator(".bk-Checkbox", has_text="as fast as possible").locator("input[type=checkbox]").check()
    page.get_by_role("button", name="Play", exact=True).click()
    page.locator(".stream-status", has_text="finished").first.wait_for(state="visible", timeout=300_000)
    done, total = streamed(page)
    if done != total:
        raise AssertionError(f"the stream finished at {done} of {total} observations")
    return None


def throughput(page: Page, url: str, tmp: Path) -> str | None:
    tab(page, "Throughput")
    page.get_by_text("observations / s").first.wait_for(state="visible")
    page.locator(".throughput-detail", has_text="draws").first.wait_for(state="visible")
    return None


def learn(page: Page, url: str, tmp: Path) -> str | None:
    tab(page, "Learn")
    page.get_by_text("step kind").first.wait_for(state="visible", timeout=180_000)
    t = int(page.get_by_label("Time index t").input_value())
    for _ in range(LEARN_STEPS):
        page.get_by_role("button", name="Step forward ▶").click()
        t += 1
        page.get_by_text(f"t = {t}", exact=False).first.wait_for(state="visible")
    page.get_by_text("Kalman gain").first.wait_for(state="visible")
    return None


def fleet(page: Page, url: str, tmp: Path) -> str | None:
    tab(page, "Fleet")
    choose(page, "Series", FLEET_DATASET)
    wait_until(lambda: page.get_by_label("Series (first N)").input_value() not in ("", "24"), 120,
               f"{FLEET_DATASET} to load")
    type_into(page, "Series (first N)", str(FLEET_SERIES))
    page.get_by_role("button", name="Run fleet").click()
    page.get_by_text("series/s").first.wait_for(state="visible", timeout=600_000)
    badges = page.locator(".fleet-table .fleet-badge")
    wait_until(lambda: badges.count() > 0, 60, "the result table's rows")
    first = page.locator('.fleet-table .tabulator-row [tabulator-field="series"]').first
    name = first.inner_text()
    first.click()
    page.locator(".fleet-detail-note", has_text=f"{name}: ").first.wait_for(state="visible", timeout=300_000)
    page.locator(".fleet-drill canvas").first.wait_for(state="attached")
    return "Fleet: many series at once"


StepFn = Callable[[Page, str, Path], "str | None"]
STEPS: list[tuple[str, str, StepFn]] = [
    ("data", "Data: Nile, the first dataset shown", data_nile),
    ("data-airpassengers", "Data: AirPassengers", data_airpassengers),
    ("data-seatbelts", "Data: UK Seatbelts, with regressors", data_seatbelts),
    ("data-upload", f"Data: upload {UPLOAD_NAME}", data_upload),
    ("model", "Model: Nile again, a local linear trend instead of the local level", model),
    ("fit-quick", "Fit: quick fit (maximum likelihood) and its forecast", fit_quick),
    ("fit-nuts", "Fit: NUTS, 2 chains × (100 warm-up + 100 draws), diagnostics", fit_nuts),
    ("fit-posterior", "Fit: posterior plots", fit_posterior),
    ("stream-paused", "Stream: play at 1 observation/s, then pause", stream_paused),
    ("stream", "Stream: play to the end as fast as possible", stream_finished),
    ("throughput", "Throughput", throughput),
    ("learn", f"Learn: {LEARN_STEPS} steps forward", learn),
    ("fleet", f"Fleet: {FLEET_SERIES} {FLEET_DATASET} series, MLE, locally; one series' drill-down", fleet),
]


# -- running them --------------------------------------------------------------------------------------

@dataclass
class StepReport:
    name: str
    title: str
    seconds: float = 0.0
    screenshot: Path | None = None
    error: str = ""
    console: list[str] = field(default_factory=list)
    server: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.error or self.console or self.server)


def screenshot(page: Page, path: Path, anchor: str | None) -> Path:
    """A viewport-sized PNG, scrolled so that the text `anchor` (exactly) is at the top (default: the page top).

    The page settles first: plots drawn late would move the anchor after the scroll."""
    page.wait_for_timeout(SETTLE_MS)
    try:
        if anchor is None:
            page.evaluate("window.scrollTo(0, 0)")
        else:
            page.get_by_text(anchor, exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})",
                                                                timeout=10_000)
    except Exception:   # a failed step may not show its anchor: take the page as it is
        pass
    page.wait_for_timeout(SCROLL_SETTLE_MS)
    page.screenshot(path=str(path))
    return path


def tracebacks(log: str) -> list[str]:
    """The last line of each traceback in a server log (the exception and its message)."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line and not line.startswith((" ", "\t"))]
        found.append(lines[0] if lines else "a traceback")
    return found


def walk(page: Page, server: PanelServer, out: Path, tmp: Path) -> list[StepReport]:
    """Run every step in order, printing each as it ends."""
    console = collect_console_errors(page)
    reports = []
    for number, (name, title, step) in enumerate(STEPS, 1):
        report = StepReport(name, title)
        seen_console, seen_log = len(console), len(server.log())
        start = time.monotonic()
        anchor = None
        try:
            anchor = step(page, server.url, tmp)
        except Exception as exc:
            report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            traceback.print_exc()
        report.seconds = time.monotonic() - start
        report.screenshot = screenshot(page, out / f"{name}.png", anchor)
        report.console = console[seen_console:]
        report.server = tracebacks(server.log()[seen_log:])
        mark = "ok  " if report.ok else "FAIL"
        print(f"{number:2d} {mark} {title} ({report.seconds:.1f} s) -> {report.screenshot}", flush=True)
        for line in ([f"step failed: {report.error}"] if report.error else []) + \
                [f"console error: {c}" for c in report.console] + [f"server traceback: {s}" for s in report.server]:
            print(f"        {line}", flush=True)
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the PNGs (default: a new temporary folder, kept and printed)")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found; run `make chromium`", file=sys.stderr)
        return 1
    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="streamssm-walkthrough-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {out}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, serve_app(Path(tmp) / "server.log", warm_up=True) as server, \
            sync_playwright() as pw:
        print(f"serving {server.url}", flush=True)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            reports = walk(page, server, out, Path(tmp))
        finally:
            browser.close()
        failed = [r for r in reports if not r.ok]
        if failed:
            print(f"--- server output (last 4000 characters) ---\n{server.log()[-4000:]}", file=sys.stderr)
    print(f"{len(reports) - len(failed)} of {len(reports)} steps clean; screenshots in {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
