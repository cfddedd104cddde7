"""What operators see of tenants: usage counters, window gauges, refusals (bounded labels).

* ``ai_tokens_total{tenant,model,kind="input|output"}`` (counter) and ``ai_cost_total{tenant,model}``
  (counter, currency units): settled usage, counted where the budget is applied (the process with a
  :class:`~picker.tenants.backend.MemoryBackend`, the ``--workers`` supervisor, or each replica for Redis).
* ``ai_tokens_used{tenant,window="minute|hour"}``, ``ai_tokens_limit{tenant,window}`` (gauges, the current
  window; ``_limit`` only for limited tenants) and ``ai_tokens_reserved{tenant,window}`` (held by requests
  still running); ``ai_cost_used``/``ai_cost_limit{tenant,window="day|month"}`` likewise. Read from the
  backend at scrape time (no stale series when an idle tenant's account is dropped). The alert
  ``TokenBudgetNearLimit`` divides ``ai_tokens_used`` by ``ai_tokens_limit``.
* ``picker_tenant_rejections_total{tenant,reason}``: refusals, by meter or queue outcome.

Labels (:class:`picker.labels.BoundedLabel`, the bound of every peer-chosen label): ``tenant`` comes from
a header. :class:`picker.tenants.identity.TenantIds` bounds the ids *tracked at once* (``maxTenants``),
but forgets idle ones to make room, so over the life of the process the ids seen are unbounded while a
counter's series live forever: the label is bounded again here, to ``--metrics-label-max-values`` ids of
at most ``--metrics-label-max-length`` characters (listed ids and ``anonymous`` always count), then
``other``; budgets stay per id. ``model`` comes from request bodies: at most :data:`MAX_MODELS` values of
at most ``--metrics-label-max-length`` characters (priced models always count), then ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from picker.labels import MAX_LABEL_LENGTH, MAX_LABEL_VALUES, BoundedLabel
from picker.tenants.backend import AccountView, Settlement
from picker.tenants.ledger import COST_DAY, COST_MONTH, TOKENS_HOUR, TOKENS_MINUTE, WINDOW_NAMES
from picker.tenants.policy import NANO

__all__ = ["MAX_MODELS", "TenantMetrics"]

MAX_MODELS: Final = 200
OTHER: Final = "other"
_TOKEN_METERS: Final = (TOKENS_MINUTE, TOKENS_HOUR)
_COST_METERS: Final = (COST_DAY, COST_MONTH)


class TenantMetrics:
    """Counters (a :class:`~picker.tenants.backend.UsageSink`) and the gauge collector, on an injected
    registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        accounts: Callable[[], Iterable[AccountView]],
        *,
        label_values: int = MAX_LABEL_VALUES,
        label_length: int = MAX_LABEL_LENGTH,
    ) -> None:
        """``label_values`` / ``label_length``: the bound of the ``tenant`` label (and the length of the
        ``model`` label), the process's ``--metrics-label-max-*`` flags."""
        #: (tenant, model label) -> [input tokens, output tokens, cost in nano-units]: plain integers added
        #: on the loop, exported by :class:`_UsageCollector` (a settlement costs two dict reads and three
        #: additions instead of three locked counter increments)
        self.usage: dict[tuple[str, str], list[int]] = {}
        registry.register(_UsageCollector(self.usage))
        self.rejections_total = Counter(
            "picker_tenant_rejections_total",
            "Requests refused for a tenant, by the limit or queue outcome that refused them.",
            ["tenant", "reason"],
            registry=registry,
        )
        self.backend_up_gauge = Gauge(
            "picker_tenant_backend_up",
            "1 while the tenants' budget store (Redis) answers; 0 while it does not.",
            registry=registry,
        )
        self.backend_up_gauge.set(1)
        self.backend_failures = Counter(
            "picker_tenant_backend_failures_total",
            "Requests admitted (fail_mode=open) or refused (closed) because the tenants' budget store "
            "did not answer.",
            ["fail_mode"],
            registry=registry,
        )
        #: backend failures counted since :meth:`take_counts`, by fail mode (what a worker passes on)
        self._failures_untaken: dict[str, int] = {}
        self._tenants = BoundedLabel(max_values=label_values, max_length=label_length, pinned=(OTHER,))
        registry.register(_WindowCollector(accounts, self._tenants))
        self._models = BoundedLabel(max_values=MAX_MODELS, max_length=label_length)

    def price_models(self, models: Iterable[str]) -> None:
        """Models with a price are always their own label value."""
        self._models.pin(models)

    def pin_tenants(self, tenants: Iterable[str]) -> None:
        """Ids that are always their own label value (listed tenants, the anonymous id)."""
        self._tenants.pin(tenants)

    def settled(self, s: Settlement) -> None:
        if not (s.input_tokens or s.output_tokens or s.cost_nano):
            return
        # two set lookups for known values; keyed by the labels, never by what a peer sent (a 1 MiB model
        # name must not be kept alive as a cache key)
        self._add(s.tenant, s.model, s.input_tokens, s.output_tokens, s.cost_nano)

    def _add(self, tenant: str, model: str, inp: int, out: int, nano: int) -> None:
        label = (self._tenants(tenant), self._models(model))
        row = self.usage.get(label)
        if row is None:
            row = self.usage[label] = [0, 0, 0]
        row[0] += inp
        row[1] += out
        row[2] += nano

    def rejected(self, tenant: str, reason: str) -> None:
        self.rejections_total.labels(self._tenants(tenant), reason).inc()

    def backend_up(self, *, up: bool) -> None:
        self.backend_up_gauge.set(1 if up else 0)

    def backend_failure(self, fail_mode: str) -> None:
        self.backend_failures.labels(fail_mode).inc()
        self._failures_untaken[fail_mode] = self._failures_untaken.get(fail_mode, 0) + 1

    def take_counts(self) -> tuple[list[list[Any]], dict[str, int]]:
        """The usage rows ``[tenant, model, input, output, cost nano]`` and backend failures counted since
        the last call, moved out of this process: a ``--workers`` worker passes them to the supervisor,
        whose ``/metrics`` is the only one (:meth:`add_counts`); the worker's own counters restart at 0."""
        rows = [[tenant, model, *values] for (tenant, model), values in self.usage.items()]
        self.usage.clear()
        failures, self._failures_untaken = self._failures_untaken, {}
        return rows, failures

    def add_counts(self, rows: Iterable[list[Any]], failures: dict[str, int]) -> None:
        """Another process's :meth:`take_counts`, added to this one's counters (labels bounded again)."""
        for tenant, model, inp, out, nano in rows:
            self._add(str(tenant), str(model), int(inp), int(out), int(nano))
        for fail_mode, count in failures.items():
            self.backend_failures.labels(fail_mode).inc(int(count))


