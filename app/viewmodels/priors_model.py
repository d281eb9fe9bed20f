"""PriorsModel: the priors of the Bayesian fit, per parameter: data-scaled defaults and user edits."""

from __future__ import annotations

import logging

import param

import engine
from engine.spec import ModelSpec

from ..codegen import spec_json
from .data_model import DataModel
from .spec_model import SpecModel

log = logging.getLogger("streamssm.app")


class PriorsModel(param.Parameterized):
    """The data-scaled default prior of every sampled parameter and the user's edits of them.

    Edits are checked by `engine.resolve_priors` one parameter at a time; a rejected edit keeps
    its message in `errors[name]` and does not enter the spec. `spec` is the model spec with the
    accepted edits in its `priors` field (what the Bayesian fit uses and the JSON shows).
    """

    defaults = param.Dict(default={}, constant=True, doc="parameter → default prior {'dist': ..., args}")
    edits = param.Dict(default={}, constant=True, doc="parameter → accepted user prior")
    errors = param.Dict(default={}, constant=True, doc="parameter → why the last edit was refused")
    spec = param.Parameter(default=None, constant=True, doc="ModelSpec with the accepted priors, or None")
    spec_text = param.String(default="", constant=True)

    def __init__(self, data: DataModel, spec: SpecModel, **params):
        super().__init__(**params)
        self.data, self.spec_model = data, spec
        spec.param.watch(self._refresh, ["spec"])
        data.param.watch(self._refresh, ["frame", "target", "exog", "log_transform"])
        self._refresh()

    @property
    def families(self) -> list[str]:
        return sorted(engine.PRIOR_FAMILIES)

    @staticmethod
    def arguments(family: str) -> tuple[str, ...]:
        """The arguments a family takes, in constructor order (NumPyro's parameterisation)."""
        return engine.PRIOR_FAMILIES[family][1]

    def prior(self, name: str) -> dict:
        """The prior in force for one parameter: the user's edit, else the default."""
        return dict(self.edits.get(name) or self.defaults[name])

    def set_prior(self, name: str, prior: dict) -> bool:
        """Try a prior for one parameter; True when accepted, else the message is in `errors[name]`."""
        base = self.spec_model.spec
        if base is None:
            self._set(errors={**self.errors, name: "Fix the model first."})
            return False
        try:
            engine.resolve_priors(base, self.data.y, self.data.exog_frame, priors={name: dict(prior)})
        except ValueError as exc:
            self._set(errors={**self.errors, name: str(exc)})
            return False
        errors = {k: v for k, v in self.errors.items() if k != name}
        self._set(edits={**self.edits, name: dict(prior)}, errors=errors)
        self._build()
        return True

    def reset(self, name: str | None = None) -> None:
        """Back to the default prior for one parameter (or all)."""
        keep = lambda d: {k: v for k, v in d.items() if name is not None and k != name}
        self._set(edits=keep(self.edits), errors=keep(self.errors))
        self._build()

    def load(self, priors: dict) -> None:
        """Take the priors of a loaded spec as the user's edits."""
        self._set(edits={k: dict(v) for k, v in priors.items()}, errors={})
        self._refresh()

    def _set(self, **values):
        with param.edit_constant(self):
            self.param.update(**values)

    def _refresh(self, *_):
        """New data or model: recompute the defaults and keep the edits that still apply."""
        base = self.spec_model.spec
        defaults = {}
        if base is not None and self.data.ready:
            try:
                defaults = engine.default_priors(base, self.data.y, self.data.exog_frame)
            except ValueError as exc:
                log.warning("default priors failed for %s: %s", base.to_dict(), exc)
        edits = {k: v for k, v in self.edits.items() if k in defaults}
        self._set(defaults=defaults, edits=edits, errors={k: v for k, v in self.errors.items() if k in defaults})
        self._build()

    def _build(self):
        base = self.spec_model.spec
        spec = None
        if base is not None:
            d = base.to_dict()
            if self.edits:
                d["priors"] = self.edits
            spec = ModelSpec.from_dict(d)
        self._set(spec=spec, spec_text=spec_json(spec) if spec is not None else "")
