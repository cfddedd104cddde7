"""The director: from a parsed request to chosen endpoints, in the reference EPP's order.

1. Parse the body (``openai-parser``; ``passthrough-parser`` skips it): the incoming model.
2. Target model = ``x-gateway-model-name-rewrite`` header or the incoming model; an
   InferenceModelRewrite rule for the incoming model overrides it (weighted random target).
3. Priority from the InferenceObjective named by ``x-gateway-inference-objective`` (unknown → 0).
4. Candidates = the subset hint (IP match, as the reference; port ignored); empty → 503. An empty pool
   while the ``scaling`` section allows zero replicas: the request is held until a first replica is
   ready (``picker.routing.hold``), then goes on from step 5; 503 after the hold timeout.
5. Admission: the tenant's budget (``picker.tenants``, when configured): a reservation of the request's
   estimated tokens, one request and its cost, or 429 over a limit; the reservation travels on the
   dispatch (``ticket``) and is settled or released at the stream's end, or here at once when a later
   step refuses the request. Then a sheddable request (priority < 0) is rejected with 429 when pool
   saturation ≥ 1. With a remote budget (Redis, ``--workers``) the reservation may need I/O: ``route``
   then returns a :class:`PendingRoute` that the stream awaits, and everything after it runs then.
   With the ``flowControl`` feature gate (:mod:`picker.tenants.flow`), a request with priority >= 0 that
   finds the pool saturated (or others already waiting) waits in its tenant's queue the same way.
6. Schedule with the profile the configuration's profile handler chooses for the request (its
   objective, priority or a header; ``scoring.profiles``): filters → weighted scorers → picker; nothing
   left → 429. Endpoints that must not be primary (stale metrics, ejected by passive health:
   ``picker.routing.avoid``) are left out while better candidates remain, and fill the fallback places
   the pick left empty.
   When a profile of the configuration has a prefix scorer, the prompt's block hashes (seeded with the
   *target* model) are matched against the snapshot first (``PickRequest.prefix``), and the chosen primary
   records the prompt right after the pick (the reference's PreRequest index update); ``/debug/explain``
   matches but records nothing.
7. Count the request and its prompt-token charge (``scoring.matrix.LoadCharge``) against the primary
   endpoint - the prefill part is given back at the first response byte, the rest when the stream ends -
   and hand back one :class:`~picker.routing.types.Dispatch`: endpoints, the body (the original bytes
   unless the model changed), the lease, the restorer of the client's model name, the tenant's
   reservation, the metric labels.

Steps 1-3 are :meth:`Director.resolve` and 4-7 :meth:`Director.route`: the stream keeps what ``resolve``
returned, so a failure in ``route`` is labelled with the models it resolved (the target after a rewrite).

   With ``externalEndpoints`` configured (``picker.routing.external``), a request whose objective asks
   for them, or that finds the pool saturated, entirely ejected or empty, is sent to an external endpoint
   first (its limits permitting), the pool's pick following as the gateway's fallback list. An empty
   pool that the scaler's hold covers (step 4) holds the request rather than spilling it.

Everything here is synchronous and allocation-light: it runs once per request on the event loop, except
the waits a :class:`PendingRoute` carries (a remote budget, a flow-control queue, an empty pool).

Steps 4-5's waits and reservations (the empty pool's hold, the tenant's budget, flow control and
spill-first) are :class:`picker.routing.admission.Admission`, which calls :meth:`Director.schedule` once
the request is admitted.

Why one module: the steps left here are one sequence over one request's state (its models, the config in
force when it arrived, its prefix match, an external reservation), and every refusal after a reservation
must give it back; the pieces that stand alone are already elsewhere (``admission.py``, ``avoid.py``,
``hold.py``, ``external.py``, ``spill.py``, ``openai.py``, the tenants' budget and queues, the scheduler).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from picker.errors import BadRequest, Internal, ResourceExhausted, ServiceUnavailable
from picker.routing.admission import Admission
from picker.routing.avoid import Avoidance, FailoverReason
from picker.routing.external import ExternalCapacity, ExternalLease, SpillCheck
from picker.routing.header_only import HDR_OBJECTIVE, body_less_dispatch, header_request_info
from picker.routing.hold import EmptyPoolHold
from picker.routing.openai import ModelRestorer, parse_request, rewrite_model
from picker.routing.spill import NO_SPILL, RemoteAsk, SpillDecision, decide, explain_spill_off
from picker.routing.types import Dispatch, Lease, PendingRoute, RequestInfo, Resolved, RoutingRequest
from picker.state.accounting import NullLease
from picker.state.config_store import ActiveConfig, ConfigStore
from picker.state.objectives import ObjectiveStore, RewriteStore
from picker.state.outcomes import Outcome
from picker.state.prefix import PrefixCacheState
from picker.tenants import Tenancy
from picker.tenants.flow import FlowController
from scoring import EndpointMatrix, NoEndpointsAvailable, Scheduler, subset_mask
from scoring.matrix import LoadCharge
from scoring.prefix import CHARS_PER_TOKEN
from scoring.profiles import ExternalPolicy, ProfileChoice
from scoring.types import PickRequest, PickResult, PluginTiming, PrefixMatch

HDR_REWRITE = "x-gateway-model-name-rewrite"
HDR_TEST_SELECTION = "test-epp-endpoint-selection"

MSG_NO_CANDIDATES = "failed to find endpoint candidates for serving the request"
MSG_NO_PODS = "no pods available in datastore"
MSG_SHED = "system saturated, sheddable request dropped"
#: the prefix index's match before the pick, in a traced request's timings (the reference's plugin type)
PREFIX_MATCH_TIMING = "approx-prefix-cache-producer"

#: the headers plugins see when the request has none of theirs (shared, so no dict per request)
_NO_PLUGIN_HEADERS: Mapping[str, str] = MappingProxyType({})
#: why a request whose pool candidates the filters all removed goes external (a worker's ask)
_UNAVAILABLE = SpillCheck(wanted=True, asked=False, reason=FailoverReason.UNAVAILABLE, saturation=None)


class _InForce(NamedTuple):
    """What the director derives from one active config, once per config rather than per request."""

    active: ActiveConfig
    #: the staleness threshold that makes an endpoint avoided, or None with ``staleEndpoints: Allow``
    stale_after: float | None
    #: the config has external endpoints (``externalEndpoints``)
    external: bool


class RoutingState(Protocol):
    """What the director reads and writes: the pool snapshot, objectives, rewrites, load accounting.

    :class:`picker.state.datastore.Datastore` (one process) and :class:`picker.state.view.SharedView`
    (a ``--workers`` worker) both provide it.
    """

    objectives: ObjectiveStore
    rewrites: RewriteStore

    def snapshot(self) -> EndpointMatrix: ...

    def acquire(self, name: str, charge: LoadCharge = ..., /) -> Lease: ...

    def report(self, outcome: Outcome, /) -> None:
        """What a request sent to an external endpoint first came to, for the pool's fallbacks."""


