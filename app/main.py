"""StreamSSM web app entry point (served with ``panel serve app``).

Placeholder page until the model builder, fitting and streaming views land.

BootstrapTemplate is used rather than FastListTemplate because Panel's Fast
design always links a Google Fonts stylesheet; the app must work with no
access to outside hosts, and the UI smoke test fails on any browser error.
"""

import panel as pn

INTRO = (
    "StreamSSM — Bayesian structural time series on live data. "
    "The model builder, fitting and streaming views arrive in the next releases."
)

pn.extension()

pn.template.BootstrapTemplate(
    title="StreamSSM",
    main=[pn.pane.Markdown(INTRO, sizing_mode="stretch_width")],
).servable()
