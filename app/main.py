"""StreamSSM web app entry point (served with ``panel serve app`` at /app).

`pn.extension()` runs before the app modules are imported: components created
before it would link their stylesheets from the CDN, which the app must never need.
"""

import panel as pn

pn.extension("tabulator")  # the Fleet tab's results table

from app.app_hooks import serve_stylesheets_locally  # noqa: E402
from app.dashboard import session_app  # noqa: E402

serve_stylesheets_locally(pn.state.curdoc)

session_app().page().servable()
