"""Model-server metrics in: per-engine specs, the fast page extractor and engine detection.

The pure part (this package's public surface) turns a ``/metrics`` page into
:class:`picker.state.metrics.EndpointMetrics`; the async scraper loop builds on it.
"""

from __future__ import annotations

from picker.metricspec import MetricSpec, parse_spec
from picker.scrape.detect import detect_engine
from picker.scrape.engines import BUILTIN_ENGINES, DEFAULT_ENGINE, EngineSpec, engine_specs
from picker.scrape.extract import Extractor

__all__ = [
    "BUILTIN_ENGINES",
    "DEFAULT_ENGINE",
    "EngineSpec",
    "Extractor",
    "MetricSpec",
    "detect_engine",
    "engine_specs",
    "parse_spec",
]
