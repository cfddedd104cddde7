"""The supervisor's side of one pool for its workers (:class:`PoolHost`): the pool's shared-memory segment
and publishing datastore, and the answers to what the workers send about that pool.

Each pool a ``--workers`` supervisor serves (one, or one per ``--pool``) has its own segment (its
endpoints, metrics, config document and the workers' counter rows), its own merged request metrics, tenant
budget, external endpoints' budgets, held-request counts and prefix index replica, exactly as one pool in
one process; a worker's message about a pool reaches that pool's host and nothing else
(:mod:`picker.workers.channel`: ``["pool", index, message]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from picker.pool import ServedPool
from picker.routing.external_remote import ExternalHost
from picker.state.datastore import Datastore
from picker.state.segment import SharedSegment
from picker.telemetry import MergedRequestMetrics
from picker.tenants.remote import BudgetHost
from picker.workers.channel import HELD, PREFIX_ENTRIES

__all__ = ["PoolHost"]


class PoolHost:
    """One pool's state as the supervisor holds it for the workers. Constructing it starts nothing;
    :meth:`attach` connects it to the pool the service built over :attr:`datastore`."""

    def __init__(self, segment: SharedSegment, datastore: Datastore) -> None:
        self.segment = segment
        self.datastore = datastore
        self.merged: MergedRequestMetrics | None = None
        self.budget: BudgetHost | None = None
        self.external: ExternalHost | None = None
        self._held: Callable[[object, int], None] | None = None
        self._prefix: Callable[[object], None] | None = None
        #: per worker index, the entries of its prefix-index replica as it last reported them
        self._prefix_entries: dict[int, int] = {}

    def attach(self, pool: ServedPool) -> None:
        """Export the workers' request metrics under this pool, answer their budget and external
        reservations from this pool's, count their held requests and apply their prefix records here."""
        self.merged = MergedRequestMetrics((*pool.telemetry.request_metrics(), *pool.flow.request_metrics()))
        pool.telemetry.merge_workers(self.merged)
        tenants = pool.tenants
        self.budget = BudgetHost(lambda: tenants.memory, tenants.metrics.rejected, relay=tenants)
        tenants.show_workers(self.budget.holdings)  # /debug/tenants: each worker's share next to the meters
        self.external = ExternalHost(pool.external)
        self._held = pool.held_elsewhere
        store, prefix, datastore = pool.config_store, pool.prefix, self.datastore

        def share_prefix(payload: object) -> None:
            prefix.receive(payload, store.active.profiles, datastore.snapshot(), time.monotonic())

        self._prefix = share_prefix

    def handle(self, index: int, message: list[Any]) -> list[Any] | None:
        """Worker ``index``'s message about this pool; the reply to send back to it, if any (a prefix
        batch is also forwarded to the other workers, by the caller)."""
        kind = message[0]
        if kind == "metrics" and self.merged is not None:
            self.merged.update(index, [tuple(f) for f in message[1]])
        elif kind == "prefix" and len(message) == 2 and self._prefix is not None:
            self._prefix(message[1])
        elif kind == PREFIX_ENTRIES and len(message) == 2 and isinstance(message[1], int):
            self._prefix_entries[index] = message[1]
        elif kind == HELD and self._held is not None:
            self._held(index, int(message[1]))
        elif kind.startswith("tenants.") and self.budget is not None:
            return self.budget.handle(index, message)
        elif kind.startswith("external.") and self.external is not None:
            return self.external.handle(index, message)
        return None

    def prefix_entries(self, index: int) -> int | None:
        """The entries of worker ``index``'s prefix-index replica as it last reported them (None: not yet
        reported since it started)."""
        return self._prefix_entries.get(index)

    def retire(self, index: int) -> float:
        """Worker ``index`` exited: settle its open streams in the accounting and forget what it held;
        returns the streams released."""
        released = float(self.datastore.ledger.settle_row(index))
        self._prefix_entries.pop(index, None)  # a restarted worker starts an empty replica
        if self._held is not None:
            self._held(index, 0)
        if self.merged is not None:
            self.merged.retire(index)
        if self.budget is not None:
            self.budget.retire(index)
        if self.external is not None:
            self.external.retire(index)
        return released
