"""Pure functions: data and results → HoloViews elements (Bokeh backend)."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend so .opts() applies)
import numpy as np
import pandas as pd

# One band convention for the whole app: central (equal-tailed) intervals of probability BAND_PROB,
# from the 2.5% to the 97.5% quantile. For a Gaussian (the quick fit's smoothed states, one-step
# predictions) that is mean ± BAND_Z sd; for posterior mixtures and forecasts, the mixture's quantiles.
BAND_PROB = 0.95
BAND_Z = 1.959963984540054   # the standard normal's 97.5% quantile
BAND_LABEL = "95% interval"  # how every band is named on the page
_OPTS = dict(responsive=True, height=260, show_grid=True, tools=["hover"])
STACKED = dict(padding=(0, 0.05))   # stacked panels over the same time span: no x padding, so their time axes line up


def time_format(index) -> str | None:
    """How the times of `index` are best written, by the data's spacing (the median gap between
    consecutive times): "%Y" for yearly data, "quarter" for quarterly, "%Y-%m" for monthly, a
    date for daily or weekly data, a date and clock below a day ("%Y-%m-%d %H:%M", with seconds
    where any time has them). None for an index that is not of times (steps are then numbers)."""
    times = pd.Index(index)
    if not isinstance(times, pd.DatetimeIndex):
        return None
    if len(times) < 2:
        return "%Y-%m-%d" if (times == times.normalize()).all() else "%Y-%m-%d %H:%M:%S"
    days = np.median(np.abs(np.diff(times.values).astype("timedelta64[s]").astype(float))) / 86400
    if days >= 360:
        return "%Y"
    if 85 <= days <= 95:
        return "quarter"
    if 27 <= days <= 32:
        return "%Y-%m"
    if days >= 1 and (times == times.normalize()).all():
        return "%Y-%m-%d"
    return "%Y-%m-%d %H:%M" if (times.second == 0).all() else "%Y-%m-%d %H:%M:%S"


def time_label(time, index=None) -> str:
    """A step's time as the data's frequency writes it (`time_format` of `index`, the series' times):
    "1913" for yearly data, "1960-Q1" quarterly, "1960-03" monthly, "2020-05-04" daily, a clock
    below a day. Without `index`, a date without a clock when the clock reads midnight."""
    if not isinstance(time, pd.Timestamp):
        return str(time)
    fmt = time_format(pd.DatetimeIndex([time]) if index is None else index)
    if fmt == "quarter":
        return f"{time.year}-Q{time.quarter}"
    return time.strftime(fmt or "%Y-%m-%d %H:%M:%S")


def series_plot(index: pd.Index, y: np.ndarray, label: str) -> hv.Curve:
    """The target series (NaN gaps show as breaks)."""
    return hv.Curve((np.asarray(index), y), "time", label, label=label).opts(**_OPTS, color="#1f4e79")


def band_area(x, lower, upper, name: str, label: str = "", **opts) -> hv.Area:
    """A band from `lower` to `upper` on the axis of `name` (its value dimensions are `name` and
    `name` (upper), so the axis it shares with the curve of `name` is labelled `name`); `label`
    names it in a legend."""
    return hv.Area((np.asarray(x), lower, upper), "time", vdims=[hv.Dimension(name), hv.Dimension(f"{name} (upper)")],
                   label=label).opts(line_alpha=0, **opts)


def component_panel(x, mean, lower, upper, name: str, color: str, title: str, y=None) -> hv.Overlay:
    """One component over time: its mean and its band (and the observations `y`, when given), the
    y axis labelled with the component's name."""
    x = np.asarray(x)
    out = band_area(x, lower, upper, name, color=color, alpha=0.25) * hv.Curve((x, mean), "time", name,
                                                                                label=name).opts(color=color)
    if y is not None:
        out = hv.Scatter((x, y), "time", name, label="observed").opts(color="black", size=3) * out
    return out.opts(title=title, ylabel=name, legend_position="right", **_OPTS, **STACKED)


def decomposition_plot(index: pd.Index, y: np.ndarray, label: str,
                       components: dict[str, tuple[np.ndarray, np.ndarray]]) -> hv.Layout:
    """Observed series with the smoothed level, then one panel per component (the engine's names:
    `trend` is the slope of a local linear trend), each with its 95% equal-tailed band."""
    x = np.asarray(index)
    panels = []
    level = components.get("level")
    top = hv.Scatter((x, y), "time", label, label="observed").opts(color="black", size=3)
    if level is not None:
        mean, sd = level
        top = (top * band_area(x, mean - BAND_Z * sd, mean + BAND_Z * sd, label, color="#e07b39", alpha=0.25)
               * hv.Curve((x, mean), "time", label, label="level (smoothed)").opts(color="#e07b39"))
    panels.append(top.opts(title=f"{label}: observed and smoothed level ({BAND_LABEL})", ylabel=label, **_OPTS,
                           **STACKED, legend_position="right"))
    for name, (mean, sd) in components.items():
        if name == "level":
            continue
        panels.append(component_panel(x, mean, mean - BAND_Z * sd, mean + BAND_Z * sd, name, "#2a7ab0",
                                      f"{name}: smoothed, {BAND_LABEL}"))
    return hv.Layout(panels).cols(1).opts(shared_axes=False)


def forest_plot(draws: dict[str, np.ndarray]):
    """Each parameter's posterior median with its 50% and 95% equal-tailed intervals, one row per
    parameter (named on the y axis), over all chains' draws. A Bokeh figure, as ArviZ's plots are."""
    from bokeh.models import HoverTool
    from bokeh.plotting import ColumnDataSource, figure

    names = list(draws)
    q = np.array([np.quantile(np.asarray(draws[n], dtype=float).ravel(),
                              [(1 - BAND_PROB) / 2, 0.25, 0.5, 0.75, (1 + BAND_PROB) / 2]) for n in names])
    source = ColumnDataSource({"parameter": names, "lo95": q[:, 0], "lo50": q[:, 1], "median": q[:, 2],
                               "hi50": q[:, 3], "hi95": q[:, 4]})
    fig = figure(y_range=names[::-1], height=60 + 36 * len(names), sizing_mode="stretch_width",
                 title=f"posterior median, 50% and {BAND_LABEL}s", tools="pan,wheel_zoom,box_zoom,reset,save",
                 x_axis_label="value", y_axis_label="parameter")
    fig.segment("lo95", "parameter", "hi95", "parameter", source=source, line_width=2, color="#1f77b4")
    fig.segment("lo50", "parameter", "hi50", "parameter", source=source, line_width=7, color="#1f77b4")
    fig.scatter("median", "parameter", source=source, size=9, color="white", line_color="#1f77b4", line_width=2)
    fig.add_tools(HoverTool(tooltips=[("parameter", "@parameter"), ("median", "@median"),
                                      ("50%", "@lo50 to @hi50"), ("95%", "@lo95 to @hi95")]))
    return fig


def learn_plot(index: pd.Index, y: np.ndarray, label: str, t: int, predicted: float | None, innov_sd: float | None,
               filtered_level: float | None) -> hv.Overlay:
    """The series around t with the step's predicted observation ± BAND_Z sd and the observation.

    Only what exists is drawn: no prediction on a diffuse step (its variance is infinite: pass
    None), no point for a missing y_t. An element of NaNs alone would leave HoloViews computing its
    range over an all-NaN slice (a RuntimeWarning in the server's log for every step shown)."""
    x = np.asarray(index)
    lo, hi = max(0, t - 30), min(len(y), t + 10)
    out = hv.Curve((x[lo:hi], y[lo:hi]), "time", label, label="observed").opts(color="#888888")
    if predicted is not None:
        out = out * hv.ErrorBars([(x[t], predicted, BAND_Z * innov_sd)], "time", [label, "err"]).opts(
            color="#e07b39", line_width=3) * hv.Scatter([(x[t], predicted)], "time", label,
                                                        label="predicted ŷ_t").opts(color="#e07b39", size=10,
                                                                                    marker="diamond")
    if np.isfinite(y[t]):
        out = out * hv.Scatter([(x[t], y[t])], "time", label, label="y_t").opts(color="black", size=9)
    if filtered_level is not None and np.isfinite(filtered_level):
        out = out * hv.Scatter([(x[t], filtered_level)], "time", label, label="posterior level").opts(
            color="#2a7ab0", size=9, marker="square")
    return out.opts(**_OPTS, legend_position="right", title=f"step t = {t}")


def beyond_band(index, values: np.ndarray, limit: float = BAND_Z) -> list[tuple[int, str, float]]:
    """The points of a standardised residual series outside ±`limit`, as (position, time label,
    value), the largest in size first (NaN, where a residual is not defined, is never outside)."""
    values = np.asarray(values, dtype=float)
    out = np.flatnonzero(np.abs(np.nan_to_num(values)) > limit)
    out = out[np.argsort(-np.abs(values[out]), kind="stable")]
    times = pd.Index(index)
    return [(int(i), time_label(times[i], times), float(values[i])) for i in out]


def auxiliary_plot(index, residuals: dict[str, np.ndarray], n_named: int = 8) -> hv.Layout:
    """The auxiliary residuals (standardised smoothed disturbances, N(0, 1) where the model holds)
    over time, one panel per disturbance: `irregular` shows outliers, `level` and `trend` (the
    slope) level shifts and slope changes. Lines at ±1.96; the points beyond them are red and the
    `n_named` largest are named by their date."""
    x = np.asarray(index)
    panels = []
    for name, values in residuals.items():
        values = np.asarray(values, dtype=float)
        dim = f"{name} residual"
        ok = np.isfinite(values)
        outside = beyond_band(index, values)
        at = np.array([i for i, _, _ in outside], dtype=int)
        line = dict(color="#c0392b", line_dash="dashed", line_width=1)
        lines = hv.HLine(BAND_Z).opts(**line) * hv.HLine(-BAND_Z).opts(**line)
        panel = (hv.Scatter((x[ok], values[ok]), "time", dim).opts(color="#1f4e79", size=3) * lines
                 * hv.Scatter((x[at], values[at]), "time", dim, label="beyond ±1.96").opts(color="#c0392b", size=6))
        top, names = at[:n_named], np.array([t for _, t, _ in outside[:n_named]], dtype=object)
        for side in (1.0, -1.0):   # the names above the points on top, below those underneath
            on = np.sign(values[top]) == side
            panel = panel * hv.Labels((x[top[on]], values[top[on]], names[on]), ["time", dim], "date").opts(
                text_font_size="8pt", yoffset=0.4 * side, text_color="#c0392b")
        title = f"{name}: auxiliary residuals, {len(outside)} beyond ±1.96"
        panels.append(panel.opts(title=title, ylabel=dim, legend_position="right", padding=(0.02, 0.2), **_OPTS))  # room for the names
    return hv.Layout(panels).cols(1).opts(shared_axes=False)
