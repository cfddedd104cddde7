"""Vectorized endpoint scoring: pure numpy + stdlib, no I/O.

The service and the fleet simulator both build a :class:`Scheduler` (from reference-style plugin specs,
or :func:`default_scheduler`) and call :meth:`Scheduler.schedule` with an :class:`EndpointMatrix`
snapshot. See ``scoring/README.md``.
"""

from scoring.errors import ConfigurationError, NoEndpointsAvailable
from scoring.matrix import EndpointMatrix, EndpointRow
from scoring.plugin import Category, Dependence, Filter, Picker, SaturationDetector, Scorer, View
from scoring.profiles import ExternalPolicy, ProfileChoice, Profiles
from scoring.registry import (
    Kind,
    PluginSpec,
    ProfileSpec,
    Registry,
    build_profiles,
    build_scheduler,
    default_registry,
    default_scheduler,
    default_specs,
    reference_default_scheduler,
    reference_default_specs,
)
from scoring.scheduler import Scheduler, WeightedScorer
from scoring.subset import subset_mask
from scoring.types import (
    Decision,
    FilterRecord,
    PickRequest,
    PickResult,
    PluginTiming,
    PrefixMatch,
    PrefixRecord,
    ScorerRecord,
)

__all__ = [
    "Category",
    "ConfigurationError",
    "Decision",
    "Dependence",
    "EndpointMatrix",
    "EndpointRow",
    "ExternalPolicy",
    "Filter",
    "FilterRecord",
    "Kind",
    "NoEndpointsAvailable",
    "PickRequest",
    "PickResult",
    "Picker",
    "PluginSpec",
    "PluginTiming",
    "PrefixMatch",
    "PrefixRecord",
    "ProfileChoice",
    "ProfileSpec",
    "Profiles",
    "Registry",
    "SaturationDetector",
    "Scheduler",
    "Scorer",
    "ScorerRecord",
    "View",
    "WeightedScorer",
    "build_profiles",
    "build_scheduler",
    "default_registry",
    "default_scheduler",
    "default_specs",
    "reference_default_scheduler",
    "reference_default_specs",
    "subset_mask",
]
