"""One browser session's app, and the composition root of the session: every view-model is built
here, their views are drawn over them, and one session-destroyed hook shuts them all down."""

from __future__ import annotations

import logging

import panel as pn
import param

from .viewmodels import DataModel, FitModel, LearnModel, SpecModel
from .views import DataView, FitView, LearnView, ModelView
from .viewmodels.fit_bayes import BayesFitModel, ForecastModel
from .viewmodels.priors_model import PriorsModel
from .viewmodels.session_file import SessionFileModel
from .views.fit_bayes_view import BayesFitView, ForecastView
from .views.session_view import SessionView
from .viewmodels.fleet_model import FleetModel
from .viewmodels.stream import StreamModel
from .views.fleet_view import FleetView
from .views.stream import stream_tabs
from .workers import SessionWorker, document_dispatch, run_now

log = logging.getLogger("streamssm.app")
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)

TITLE = "StreamSSM"
INTRO = ("Bayesian structural time series on live data: pick data, build a model, fit it, learn how the filter "
         "works. **Stream** replays the rest of a series (or a demo stream) through the fitted model live, with "
         "one-step forecasts, anomalies and drift alarms. **Fleet** fits one model to many series at once, here or "
         "on a Ray cluster, and flags the series that need a look.")


class App(pn.viewable.Viewer):
    """The view-models of one session and the tabs that draw them.

    Every view-model is built here, over the session's worker (whose dispatch is how results
    reach the page); views only draw the models they are given. Tabs are (title, view) pairs
    in `tabs`. `shutdown` ends the session's jobs and then its worker.
    """

    worker = param.ClassSelector(class_=SessionWorker)

    def __init__(self, **params):
        super().__init__(**params)
        self.data = DataModel()
        self.spec = SpecModel(self.data)
        self.fit = FitModel(self.data, self.spec, self.worker)
        self.priors = PriorsModel(self.data, self.spec)
        self.bayes = BayesFitModel(self.data, self.priors, self.worker)
        self.forecast = ForecastModel(self.data, self.worker, bayes=self.bayes, fit=self.fit)
        self.learn = LearnModel(self.data, self.spec, self.fit, self.worker)
        self.stream = StreamModel(self.data, self.fit, self.worker, dispatch=self.worker.dispatch, bayes=self.bayes)
        self.fleet = FleetModel(self.data, self.spec, self.worker)
        self.session = SessionFileModel(self.data, self.spec, self.priors, self.fit, self.bayes, self.worker,
                                        stream=self.stream)
        self.tabs = [("Data", DataView(model=self.data)),
                     ("Model", ModelView(model=self.spec, priors=self.priors)),
                     ("Fit", FitView(model=self.fit, bayes=BayesFitView(model=self.bayes),
                                     forecast=ForecastView(model=self.forecast))),
                     ("Learn", LearnView(model=self.learn)),
                     *stream_tabs(self.stream),
                     ("Fleet", FleetView(model=self.fleet))]

    def jobs(self) -> list:
        """The view-models that run jobs in the background (each has `shutdown()`)."""
        return [self.stream, self.fleet]

    def shutdown(self) -> None:
        """The session ended: each view-model stops its own jobs (a fleet job cancels only its own
        Ray tasks; the process's Ray stays up for other sessions), then the worker stops."""
        for model in self.jobs():
            try:
                model.shutdown()
            except Exception:   # one model failing to stop must not keep the others running
                log.exception("session %s: %s did not shut down cleanly", self.worker.session_id,
                              type(model).__name__)
        self.worker.shutdown()

    def __panel__(self):
        return pn.Tabs(*self.tabs, dynamic=True, sizing_mode="stretch_width")

    def page(self) -> pn.template.BootstrapTemplate:
        """The page. BootstrapTemplate works offline (Fast templates link web fonts)."""
        footer = pn.pane.Markdown(f"session `{self.worker.session_id}`", styles={"color": "#888"},
                                  css_classes=["session-id"])
        return pn.template.BootstrapTemplate(
            title=TITLE, main=[pn.pane.Markdown(INTRO, sizing_mode="stretch_width"), SessionView(model=self.session),
                               self, footer])


def session_app() -> App:
    """Build the App for the current server session (or a standalone one outside a server).

    The worker's results reach the page through this session's document; the one hook run
    when the session is destroyed shuts the whole App down.
    """
    doc = pn.state.curdoc
    context = getattr(doc, "session_context", None) if doc is not None else None
    if context is None:
        return App(worker=SessionWorker("local", run_now))
    app = App(worker=SessionWorker(context.id, document_dispatch(doc)))
    pn.state.on_session_destroyed(lambda _ctx: app.shutdown())
    log.info("session %s opened", context.id)
    return app
