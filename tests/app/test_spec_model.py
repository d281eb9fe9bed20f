"""The Model tab's view-model and view with impossible, emptied or out-of-range values, and loading
saved specs: each problem is a message next to its widget, and nothing else changes."""

from __future__ import annotations

import json

import panel as pn
import pytest

from app.viewmodels import DataModel, SpecModel
from app.viewmodels.fit_bayes import BayesFitModel
from app.viewmodels.priors_model import PriorsModel
from app.views import ModelView
from engine.spec import MAX_STATES, ModelSpec


@pytest.fixture
def bayes(worker):
    data = DataModel(dataset="nile")
    return BayesFitModel(data, PriorsModel(data, SpecModel(data)), worker)


def widget(view: pn.viewable.Viewable, kind: type, name: str):
    """The one widget of that kind and label in a rendered view."""
    found = [w for w in view.select(kind) if w.name == name]
    assert len(found) == 1, found
    return found[0]


def shown_problems(view: ModelView) -> list[str]:
    """The messages the Model tab shows (visible alerts), seasonal rows included."""
    alerts = list(view._layout.select(pn.pane.Alert)) + list(view._seasonals().select(pn.pane.Alert))
    return [a.object for a in alerts if a.visible and a.object]


@pytest.mark.parametrize("period,words", [
    (2500, f"at most {MAX_STATES}"), (1_000_000_000, f"at most {MAX_STATES}"),
    (100, "not fewer than the 100 observations")])
def test_an_impossible_seasonal_period_is_refused_next_to_its_widget(period, words):
    """Nile has 100 observations: a period of 2500 (or 1e9) used to fill the server's memory; now the
    spec is refused, with the message under that seasonal, and no engine job is started for it."""
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    view = ModelView(model=spec)
    spec.add_seasonal()
    widget(view._seasonals(), pn.widgets.FloatInput, "Period").value = period
    assert spec.spec is None and list(spec.errors) == ["seasonal[0]"]
    assert words in spec.errors["seasonal[0]"]
    assert [m for m in shown_problems(view) if words in m]
    widget(view._seasonals(), pn.widgets.FloatInput, "Period").value = 12
    assert spec.errors == {} and spec.spec.seasonal[0].period == 12


def test_a_long_seasonal_is_named_by_its_row_not_its_place_in_the_state():
    """The spec puts dummy seasonals first; a message about a seasonal still points at its own row."""
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    spec.add_seasonal(150, "trig")   # 75 harmonics: 150 states
    spec.add_seasonal(4, "dummy")
    assert list(spec.errors) == ["seasonal[0]"] and "150 in seasonal[0]" in spec.errors["seasonal[0]"]
    assert "seasonal[0].harmonics" in spec.errors["seasonal[0]"]


def test_a_model_whose_history_would_not_fit_is_refused():
    """Daily births with a 365-day dummy seasonal: 371 states over 3652 days would keep 3.7 GiB per
    covariance history; the catalogue's suggestion (3 yearly harmonics) is fine."""
    data = DataModel(dataset="births")
    spec = SpecModel(data)
    assert spec.errors == {} and spec.spec is not None
    spec.update_seasonal(1, form="dummy", period=365, harmonics=None)
    assert spec.spec is None and "GiB" in spec.errors["seasonal[1]"]


def test_emptied_and_negative_numbers_give_a_message_and_a_consistent_model():
    """Emptying a number box (or typing AR order -1) used to raise in the widget link and leave the
    widget and the model disagreeing; now the model takes the value and the spec says what is wrong."""
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    view = ModelView(model=spec)
    ar = widget(view._layout, pn.widgets.IntInput, "AR order")
    for value in (None, -1):
        ar.value = value
        assert spec.ar_order == value and spec.spec is None
        assert "autoregressive.order" in spec.errors["ar"] and spec.errors["ar"] in shown_problems(view)
    ar.value = 1
    assert spec.errors == {} and spec.spec.ar_order == 1

    spec.cycle = True
    for name in ("Shortest period", "Longest period"):
        box = widget(view._layout, pn.widgets.FloatInput, name)
        before = box.value
        box.value = None
        assert spec.spec is None and "cycle.period_bounds" in spec.errors["cycle"]
        box.value = before
        assert spec.errors == {}

    spec.add_seasonal()
    widget(view._seasonals(), pn.widgets.FloatInput, "Period").value = None
    assert spec.seasonals[0]["period"] is None and spec.spec is None
    assert "seasonal[0].period" in spec.errors["seasonal[0]"]
    rows = view._seasonals()   # the row is drawn again with its box empty
    assert widget(rows, pn.widgets.FloatInput, "Period").value is None
    assert spec.errors["seasonal[0]"] in shown_problems(view)


def test_a_duplicate_seasonal_is_explained_on_the_page():
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    view = ModelView(model=spec)
    spec.add_seasonal(4)
    spec.add_seasonal(4)
    assert "twice" in spec.errors["seasonal"] and spec.errors["seasonal"] in shown_problems(view)


