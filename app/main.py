"""StreamSSM web app entry point (served with ``panel serve app`` at /app).

`pn.extension()` runs before the app modules are imported: components created
before it would link their stylesheets from the CDN, which the app must never need.
"""

import panel as pn

pn.extension("tabulator")  # the Fleet tab's results table

from app.admission import SESSIONS, admit_document  # noqa: E402
from app.app_hooks import serve_stylesheets_locally  # noqa: E402
from app.dashboard import session_app  # noqa: E402

serve_stylesheets_locally(pn.state.curdoc)

if admit_document(pn.state.curdoc):
    session_app().page().servable()
else:   # over the server's cap on sessions: a one-line page, no dashboard built
    pn.pane.Alert(SESSIONS.message(), alert_type="warning").servable()
