"""End-to-end streaming into a real headless Chromium: observations rendered per second.

Serves the Stream and Throughput views on 127.0.0.1, opens them in Debian's Chromium
(Playwright), presses Play at full speed and, after a warm-up, samples for `--seconds` the
last observation index that the browser's live-plot data source holds. The stream is a demo
stream with a posterior bank of S draws (the demo's true parameters, each variance scaled by
an independent log-normal factor, so the draws differ and are re-weighted). Prints observations
rendered per second in the browser, the engine and render time per observation, the latency
percentiles and the page's responsiveness, against the target of 200 obs/s.

    .venv/bin/python bench/app_stream.py [--draws 1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import panel as pn  # noqa: E402

import engine  # noqa: E402
from app.viewmodels import DataModel, FitModel, SpecModel  # noqa: E402
from app.viewmodels.stream import StreamModel, StreamPlan  # noqa: E402
from app.views.stream import StreamView  # noqa: E402
from app.views.throughput import ThroughputView  # noqa: E402
from app.workers import SessionWorker, document_dispatch  # noqa: E402

TARGET = 200.0
CHROMIUM = "/usr/bin/chromium"
LAST_T = """() => {
  let last = -1;
  for (const doc of window.Bokeh.documents)
    for (const m of doc._all_models.values()) {
      const d = m.data;
      const has = d instanceof Map ? d.has("filtered") : d != null && d.filtered !== undefined;
      if (!has) continue;
      const t = d instanceof Map ? d.get("t") : d.t;
      if (t.length) last = Math.max(last, t[t.length - 1]);
    }
  return last;
}"""


def demo_plan(draws: int, n_time: int, seed: int = 0) -> StreamPlan:
    """A demo stream and a bank of `draws` parameter sets around its true parameters."""
    demo = engine.demo_stream(seed, "level_shifts", n_time=n_time)
    spec = engine.ModelSpec.from_dict(demo.spec)
    rng = np.random.default_rng(seed)
    posterior = {name: value * np.exp(0.2 * rng.standard_normal(draws)) for name, value in demo.params.items()}
    n_hist = 200
    return StreamPlan(spec, posterior, f"demo bank (S = {draws} draws)", demo.y[:n_hist], None,
                      demo.y[n_hist:], n_hist)


class BenchStream(StreamModel):
    """The app's StreamModel, streaming a fixed plan instead of the session's fit."""

    def __init__(self, plan: StreamPlan, *args, **kwargs):
        self._bench_plan = plan
        super().__init__(*args, **kwargs)

    def plan(self) -> StreamPlan:
        return self._bench_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds streamed before measuring")
    args = ap.parse_args()
    n_time = int(1.2 * (args.warmup + args.seconds) * 2000) + 400   # never runs dry below 2000 obs/s
    plan = demo_plan(args.draws, n_time)
    sessions: list[StreamModel] = []

    def page():
        doc = pn.state.curdoc
        worker = SessionWorker("bench", document_dispatch(doc))
        data = DataModel()
        model = BenchStream(plan, data, FitModel(data, SpecModel(data), worker), worker,
                            dispatch=document_dispatch(doc), max_speed=True)
        sessions.append(model)
        pn.state.on_session_destroyed(lambda _ctx: (model.shutdown(), worker.shutdown()))
        return pn.Column(StreamView(model=model), ThroughputView(model=model))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = pn.serve({"stream": page}, port=port, address="127.0.0.1", show=False, threaded=True,
                      websocket_origin=[f"127.0.0.1:{port}"])
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            pg.goto(f"http://127.0.0.1:{port}/stream", timeout=120_000)
            pg.get_by_role("button", name="Play", exact=True).click(timeout=120_000)
            pg.wait_for_function(f"({LAST_T})() >= 0", timeout=600_000)
            time.sleep(args.warmup)
            model = sessions[-1]
            samples, pings = [], []
            t_end = time.perf_counter() + args.seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                last = pg.evaluate(LAST_T)
                pings.append(time.perf_counter() - t0)
                samples.append((time.perf_counter(), last, model.n_received))
                time.sleep(0.5)
            stats = dict(model.stats)
            moves = sum(e["kind"] == "rejuvenation_done" for e in model.events)
            browser.close()
    finally:
        for model in sessions:   # stop the stream threads (and a running move) before the interpreter exits
            model.shutdown()
            model.worker.shutdown()
            if model.filter is not None:
                model.filter.wait_for_rejuvenation(120)
        server.stop()
    (ta, la, na), (tb, lb, nb) = samples[0], samples[-1]
    rendered = (lb - la) / (tb - ta)
    received = (nb - na) / (tb - ta)
    ping = np.asarray(pings) * 1e3
    print(f"\nEnd-to-end streaming into headless Chromium, S = {args.draws} draws, demo stream "
          f"'level_shifts', {tb - ta:.0f} s measured after {args.warmup:.0f} s warm-up, full speed")
    rows = [
        ("observations rendered in the browser / s", f"{rendered:,.0f}"),
        ("observations published to the page / s", f"{received:,.0f}"),
        ("engine ms / obs  mean (all batches)", f"{stats['engine_ms_mean']:.3f}"),
        ("engine could sustain (1000 / mean ms per obs)", f"{stats['engine_obs_per_s']:,.0f}"),
        ("engine ms / obs per batch  p50 / p99", f"{stats['engine_ms_p50']:.3f} / {stats['engine_ms_p99']:.3f}"),
        ("render (server side) ms / obs  p50 / p99", f"{stats['render_ms_p50']:.3f} / {stats['render_ms_p99']:.3f}"),
        ("arrival in the queue → page update sent, ms  p50 / p99",
         f"{stats['latency_ms_p50']:.1f} / {stats['latency_ms_p99']:.1f}"),
        ("engine time per obs, last / first quarter of batches", f"{stats['trend']['ratio']:.2f}"),
        ("page round trip (evaluate) ms  p50 / max", f"{np.median(ping):.1f} / {ping.max():.1f}"),
        ("rejuvenations swapped in while measuring", str(moves)),
        ("browser console errors", str(len(errors))),
        (f"rendered / target {TARGET:.0f} obs/s", f"{rendered / TARGET:.2f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v:>16}")


if __name__ == "__main__":
    main()
