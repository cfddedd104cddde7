"""Filters and saturation detectors.

Filters remove endpoints from a profile's view; they never add one (the result is a mask over the view
they were given). Detectors turn a set of endpoints into one saturation number (≥ 1.0 = saturated), which
the service uses to shed sheddable requests. ``utilization-detector`` and ``concurrency-detector`` are
both, as in the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from scoring._params import Params
from scoring.errors import ConfigurationError
from scoring.matrix import BoolArray
from scoring.plugin import Filter, SaturationDetector, View
from scoring.subset import subset_mask
from scoring.types import PickRequest

#: Request header of the conformance suite naming the endpoints a pick must stay within.
TEST_SELECTION_HEADER = "test-epp-endpoint-selection"


class MetricsStalenessFilter(Filter):
    """``metrics-staleness-filter`` (ours) — drop endpoints whose last successful scrape is too old.

    Keeps ``now - scraped_at ≤ threshold``; never-scraped endpoints (``scraped_at = -inf``) are dropped.
    Parameters: ``threshold`` (duration, default 200ms — the reference detector's staleness limit),
    ``failOpen`` (default true: when every endpoint is stale — the scraper is down, not the fleet — keep
    them all rather than fail every request). Not in any default profile: the load estimate already
    corrects stale gauges, see ``scoring/README.md``.
    """

    type_name: ClassVar[str] = "metrics-staleness-filter"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ("threshold", "failOpen"))
        self.threshold = params.duration("threshold", "200ms")
        self.fail_open = params.boolean("failOpen", True)
        super().__init__(name, params.effective)

    def keep(self, v: View, _req: PickRequest, now: float, /) -> BoolArray:
        return v.take(v.m.scraped_at) >= now - self.threshold

    def reason(self) -> str:
        return f"metrics older than {self.threshold:g}s"


class UtilizationDetector(Filter, SaturationDetector):
    """``utilization-detector`` — the reference's default saturation detector, also usable as a filter.

    Per endpoint: ``u = max(waiting / queueDepthThreshold, kv_usage / kvCacheUtilThreshold)`` from the
    scraped gauges (not the dispatched estimate: the thresholds are calibrated on what the server
    reports). An endpoint whose metrics are older than ``metricsStalenessThreshold`` counts as ``u = 1``.
    One missing gauge is ignored (the other decides); both missing counts as ``u = 1``.

    * Detector: mean of ``u`` over the endpoints; no endpoints → 1.0 (saturated). Not capped at 1.
    * Filter (fail-open): keep fresh endpoints with ``waiting < queueDepthThreshold * (1 + headroom)`` and
      ``kv_usage < kvCacheUtilThreshold * (1 + headroom)``; if none remain, keep them all.

    Parameters (reference): ``queueDepthThreshold`` int > 0 (default 5), ``kvCacheUtilThreshold`` in
    (0, 1] (default 0.8), ``metricsStalenessThreshold`` duration (default 200ms), ``headroom`` ≥ 0
    (default 0).
    """

    type_name: ClassVar[str] = "utilization-detector"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(
            name,
            self.type_name,
            parameters,
            ("queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold", "headroom"),
        )
        self.queue_threshold = float(params.integer("queueDepthThreshold", 5, minimum=1))
        self.kv_threshold = params.number(
            "kvCacheUtilThreshold", 0.8, minimum=0.0, exclusive_minimum=True, maximum=1.0
        )
        self.staleness = params.duration("metricsStalenessThreshold", "200ms")
        self.headroom = params.number("headroom", 0.0, minimum=0.0, maximum=100.0)
        self.fail_open = True
        Filter.__init__(self, name, params.effective)

    def _fresh(self, v: View, now: float) -> BoolArray:
        return v.take(v.m.scraped_at) >= now - self.staleness

    def keep(self, v: View, _req: PickRequest, now: float, /) -> BoolArray:
        waiting = v.take(v.m.waiting)
        kv = v.take(v.m.kv_usage)
        queue_ok = waiting < self.queue_threshold * (1.0 + self.headroom)
        kv_ok = kv < self.kv_threshold * (1.0 + self.headroom)
        waiting_unknown = np.isnan(waiting)
        kv_unknown = np.isnan(kv)
        queue_ok |= waiting_unknown & ~kv_unknown
        kv_ok |= kv_unknown & ~waiting_unknown
        return self._fresh(v, now) & queue_ok & kv_ok

    def reason(self) -> str:
        factor = 1.0 + self.headroom
        return (
            f"metrics older than {self.staleness:g}s, no load gauges, waiting >= "
            f"{self.queue_threshold * factor:g} or kv_usage >= {self.kv_threshold * factor:g}"
        )

    def saturation(self, v: View, now: float, /) -> float:
        if v.n == 0:
            return 1.0
        # junk gauges (inf, negative) count as unknown / zero, so one broken exporter cannot make the
        # mean inf or NaN
        waiting = v.take(v.m.waiting)
        kv = v.take(v.m.kv_usage)
        waiting = np.where(np.isfinite(waiting), np.maximum(waiting, 0.0), np.nan)
        kv = np.where(np.isfinite(kv), np.clip(kv, 0.0, 1.0), np.nan)
        per_endpoint = np.fmax(waiting / self.queue_threshold, kv / self.kv_threshold)
        per_endpoint[np.isnan(per_endpoint) | ~self._fresh(v, now)] = 1.0
        return float(per_endpoint.mean())


class ConcurrencyDetector(Filter, SaturationDetector):
    """``concurrency-detector`` — saturation from the requests in flight through us, not from gauges.

    Saturation = Σ inflight / (number of endpoints * ``maxConcurrency``); no endpoints → 1.0. As a filter
    (fail-open), drops endpoints with ``inflight ≥ maxConcurrency * (1 + headroom)`` (full: one more
    request would exceed the limit). Input: the ``inflight`` column (open streams through this picker).
    Parameters (reference): ``concurrencyMode`` (only ``requests``: we do not account tokens in flight),
    ``maxConcurrency`` int > 0 (default 100), ``maxTokenConcurrency`` (accepted, unused), ``headroom`` ≥ 0.
    """

    type_name: ClassVar[str] = "concurrency-detector"
    reads_scrapes: ClassVar[bool] = False

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(
            name,
            self.type_name,
            parameters,
            ("concurrencyMode", "maxConcurrency", "maxTokenConcurrency", "headroom"),
        )
        mode = params.string("concurrencyMode", "requests", choices=("requests", "tokens"))
        if mode != "requests":
            raise ConfigurationError(
                f"plugin {name!r} (type {self.type_name!r}): concurrencyMode 'tokens' is not supported "
                "(this picker accounts requests in flight, not tokens); use 'requests'"
            )
        self.max_concurrency = float(params.integer("maxConcurrency", 100, minimum=1))
        params.integer("maxTokenConcurrency", 1_000_000, minimum=1)
        self.headroom = params.number("headroom", 0.0, minimum=0.0, maximum=100.0)
        self.fail_open = True
        Filter.__init__(self, name, params.effective)

    def keep(self, v: View, _req: PickRequest, _now: float, /) -> BoolArray:
        return v.take(v.m.inflight) < self.max_concurrency * (1.0 + self.headroom)

    def reason(self) -> str:
        return f"in flight >= {self.max_concurrency * (1.0 + self.headroom):g}"

    def saturation(self, v: View, _now: float, /) -> float:
        if v.n == 0:
            return 1.0
        return float(v.take(v.m.inflight).sum() / (v.n * self.max_concurrency))


class HeaderBasedTestingFilter(Filter):
    """``header-based-testing-filter`` — the conformance suite's contract, not for production routing.

    Keeps the endpoints listed in request header ``test-epp-endpoint-selection`` (comma-separated ``ip``
    or ``ip:port``; a bare IP selects every port of that pod). Header absent → removes every endpoint,
    as the reference does (not fail-open: the suite checks that picks stay within the list).
    """

    type_name: ClassVar[str] = "header-based-testing-filter"
    request_dependent: ClassVar[bool] = True

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ())
        super().__init__(name, params.effective)

    def keep(self, v: View, req: PickRequest, _now: float, /) -> BoolArray:
        header = req.headers.get(TEST_SELECTION_HEADER)
        if not header:
            return np.zeros(v.n, dtype=np.bool_)
        entries = [e for e in (part.strip() for part in header.split(",")) if e]
        return v.take(subset_mask(v.m, entries, match_port=True))

    def reason(self) -> str:
        return f"not listed in request header {TEST_SELECTION_HEADER}"


class LoraCapacityFilter(Filter):
    """``lora-capacity-filter`` (ours) — for a known adapter, drop endpoints that cannot serve it soon.

    When ``target_model`` is an adapter some endpoint lists (active or waiting), keep endpoints where it
    is active or waiting, where there is room to load it (``|active| + |waiting| < max_lora``), or whose
    ``max_lora`` is unknown (no LoRA information: cannot judge). Other requests pass untouched: a base
    model needs no adapter slot, and an adapter nobody has loaded yet cannot be told from a base model.
    Fail-open: if nothing would remain, keep everything (the affinity scorer still ranks them).
    """

    type_name: ClassVar[str] = "lora-capacity-filter"
    request_dependent: ClassVar[bool] = True

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ())
        self.fail_open = True
        super().__init__(name, params.effective)

    def keep(self, v: View, req: PickRequest, _now: float, /) -> BoolArray:
        m = v.m
        adapter = m.lora_vocab.get(req.target_model)
        if adapter is None:
            return np.ones(v.n, dtype=np.bool_)
        max_lora = v.take(m.max_lora)
        keep = v.take(m.lora_count) < max_lora
        keep |= np.isnan(max_lora)
        keep |= v.take_adapter(m.lora_active, adapter)
        keep |= v.take_adapter(m.lora_waiting, adapter)
        return keep

    def reason(self) -> str:
        return "adapter neither loaded nor waiting, and no free adapter slot"
