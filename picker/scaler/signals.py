"""The pool as the scaler sees it: one :class:`~picker.scaler.ports.PoolSample` from the datastore's snapshot.

* **Pods**: the snapshot's rows grouped by pod (a pod has one endpoint per target port / data-parallel
  rank): in flight through us (every ``--workers`` process), scraped queue and running requests, LoRA
  adapters active or waiting. Draining pods stay in the sample (the planner needs their in-flight count).
* **Demand**: requests ever routed to each endpoint (``Datastore.requests_sent``); the controller divides
  their growth by the time between two samples.
* **Saturated**: the default profile's saturation detector over the whole pool (≥ 1), the same verdict that
  sheds sheddable requests.
* **Stale**: some member's metrics are older than the staleness threshold (a scale-down never happens then).
* **Queue**: the sum of the scraped queues (unknown queues count as empty).
* **Held**: requests waiting for a first replica (scale from zero), from the ext_proc side.
* **Tokens**: prompt + completion tokens served in all (``tokens()``: our token counters, fed by the model
  servers' ``usage`` at each response's end, every ``--workers`` process included), when given.
* **Cache value** (the victim rule's seam): ``cache_value(pod)`` when a prefix index is wired, else None.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from picker.scaler.ports import PodSignal, PoolSample
from picker.state.endpoints import Endpoint
from scoring import EndpointMatrix, Scheduler


class _State(Protocol):
    def snapshot(self) -> EndpointMatrix: ...

    def endpoints(self) -> tuple[Endpoint, ...]: ...

    def requests_sent(self) -> dict[str, float]: ...


class _Active(Protocol):
    @property
    def scheduler(self) -> Scheduler: ...


class _Config(Protocol):
    @property
    def active(self) -> _Active: ...


class DatastoreSignals:
    """Implements :class:`~picker.scaler.ports.PoolSignals` over the datastore and the active config."""

    def __init__(
        self,
        datastore: _State,
        config: _Config,
        *,
        staleness_s: Callable[[], float],
        held: Callable[[], int] = lambda: 0,
        tokens: Callable[[], float] | None = None,
        cache_value: Callable[[str], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ds = datastore
        self._config = config
        self._staleness_s = staleness_s
        self._held = held
        self._tokens = tokens
        self._cache_value = cache_value
        self._clock = clock

    def sample(self) -> PoolSample:
        m = self._ds.snapshot()
        now = self._clock()
        pod_of = {e.name: e.pod or e.name for e in self._ds.endpoints()}
        rows: dict[str, list[int]] = {}
        for i, name in enumerate(m.names):
            rows.setdefault(pod_of.get(name, name), []).append(i)
        vocab = sorted(m.lora_vocab.items(), key=lambda kv: kv[1])
        pods = tuple(self._pod(m, pod, idx, vocab) for pod, idx in rows.items())
        n = len(m)
        stale = bool(n and np.any(now - m.scraped_at > self._staleness_s()))
        saturated = bool(n and self._config.active.scheduler.saturation(m, now=now) >= 1.0)
        waiting = m.waiting[~np.isnan(m.waiting)]
        return PoolSample(
            pods=pods,
            sent=self._ds.requests_sent(),
            saturated=saturated,
            stale=stale,
            held=self._held(),
            queue=float(waiting.sum()) if waiting.size else 0.0,
            tokens=None if self._tokens is None else self._tokens(),
        )

    def _pod(self, m: EndpointMatrix, pod: str, idx: list[int], vocab: list[tuple[str, int]]) -> PodSignal:
        rows = np.asarray(idx)
        active: set[str] = set()
        waiting_adapters: set[str] = set()
        for name, col in vocab:
            if m.lora_active[rows, col].any():
                active.add(name)
            if m.lora_waiting[rows, col].any():
                waiting_adapters.add(name)
        return PodSignal(
            name=pod,
            inflight=float(m.inflight[rows].sum()),
            waiting=_nansum(m.waiting[rows]),
            running=_nansum(m.running[rows]),
            adapters=tuple(sorted(active)),
            waiting_adapters=tuple(sorted(waiting_adapters)),
            cache_value=None if self._cache_value is None else self._cache_value(pod),
        )


def _nansum(values: np.ndarray) -> float:
    """The sum of the known values; NaN when none is known."""
    known = values[~np.isnan(values)]
    return float(known.sum()) if known.size else math.nan
