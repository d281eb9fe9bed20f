"""The README's screenshots: serve the real app, drive it in headless Chromium, write one PNG per view.

    python -m tests.ui.screenshots [--out app/assets/screenshots]     (or `make screenshots`)

Data, Model, Fit after a quick fit (with its forecast), Fit after a short NUTS fit (diagnostics and
posterior plots), Stream after the rest of the series has streamed through the NUTS posterior, and
Learn a few steps into the series.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, serve_app

OUT = REPO_ROOT / "app" / "assets" / "screenshots"
VIEWPORT = {"width": 1280, "height": 1000}
SETTLE_MS = 2500   # Bokeh draws after the data arrives


def _tab(page: Page, name: str) -> None:
    page.locator(".bk-tab", has_text=name).click()


def _shot(page: Page, out: Path, name: str, anchor: str | None = None) -> Path:
    """A viewport-sized PNG, scrolled so that the text `anchor` (exactly) is at the top (default: the page top)."""
    if anchor is None:
        page.evaluate("window.scrollTo(0, 0)")
    else:
        page.get_by_text(anchor, exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(SETTLE_MS)
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"{path}: {path.stat().st_size / 1024:.0f} kB", flush=True)
    return path


def take(page: Page, url: str, out: Path) -> list[Path]:
    """Drive one session through every view, writing a screenshot of each."""
    shots = []
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Annual flow of the river Nile").first.wait_for(state="visible", timeout=180_000)
    page.locator("canvas").first.wait_for(state="attached")
    shots.append(_shot(page, out, "data"))
    _tab(page, "Model")
    page.get_by_text('"local_level"').first.wait_for(state="visible")
    shots.append(_shot(page, out, "model"))
    _tab(page, "Fit")
    page.get_by_role("button", name="Quick fit (maximum likelihood)").click()
    page.locator(".fit-forecast", has_text="steps ahead from the quick fit").first.wait_for(
        state="visible", timeout=300_000)
    shots.append(_shot(page, out, "fit-quick", anchor="Decomposition"))
    for label, value in (("Chains", "4"), ("Warmup", "500"), ("Draws", "500")):
        box = page.get_by_label(label)
        box.fill(value)
        box.press("Enter")
    page.get_by_role("button", name="Run NUTS").click()
    page.get_by_text("NUTS finished").first.wait_for(state="visible", timeout=600_000)
    page.get_by_text("Decomposition with posterior bands").first.wait_for(state="visible")
    shots.append(_shot(page, out, "fit-nuts", anchor="Diagnostics"))
    shots.append(_shot(page, out, "fit-posterior", anchor="Posterior"))
    _tab(page, "Stream")
    page.get_by_role("button", name="Play", exact=True).click()
    page.get_by_text("Streamed all").first.wait_for(state="visible", timeout=300_000)
    shots.append(_shot(page, out, "stream"))
    _tab(page, "Learn")
    page.get_by_text("step kind").first.wait_for(state="visible", timeout=180_000)
    box = page.get_by_label("Time index t")
    box.fill("40")
    box.press("Enter")
    page.get_by_text("t = 40").first.wait_for(state="visible")
    for _ in range(2):
        page.get_by_role("button", name="Step forward ▶").click()
        page.wait_for_timeout(500)
    shots.append(_shot(page, out, "learn"))
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default: %(default)s)")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found; run `make chromium`", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, serve_app(Path(tmp) / "server.log") as server, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            take(page, server.url, args.out)
        except Exception:
            print(f"--- server output ---\n{server.log()[-4000:]}", file=sys.stderr)
            raise
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
