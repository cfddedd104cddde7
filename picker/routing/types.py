"""The contract between the protocol adapters (ext_proc, admin) and request routing.

``picker.extproc`` speaks Envoy; ``picker.admin`` answers ``/debug/explain``; both hand a
:class:`RoutingRequest` to routing and get one :class:`Dispatch` back (or a
:class:`picker.errors.PickerError`). Routing is two steps so that a failure can be labelled with what
was resolved before it: :meth:`Router.resolve` (parse, rewrite, objective: a :class:`Resolved`, the
metric labels) and :meth:`Router.route` (candidates, admission, scheduling, accounting). The router owns
model rewrites, objectives, admission, subset filtering and scheduling; it never touches the wire.
Exceptions carry no request state: the caller labels a failure with the :class:`Resolved` it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from picker.state.outcomes import Outcome
from scoring.types import Decision, PluginTiming

#: OpenAI API families, told apart by the request path suffix (reference ``openai-parser``).
API_COMPLETIONS = "completions"
API_CHAT = "chat/completions"
API_RESPONSES = "responses"
API_CONVERSATIONS = "conversations"
API_EMBEDDINGS = "embeddings"


@dataclass(slots=True)
class RequestInfo:
    """What the body parser learned about a request body. No prompt text is kept here (``prefix_input`` is
    cleared by the director once hashed).

    Read-only by convention: not ``frozen`` because a frozen dataclass pays ``object.__setattr__`` per
    field at construction (about 1 µs more per request, measured), and this is built once per request.
    """

    api: str
    #: the body's ``model`` (the client-facing name); None only for the passthrough parser
    model: str | None
    stream: bool = False
    #: the client asked for a usage chunk (``stream_options.include_usage``)
    include_usage: bool = False
    #: ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` if given
    max_tokens: int | None = None
    #: rough prompt size in characters (for token estimates; never the text itself); in header-only mode
    #: 4 x the gateway's prompt-token header (the estimate everywhere is 4 characters per token)
    prompt_chars: int = 0
    #: the first bytes of the canonical prompt, to hash for prefix scoring (``picker.routing.prompt``);
    #: transient: the director hashes it with the target model and clears it, so no prompt text outlives
    #: routing. Empty when prefix scoring is off.
    prefix_input: bytes = b""
    #: the body's ``cache_salt`` ("" when absent): part of the prefix hash seed
    cache_salt: str = ""


@dataclass(slots=True)
class RoutingRequest:
    """One request as the router sees it. Read-only by convention (not ``frozen``, see RequestInfo)."""

    request_id: str
    #: lowercase header names → values (the ext_proc adapter reads raw_value or value)
    headers: Mapping[str, str]
    path: str
    #: the request body exactly as received (not copied; a bytes object or memoryview over one)
    body: bytes
    #: subset hint from ``envoy.lb.subset_hint``: None = absent, () = present but empty
    subset: tuple[str, ...] | None = None
    #: no body (request headers carried end_of_stream)
    headers_only: bool = False
    #: a traced request's per-plugin timings, appended to by the pick (None: not timed, the common case)
    timings: list[PluginTiming] | None = None


class Lease(Protocol):
    """In-flight accounting for one routed request (see ``scoring.matrix.LoadCharge``): ``first_byte()``
    at the first response body byte gives back the prefill part of the charge, ``release()`` at stream
    end gives back the rest (and the prefill, if no byte came). Both idempotent. ``report()``, once,
    before ``release()``: what the request came to (passive health, observed latency)."""

    def first_byte(self) -> None: ...

    def report(self, outcome: Outcome, /) -> None: ...

    def release(self) -> None: ...


class Resolved(NamedTuple):
    """A request understood (:meth:`Router.resolve`): what the client asked for, what it will get after
    rewrites, and how urgent it is. These are the metric labels of everything that follows, including a
    routing failure, so the stream keeps them until the request is routed."""

    #: the body's ``model`` (the client-facing name); "" for the passthrough parser
    incoming_model: str
    #: the model the request is sent as: a rewrite header or rule's target, else ``incoming_model``
    target_model: str
    #: from the InferenceObjective named by ``x-gateway-inference-objective`` (unknown: 0)
    priority: int
    #: the objective's name (for metrics), "" if none
    objective: str
    #: what the body parser learned; None for the passthrough parser
    info: RequestInfo | None


class Reservation(Protocol):
    """A tenant's reservation, as the stream drives it (``picker.tenants.meter.Ticket``)."""

    sent: bool

    def response_headers(self) -> list[tuple[str, bytes]]: ...

    def chunk(self, chunk: bytes) -> None: ...

    def served_by(self, address: str) -> None:
        """The gateway reported the endpoint that served the response (``x-gateway-destination-endpoint-
        served``), at the response headers: a reservation on another endpoint than the one that served
        settles from the one that did (``picker.routing.external``)."""
        ...

    def complete(self, usage: Any, *, status_ok: bool, body: bytes | None = None) -> None: ...

    def release(self) -> None: ...


