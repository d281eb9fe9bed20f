"""StreamSSM web app entry point (served with ``panel serve app`` at /app).

`pn.extension()` runs before the app modules are imported: components created
before it would link their stylesheets from the CDN, which the app must never need.
"""

import panel as pn

pn.extension()

from app.dashboard import session_app  # noqa: E402

session_app().page().servable()
