"""One memory budget for every ``--workers`` worker: the supervisor holds it, workers ask over their pipe.

Why not a budget per worker: a tenant's limit would be multiplied by the number of workers, and the
kernel spreads connections, not tenants, over them. Why not shared memory: a reservation reads and writes
six meters of one tenant atomically, which the supervisor's single event loop gives for free.

* :class:`SupervisorBackend` (worker side) is a :class:`picker.tenants.backend.Backend`: ``reserve`` sends
  ``["tenants.reserve", id, tenant, limits, amounts]`` and returns a future the request awaits (one round
  trip on a local socket pair); ``settle`` sends ``["tenants.settle", ...]`` and returns at once; refusals
  are reported with ``["tenants.rejected", tenant, reason]``.
* :class:`BudgetHost` (supervisor side) answers them from the supervisor's
  :class:`~picker.tenants.backend.MemoryBackend` (whose sink counts the usage metrics, so ``/metrics`` and
  ``/debug/tenants`` of the supervisor show every worker's tenants) with ``["tenants.verdict", id, ...]``,
  and remembers each worker's open reservations: when a worker dies they are given back, and
  ``/debug/tenants`` shows each worker's share of a tenant's reservations (:meth:`BudgetHost.holdings`).
* With the Redis backend the workers talk to Redis themselves; about once a second each sends
  ``["tenants.usage", rows, failures, up, meters, leases]`` (``TenantService.export``): what it counted
  since the last one, the meters its script replies showed and its leases, which the supervisor's
  ``TenantService.merge_worker`` adds to (counters), keeps the newest of (meters) or keeps per worker
  (leases) for its ``/metrics`` and ``/debug/tenants``.

Messages are JSON lists (the workers' channel); integers and None only, no peer text but tenant ids and
model labels, which the worker already bounded.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from picker.tenants.backend import AccountView, MemoryBackend, Settlement, Verdict
from picker.tenants.ledger import Denial, Limits, Vector, actual_vector

__all__ = [
    "REJECTED",
    "RESERVE",
    "SETTLE",
    "USAGE",
    "VERDICT",
    "BudgetHost",
    "SupervisorBackend",
    "WorkerRelay",
]

RESERVE = "tenants.reserve"
VERDICT = "tenants.verdict"
SETTLE = "tenants.settle"
REJECTED = "tenants.rejected"
USAGE = "tenants.usage"
_ZERO: Vector = (0, 0, 0, 0, 0, 0)


class SupervisorBackend:
    """A worker's view of the supervisor's budget. ``send`` queues one message on the worker's pipe."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self._send = send
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Verdict]] = {}

    def reserve(self, tenant: str, limits: Limits | None, amounts: Vector) -> asyncio.Future[Verdict]:
        rid = next(self._ids)
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        future.add_done_callback(lambda _f: self._waiting.pop(rid, None))
        self._send([RESERVE, rid, tenant, list(limits) if limits is not None else None, list(amounts)])
        return future

    def deliver(self, message: list[Any]) -> None:
        """A ``tenants.verdict`` from the supervisor."""
        _, rid, hold, denial, remaining, windows = message
        future = self._waiting.get(rid)
        if future is None or future.done():
            if denial is None and hold:  # the request went away while asking: give the hold back
                self._send([SETTLE, hold, "", "", _ZERO, _ZERO, 0, 0, 0])
            return
        future.set_result(
            Verdict(
                Denial(*denial) if denial is not None else None,
                tuple(remaining),
                tuple(windows),
                hold=hold,
            )
        )

    def settle(self, s: Settlement) -> None:
        self._send(
            [
                SETTLE,
                s.hold,
                s.tenant,
                s.model,
                list(s.reserved),
                list(s.actual),
                s.input_tokens,
                s.output_tokens,
                s.cost_nano,
            ]
        )

    def rejected(self, tenant: str, reason: str) -> None:
        self._send([REJECTED, tenant, reason])

    def accounts(self) -> Iterator[AccountView]:
        """The accounts live in the supervisor (its ``/debug/tenants``)."""
        return iter(())

    def abandon(self) -> None:
        """The supervisor is gone: every waiting reservation fails (the request is refused with 503)."""
        from picker.errors import TenantUnavailable

        for future in list(self._waiting.values()):
            if not future.done():
                future.set_exception(
                    TenantUnavailable(
                        "the budget is unavailable (the supervisor is gone)", reason="backend_unavailable"
                    )
                )


