"""Pure functions: data and results → HoloViews elements (Bokeh backend)."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend so .opts() applies)
import numpy as np
import pandas as pd

BAND_Z = 1.959963984540054
_OPTS = dict(responsive=True, height=260, show_grid=True, tools=["hover"])


def series_plot(index: pd.Index, y: np.ndarray, label: str) -> hv.Curve:
    """The target series (NaN gaps show as breaks)."""
    return hv.Curve((np.asarray(index), y), "time", label, label=label).opts(**_OPTS, color="#1f4e79")


def _band(index, mean, sd, color) -> hv.Area:
    x = np.asarray(index)
    return hv.Area((x, mean - BAND_Z * sd, mean + BAND_Z * sd), "time", vdims=["lower", "upper"]).opts(
        color=color, alpha=0.25, line_alpha=0)


def decomposition_plot(index: pd.Index, y: np.ndarray, label: str,
                       components: dict[str, tuple[np.ndarray, np.ndarray]]) -> hv.Layout:
    """Observed series with the smoothed level, then one panel per component, each with a 95% band."""
    x = np.asarray(index)
    panels = []
    level = components.get("level")
    top = hv.Scatter((x, y), "time", label, label="observed").opts(color="black", size=3)
    if level is not None:
        top = top * _band(index, *level, "#e07b39") * hv.Curve((x, level[0]), "time", label,
                                                               label="level (smoothed)").opts(color="#e07b39")
    panels.append(top.opts(title=f"{label}: observed and smoothed level", **_OPTS, legend_position="top_left"))
    for name, (mean, sd) in components.items():
        if name == "level":
            continue
        title = "slope" if name == "trend" else name
        panels.append((_band(index, mean, sd, "#2a7ab0") * hv.Curve((x, mean), "time", title).opts(
            color="#2a7ab0")).opts(title=f"{title} (smoothed, 95% band)", **_OPTS))
    return hv.Layout(panels).cols(1).opts(shared_axes=False)


def learn_plot(index: pd.Index, y: np.ndarray, label: str, t: int, predicted: float, innov_sd: float,
               filtered_level: float | None) -> hv.Overlay:
    """The series up to t+window with the step's predicted observation ± 2 sd and the observation."""
    x = np.asarray(index)
    lo, hi = max(0, t - 30), min(len(y), t + 10)
    base = hv.Curve((x[lo:hi], y[lo:hi]), "time", label, label="observed").opts(color="#888888")
    pred = hv.ErrorBars([(x[t], predicted, BAND_Z * innov_sd if np.isfinite(innov_sd) else 0.0)],
                        "time", [label, "err"]).opts(color="#e07b39", line_width=3)
    point_pred = hv.Scatter([(x[t], predicted)], "time", label, label="predicted ŷ_t").opts(
        color="#e07b39", size=10, marker="diamond")
    obs = hv.Scatter([(x[t], y[t])], "time", label, label="y_t").opts(color="black", size=9)
    out = base * pred * point_pred * obs
    if filtered_level is not None:
        out = out * hv.Scatter([(x[t], filtered_level)], "time", label, label="posterior level").opts(
            color="#2a7ab0", size=9, marker="square")
    return out.opts(**_OPTS, legend_position="top_left", title=f"step t = {t}")
