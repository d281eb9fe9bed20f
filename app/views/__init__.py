"""Thin `pn.viewable.Viewer` classes: each draws one view-model and forwards user actions to it."""

from .data_view import DataView
from .model_view import ModelView
from .fit_view import FitView
from .learn_view import LearnView

__all__ = ["DataView", "ModelView", "FitView", "LearnView"]
