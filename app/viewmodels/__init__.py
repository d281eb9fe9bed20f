"""View-models: per-session state and logic as `param.Parameterized` classes, no widgets."""

from .data_model import DataModel
from .spec_model import SpecModel
from .fit_model import FitModel
from .learn_model import LearnModel
from .job import CancelFlag, Job

__all__ = ["DataModel", "SpecModel", "FitModel", "LearnModel", "CancelFlag", "Job"]
