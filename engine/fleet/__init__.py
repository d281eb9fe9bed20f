"""Many series at once: `fit_many` fits one structural model to every series of a fleet.

The package follows the job's path:

  table        the input as a `SeriesTable` (ids, values (series, time), regressors) and the batch plan
  filtering    the batched exact-diffuse filter, each member's arithmetic its own
  coordinates  each member's unconstrained coordinates (MLE's data scales, MAP's priors)
  scoring      batched Fisher scoring as a pure `scoring_init` / `scoring_step` pair
  batch        `run_batch`, the unit of work the backends move
  jobs         `fit_many`: batches dispatched locally or on Ray, the table assembled
"""

from .batch import ANOMALY_Z, METHODS, Batch, BatchOutput, FleetJob, run_batch
from .jobs import BACKENDS, FleetCancelled, FleetResult, fit_many
from .table import SeriesTable, as_series_table, default_batch_size

__all__ = ["ANOMALY_Z", "BACKENDS", "METHODS", "Batch", "BatchOutput", "FleetCancelled", "FleetJob", "FleetResult",
           "SeriesTable", "as_series_table", "default_batch_size", "fit_many", "run_batch"]
