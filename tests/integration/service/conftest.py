"""The whole EPP in-process (``picker.service.Service``) driven over real gRPC and HTTP on 127.0.0.1.

Unlike ``tests/integration/extproc`` (protocol layer, fake router), everything here is the production
wiring: the Director, the datastore, the scoring profile built from a config document, telemetry, the
gRPC health server and the admin API.

The pool mirrors the reference hermetic suite (gie-epp.md §5.1): pod ``i`` has IP ``192.168.1.<i+1>``
there and ``127.0.0.<i+2>`` here (so ``192.168.1.2`` → ``127.0.0.3``), port 8000, one endpoint each.
Nothing listens on those addresses, so every scrape fails and the datastore keeps what a test injects
with :meth:`ServiceHarness.set_metrics` (the reference injects metrics through a fake metrics client the
same way). Freshness never decides a test by accident: the pool gauges' staleness threshold is 60 s
here, and tests whose outcome depends on the saturation detector's freshness (200 ms by default) give it
a long threshold in their config, or use real fake model servers scraped live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.config import load_config_text
from picker.service import Ports, Service
from picker.state.metrics import EndpointMetrics
from picker.testing.clocks import standing_still
from picker.testing.envoy import (
    EnvoyClient,
    ExchangeResult,
    HttpRequest,
    RawStream,
    UpstreamResponse,
    response_body,
    response_headers,
)
from picker.testing.local import local_settings, run_started
from picker.testing.poll import eventually

pytestmark = pytest.mark.integration

PORT = 8000


def pod(i: int) -> str:
    """Endpoint address of the reference's pod ``i`` (reference IP 192.168.1.<i+1>)."""
    return f"127.0.0.{i + 2}:{PORT}"


P0, P1, P2 = pod(0), pod(1), pod(2)

#: The objectives of the reference's hermetic pool resource, plus one sheddable objective for the
#: admission tests, and its InferenceModelRewrite ``rewrite-test`` — all as our PickerConfig document.
PICKER_DOCUMENT = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
objectives:
- {name: sql-lora, priority: 2}
- {name: sql-lora-sheddable}
- {name: my-model, priority: 2}
- {name: direct-model, priority: 2}
- {name: inference-objective-with-priority-4, priority: 4}
- {name: batch-sheddable, priority: -1}
modelRewrites:
- name: rewrite-test
  rules:
  - matches: [{model: {type: Exact, value: model-to-be-rewritten}}]
    targets: [{modelRewrite: rewritten-model}]
"""

SCORERS = ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "lora-affinity-scorer")


def epp_document(
    *,
    weights: Mapping[str, float] | None = None,
    max_endpoints: int = 1,
    parser: str | None = None,
    filters: Sequence[tuple[str, Mapping[str, Any]]] = (),
    detector: Mapping[str, Any] | None = None,
) -> str:
    """An EndpointPickerConfig: the reference test config (four scorers of weight 1, max-score picker)
    unless ``weights`` names other scorers/weights. ``filters`` are ``(type, parameters)`` run first;
    ``detector`` gives the saturation detector (``utilization-detector``) these parameters."""
    weights = dict.fromkeys(SCORERS, 1.0) if weights is None else dict(weights)
    lines = [
        "apiVersion: inference.networking.x-k8s.io/v1alpha1",
        "kind: EndpointPickerConfig",
        "plugins:",
    ]
    for kind, params in filters:
        lines.append(f"- {{type: {kind}, parameters: {orjson.dumps(dict(params)).decode()}}}")
    lines += [f"- {{type: {kind}}}" for kind in weights]
    lines.append(
        f"- {{name: picker, type: max-score-picker, parameters: {{maxNumOfEndpoints: {max_endpoints}}}}}"
    )
    if parser is not None:
        lines.append(f"- {{type: {parser}}}")
    if detector is not None:
        params = orjson.dumps(dict(detector)).decode()
        lines.append(f"- {{name: detector, type: utilization-detector, parameters: {params}}}")
    lines += ["schedulingProfiles:", "- name: default", "  plugins:"]
    lines += [f"  - {{pluginRef: {kind}}}" for kind, _ in filters]
    lines += [f"  - {{pluginRef: {kind}, weight: {w}}}" for kind, w in weights.items()]
    lines.append("  - {pluginRef: picker}")
    if parser is not None:
        lines.append(f"parser: {{pluginRef: {parser}}}")
    if detector is not None:
        lines.append("saturationDetector: {pluginRef: detector}")
    return "\n".join(lines) + "\n"


def config_text(*, picker_extra: str = "", **epp: Any) -> str:
    """Both documents; ``picker_extra`` is appended to the PickerConfig document (e.g. ``request:``)."""
    return f"{epp_document(**epp)}---\n{PICKER_DOCUMENT}{picker_extra}"


REFERENCE_CONFIG = config_text()


@dataclass(frozen=True)
class Pod:
    """The reference's ``P(i, queue, kv, activeModels...)`` (MaxActiveModels = 0, as there)."""

    queue: float
    kv: float
    active: tuple[str, ...] = ()


