"""External endpoints: capacity outside the pool that takes the overflow, within its limits.

The config's ``externalEndpoints`` (``picker.config.costs``) name addresses the gateway can reach (an
in-cluster Service forwarding to a managed API, an egress proxy) with a price, a priority and limits.
They are not pool members: nothing scrapes them, and their load is what this process sent them.

When the director sends a request there (:meth:`ExternalCapacity.reserve`):

* the request's objective is listed in ``spillover.objectives`` (it asks for external capacity first;
  the pool stays its fallback), or
* the pool cannot take it well: no candidate at all (``unavailable``), every candidate ejected by passive
  health (``ejected``), or the profile's saturation detector at or above ``spillover.saturationThreshold``
  (``saturated``) — the ``reason`` label of ``ai_failover_total`` for the request.

Among the external endpoints, the lowest ``priority`` first, then the cheapest for the request's token mix,
then the one with the fewest requests open; the first whose limits admit the request takes it. None
admits → the request stays in the pool as if nothing were configured (and an objective that asked counts
``over_limits``).

Limits never passed: each endpoint's budget is a :class:`picker.tenants.ledger.Account` (the tenants'
arithmetic: fixed UTC windows, a reservation held from dispatch to the end of the response). A request
reserves one request, one concurrency slot, ``prompt estimate + max_tokens`` tokens (or
``spillover.defaultOutputTokens`` without ``max_tokens``) and their cost; admission requires
``used + reserved + asked <= limit`` on every limited meter, so ``requestsPerMinute`` and ``concurrent``
can never be passed, and the token and cost meters only by what responses use beyond their reservation
(a prompt estimate below the real count, or an answer longer than ``defaultOutputTokens`` from a request
without ``max_tokens``). At the end the reservation is settled with the response's ``usage`` (exact), or
with the whole reservation when the response reported none or the stream broke off (we cannot know what
the provider counted, so we assume the most). With ``--workers N`` the budgets are the supervisor's
(``picker.routing.external_remote``): exact across workers. Across EPP replicas nothing is shared: with
``spillover.replicas: R`` each replica holds ``limit // R`` of every limit, so R active replicas together
never pass a limit (with leader election only the leader serves: leave it at 1); a limit above 0 that
leaves each replica 0 is rejected with the document (``picker.config.costs.check_external``).

**Passive health.** External endpoints get the pool's outlier detection (:mod:`picker.state.health`,
the same ``outlier-detector`` plugin settings, hot-reloaded), in a detector of their own: every spilled
request's outcome (through :class:`ExternalLease`) counts for its external endpoint, classified as for a
pool endpoint (:func:`picker.state.outcomes.classify`: a 5xx or gateway timeout answered by it, a stream
without response headers, or the gateway retrying past it to the pool's fallback are failures). An
ejected endpoint takes no request; when its ejection time is over it takes exactly one probe (while
nothing else is open on it), whose outcome reinstates or re-ejects it. ``maxEjectionPercent`` applies to
the external endpoints as a group (one may always be ejected). When every external endpoint is ejected
the request stays in the pool (an objective that asked counts ``ejected``).

The tickets that settle a reservation (from the endpoint that served) are in ``external_tickets.py``, the
spill decision and ``/debug/explain``'s wording of it in ``spill.py``, the ``--workers`` link in
``external_remote.py``.

Why one module: the endpoints' order, their budgets and their health are one decision made per request
over the same accounts (health gates the same order the limits do).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from picker.config.costs import ExternalEndpointConfig, SpilloverConfig
from picker.routing.avoid import FailoverReason, Level
from picker.routing.external_tickets import (
    ExternalEndpoint,
    ExternalLease,
    ExternalTicket,
    JointReservation,
    SpillTicket,
)
from picker.state.health import FailureKind, Health, OutlierDetector, OutlierPolicy
from picker.state.outcomes import FAILURE_INDEX, OK, Outcome, classify
from picker.tenants.ledger import (
    CONCURRENT,
    LIMIT_NAMES,
    Account,
    Limits,
    Vector,
    now_wall,
    reservation_vector,
    window_ids,
)
from picker.tenants.policy import compile_limits
from scoring import EndpointMatrix, Scheduler
from scoring.matrix import NEVER

__all__ = [
    "ExternalBudget",
    "ExternalCapacity",
    "ExternalEndpoint",
    "ExternalLease",
    "ExternalTicket",
    "JointReservation",
    "SpillCheck",
    "SpillTicket",
]

_UNLIMITED: Final[Limits] = (None, None, None, None, None, None)
#: outcome kind index -> failure kind (``picker.state.outcomes``)
_FAILURE_KINDS: Final = {index: kind for kind, index in FAILURE_INDEX.items()}


def _scaled(limits: Limits, replicas: int) -> Limits:
    """This replica's share: every limit // ``replicas`` (integers: ``int(v * (1 / replicas))`` lost one
    unit at some exact multiples, 49 / 49 -> 0)."""
    if replicas == 1:
        return limits
    return tuple(None if v is None else v // replicas for v in limits)  # type: ignore[return-value]


class ExternalBudget(Protocol):
    """Budgets held elsewhere (the ``--workers`` supervisor's): a reservation is a round trip whose
    answer is a ``picker.routing.external_remote.Grant``."""

    def reserve(self, input_tokens: int, max_tokens: int | None) -> asyncio.Future[Any]: ...


class SpillCheck(NamedTuple):
    """Whether a request should go to an external endpoint first, before any reservation
    (:meth:`ExternalCapacity.wants`)."""

    #: go external first (the objective asks, or the pool cannot take it well)
    wanted: bool
    #: the request's objective is listed in ``spillover.objectives``
    asked: bool
    #: why the pool cannot take it (``ai_failover_total`` reason); None when it can, or when asked
    reason: FailoverReason | None
    #: the saturation the check read (None when it did not need to, or when no candidate's scrape has
    #: answered yet)
    saturation: float | None
    #: candidates left out of the saturation because they were never scraped (a detector that reads
    #: scrapes only): those whose first scrape has not ended, and, while a candidate was scraped, those
    #: whose scrapes failed; every candidate left out: the pool is not saturated for spilling
    unscraped: int = 0
    #: candidates never scraped whose scrapes failed, read as saturated because no candidate was scraped
    #: (their metrics cannot be read: the pool's are down, not late)
    failed: int = 0


#: what the spill decision reads saturation over (:meth:`ExternalCapacity._scraped`): ``(a mask over the
#: snapshot, None for every row when nothing is left out or failed, else no candidate whose scrape
#: answered; the candidates left out (never scraped); the candidates read because their scrapes failed)``.
#: A plain tuple: built per request with a subset hint, where a NamedTuple's construction costs ~0.3 µs.
_Over = tuple[NDArray[np.bool_] | None, int, int]


class ExternalCapacity:
    """The external endpoints of the active config, their budgets and their passive health (see the
    module docstring).

    Accounts and health records are kept by endpoint name across config reloads (a reload cannot reset a
    minute's count or reinstate an ejected endpoint). One per process; the director calls :meth:`sync`
    with the active settings on each request, which is an identity comparison unless the config changed.
    ``clock``: wall time for the limits' windows; ``monotonic``: the outlier detector's clock.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = now_wall,
        monotonic: Callable[[], float] = time.monotonic,
        remote: ExternalBudget | None = None,
    ) -> None:
        """``remote``: a ``--workers`` worker's link to the supervisor's budgets
        (``picker.routing.external_remote.ExternalClient``); then this object only follows the config and
        decides when a request wants an external endpoint, and the supervisor reserves."""
        self._clock = clock
        self._monotonic = monotonic
        self.remote = remote
        self._source: tuple[ExternalEndpointConfig, ...] | None = None
        self.endpoints: tuple[ExternalEndpoint, ...] = ()
        self.spill = SpilloverConfig()
        self._objectives: frozenset[str] = frozenset()
        self._accounts: dict[str, Account] = {}
        self._by_address: dict[str, str] = {}
        #: requests sent per endpoint name since start (``/debug``, the benchmark)
        self.dispatched: dict[str, int] = {}
        #: passive health of the external endpoints (``outlier-detector`` settings: :meth:`set_health_policy`)
        self.health = OutlierDetector()
        #: the last snapshot :meth:`_scraped` read without a subset, and its answer
        self._seen_in: EndpointMatrix | None = None
        self._seen: _Over = (None, 0, 0)
        #: a response came back through the gateway from an external endpoint (see
        #: ``picker.state.outcomes.OutcomeWriter``: before that, a stream without response headers is no
        #: evidence against the endpoint)
        self._responses_seen = False

    @property
    def active(self) -> bool:
        return bool(self.endpoints)

    def sync(self, endpoints: tuple[ExternalEndpointConfig, ...], spill: SpilloverConfig) -> bool:
        """Follow the active config; returns :attr:`active`."""
        if endpoints is not self._source or spill is not self.spill:
            self._source = endpoints
            self.spill = spill
            self._objectives = frozenset(spill.objectives)
            self.endpoints = tuple(
                ExternalEndpoint(
                    name=e.name,
                    address=e.address,
                    priority=e.priority,
                    price_in=e.price.input_per1_m,
                    price_out=e.price.output_per1_m,
                    limits=_UNLIMITED
                    if e.limits is None
                    else _scaled(compile_limits(e.limits), spill.replicas),
                )
                for e in endpoints
            )
            self._accounts = {e.name: self._accounts.get(e.name) or Account() for e in self.endpoints}
            self._by_address = {e.address: e.name for e in self.endpoints}
            self.health.retain(self._accounts)
        return bool(self.endpoints)

    def set_health_policy(self, policy: OutlierPolicy) -> None:
        """The ``outlier-detector`` plugin's policy, as for the pool (at start and on reload)."""
        self.health.set_policy(policy)

    # ------------------------------------------------------------------------------------ the decision
    def wants(
        self,
        m: EndpointMatrix,
        mask: NDArray[np.bool_] | None,
        scheduler: Scheduler,
        *,
        levels: Callable[[], NDArray[np.uint8] | None],
        objective: str,
        saturation: float | None,
        empty: bool,
        now: Callable[[], float],
        pressed: bool = False,
        prefer: bool = False,
    ) -> SpillCheck:
        """Should the request go external first (then :meth:`reserve`, or the supervisor's under
        ``--workers``; ``picker.routing.spill.decide``): its objective asks, or the pool is empty, every
        candidate ejected, probing or draining (``levels``: ``picker.routing.avoid``; stale metrics
        alone are no reason, the scraper is the likelier fault) or saturated (the profile's detector at
        ``spillover.saturationThreshold``; ``pressed``: flow control would queue the request, which is the
        pool being saturated too). ``prefer``: the profile rule says ``external: Prefer`` (asks, as a
        listed objective does). Reserves nothing.

        Saturation here is read over the candidates scraped at least once (:meth:`_scraped`): the
        detector counts a never-scraped endpoint as saturated, which right after a start (or a rollout of
        the EPP) would send every request to paid capacity until the first scrapes land. A never-scraped
        candidate is not primary while a scraped one remains (``picker.routing.avoid``), so in a mixed pool
        the scraped ones are where the request would go: their reading decides. With no candidate scraped,
        the ones whose scrapes have failed (the snapshot's ``scrape_failed``) are read, as saturated: their
        metrics cannot be read, and a pool whose every endpoint is down from the start must spill even
        when passive health may not eject them all (``maxEjectionPercent``). With no candidate's scrape
        answered yet the pool is not saturated for spilling, and neither is ``pressed`` a reason (flow
        control's reading rests on the same missing metrics: the request queues, or is shed, as the
        reference does). An empty or entirely ejected pool still spills: that is an outage, known."""
        if prefer or self.asks(objective):
            return SpillCheck(True, True, None, saturation)
        if empty:
            return SpillCheck(True, False, FailoverReason.UNAVAILABLE, saturation)
        lv = levels()
        candidates = None if lv is None else (lv if mask is None else lv[mask])
        if candidates is not None and candidates.size and (candidates >= Level.PROBING).all():
            return SpillCheck(True, False, FailoverReason.EJECTED, saturation)
        over, unscraped, failed = self._scraped(m, mask, scheduler)
        if unscraped or failed:
            if over is None:
                return SpillCheck(False, False, None, None, unscraped)
            saturation = scheduler.saturation(m, now=now(), candidates=over)
        elif saturation is None:
            saturation = scheduler.saturation(m, now=now(), candidates=mask)
        if pressed or saturation >= self.spill.saturation_threshold:
            return SpillCheck(True, False, FailoverReason.SATURATED, saturation, unscraped, failed)
        return SpillCheck(False, False, None, saturation, unscraped, failed)

    def _scraped(self, m: EndpointMatrix, mask: NDArray[np.bool_] | None, scheduler: Scheduler) -> _Over:
        """``(the candidates to read saturation over, how many candidates are left out, how many are read
        because their scrapes failed)``:

        * every candidate scraped at least once (the steady state): ``(mask, 0, 0)``, the mask as given,
          as the detector would read it;
        * some scraped: the mask of those, the others left out, ``failed`` 0;
        * none scraped, some whose scrapes failed (``scrape_failed``): the mask of those, the ones whose
          first scrape has not ended left out;
        * no candidate's scrape answered yet: ``(None, every candidate, 0)``.

        A detector that does not read scrapes (``concurrency-detector``): every candidate counts,
        ``(mask, 0, 0)``. Without a subset the answer is kept for the snapshot (a few µs a request
        otherwise; a snapshot serves every pick until the next scrape lands)."""
        if not scheduler.saturation_detector.reads_scrapes:
            return mask, 0, 0
        if mask is None and m is self._seen_in:
            return self._seen
        seen = m.scraped_at > NEVER  # -inf: never scraped (NaN, never written, counts as never too)
        if mask is not None:
            seen &= mask
        n = int(np.count_nonzero(seen))
        total = len(m) if mask is None else int(np.count_nonzero(mask))
        if n == total:
            answer: _Over = (mask, 0, 0)
        elif n:
            answer = (seen, total - n, 0)
        else:
            # none scraped: the failed ones, if any (> 0 is False for NaN: not known to fail)
            failed = m.scrape_failed > 0.0
            if mask is not None:
                failed &= mask
            f = int(np.count_nonzero(failed))
            answer = (failed if f else None, total - f, f)
        if mask is None:
            self._seen_in, self._seen = m, answer
        return answer

    def asks(self, objective: str) -> bool:
        """The request's objective asks for external capacity first."""
        return bool(objective) and objective in self._objectives

    def refusal(self) -> FailoverReason:
        """Why no external endpoint took a request that asked for one: every one ejected (or probing with
        its probe in flight), else their limits."""
        if all(not self._healthy_for(e) for e in self.endpoints):
            return FailoverReason.EJECTED
        return FailoverReason.OVER_LIMITS

    # ------------------------------------------------------------------------------------ budgets
    def _order(self, input_tokens: int, output_tokens: int) -> list[ExternalEndpoint]:
        accounts = self._accounts
        return sorted(
            self.endpoints,
            key=lambda e: (
                e.priority,
                e.cost_nano(input_tokens, output_tokens),
                accounts[e.name].reserved[CONCURRENT],
            ),
        )

    def _healthy_for(self, e: ExternalEndpoint) -> bool:
        """Passive health lets ``e`` take a request now: healthy, or probing with nothing open on it
        (exactly one probe)."""
        state = self.health.state(e.name)
        if state is Health.HEALTHY:
            return True
        return state is Health.PROBING and self._accounts[e.name].reserved[CONCURRENT] == 0

    def _outputs(self, input_tokens: int, max_tokens: int | None) -> tuple[int, int]:
        output_tokens = self.spill.default_output_tokens if max_tokens is None else max(0, max_tokens)
        return max(0, input_tokens), output_tokens

    def reserve(self, input_tokens: int, max_tokens: int | None) -> ExternalTicket | None:
        """A reservation on the first external endpoint (priority, then cost, then open requests) that
        passive health lets take a request and whose limits admit it, or None when none does."""
        input_tokens, output_tokens = self._outputs(input_tokens, max_tokens)
        ids = window_ids(self._clock())
        self.health.sweep(self._monotonic())
        tokens = input_tokens + output_tokens
        for e in self._order(input_tokens, output_tokens):
            if not self._healthy_for(e):
                continue
            amounts = reservation_vector(tokens, e.cost_nano(input_tokens, output_tokens))
            account = self._accounts[e.name]
            if account.admit(amounts, e.limits, ids) is None:
                self.dispatched[e.name] = self.dispatched.get(e.name, 0) + 1
                return ExternalTicket(
                    account,
                    e,
                    amounts=amounts,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    clock=self._clock,
                    observe=self.observe,
                )
        return None

    def preview(self, input_tokens: int, max_tokens: int | None) -> tuple[str | None, list[dict[str, Any]]]:
        """What :meth:`reserve` would do, reserving nothing (``/debug/explain``): the endpoint that would
        take the request (or None), and for each endpoint in the order tried, its verdict."""
        input_tokens, output_tokens = self._outputs(input_tokens, max_tokens)
        ids = window_ids(self._clock())
        now = self._monotonic()
        self.health.sweep(now)
        tokens = input_tokens + output_tokens
        chosen: str | None = None
        rows: list[dict[str, Any]] = []
        for e in self._order(input_tokens, output_tokens):
            cost = e.cost_nano(input_tokens, output_tokens)
            verdict = self._verdict(e, reservation_vector(tokens, cost), ids, now)
            if verdict == "admits" and chosen is None:
                chosen = e.name
            elif verdict == "admits":
                verdict = "admits (not tried: an earlier endpoint takes it)"
            rows.append({"name": e.name, "address": e.address, "priority": e.priority, "verdict": verdict})
        return chosen, rows

    def _verdict(self, e: ExternalEndpoint, amounts: Vector, ids: Vector, now: float) -> str:
        if not self._healthy_for(e):
            view = self.health.view(e.name, now)
            if view is not None and view.state is Health.EJECTED:
                return (
                    f"ejected by passive health ({view.reason}; {view.ejected_for_s:.1f} s until its probe)"
                )
            return "probing: its one probe request is in flight"
        room = self._accounts[e.name].remaining(e.limits, ids)
        for i, left in enumerate(room):
            limit = e.limits[i]
            if left is not None and limit is not None and amounts[i] > left:
                return f"over {LIMIT_NAMES[i]}: {limit - left} in use + {amounts[i]} asked > limit {limit}"
        return "admits"

    # ------------------------------------------------------------------------------------ health
    def observe(self, address: str, outcome: Outcome) -> None:
        """One spilled request's outcome, for the passive health of the external endpoint at ``address``
        (classified as for a pool endpoint: ``picker.state.outcomes.classify``)."""
        if outcome.status:
            self._responses_seen = True
        elif not self._responses_seen:
            return
        name = self._by_address.get(address)
        if name is None:
            return  # removed by a reload while the request ran
        ok = failed = 0
        kind: FailureKind | None = None
        events, _ = classify(outcome)
        for where, k in events:
            if where != address:
                continue
            if k == OK:
                ok += 1
            else:
                failed += 1
                kind = _FAILURE_KINDS[k]
        now = self._monotonic()
        self.health.sweep(now)
        self.health.observe(name, ok=ok, failed=failed, kind=kind, now=now)

    def stats(self) -> list[Mapping[str, Any]]:
        """Per endpoint: address, priority, limits, what is used and reserved in the current windows,
        passive health."""
        ids = window_ids(self._clock())
        now = self._monotonic()
        self.health.sweep(now)
        out: list[Mapping[str, Any]] = []
        for e in self.endpoints:
            account = self._accounts[e.name]
            account.roll(ids)
            view = self.health.view(e.name, now)
            out.append(
                {
                    "name": e.name,
                    "address": e.address,
                    "priority": e.priority,
                    "price": {"input_per_1m": e.price_in, "output_per_1m": e.price_out},
                    "limits": {n: v for n, v in zip(LIMIT_NAMES, e.limits, strict=True) if v is not None},
                    "used": dict(zip(LIMIT_NAMES, account.used, strict=True)),
                    "reserved": dict(zip(LIMIT_NAMES, account.reserved, strict=True)),
                    "dispatched": self.dispatched.get(e.name, 0),
                    "health": view.to_doc() if view is not None else None,
                }
            )
        return out
