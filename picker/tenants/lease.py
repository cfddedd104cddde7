"""A replica's lease of one tenant's budget: the local half of admission without a Redis round trip.

With the Redis backend, each replica holds for each active tenant a **lease**: a reservation in Redis
like a request's (a hold in the tenant's ``:h``/``:z`` keys, counted in ``reserved``, expiring unless
renewed), but sized for many requests. The replica admits requests against it locally, in microseconds,
and talks to Redis in the background (:mod:`picker.tenants.redis_backend`). This module is the local
arithmetic, pure and integer-only; the Lua side is ``redis_scripts.LEASE``.

Per meter ``i`` (the six of :mod:`picker.tenants.ledger`):

* ``granted[i]``: what the hold in Redis holds for this replica (as of the last reply);
* ``held[i]``: the reservations of running requests admitted on the lease;
* ``spent[i]``: what settled requests used and has not been reported to Redis yet.

Rules:

* **Admit** ``a`` locally iff the lease is valid and for every limited meter
  ``held[i] + spent[i] + a[i] <= granted[i]``; then ``held += a``. Otherwise the request is reserved in
  Redis as before (the fallback; it gives the lease's free part back in the same script, and a fallback
  that raced a change of the lease tries again: budget parked in this replica's lease never refuses this
  replica's request; ``picker/tenants/README.md``, "Leases").
* **Settle** locally: ``held -= a``, ``spent += actual``.
* **Sync** (background, one at a time per lease): report ``S = spent`` (Redis: ``used += S``, the hold
  shrinks by ``S``), give back ``R`` (idle, limits changed), ask ``W`` more with a minimum ``N`` (one
  request): Redis grants ``g[i] = min(W[i], floor((room[i] - L[i]) / replicas))`` on every limited meter,
  or nothing if any ``g[i] < N[i]``, where ``L`` is what the replica's requests are asking Redis for right
  now (a refill never takes the room of its own replica's requests). The reply's hold is the new
  ``granted``; ``spent -= S``.

Why the sum never passes a limit: Redis grants only from ``room = limit - used - reserved``, and the lease
stays in ``reserved`` until its usage moves to ``used``. Locally, admissions stay within ``granted``, and
``granted`` only shrinks locally before Redis shrinks the hold (a give-back lowers it when sent, a grant
raises it when answered). So ``used + reserved`` in Redis covers every replica's running requests and
unreported usage: what the per-request reservations guaranteed, with a lease in place of each request's
hold (the property tests in ``tests/property/tenants`` check it over interleavings of several replicas).
The limit can be passed only as before: by usage beyond a request's reservation.
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

from picker.tenants.ledger import LIMIT_NAMES, N_METERS, Limits, Vector

__all__ = ["LEASED", "Lease", "LeasePlan", "vector"]

#: the :attr:`~picker.tenants.backend.Verdict.hold` of a request admitted on a lease
LEASED: Final = "lease"
_ZERO: Final = (0,) * N_METERS


class LeasePlan(NamedTuple):
    """One sync: what to report, give back and ask for (per meter), and when it was planned."""

    spent: Vector
    give_back: Vector
    want: Vector
    need: Vector
    at: float
    #: the give-back of a limits change
    retarget: bool


class Lease:
    """One tenant's lease in this replica. ``limits`` None or all None: nothing is leased, every request is
    admitted locally and only its usage reported. Not thread-safe (the event loop)."""

    __slots__ = (
        "admitted",
        "fraction",
        "granted",
        "held",
        "last_request",
        "last_sync",
        "last_used",
        "limited",
        "limits",
        "lost",
        "replicas",
        "retarget",
        "short_until",
        "spent",
        "syncing",
        "valid_until",
    )

    def __init__(self, limits: Limits | None, now: float, fraction: float) -> None:
        self.limits = limits
        #: the share of each limit a refill aims at (at least one request)
        self.fraction = fraction
        #: the limited meters' indexes
        self.limited = _limited(limits)
        self.granted = [0] * N_METERS
        self.held = [0] * N_METERS
        self.spent = [0] * N_METERS
        self.valid_until = -math.inf if self.limited else math.inf
        self.last_used = now
        self.last_sync = now
        self.last_request: Vector = _ZERO
        self.syncing = False
        self.retarget = False
        self.short_until = -math.inf
        #: leases of this tenant in Redis at the last sync (this one included)
        self.replicas = 1
        #: requests admitted locally, and holds Redis had dropped when this replica came to renew them
        self.admitted = 0
        self.lost = 0

    # ------------------------------------------------------------------------------------ the request path
    def admit(self, amounts: Vector, now: float) -> bool:
        """Admit on the lease if it covers ``amounts`` on every limited meter."""
        self.last_request = amounts
        if now >= self.valid_until:
            return False
        held, spent, granted = self.held, self.spent, self.granted
        for i in self.limited:
            if held[i] + spent[i] + amounts[i] > granted[i]:
                return False
        for i in range(N_METERS):
            held[i] += amounts[i]
        self.last_used = now
        self.admitted += 1
        return True

    def settle(self, reserved: Vector, actual: Vector) -> None:
        held, spent = self.held, self.spent
        for i in range(N_METERS):
            held[i] = max(0, held[i] - reserved[i])
            spent[i] += actual[i]

    def free(self) -> list[int]:
        """What the lease could still admit, per limited meter (0 elsewhere)."""
        out = [0] * N_METERS
        for i in self.limited:
            out[i] = max(0, self.granted[i] - self.held[i] - self.spent[i])
        return out

    def take_free(self) -> Vector:
        """Stop admitting on the free part (it is being given back): ``granted`` lowered now, before Redis
        lowers the hold, so nothing is admitted on what is on its way back. Every meter with a grant counts
        (after a limits change, meters that are no longer limited give everything back)."""
        granted, held, spent = self.granted, self.held, self.spent
        free = [max(0, granted[i] - held[i] - spent[i]) for i in range(N_METERS)]
        for i in range(N_METERS):
            granted[i] -= free[i]
        return vector(free)

    def low(self) -> bool:
        """Below the low-water mark on some limited meter: half of what a refill aims at."""
        free = self.free()
        return any(2 * free[i] < self._target(i) for i in self.limited)

    def _target(self, i: int) -> int:
        limit = self.limits[i] if self.limits is not None else None
        assert limit is not None
        return max(self.last_request[i], math.ceil(limit * self.fraction))

    # ------------------------------------------------------------------------------------ background
    def plan(self, now: float, *, report_s: float, ttl_s: float, idle_s: float) -> LeasePlan | None:
        """The sync this lease needs now, or None: usage to report (every ``report_s``), a hold to renew
        (every quarter of ``ttl_s``), a refill below the low-water mark, everything free given back when
        unused for ``idle_s`` or when the limits changed. A give-back lowers ``granted`` at once."""
        if self.syncing:
            return None
        spent = vector(self.spent)
        report = any(spent) and now - self.last_sync >= report_s
        renew = any(self.granted) and now - self.last_sync >= ttl_s / 4
        if self.retarget or now - self.last_used >= idle_s:
            give_back = self.take_free()
            if any(give_back) or report or renew or self.retarget:
                return LeasePlan(spent, give_back, _ZERO, _ZERO, now, self.retarget)
            return None
        grow = bool(self.limited) and now >= self.short_until and self.low()
        if not (grow or report or renew):
            return None
        want, need = _ZERO, _ZERO
        if grow:
            free = self.free()
            ask = [0] * N_METERS
            least = [0] * N_METERS
            for i in self.limited:
                ask[i] = max(0, self._target(i) - free[i])
                least[i] = max(0, self.last_request[i] - free[i])
            want, need = vector(ask), vector(least)
        return LeasePlan(spent, _ZERO, want, need, now, False)

    def applied(
        self, plan: LeasePlan, hold: Vector, replicas: int, *, ok: bool, had: bool, ttl_s: float
    ) -> None:
        """Redis answered ``plan``: its hold is now ``hold`` (``had``: it still had the hold it renewed).
        ``ok`` False: the refill was refused (near the limit): no new ask for an eighth of the TTL."""
        if any(self.granted) and not had:
            self.lost += 1  # expired or lost in a Redis restart: the running requests are no longer held
        self.granted = list(hold)
        for i in range(N_METERS):
            self.spent[i] -= plan.spent[i]
        self.last_sync = plan.at
        self.replicas = replicas
        if plan.retarget:
            self.retarget = False
        if not self.retarget:  # (limits changed while this sync ran: not valid before the give-back)
            self.valid_until = plan.at + ttl_s / 2 if self.limited else math.inf
        if not ok and any(plan.want):
            self.short_until = plan.at + ttl_s / 8

    def gave_back(self, hold: Vector, *, had: bool) -> None:
        """A fallback reservation gave the free part back (:meth:`take_free`); Redis's hold is ``hold``.
        ``had`` False: the hold was gone (it is sent only while ``granted`` is not zero): counted as lost,
        as :meth:`applied` counts it, or a lapse a request finds first would show nowhere."""
        if not had:
            self.lost += 1
        self.granted = list(hold)

    def idle(self) -> bool:
        """Nothing held in Redis, running or unreported: the lease can be forgotten."""
        return not any(self.granted) and not any(self.held) and not any(self.spent) and not self.syncing

    def view(self, now: float) -> dict[str, Any]:
        """``/debug/tenants``: per limited meter what Redis holds for this replica (``leased``), what its
        running requests hold of that (``held``), what settled and is not reported yet (``unreported``),
        what it can still admit (``free``); how long it stays usable without a sync."""
        free = self.free()
        return {
            "meters": {
                LIMIT_NAMES[i]: {
                    "leased": self.granted[i],
                    "held": self.held[i],
                    "unreported": self.spent[i],
                    "free": free[i],
                }
                for i in self.limited
            },
            "validForSeconds": None
            if self.valid_until == math.inf
            else round(max(0.0, self.valid_until - now), 3),
            "replicas": self.replicas,
            "admittedLocally": self.admitted,
            "lost": self.lost,
        }

    def change_limits(self, limits: Limits | None) -> None:
        """The tenant's limits changed (a reload): give everything free back and lease again under the new
        ones; nothing is admitted on the lease until that sync is answered."""
        self.limits = limits
        self.limited = _limited(limits)
        self.retarget = True
        self.valid_until = -math.inf if self.limited else math.inf


def _limited(limits: Limits | None) -> tuple[int, ...]:
    return tuple(i for i in range(N_METERS) if limits is not None and limits[i] is not None)


def vector(values: list[int]) -> Vector:
    return (values[0], values[1], values[2], values[3], values[4], values[5])