class DirectorObserver(Protocol):
    def failover(self, reason: str) -> None:
        """A request went elsewhere than the scorer's choice (``picker.routing.avoid.FailoverReason``)."""

    def rewrite_decision(self, rewrite_name: str, model: str, target: str) -> None: ...

    def prefix_matched(self, matched_bytes: int, total_bytes: int) -> None: ...


class Director:
    """Implements :class:`picker.routing.types.Router` and :class:`~picker.routing.types.Explainer` on top
    of the datastore and the active config."""

    def __init__(
        self,
        datastore: RoutingState,
        config: ConfigStore,
        *,
        rng: np.random.Generator,
        clock: Callable[[], float] = time.monotonic,
        disable_subset_filter: bool = False,
        observer: DirectorObserver | None = None,
        tenancy: Tenancy | None = None,
        flow: FlowController | None = None,
        hold: EmptyPoolHold | None = None,
        staleness_s: float = 2.0,
        prefix: PrefixCacheState | None = None,
        external: ExternalCapacity | None = None,
    ) -> None:
        """``hold``: requests to an empty pool wait for a first replica while the active config says so
        (``ActiveConfig.hold_empty_pool``, :mod:`picker.routing.hold`); None refuses them at once.
        ``staleness_s``: the process's metrics staleness threshold (``--metrics-staleness-threshold``),
        used when the config document sets none: with ``staleEndpoints: Avoid`` endpoints with older
        metrics are avoided (``picker.routing.avoid``)."""
        self._ds = datastore
        self._config = config
        self._rng = rng
        self._clock = clock
        self._disable_subset = disable_subset_filter
        self._observer = observer
        self._tenancy = tenancy
        self._flow = flow
        self._hold = hold
        self._avoidance = Avoidance()
        self._default_staleness = staleness_s
        #: the prefix index (None: prefix scoring never runs, whatever the profile)
        self._prefix = prefix
        #: the config's external endpoints and their budgets (``picker.routing.external``)
        self.external = external if external is not None else ExternalCapacity()
        #: the waits and reservations before the pick (hold, tenant budget, flow control)
        self.admission = Admission(self, config, datastore, tenancy=tenancy, flow=flow, hold=hold)
        self._in_force: _InForce | None = None

    # ------------------------------------------------------------------------------------- routing
    def resolve(self, request: RoutingRequest, *, explain: bool = False) -> Resolved:
        """Steps 1-3: parse, rewrite, objective. Raises BadRequest for a body the parser rejects."""
        headers = request.headers
        active = self._config.active
        if active.parser == "passthrough-parser":
            info = None
            incoming = ""
        else:
            cache = self._prefix.for_profiles(active.profiles) if self._prefix is not None else None
            info = parse_request(request.path, request.body, prefix_window=cache.window if cache else 0)
            if info.model is None:
                raise BadRequest("model not found in request body")
            incoming = info.model
        target = headers.get(HDR_REWRITE) or incoming
        if info is not None:
            choice = self._ds.rewrites.resolve(incoming, self._rng)
            if choice is not None:
                target = choice.target_model
                if self._observer is not None and not explain:
                    self._observer.rewrite_decision(choice.rewrite_name, incoming, target)
        objective = headers.get(HDR_OBJECTIVE, "")
        return Resolved(incoming, target, self._ds.objectives.priority(objective), objective, info)

    def route(self, request: RoutingRequest, resolved: Resolved) -> Dispatch | PendingRoute:
        """Steps 4-7: the tenant's admission, flow control, candidates, shedding, scheduling, accounting
        (:class:`picker.routing.admission.Admission`, then :meth:`schedule`). A :class:`PendingRoute`
        when admission, a flow-control queue or an empty pool's first replica needs waiting first."""
        return self.admission.route(request, resolved)

    def explain(self, request: RoutingRequest) -> Dispatch:
        """:class:`picker.routing.types.Explainer`: the decision with its per-scorer record; nothing is
        counted, no metric moves, no tenant budget or queue is touched (a rewrite rule's weighted draw
        still uses the shared generator)."""
        if self._config.active.model_header:  # header-only mode: what a stream would do
            resolved = self.resolve_by_header(request)
            if resolved is None:
                return self.route_headers_only(request)
        else:
            resolved = self.resolve(request, explain=True)
        dispatch = self.schedule(request, resolved, explain=True)
        assert isinstance(dispatch, Dispatch)  # an explained schedule neither declines nor asks
        return dispatch

    def external_for(self, priority: int, choice: ProfileChoice) -> ExternalCapacity | None:
        """The external endpoints a request may use, or None: the profile rule's ``external`` (``Never``:
        none; ``WhenSaturated`` / ``Prefer``: allowed), else ``spillover.minPriority``."""
        settings = self._config.active.config.settings
        external = self.external
        if not external.sync(settings.external_endpoints, settings.spillover):
            return None
        policy = choice.external
        if policy is ExternalPolicy.NEVER or (policy is None and priority < external.spill.min_priority):
            return None
        return external

    def schedule(
        self,
        request: RoutingRequest,
        resolved: Resolved,
        *,
        explain: bool,
        pressed: bool = False,
        decided: SpillDecision | None = None,
    ) -> Dispatch | RemoteAsk | None:
        """Steps 4-7 after admission. ``pressed``: flow control would queue the request, so it goes to an
        external endpoint now if one takes it; else None comes back (nothing reserved or consumed: the
        caller queues it). A RemoteAsk: the supervisor is asked for an external endpoint; ``decided``:
        its answer, when this runs again with it. Returns a Dispatch otherwise."""
        _, _, priority, objective, info = resolved
        started = self._clock()
        m = self._ds.snapshot()
        # Subset hint: IP match (port ignored), as the reference; None = no hint = every endpoint.
        mask = None if request.subset is None or self._disable_subset else subset_mask(m, request.subset)
        empty = len(m) == 0 or (mask is not None and not mask.any())
        active = self._config.active
        in_force = self._in_force
        if in_force is None or in_force.active is not active:  # a new config (rare): derive once
            in_force = self._derive(active)
        choice = active.profiles.choose(objective, priority, request.headers)
        external = self.external_for(priority, choice) if in_force.external else None
        if empty and external is None:
            raise ServiceUnavailable(MSG_NO_CANDIDATES)
        scheduler = choice.scheduler
        saturation: float | None = None
        shed = False
        if priority < 0 and not empty:
            saturation = scheduler.saturation(m, now=started, candidates=mask)
            if saturation >= 1.0:
                if external is None:
                    raise ResourceExhausted(MSG_SHED)
                shed = True  # unless an external endpoint takes it
        spill = NO_SPILL
        if decided is not None:
            spill = decided
        elif external is not None:
            if explain and self._flow is not None and self._flow.enabled and priority >= 0:
                pressed = self._flow.would_queue()
            check = external.wants(
                m,
                mask,
                scheduler,
                levels=lambda: self._avoidance.levels(m, started, in_force.stale_after),
                objective=objective,
                saturation=saturation,
                empty=empty,
                now=self._clock,
                pressed=pressed or shed,
                prefer=choice.external is ExternalPolicy.PREFER,
            )
            estimate = (info.prompt_chars // 4) if info is not None else 0
            max_tokens = (info.max_tokens or None) if info is not None else None
            decision = decide(
                external,
                check,
                estimate,
                max_tokens,
                objective=objective,
                pressed=pressed,
                shed=shed,
                explain=explain,
            )
            if isinstance(decision, RemoteAsk):
                return decision
            spill = decision
        elif explain:
            spill = SpillDecision(None, None, None, explain_spill_off(self.external, priority, choice))
        if spill.first is None and shed:
            raise ResourceExhausted(MSG_SHED)
        if spill.first is None and pressed and not explain:
            return None
        try:
            answered = decided is not None
            return self._finish(
                request,
                resolved,
                m,
                mask,
                choice,
                started,
                spill,
                external,
                in_force,
                explain=explain,
                answered=answered,
            )
        except BaseException:
            if spill.ticket is not None:
                spill.ticket.release()
            raise

    def _finish(  # noqa: PLR0917 - the pick's inputs, computed once by schedule
        self,
        request: RoutingRequest,
        resolved: Resolved,
        m: EndpointMatrix,
        mask: NDArray[np.bool_] | None,
        choice: ProfileChoice,
        started: float,
        spill: SpillDecision,
        external: ExternalCapacity | None,
        in_force: _InForce,
        *,
        explain: bool,
        answered: bool = False,
    ) -> Dispatch | RemoteAsk:
        """The pool's pick (the primary, or the fallback list of a request sent external first), the
        accounting and the Dispatch. A RemoteAsk: the filters left no pool candidate and a ``--workers``
        worker asks the supervisor for an external endpoint (the schedule runs again with its answer)."""
        incoming, target, priority, objective, info = resolved
        selection = request.headers.get(HDR_TEST_SELECTION)
        prefix = None
        timings = request.timings
        if info is not None and info.prefix_input:
            prefix = self._match_prefix(info, in_force.active, target, m, started, timings)
        pick_req = PickRequest(
            target_model=target,
            incoming_model=incoming,
            priority=priority,
            request_id=request.request_id,
            headers={HDR_TEST_SELECTION: selection} if selection is not None else _NO_PLUGIN_HEADERS,
            prompt_tokens_estimate=(info.prompt_chars // 4) if info is not None else 0,
            stream=info.stream if info is not None else False,
            prefix=prefix,
            output_tokens_estimate=(info.max_tokens or 0) if info is not None else 0,
        )
        body = request.body
        restore = None
        if info is not None and target != incoming:
            body = rewrite_model(body, target)
            restore = ModelRestorer(target, incoming)
        result: PickResult | None = None
        avoided: Mapping[str, str] | None = None
        ticket, first, failover, _ = spill
        if len(m) and (mask is None or mask.any()):
            try:
                result, avoided, pool_failover = self._pick(
                    m,
                    pick_req,
                    choice.scheduler,
                    mask,
                    started,
                    stale_after=in_force.stale_after,
                    explain=explain,
                    timings=timings,
                )
            except NoEndpointsAvailable as exc:
                # the filters left nothing: the pool has no candidate for this request
                if first is None and external is not None and failover is None and not explain:
                    outside = self._outside(external, pick_req, answered=answered)
                    if isinstance(outside, RemoteAsk):
                        return outside
                    ticket, first, failover, _ = outside
                if first is None:
                    raise ResourceExhausted(str(exc)) from exc
            else:
                failover = pool_failover if first is None and failover is None else failover
        if first is None and result is None:
            raise ServiceUnavailable(MSG_NO_CANDIDATES)
        # the scheduling time travels with the dispatch, observed with its routed metrics (one fact)
        scheduled_s = None if explain else self._clock() - started
        if self._observer is not None and not explain and failover is not None:
            self._observer.failover(failover)
        if prefix is not None and not explain and first is None and result is not None:
            # the pool's primary serves it (a spilled request's prefix goes to the external endpoint)
            self._record_prefix(m, result.indices[0], prefix)
        addresses = m.addresses
        pool = () if result is None else tuple(map(addresses.__getitem__, result.indices))
        lease: Lease
        if first is not None:
            # the pool's pick is the fallback list (a gateway retries there); nothing is charged to it
            endpoints = (first, *(a for a in pool if a != first))
            lease = NullLease() if ticket is None else ExternalLease(ticket, self._ds.report)
        else:
            assert result is not None
            endpoints = pool
            primary = result.indices[0]
            charge = LoadCharge.for_request(pick_req, primary)
            lease = NullLease() if explain else self._ds.acquire(m.names[primary], charge)
        dispatch = Dispatch(
            endpoints=endpoints,
            body=body,
            lease=lease,
            restore=restore,
            incoming_model=incoming,
            target_model=target,
            priority=priority,
            objective=objective,
            info=info,
            decision=None if result is None else result.decision,
            profile=choice.scheduler.profile_name,
            profile_reason=choice.reason,
            avoided=avoided,
            failover=failover,
            spill=spill.doc,
            scheduled_s=scheduled_s,
        )
        if ticket is not None:
            dispatch.external = ticket.endpoint.name
            dispatch.ticket = ticket
        return dispatch

    @staticmethod
    def _outside(
        external: ExternalCapacity, req: PickRequest, *, answered: bool
    ) -> SpillDecision | RemoteAsk:
        """An external endpoint for a request the filters left no pool candidate: a reservation in one
        process, an ask to the supervisor from a ``--workers`` worker (``answered``: the supervisor
        already answered this request, there is nothing more to ask)."""
        estimate, most = req.prompt_tokens_estimate, req.output_tokens_estimate or None
        if external.remote is not None:
            return NO_SPILL if answered else RemoteAsk(_UNAVAILABLE, external.remote.reserve(estimate, most))
        ticket = external.reserve(estimate, most)
        if ticket is None:
            return NO_SPILL
        return SpillDecision(ticket, ticket.endpoint.address, FailoverReason.UNAVAILABLE.value, None)

    def _pick(
        self,
        m: EndpointMatrix,
        req: PickRequest,
        scheduler: Scheduler,
        mask: NDArray[np.bool_] | None,
        now: float,
        *,
        stale_after: float | None,
        explain: bool,
        timings: list[PluginTiming] | None = None,
    ) -> tuple[PickResult, Mapping[str, str] | None, str | None]:
        """The pick with avoided endpoints (``picker.routing.avoid``) left out while others remain, and
        put back as last-resort fallbacks. Returns the result, the avoided candidates (name → why; None
        when none) and the failover reason when the scorer would have chosen an avoided endpoint.
        ``timings``: the pick's per-plugin timings (not those of the unconstrained comparison pick)."""
        levels = self._avoidance.levels(m, now, stale_after)
        split = None if levels is None else Avoidance.split(mask, levels)
        if levels is None or split is None:
            result = scheduler.schedule(
                m, req, now=now, rng=self._rng, candidates=mask, explain=explain, timings=timings
            )
            return result, None, None
        preferred, out = split
        result = scheduler.schedule(
            m, req, now=now, rng=self._rng, candidates=preferred, explain=explain, timings=timings
        )
        indices = Avoidance.last_resort(levels, out, result.indices, scheduler.max_endpoints)
        # what the scorer would have chosen with every candidate in: an avoided one is a failover
        try:
            unconstrained = scheduler.schedule(m, req, now=now, rng=self._rng, candidates=mask).primary
        except NoEndpointsAvailable:
            unconstrained = result.primary
        failover = Avoidance.failover_reason(levels, unconstrained).value if out[unconstrained] else None
        names = m.names
        rows = np.flatnonzero(out).tolist()
        reasons = MappingProxyType({names[r]: Avoidance.reason(levels, r) for r in rows})
        return PickResult(indices, result.decision), reasons, failover

    def resolve_by_header(self, request: RoutingRequest) -> Resolved | None:
        """Header-only mode (``picker.config.header_only``): steps 1-3 from the headers, the model from the
        configured header and the prompt-token estimate from its header
        (:func:`~picker.routing.header_only.header_request_info`); :meth:`route` does the rest as for a
        body. None for a request without a body and without the model header (``GET /v1/models``): it
        routes as a body-less request always does (:meth:`route_headers_only`).

        No rewrite is applied (neither InferenceModelRewrites nor ``x-gateway-model-name-rewrite``): the
        body the server receives is not ours to change, so routing follows the model it names. Tenants are
        rejected at config load in this mode. Raises BadRequest for a missing or invalid model header.
        """
        active = self._config.active
        headers = request.headers
        if request.headers_only and not headers.get(active.model_header):
            return None
        info = header_request_info(headers, active.model_header, active.prompt_tokens_header)
        model = info.model or ""
        objective = headers.get(HDR_OBJECTIVE, "")
        return Resolved(model, model, self._ds.objectives.priority(objective), objective, info)

    def _derive(self, active: ActiveConfig) -> _InForce:
        """What the director derives from ``active``, remembered until the active config changes."""
        config = active.config
        stale_after = None
        if config.avoid_stale_endpoints:
            stale_after = config.staleness_threshold or self._default_staleness
        settings = config.settings
        external = self.external.sync(settings.external_endpoints, settings.spillover)
        self._in_force = _InForce(active, stale_after, external)
        return self._in_force

    def _match_prefix(  # noqa: PLR0917 - the request's parts the match reads
        self,
        info: RequestInfo,
        active: ActiveConfig,
        target: str,
        m: EndpointMatrix,
        now: float,
        timings: list[PluginTiming] | None,
    ) -> PrefixMatch | None:
        """Hash the prompt window the parser extracted (then drop it) and match it against ``m``; a traced
        request's ``timings`` get the hashing and matching as the prefix producer's time."""
        data = info.prefix_input
        info.prefix_input = b""  # no prompt text outlives routing
        cache = self._prefix.for_profiles(active.profiles) if self._prefix is not None else None
        if cache is None:
            return None
        began = time.perf_counter_ns() if timings is not None else 0
        match = cache.match_prompt(
            target, info.cache_salt, data, m, now=now, answer_tokens=info.max_tokens or 0
        )
        if timings is not None:
            timings.append(PluginTiming("prepare", PREFIX_MATCH_TIMING, time.perf_counter_ns() - began))
        return match

    def _record_prefix(self, m: EndpointMatrix, row: int, prefix: PrefixMatch) -> None:
        """The primary now holds the prompt (index update after the pick, reference) + hit metrics."""
        assert self._prefix is not None
        self._prefix.record(m, row, prefix)
        if self._observer is not None:
            block_bytes = prefix.block_tokens * CHARS_PER_TOKEN
            matched = 0 if prefix.matched is None else int(prefix.matched[row])
            self._observer.prefix_matched(matched * block_bytes, prefix.total * block_bytes)

    def route_headers_only(self, request: RoutingRequest) -> Dispatch:  # noqa: ARG002 - Router protocol
        """A request without a body: a uniformly random pool endpoint, no scheduling (reference)."""
        m = self._ds.snapshot()
        if len(m) == 0:
            raise Internal(MSG_NO_PODS)
        stale_after = self._derive(self._config.active).stale_after  # (a rare path: derived afresh)
        rows = Avoidance.preferred_rows(self._avoidance.levels(m, self._clock(), stale_after))
        i = int(self._rng.integers(len(m))) if rows is None else int(rows[self._rng.integers(rows.size)])
        return body_less_dispatch(m.addresses[i])
