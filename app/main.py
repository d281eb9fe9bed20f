"""StreamSSM web app entry point (served with ``panel serve app`` at /app)."""

import panel as pn

from app.dashboard import session_app

pn.extension()

session_app().page().servable()