def test_loading_a_spec_keeps_every_part_of_it():
    """A loaded spec is the spec: its irregular choice is not replaced by its level kind's default."""
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    saved = {"irregular": False, "level": {"kind": "local_linear_trend"}, "autoregressive": {"order": 1}}
    spec.load(saved)
    assert spec.spec == ModelSpec.from_dict(saved)


def load(bayes: BayesFitModel, spec: dict, name: str) -> None:
    assert bayes.load_file(json.dumps(spec).encode(), name) is None


def test_a_spec_with_a_malformed_value_is_refused_with_its_field(bayes):
    """`"period": null` used to raise a TypeError and leave the previous file's message on the page."""
    load(bayes, {"level": "local_level", "seasonal": [{"period": 4}]}, "good.json")
    assert bayes.status == "idle" and "good.json" in bayes.message
    before = bayes.priors.spec_model.spec
    for bad in ({"irregular": True, "level": {"kind": "local_level"}, "seasonal": [{"period": None}]},
                {"level": {"kind": ["local_level"]}}, {"level": "local_level", "cycle": {"period_bounds": 6}},
                {"level": "local_level", "cycle": {"period_bounds": [6, None]}},
                {"level": "local_level", "priors": {"x": 5}}):
        load(bayes, bad, "bad.json")
        assert bayes.status == "error" and bayes.message.startswith("Could not load bad.json: spec field '")
        assert bayes.priors.spec_model.spec == before


def test_a_spec_regressing_on_columns_the_data_lacks_is_refused(bayes):
    """Nile has no petrol_price: the spec is refused (not loaded without its regression) and says why."""
    spec_model = bayes.priors.spec_model
    before = spec_model.spec
    load(bayes, {"irregular": True, "level": {"kind": "local_linear_trend"},
                 "regression": {"columns": ["petrol_price"], "coefficients": "parameters"}}, "spec_reg.json")
    assert bayes.status == "error" and "spec_reg.json" in bayes.message
    assert "petrol_price" in bayes.message and "'nile' does not have" in bayes.message
    assert spec_model.spec == before and spec_model.level == before.level


def test_a_spec_regressing_on_columns_not_chosen_says_so():
    data = DataModel(dataset="seatbelts")
    spec = SpecModel(data)
    data.exog = ["law"]
    with pytest.raises(ValueError, match=r"\['petrol_price'\], which are not chosen as regressors"):
        spec.load({"level": "local_level", "regression": {"columns": ["petrol_price", "law"]}})
    spec.load({"level": "local_level", "regression": {"columns": ["law"], "coefficients": "state"}})
    assert spec.spec.regression.columns == ("law",) and spec.spec.regression.coefficients == "state"


def test_an_invalid_prior_in_a_loaded_spec_is_refused_when_loaded(bayes):
    """half_normal with scale -5 used to load silently and fail only at MAP time."""
    before = (bayes.priors.spec_model.spec, dict(bayes.priors.edits))
    load(bayes, {"irregular": True, "level": {"kind": "local_level"},
                 "priors": {"sigma2.level": {"dist": "half_normal", "scale": -5}}}, "spec_badprior.json")
    assert bayes.status == "error" and "sigma2.level" in bayes.message and "positive" in bayes.message
    assert (bayes.priors.spec_model.spec, dict(bayes.priors.edits)) == before
    load(bayes, {"irregular": True, "level": {"kind": "local_level"},
                 "priors": {"sigma2.level": {"dist": "half_normal", "scale": 5}}}, "spec_prior.json")
    assert bayes.status == "idle" and bayes.priors.edits == {"sigma2.level": {"dist": "half_normal", "scale": 5}}


def test_an_ar_order_the_data_cannot_identify_is_refused_next_to_its_widget():
    """58 Nile years, local level + irregular + AR(p): 3 + p parameters, and 1 + p states with an
    unknown start (the level's and the AR's lags), each using up one observation. AR(50) used to be
    accepted without a word; now the largest order with 3 + p <= 58 - (1 + p), 27, is the limit,
    and the message under the AR widget names it."""
    data = DataModel(dataset="nile")
    table = data.frame.reset_index().iloc[:58]
    assert data.load_upload(table.to_csv(index=False).encode(), "nile58.csv") and len(data.y) == 58
    spec = SpecModel(data)
    view = ModelView(model=spec)
    spec.ar_order = 50
    assert spec.spec is None and list(spec.errors) == ["ar"]
    assert "AR order 50 makes 53 parameters" in spec.errors["ar"] and "at most 27" in spec.errors["ar"]
    assert [m for m in shown_problems(view) if "AR order 50" in m]
    for order, fits in ((27, True), (28, False)):
        spec.ar_order = order
        assert (spec.spec is not None) == fits and (3 + order <= 58 - (1 + order)) == fits
    spec.ar_order = 1
    assert spec.errors == {} and not [m for m in shown_problems(view) if "AR order" in m]