@dataclass(slots=True, eq=False)
class Dispatch:
    """One routed request, from the pick to the end of its stream: where it goes, what is forwarded, the
    load and the tenant budget it holds, what to put back in the response, and its metric labels. The
    one object the ext_proc stream keeps per request (:meth:`Router.route`)."""

    #: ``ip:port`` of the primary endpoint, then distinct fallbacks in score order
    endpoints: tuple[str, ...]
    #: the body to forward: the original object when the model is not rewritten
    body: bytes
    #: the primary endpoint's load, given back at the first response byte and at stream end
    lease: Lease
    #: puts the client's model name back into response bytes; None when the model was not rewritten
    restore: Callable[[bytes], bytes] | None
    incoming_model: str
    target_model: str
    priority: int
    #: objective name from ``x-gateway-inference-objective`` (for metrics), "" if none
    objective: str = ""
    info: RequestInfo | None = None
    #: filled only by :meth:`Explainer.explain`
    decision: Decision | None = None
    #: the scheduling profile the request was scored with, and why the handler chose it
    #: (``scoring.profiles.ProfileChoice``: ``single``, ``header``, ``rule <n>``, ``default``)
    profile: str = ""
    profile_reason: str = ""
    #: candidates left out of the pick because they must not be primary: name → why (``/debug/explain``);
    #: None when there were none
    avoided: Mapping[str, str] | None = None
    #: ``ai_failover_total`` reason when the scorer's own choice was avoided, else None
    failover: str | None = None
    #: the external endpoint (``picker.routing.external``) the request was sent to first, "" if none
    external: str = ""
    #: the tenant's reservation (``picker.tenants.Ticket``) when tenants are configured, else None
    ticket: Reservation | None = None
    #: filled only by :meth:`Explainer.explain`: whether the request would go to an external endpoint
    #: first, and why or why not (``picker.routing.spill``); None for a live request
    spill: Mapping[str, Any] | None = None
    #: seconds the director's schedule took (the scheduler e2e metric, observed when the request is
    #: routed); None when nothing was scheduled (a body-less request, an explanation)
    scheduled_s: float | None = None

    @property
    def destination(self) -> str:
        """The header/metadata value: ``ip:port[,ip:port...]``, primary first, no spaces."""
        return ",".join(self.endpoints)

    @property
    def streamed(self) -> bool:
        """The client asked for a streamed (SSE) response."""
        info = self.info
        return info is not None and info.stream


class PendingRoute:
    """A dispatch that needs I/O first (a remote tenant budget) or a wait (a flow-control queue, a first
    replica of an empty pool): the stream awaits :meth:`wait`, which returns the dispatch or raises the
    PickerError that refused the request.

    ``extend_s``: the wait may outlast the proxy's per-message timer, so the stream first asks the proxy to
    restart that timer with this many seconds (``override_message_timeout``); None asks nothing."""

    __slots__ = ("_coro", "_on_cancel", "extend_s")

    def __init__(
        self,
        coro: Coroutine[object, object, Dispatch],
        *,
        extend_s: float | None = None,
        on_cancel: Callable[[], object] | None = None,
    ) -> None:
        """``on_cancel``: what :meth:`cancel` must undo besides the coroutine (a question already sent,
        whose answer would otherwise hold a reservation nobody releases)."""
        self._coro = coro
        self.extend_s = extend_s
        self._on_cancel = on_cancel

    async def wait(self) -> Dispatch:
        return await self._coro

    def cancel(self) -> None:
        """The stream ended before waiting: close the coroutine (nothing was reserved yet, or its
        reservation is given back by the ticket's own cleanup, or by ``on_cancel``)."""
        self._coro.close()
        if self._on_cancel is not None:
            self._on_cancel()


class Router(Protocol):
    """What the ext_proc stream asks of routing. Implemented by :class:`picker.routing.director.Director`;
    faked in protocol tests. Every step raises :class:`picker.errors.PickerError` subclasses."""

    def resolve(self, request: RoutingRequest) -> Resolved:
        """Parse the body, apply rewrites, look up the objective (reference order, steps 1-3)."""
        ...

    def route(self, request: RoutingRequest, resolved: Resolved) -> Dispatch | PendingRoute:
        """Candidates, admission, scheduling; count the request against its primary endpoint (a
        :class:`PendingRoute` when admission needs I/O first)."""
        ...

    def route_headers_only(self, request: RoutingRequest) -> Dispatch:
        """Pick for a request without a body: a random pool endpoint, no scheduling (reference)."""
        ...

    def resolve_by_header(self, request: RoutingRequest) -> Resolved | None:
        """Header-only mode: what the headers say in place of a body (the model from a header), for
        :meth:`route`; None for a body-less request without the model header (``route_headers_only``).
        Raises PickerError subclasses (400 for a missing or invalid model header)."""
        ...


class Explainer(Protocol):
    """What ``/debug/explain`` asks of routing: the decision a request would get, with no side effects."""

    def explain(self, request: RoutingRequest) -> Dispatch:
        """Resolve and route with the per-scorer record (``Dispatch.decision``); nothing is counted and no
        tenant budget is touched."""
        ...
