"""One browser session's app: view-models, their views, the page, and the session's worker."""

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
from .views.fleet_view import FleetModel, FleetView
from .views.stream import stream_tabs
from .workers import SessionWorker, document_dispatch, run_now

log = logging.getLogger("streamssm.app")
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)

TITLE = "StreamSSM"
INTRO = "Bayesian structural time series on live data: pick data, build a model, fit it, learn how the filter works."


class App(pn.viewable.Viewer):
    """The view-models of one session and the tabs that draw them.

    Tabs are (title, view) pairs in `tabs`; further areas (Bayesian fit, streaming,
    throughput) are added the same way.
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
        streams = stream_tabs(self.data, self.fit, self.worker, self.bayes)
        self.session = SessionFileModel(self.data, self.spec, self.priors, self.fit, self.bayes, self.worker,
                                        stream=streams[0][1].model)
        self.tabs = [("Data", DataView(model=self.data)),
                     ("Model", ModelView(model=self.spec, priors=self.priors)),
                     ("Fit", FitView(model=self.fit, bayes=BayesFitView(model=self.bayes),
                                     forecast=ForecastView(model=self.forecast))),
                     ("Learn", LearnView(model=self.learn)),
                     *streams,
                     ("Fleet", FleetView(model=FleetModel(self.data, self.spec, self.worker)))]

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

    The worker's results reach the page through this session's document; when the
    session is destroyed its worker is shut down.
    """
    doc = pn.state.curdoc
    context = getattr(doc, "session_context", None) if doc is not None else None
    if context is None:
        return App(worker=SessionWorker("local", run_now))
    worker = SessionWorker(context.id, document_dispatch(doc))
    pn.state.on_session_destroyed(lambda _ctx: worker.shutdown())
    log.info("session %s opened", context.id)
    return App(worker=worker)