def req_llm(prompt: str, model: str, target: str, **kwargs: Any) -> HttpRequest:
    """The reference request builder ``ReqLLM``: headers ``hi: mom``, ``x-request-id``, the objective and
    rewrite headers, then one JSON body frame with end_of_stream."""
    body = orjson.dumps({"prompt": prompt, "max_tokens": 100, "temperature": 0, "model": model})
    options: dict[str, Any] = {
        "path": "/v1/completions",
        "body": body,
        "request_id": "test-request-id",
        "content_type": None,
        "headers": [
            ("hi", "mom"),
            ("x-gateway-inference-objective", model),
            ("x-gateway-model-name-rewrite", target),
        ],
    }
    options.update(kwargs)
    return HttpRequest(**options)


def completion(prompt: str = "hello", model: str = "m", **fields: Any) -> bytes:
    return orjson.dumps({"model": model, "prompt": prompt, **fields})


# ------------------------------------------------------------------------------------------ /metrics


def samples(text: str, metric: str, /) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``metric`` in an exposition, with its labels."""
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == metric
    ]


def sample(text: str, metric: str, /, **labels: str) -> float | None:
    """The value of the one sample ``metric`` whose labels are exactly ``labels``; None if absent."""
    found = [v for got, v in samples(text, metric) if got == labels]
    assert len(found) <= 1, (metric, labels, found)
    return found[0] if found else None


# ------------------------------------------------------------------------------------------ streams


async def hold(client: EnvoyClient, request: HttpRequest) -> tuple[RawStream, str]:
    """Send a whole request and read its replies, leaving the stream open as Envoy does while the model
    server works on it. Returns the stream and the picked destination."""
    stream = client.stream()
    for message in request.messages():
        await stream.send(message)
    destination = ""
    while True:
        reply = await stream.recv()
        assert reply is not None, await stream.status()
        kind = reply.WhichOneof("response")
        assert kind in {"request_headers", "request_body"}, reply
        if kind == "request_headers":
            for option in reply.request_headers.response.header_mutation.set_headers:
                if option.header.key == "x-gateway-destination-endpoint":
                    destination = option.header.raw_value.decode()
        elif reply.request_body.response.body_mutation.streamed_response.end_of_stream:
            return stream, destination


async def finish(stream: RawStream, body: bytes = b'{"object":"text_completion"}') -> None:
    """Complete a held stream with a 200 JSON response, as the proxy does when the upstream answers."""
    await stream.send(response_headers([(":status", "200"), ("content-type", "application/json")]))
    await stream.send(response_body(body, end_of_stream=True))
    while (reply := await stream.recv()) is not None:
        kind = reply.WhichOneof("response")
        if (
            kind == "response_body"
            and reply.response_body.response.body_mutation.streamed_response.end_of_stream
        ):
            break
    await stream.half_close()
    while await stream.recv() is not None:
        pass


# ------------------------------------------------------------------------------------------ harness


@dataclass
class ServiceHarness:
    service: Service
    ports: Ports
    client: EnvoyClient
    http: aiohttp.ClientSession
    endpoints: tuple[str, ...]
    tls: bool
    extra_clients: list[EnvoyClient] = field(default_factory=list)

    @property
    def admin(self) -> str:
        """The admin API (``/config``, ``/debug/*``): its own port, on loopback."""
        return f"http://127.0.0.1:{self.ports.admin}"

    @property
    def metrics_url(self) -> str:
        """The metrics port: ``/metrics``, ``/healthz``, ``/readyz``."""
        return f"http://127.0.0.1:{self.ports.metrics}"

    def url(self, path: str) -> str:
        """``path`` on the port that serves it."""
        on_metrics_port = path.partition("?")[0] in {"/metrics", "/healthz", "/readyz"}
        return (self.metrics_url if on_metrics_port else self.admin) + path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    async def new_client(self, *, tls: bool | None = None) -> EnvoyClient:
        """Another connection to the ext_proc port (closed by the fixture)."""
        client = EnvoyClient(self.grpc_target, tls=self.tls if tls is None else tls, timeout=30.0)
        self.extra_clients.append(client)
        await client.connect()
        return client

    async def set_metrics(self, *pods: Pod | None, at: float | None = None) -> None:
        """Inject one scrape per endpoint (``None`` skips one), as if it had just landed, and wait until
        the datastore publishes it (metric updates are folded into snapshots every few milliseconds)."""
        ds = self.service.datastore
        stamp = time.monotonic() if at is None else at
        for address, p in zip(self.endpoints, pods, strict=False):
            if p is None:
                continue
            ds.record_scrape(
                address,
                EndpointMetrics(
                    waiting=p.queue,
                    running=0.0,
                    kv_usage=p.kv,
                    lora_active=p.active,
                    lora_waiting=(),
                    max_lora=0.0,
                ),
                at=stamp,
            )

        async def published() -> bool:
            m = ds.snapshot()
            return all(
                p is None or float(m.scraped_at[m.names.index(a)]) == stamp
                for a, p in zip(self.endpoints, pods, strict=False)
            )

        await eventually(published, what="injected metrics to be published")

    async def exchange(
        self, request: HttpRequest | None, response: UpstreamResponse | None = None, **kw: Any
    ) -> ExchangeResult:
        return await self.client.exchange(request, response, **kw)

    async def get(self, path: str) -> aiohttp.ClientResponse:
        async with self.http.get(self.url(path)) as resp:
            await resp.read()
            return resp

    async def get_json(self, path: str) -> Any:
        async with self.http.get(self.url(path)) as resp:
            assert resp.status == 200, (path, resp.status, await resp.text())
            return await resp.json()

    async def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        async with self.http.post(self.url(path), json=payload) as resp:
            return resp.status, await resp.json()

    async def metrics(self) -> str:
        async with self.http.get(self.metrics_url + "/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    async def endpoint_rows(self) -> dict[str, dict[str, Any]]:
        doc = await self.get_json("/debug/endpoints")
        return {row["address"]: row for row in doc["endpoints"]}

    async def inflight(self) -> dict[str, float]:
        return {a: row["inflight"] for a, row in (await self.endpoint_rows()).items()}


StartService = Callable[..., Awaitable[ServiceHarness]]


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    """Start a Service (ephemeral ports, plaintext unless ``secure_serving=True``) with a connected
    Envoy-like client. ``pods`` endpoints, or ``endpoints`` verbatim (``host:port[@engine]``); other
    keywords go to Settings. ``config`` is the document text (None: ``config_file`` or the default).
    ``wall_clock``: what the budgets' UTC windows are measured on; by default one standing still mid-window
    (:func:`picker.testing.clocks.standing_still`), so that no test sees a count restart at a minute's or
    an hour's turn."""
    running: list[tuple[ServiceHarness, asyncio.Task[None]]] = []

    async def _start(
        pods: int = 3,
        *,
        config: str | None = REFERENCE_CONFIG,
        endpoints: Sequence[str] | None = None,
        wall_clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> ServiceHarness:
        static = tuple(endpoints) if endpoints is not None else tuple(pod(i) for i in range(pods))
        addresses = tuple(e.partition("@")[0] for e in static)  # "host:port@engine" → "host:port"
        options: dict[str, Any] = {
            "static_endpoints": ",".join(static),
            "seed": 1,
            # unreachable endpoints: one scrape a second is plenty, and keeps two cores free for the tests
            "refresh_metrics_interval": 1.0,
            # injected scrapes count as fresh for the pool gauges however slow the machine is
            "metrics_staleness_threshold": 60.0,
            **settings,
        }
        s = local_settings(**options)
        clock = wall_clock or standing_still()
        if config is not None and not s.config_file:
            service = Service(
                s, load_config_text(config), config_text=config, config_source="test", wall_clock=clock
            )
        else:
            service = Service.load(s, wall_clock=clock)
        ports, task = await run_started(service)
        client = EnvoyClient(f"127.0.0.1:{ports.grpc}", tls=s.secure_serving, timeout=30.0)
        http = aiohttp.ClientSession()
        harness = ServiceHarness(service, ports, client, http, addresses, s.secure_serving)
        running.append((harness, task))
        await client.connect()
        return harness

    yield _start
    for harness, task in running:
        for client in (harness.client, *harness.extra_clients):
            await client.close()
        await harness.http.close()
        harness.service.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)
