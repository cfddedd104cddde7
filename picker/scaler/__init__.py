"""Off-peak scale-down (and back up) of the model-server workload behind the pool.

The pure part decides: :mod:`~picker.scaler.schedule` (cron windows), :mod:`~picker.scaler.forecast`
(same time of week), :mod:`~picker.scaler.victim` (which pod a scale-down costs least),
:mod:`~picker.scaler.capacity` (per-replica capacity) and :mod:`~picker.scaler.plan` (the tick-by-tick
decision with its drain / remove / verify protocol). :mod:`~picker.scaler.history` reads the demand history
from Prometheus. See ``picker/scaler/README.md`` for the formulas and the rules.
"""

from __future__ import annotations

from picker.scaler.capacity import CapacityEstimate
from picker.scaler.forecast import DemandHistory, Forecast, forecast
from picker.scaler.plan import Action, Decision, Observation, Planner
from picker.scaler.schedule import Bounds, Schedule
from picker.scaler.victim import CacheValue, Candidate, PodView, choose, rank

__all__ = [
    "Action",
    "Bounds",
    "CacheValue",
    "Candidate",
    "CapacityEstimate",
    "Decision",
    "DemandHistory",
    "Forecast",
    "Observation",
    "Planner",
    "PodView",
    "Schedule",
    "choose",
    "forecast",
    "rank",
]
