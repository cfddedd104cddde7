"""Fakes and a server/client harness for ext_proc tests over real gRPC on 127.0.0.1.

``FakeRouter`` routes like the reference does in its hermetic suite, but over a fixed endpoint list: the
real OpenAI parser, the ``x-gateway-model-name-rewrite`` header, the subset hint matched by IP, fallbacks
in list order, and the reference error messages. It records what it was asked and the leases it handed
out, so tests can check that each lease is released exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from picker.errors import BadRequest, Internal, ServiceUnavailable
from picker.extproc import ExtProcServer, TLSConfig
from picker.extproc.usage import UsageReport
from picker.routing.openai import ModelRestorer, Parser, parse_request, rewrite_model
from picker.routing.types import Dispatch, Resolved, RoutingRequest
from picker.state.outcomes import Outcome
from picker.testing.envoy import EnvoyClient
from picker.testing.poll import eventually

pytestmark = pytest.mark.integration

POD_1 = "192.168.1.1:8000"
POD_2 = "192.168.1.2:8000"
POD_3 = "192.168.1.3:8000"


@dataclass
class FakeLease:
    releases: int = 0
    first_bytes: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def first_byte(self) -> None:
        self.first_bytes += 1

    def report(self, outcome: Outcome) -> None:
        assert not self.releases, "an outcome is reported before the release"
        self.outcomes.append(outcome)

    def release(self) -> None:
        self.releases += 1


class FakeRouter:
    def __init__(
        self,
        endpoints: tuple[str, ...] = (POD_2,),
        *,
        max_endpoints: int = 1,
        parser: Parser = parse_request,
        error: Exception | None = None,
        route_error: Exception | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.max_endpoints = max_endpoints
        self.parser = parser
        #: raised by ``resolve`` (before any model is known) / by ``route`` (after)
        self.error = error
        self.route_error = route_error
        self.requests: list[RoutingRequest] = []
        self.leases: list[FakeLease] = []

    def resolve(self, request: RoutingRequest) -> Resolved:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        info = self.parser(request.path, request.body)
        incoming = info.model or ""
        target = request.headers.get("x-gateway-model-name-rewrite") or incoming
        return Resolved(incoming, target, 0, "", info)

    def route(self, request: RoutingRequest, resolved: Resolved) -> Dispatch:
        if self.route_error is not None:
            raise self.route_error
        incoming, target, _, _, info = resolved
        rewritten = info is not None and info.model is not None and target != incoming
        candidates = self._candidates(request.subset)
        return Dispatch(
            endpoints=candidates[: self.max_endpoints],
            body=rewrite_model(request.body, target) if rewritten else request.body,
            lease=self._lease(),
            restore=ModelRestorer(target, incoming) if rewritten else None,
            incoming_model=incoming,
            target_model=target,
            priority=0,
            info=info,
        )

    def route_headers_only(self, request: RoutingRequest) -> Dispatch:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        if not self.endpoints:
            raise Internal("no pods available in datastore")
        return Dispatch(
            endpoints=(self.endpoints[-1],),
            body=b"",
            lease=self._lease(),
            restore=None,
            incoming_model="",
            target_model="",
            priority=0,
        )

    def resolve_by_header(self, request: RoutingRequest) -> Resolved | None:
        """Header-only mode: the model from ``x-ai-eg-model`` (the header the tests configure)."""
        model = request.headers.get("x-ai-eg-model", "")
        if not model and request.headers_only:
            return None
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        if not model:
            raise BadRequest("model not found in header x-ai-eg-model")
        return Resolved(model, model, 0, "", None)

    def _lease(self) -> FakeLease:
        lease = FakeLease()
        self.leases.append(lease)
        return lease

    def _candidates(self, subset: tuple[str, ...] | None) -> tuple[str, ...]:
        candidates = self.endpoints
        if subset is not None:
            ips = {entry.rpartition(":")[0] or entry for entry in subset}
            candidates = tuple(e for e in candidates if e.rpartition(":")[0] in ips)
        if not candidates:
            raise ServiceUnavailable("failed to find endpoint candidates for serving the request")
        return candidates


@dataclass
class RecordingObserver:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    usages: list[UsageReport | None] = field(default_factory=list)
    closed: int = 0

    def routed(self, dispatch: Dispatch, request_bytes: int) -> None:
        self.events.append(("routed", dispatch.destination, request_bytes))

    def failed(self, error_code: str, incoming_model: str, target_model: str) -> None:
        self.events.append(("failed", error_code, incoming_model, target_model))

    def response_complete(
        self,
        decision: Dispatch | None,
        *,
        latency_s: float,
        response_bytes: int,
        usage: UsageReport | None,
        status_ok: bool,
    ) -> None:
        destination = decision.destination if decision is not None else None
        self.events.append(("complete", destination, latency_s, response_bytes, status_ok))
        self.usages.append(usage)

    def stream_closed(self, decision: Dispatch | None) -> None:
        self.closed += 1
        self.events.append(("closed", decision.destination if decision else None))

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]

    async def wait_closed(self, count: int) -> None:
        """Wait until ``count`` streams were closed server-side (a cancel is noticed asynchronously)."""
        await eventually(lambda: self.closed, f"{count} streams closed", done=lambda closed: closed >= count)


class StepClock:
    """A fake monotonic clock: each reading advances by ``step`` seconds."""

    def __init__(self, step: float = 0.25) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@dataclass
class Harness:
    server: ExtProcServer
    client: EnvoyClient
    router: FakeRouter
    observer: RecordingObserver

    @property
    def port(self) -> int:
        return self.server.bound_port


StartHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start() -> AsyncIterator[StartHarness]:
    """Start a server (and a connected client) with the given router and server options."""
    started: list[Harness] = []

    async def _start(
        router: FakeRouter | None = None,
        *,
        observer: RecordingObserver | None = None,
        tls: TLSConfig | None = None,
        client_tls: bool | None = None,
        **options: Any,
    ) -> Harness:
        router = router or FakeRouter()
        observer = observer or RecordingObserver()
        server = ExtProcServer(router, observer, port=0, host="127.0.0.1", tls=tls, **options)
        await server.start()
        use_tls = tls is not None if client_tls is None else client_tls
        client = EnvoyClient(f"127.0.0.1:{server.bound_port}", tls=use_tls, timeout=10.0)
        await client.connect()
        harness = Harness(server, client, router, observer)
        started.append(harness)
        return harness

    yield _start
    for harness in started:
        await harness.client.close()
        await harness.server.stop(0)