class _UsageCollector(Collector):
    def __init__(self, usage: dict[tuple[str, str], list[int]]) -> None:
        self._usage = usage

    def describe(self) -> list[Any]:
        return list(self._families())

    def collect(self) -> Iterator[CounterMetricFamily]:
        tokens, cost = self._families()
        for (tenant, model), (inp, out, nano) in list(self._usage.items()):
            tokens.add_metric([tenant, model, "input"], float(inp))
            tokens.add_metric([tenant, model, "output"], float(out))
            cost.add_metric([tenant, model], nano / NANO)
        yield tokens
        yield cost

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "ai_tokens", "Tokens settled per tenant and model.", labels=["tenant", "model", "kind"]
            ),
            CounterMetricFamily(
                "ai_cost",
                "Cost settled per tenant and model, in the configured currency.",
                labels=["tenant", "model"],
            ),
        )


class _WindowCollector(Collector):
    """The window gauges, read from the accounts at scrape time. Accounts whose ids share a label
    (``other``) are summed into one series; a limit is exported only for a label that is one tenant's own."""

    def __init__(self, accounts: Callable[[], Iterable[AccountView]], label: BoundedLabel) -> None:
        self._accounts = accounts
        self._label = label

    def describe(self) -> list[Any]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        tokens_used, tokens_reserved, tokens_limit, cost_used, cost_limit = families
        #: label -> [used per meter, reserved per meter, limits or None, accounts summed]
        rows: dict[str, list[Any]] = {}
        for view in self._accounts():
            name = self._label(view.tenant)
            row = rows.get(name)
            if row is None:
                rows[name] = [list(view.used), list(view.reserved), view.limits, 1]
                continue
            row[0] = [a + b for a, b in zip(row[0], view.used, strict=True)]
            row[1] = [a + b for a, b in zip(row[1], view.reserved, strict=True)]
            row[3] += 1
        for name, (used, reserved, own_limits, count) in rows.items():
            limits = own_limits if count == 1 else None  # several tenants' limits do not add up to one
            for i in _TOKEN_METERS:
                labels = [name, WINDOW_NAMES[i]]
                tokens_used.add_metric(labels, float(used[i]))
                tokens_reserved.add_metric(labels, float(reserved[i]))
                if limits is not None and limits[i] is not None:
                    tokens_limit.add_metric(labels, float(limits[i]))
            for i in _COST_METERS:
                labels = [name, WINDOW_NAMES[i]]
                cost_used.add_metric(labels, used[i] / NANO)
                limit = limits[i] if limits is not None else None
                if limit is not None:
                    cost_limit.add_metric(labels, limit / NANO)
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        labels = ["tenant", "window"]
        return (
            GaugeMetricFamily(
                "ai_tokens_used", "Tokens settled in the current window, per tenant.", labels=labels
            ),
            GaugeMetricFamily(
                "ai_tokens_reserved", "Tokens held by a tenant's running requests.", labels=labels
            ),
            GaugeMetricFamily("ai_tokens_limit", "A tenant's token limit for the window.", labels=labels),
            GaugeMetricFamily(
                "ai_cost_used",
                "Cost settled in the current window, per tenant (currency units).",
                labels=labels,
            ),
            GaugeMetricFamily("ai_cost_limit", "A tenant's cost budget for the window.", labels=labels),
        )