class WorkerRelay(Protocol):
    """Where the supervisor takes the workers' Redis-backend counts (``TenantService``)."""

    def merge_worker(self, worker: int, export: list[Any]) -> None: ...

    def retire_worker(self, worker: int) -> None: ...


class BudgetHost:
    """The supervisor's side: reservations and settlements of every worker against one memory backend,
    and the workers' Redis-backend counts passed to ``relay``."""

    def __init__(
        self,
        backend: Callable[[], MemoryBackend],
        rejected: Callable[[str, str], None],
        relay: WorkerRelay | None = None,
    ) -> None:
        self._backend = backend
        self._rejected = rejected
        self._relay = relay
        self._holds: dict[int, dict[str, tuple[str, Vector]]] = {}
        self._ids = itertools.count(1)

    def handle(self, worker: int, message: list[Any]) -> list[Any] | None:
        """Apply one worker message; returns the reply to send, if any."""
        kind = message[0]
        if kind == RESERVE:
            _, rid, tenant, limits, amounts = message
            lim: Limits | None = tuple(limits) if limits is not None else None
            vec: Vector = tuple(amounts)
            verdict = self._backend().reserve(tenant, lim, vec)
            hold = ""
            if verdict.denial is None:
                hold = f"{worker}:{next(self._ids)}"
                self._holds.setdefault(worker, {})[hold] = (tenant, vec)
            d = verdict.denial
            denial = None if d is None else [d.meter, d.limit, d.in_use, d.requested, d.reset_at]
            return [VERDICT, rid, hold, denial, list(verdict.remaining), list(verdict.windows)]
        if kind == SETTLE:
            _, hold, tenant, model, reserved, actual, inp, out, cost = message
            held = self._holds.get(worker, {}).pop(hold, None)
            if held is None:
                return None  # unknown or already given back (the worker was settled as dead)
            if not tenant:  # a hold nobody waited for
                tenant, reserved = held[0], list(held[1])
            self._backend().settle(Settlement(tenant, model, tuple(reserved), tuple(actual), inp, out, cost))
            return None
        if kind == REJECTED:
            self._rejected(message[1], message[2])
        elif kind == USAGE and self._relay is not None:
            self._relay.merge_worker(worker, message[1:])
        return None

    def holdings(self) -> dict[str, dict[int, tuple[int, Vector]]]:
        """``/debug/tenants``: per tenant, per worker holding any, its open reservations' count and their
        sum (what that worker's running requests hold of the tenant's budget). Walks every open
        reservation: for the admin page, never the request path."""
        out: dict[str, dict[int, tuple[int, Vector]]] = {}
        for worker, holds in self._holds.items():
            for tenant, reserved in holds.values():
                per = out.setdefault(tenant, {})
                count, total = per.get(worker, (0, _ZERO))
                per[worker] = (count + 1, _add(total, reserved))
        return out

    def retire(self, worker: int) -> int:
        """The worker is gone: give back every reservation it still held (its streams died with it)."""
        if self._relay is not None:
            self._relay.retire_worker(worker)
        holds = self._holds.pop(worker, {})
        backend = self._backend()
        for tenant, reserved in holds.values():
            backend.settle(Settlement(tenant, "", reserved, actual_vector(0, 0, counted=False), 0, 0, 0))
        return len(holds)


def _add(a: Vector, b: Vector) -> Vector:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5])
