"""A model-server stand-in speaking real HTTP: OpenAI completions, ``/v1/models``, ``/health`` and a live
``/metrics`` page rendered from the real page of its engine.

Why: the EPP's scraper, extractors, scorers and the end-to-end demo and benchmarks need model servers that
look like the real ones on the wire and get slower when loaded, without GPUs. :class:`FakeServer` is one such
server; :class:`FakeFleet` runs many in one process and event loop (``bench_scrape`` runs 256 on 127.0.0.1,
scraped every 50 ms); :func:`run_fake_server` is what ``picker fake-server`` runs.

Routes::

    POST /v1/completions, /v1/chat/completions   JSON, or SSE with "stream": true (fake_openai.py)
    GET  /v1/models                              base models and LoRA adapters, vLLM's shape
    GET  /health (and /v2/health/ready)          200, empty body
    GET  /metrics[?name[]=<sample>...]           the engine's page with live values (fake_pages.py)
    POST /_fake/control                          {"fault": ..., "slowdown": ...}: misbehave on request

Engines: ``vllm`` (vLLM V1 page), ``vllm-v0`` (V0 page: ``gpu_cache_usage_perc``), ``sglang``, ``tgi``,
``trtllm`` (Triton TensorRT-LLM page; aliases ``triton-tensorrt-llm``, ``trtllm-serve``). vLLM and SGLang
honour ``name[]`` filtering and gzip the page on ``Accept-Encoding: gzip`` as their prometheus_client does;
TGI and Triton ignore both. Triton serves metrics on a separate port in real life; the fake uses one port.

Load: every completion is admitted to a :class:`~picker.testing.fake_load.LoadModel` (by default the
continuous-batching model of ``fake_load.py``) and answered at the pace the model produces tokens, so a loaded
server is visibly slower. ``time_scale`` is wall seconds per model second: 0.1 runs ten times faster than the
model's numbers, for tests and demos. A client that disconnects aborts its request, which frees its slot.

Misbehaving on purpose: :attr:`FakeServer.fault` (settable while running) makes a server a bad pod for scraper
and failover tests, see :class:`Fault`; :meth:`FakeServer.set_slowdown` makes its engine slower than its
gauges suggest. Both can be changed from another process through ``POST /_fake/control``.
:meth:`FakeServer.hold_metrics` leaves ``/metrics`` requests unanswered until
:meth:`FakeServer.release_metrics` (a scrape attempt that has not ended yet, for as long as a test needs
one). A stopped server
refuses connections; :meth:`FakeServer.start` after :meth:`FakeServer.stop` listens on the same port again (a
restarted pod), with its load state kept.

In tests, demos and benchmarks::

    async with FakeFleet.uniform(4, "vllm", time_scale=0.1) as fleet:
        ...  # fleet.addresses == ["127.0.0.1:41234", ...]; fleet[2].fault = Fault.HANG; fleet[0].snapshot()

Recommended options for ``picker fake-server`` (all are keywords of :class:`FakeServer`)::

    --engine vllm|vllm-v0|sglang|tgi|trtllm   --port N   --host 127.0.0.1
    --model NAME (repeatable; default meta-llama/Llama-3.1-8B-Instruct)   --lora NAME (repeatable)
    --time-scale 1.0 (0.1 = ten times faster)   --seed 0
    LoadParams fields as flags, e.g. --max-num-seqs 16 --num-blocks 2048 --max-lora 1 --slower 2.0
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qs

import orjson

from picker.testing.fake_http import HttpExchange, HttpRequest, HttpServer
from picker.testing.fake_load import (
    FINISH_LENGTH,
    FINISH_STOP,
    ContinuousBatchingModel,
    LoadHandle,
    LoadModel,
    LoadParams,
    LoadRejectedError,
    LoadRequest,
    LoadSnapshot,
)
from picker.testing.fake_openai import (
    CHARS_PER_TOKEN,
    CompletionCall,
    OpenAIError,
    ResponseIdentity,
    completion_body,
    error_body,
    models_body,
    parse_call,
    prefix_hashes,
    stream_end,
    stream_start,
    stream_token,
)
from picker.testing.fake_pages import EngineSpec, MetricsPage, PageLibrary, engine_spec

__all__ = [
    "CONTROL_PATH",
    "DEFAULT_MODEL",
    "ContinuousBatchingModel",
    "FakeFleet",
    "FakeServer",
    "Fault",
    "LoadModel",
    "LoadParams",
    "LoadSnapshot",
    "PageLibrary",
    "run_fake_server",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
#: the fake's own control route (not a model-server route): change its fault or slowdown from outside
CONTROL_PATH = "/_fake/control"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"

#: what a server in Fault.METRICS_GARBAGE serves as its metrics page: no valid sample line anywhere
GARBAGE_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head>\n"
    b'vllm:num_requests_waiting{model_name="x" 3 4 5\n'
    b"\x00\xff\xfe{{{ not prometheus }}}\n"
    b"# TYPE\n"
)


class Fault(enum.Enum):
    """Ways a fake server can misbehave (set :attr:`FakeServer.fault`)."""

    #: behave
    NONE = "none"
    #: ``/metrics`` answers 200 with bytes that are not the Prometheus text format
    METRICS_GARBAGE = "metrics-garbage"
    #: ``/metrics`` answers 500
    METRICS_500 = "metrics-500"
    #: every route answers 500 (a crashed engine behind a live HTTP front)
    ERROR_500 = "error-500"
    #: completions answer 503 (an engine that lost its GPU or is shutting down); ``/metrics`` still works
    ERROR_503 = "error-503"
    #: requests are read and never answered (a wedged process); the client's timeout must fire
    HANG = "hang"
    #: every response is delayed by ``fault_delay_s`` wall seconds
    SLOW = "slow"
    #: the connection is dropped without an answer (a process dying mid-request)
    RESET = "reset"


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    #: wake on every new token (streams) or only when the request is done
    every_token: bool


class FakeServer:
    """One fake model server. Constructing it does nothing; :meth:`start` binds, :meth:`stop` closes.

    ``models`` are the base models served (the first names the ``model_name`` label of the page);
    ``lora_adapters`` are adapter names also accepted as ``model`` (they need ``load.max_lora`` >= 1).
    ``load`` is the engine's :class:`LoadParams`, or any :class:`LoadModel` (the fleet simulator's).
    ``default_max_tokens`` is the output length when a request sets no ``max_tokens`` (it then finishes with
    ``stop``); ``max_tokens_cap`` caps what a request may ask for. ``pages`` shares parsed page captures
    between servers.
    """

    def __init__(
        self,
        engine: str = "vllm",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = (DEFAULT_MODEL,),
        lora_adapters: Sequence[str] = (),
        load: LoadParams | LoadModel | None = None,
        time_scale: float = 1.0,
        seed: int = 0,
        default_max_tokens: int = 16,
        max_tokens_cap: int = 4096,
        gzip_metrics: bool = True,
        fault: Fault = Fault.NONE,
        fault_delay_s: float = 5.0,
        pages: PageLibrary | None = None,
    ) -> None:
        self.spec: EngineSpec = engine_spec(engine)
        if not models:
            raise ValueError("a fake server serves at least one model")
        if set(models) & set(lora_adapters):
            raise ValueError("a name cannot be both a base model and a LoRA adapter")
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        if default_max_tokens < 1 or max_tokens_cap < 1:
            raise ValueError("default_max_tokens and max_tokens_cap must be >= 1")
        if load is None or isinstance(load, LoadParams):
            params = load if load is not None else LoadParams()
            self._base_params = params
            if lora_adapters and params.max_lora == 0:
                raise ValueError("LoRA adapters need LoadParams.max_lora >= 1")
            self._model: LoadModel = ContinuousBatchingModel(params, seed=seed)
            self._hash_prefixes = params.enable_prefix_caching
        else:
            self._model = load
            self._hash_prefixes = True
            self._base_params = LoadParams()
        #: current slowdown factor (:meth:`set_slowdown`)
        self.slowdown = 1.0
        self.models = tuple(models)
        self.lora_adapters = tuple(lora_adapters)
        self.time_scale = time_scale
        self.default_max_tokens = default_max_tokens
        self.max_tokens_cap = max_tokens_cap
        self.gzip_metrics = gzip_metrics
        #: current misbehaviour; may be changed at any time
        self.fault = fault
        self.fault_delay_s = fault_delay_s
        #: requests answered by route: metrics, completions, chat, models, health, stats, other
        self.served: dict[str, int] = dict.fromkeys(
            ("metrics", "completions", "chat", "models", "health", "stats", "other"), 0
        )
        self._rng = random.Random(seed)  # noqa: S311 - response ids for a fake, not security
        self._pages = pages
        self._http = HttpServer(self._handle, host=host, port=port)
        self._page: MetricsPage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._timer: asyncio.Handle | None = None
        self._timer_when = 0.0
        self._waiters: dict[LoadHandle, _Waiter] = {}
        self._requests = 0
        self._names_cache: dict[str, frozenset[str] | None] = {}
        self._created = int(time.time())
        #: set while ``/metrics`` requests are held (:meth:`hold_metrics`)
        self._metrics_gate: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind (``port`` 0 = any free port; after a :meth:`stop`, the port bound before) and serve."""
        if self._http.running:
            raise RuntimeError("fake server already running")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._t0 = loop.time()
        elif self._loop is not loop:
            raise RuntimeError("a fake server cannot move to another event loop")
        if self._page is None:
            snap = self._model.snapshot()
            template = (self._pages or PageLibrary()).get(self.spec.name)
            self._page = template.bind(
                model=self.models[0],
                block_size=snap.block_size,
                num_blocks=snap.num_blocks,
                lora=bool(self.lora_adapters),
            )
        await self._http.start()
        logger.debug("fake %s server listening on %s", self.spec.name, self.address)
        self._schedule()

    async def stop(self) -> None:
        """Close the port and every connection; requests in flight are aborted."""
        await self._http.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._http.running

    @property
    def bound_port(self) -> int:
        if not self._http.port:
            raise RuntimeError("fake server not started")
        return self._http.port

    @property
    def host(self) -> str:
        return self._http.host

    @property
    def address(self) -> str:
        """``host:port``, as the EPP's ``--static-endpoints`` takes it."""
        return f"{self.host}:{self.bound_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def engine(self) -> str:
        return self.spec.name

    def snapshot(self) -> LoadSnapshot:
        """The engine state ``/metrics`` reports right now."""
        return self._model.snapshot()

    def __repr__(self) -> str:
        where = self.address if self._http.port else "unbound"
        return f"<FakeServer {self.spec.name} {where} fault={self.fault.value}>"

    # ------------------------------------------------------------------------------------------ engine clock
    def _now(self) -> float:
        assert self._loop is not None
        return (self._loop.time() - self._t0) / self.time_scale

    def _schedule(self) -> None:
        """Arm the timer for the model's next event (no timer at all while idle)."""
        loop = self._loop
        if loop is None or not self._http.running:
            return
        nxt = self._model.next_event_time()
        if nxt is None:
            return
        when = self._t0 + nxt * self.time_scale
        timer = self._timer
        if timer is not None:
            if self._timer_when <= when:
                return
            timer.cancel()
        # (uvloop returns a plain Handle, without when(), for a time already past: keep the time ourselves)
        self._timer = loop.call_at(when, self._on_timer, nxt)
        self._timer_when = when

    def admit_unattended(self, prompt_tokens: int, output_tokens: int) -> None:
        """Admit a request that no client waits for: its tokens run through the load model and the
        ``/metrics`` gauges (running, waiting, KV usage) move as under real traffic, without the HTTP cost.
        A benchmark's busy fleet (``benchmarks.fleet_proc --busy-rps``) uses it so that the EPP it
        measures scrapes pages that change, as a serving fleet's do."""
        self._model.admit(LoadRequest(prompt_tokens, output_tokens, FINISH_LENGTH, None, ()), self._now())
        self._schedule()

    def _on_timer(self, due: float) -> None:
        self._timer = None
        # the loop's clock may read a hair before the due time after the scale round trip
        progressed = self._model.step(max(self._now(), due))
        waiters = self._waiters
        for handle in progressed:
            waiter = waiters.get(handle)
            if waiter is not None and (waiter.every_token or handle.done) and not waiter.future.done():
                waiter.future.set_result(None)
        self._schedule()

    async def _wait(self, handle: LoadHandle, *, every_token: bool) -> None:
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters[handle] = _Waiter(future, every_token)
        try:
            await future
        finally:
            self._waiters.pop(handle, None)

    # ------------------------------------------------------------------------------------------ routes
    def _handle(self, request: HttpRequest, exchange: HttpExchange) -> Coroutine[Any, Any, None] | None:
        if request.path == CONTROL_PATH:
            self._control(request, exchange)
            return None
        fault = self.fault
        if fault is Fault.NONE or fault is Fault.METRICS_GARBAGE or fault is Fault.METRICS_500:
            return self._route(request, exchange)
        if fault is Fault.ERROR_503:
            if request.path in ("/v1/completions", "/v1/chat/completions"):
                exchange.respond(
                    503, error_body("engine unavailable (injected)", "ServiceUnavailable", None, 503), _JSON
                )
                return None
            return self._route(request, exchange)
        if fault is Fault.HANG:
            exchange.hold()
        elif fault is Fault.RESET:
            exchange.abort()
        elif fault is Fault.ERROR_500:
            exchange.respond(500, error_body("engine failure (injected)", "server_error", None, 500), _JSON)
        else:
            return self._slow(request, exchange)
        return None

    @property
    def load_params(self) -> LoadParams | None:
        """The parameters the built-in load model runs with now (slowdown applied); None for another model."""
        model = self._model
        return model.params if isinstance(model, ContinuousBatchingModel) else None

    def set_slowdown(self, factor: float) -> None:
        """From now on the engine runs ``factor`` times slower than its parameters say (every step's
        duration multiplied; 1 = as built): a pod that got slow for reasons its gauges do not show
        (thermal throttling, a noisy neighbour). Only for the built-in load model."""
        if not factor > 0:
            raise ValueError("the slowdown factor must be > 0")
        model = self._model
        if not isinstance(model, ContinuousBatchingModel):
            raise TypeError("set_slowdown needs the built-in ContinuousBatchingModel")
        model.params = self._base_params.slower(factor)
        self.slowdown = factor

    def hold_metrics(self) -> None:
        """From now on ``/metrics`` requests are read (``served["metrics"]`` counts them as they arrive)
        and left unanswered until :meth:`release_metrics`: a scrape attempt that has not ended, neither
        succeeded nor failed, for as long as the test needs (the scraper's timeout permitting). Unlike
        :attr:`Fault.HANG` the other routes behave, and the held requests are answered later."""
        if self._metrics_gate is None:
            self._metrics_gate = asyncio.Event()

    def release_metrics(self) -> None:
        """Answer the held ``/metrics`` requests (with the page and :attr:`fault` as they are now) and stop
        holding new ones."""
        gate, self._metrics_gate = self._metrics_gate, None
        if gate is not None:
            gate.set()

    async def _held_metrics(self, gate: asyncio.Event, request: HttpRequest, exchange: HttpExchange) -> None:
        await gate.wait()
        self._metrics(request, exchange)

    def _control(self, request: HttpRequest, exchange: HttpExchange) -> None:
        """``POST /_fake/control`` with ``{"fault": "<Fault value>", "slowdown": <factor>}`` (either key):
        lets a test or the demo change a fake server in another process. Answers the state as JSON."""
        if request.method != "POST":
            exchange.respond(405, b'{"detail":"Method Not Allowed"}', _JSON, (("allow", "POST"),))
            return
        try:
            doc = json.loads(request.body or b"{}")
            if not isinstance(doc, dict):
                raise TypeError("expected a JSON object")  # noqa: TRY301 - one error path for the caller
            fault = Fault(doc["fault"]) if "fault" in doc else self.fault
            if "slowdown" in doc:
                self.set_slowdown(float(doc["slowdown"]))
        except (ValueError, TypeError, KeyError) as exc:
            exchange.respond(400, json.dumps({"error": str(exc)}).encode(), _JSON)
            return
        self.fault = fault
        exchange.respond(200, json.dumps({"fault": fault.value, "slowdown": self.slowdown}).encode(), _JSON)

    async def _slow(self, request: HttpRequest, exchange: HttpExchange) -> None:
        await asyncio.sleep(self.fault_delay_s)
        pending = self._route(request, exchange)
        if pending is not None:
            await pending

    def _route(self, request: HttpRequest, exchange: HttpExchange) -> Coroutine[Any, Any, None] | None:
        path = request.path
        if path == "/metrics":
            if self._only(request, exchange, "GET", "metrics"):
                gate = self._metrics_gate
                if gate is not None:
                    return self._held_metrics(gate, request, exchange)
                self._metrics(request, exchange)
        elif path in ("/v1/completions", "/v1/chat/completions"):
            chat = path == "/v1/chat/completions"
            if self._only(request, exchange, "POST", "chat" if chat else "completions"):
                return self._start_completion(request, exchange, chat=chat)
        elif path in ("/health", "/v2/health/ready"):
            if self._only(request, exchange, "GET", "health"):
                exchange.respond(200)
        elif path == "/v1/models":
            if self._only(request, exchange, "GET", "models"):
                exchange.respond(200, self._models_body(), _JSON)
        elif path == "/debug/stats":
            if self._only(request, exchange, "GET", "stats"):
                exchange.respond(200, self._stats_body(), _JSON)
        else:
            self.served["other"] += 1
            exchange.respond(404, b'{"detail":"Not Found"}', _JSON)
        return None

    def _only(self, request: HttpRequest, exchange: HttpExchange, method: str, route: str) -> bool:
        self.served[route] += 1
        if request.method == method:
            return True
        exchange.respond(405, b'{"detail":"Method Not Allowed"}', _JSON, (("allow", method),))
        return False

    def _models_body(self) -> bytes:
        entries: list[tuple[str, str | None]] = [(m, None) for m in self.models]
        entries += [(a, self.models[0]) for a in self.lora_adapters]
        snap = self._model.snapshot()
        return models_body(
            entries, owned_by=self.spec.owned_by, created=self._created, max_model_len=snap.max_model_len
        )

    def _stats_body(self) -> bytes:
        """``GET /debug/stats`` (ours, for benchmarks and the demo): the load model's cumulative prompt and
        prefix-cache counters, whatever the engine's page exports (TGI's has no prefix-cache family)."""
        snap = self._model.snapshot()
        return orjson.dumps(
            {
                "prefix_queries": snap.prefix_queries_total,
                "prefix_hits": snap.prefix_hits_total,
                "prompt_tokens": snap.prompt_tokens_total,
            }
        )

    def _metrics(self, request: HttpRequest, exchange: HttpExchange) -> None:
        if self.fault is Fault.METRICS_500:
            exchange.respond(500, b"Internal Server Error")
            return
        if self.fault is Fault.METRICS_GARBAGE:
            exchange.respond(200, GARBAGE_PAGE, METRICS_CONTENT_TYPE)
            return
        page = self._page
        assert page is not None
        names: frozenset[str] | None = None
        gzipped = False
        if page.honours_name_filter:
            if request.query:
                names = self._names(request.query)
            gzipped = self.gzip_metrics and "gzip" in request.headers.get("accept-encoding", "")
        body = page.render(self._model.snapshot(), now=time.time(), names=names, gzipped=gzipped)
        extra = (("content-encoding", "gzip"),) if gzipped else ()
        exchange.respond(200, body, METRICS_CONTENT_TYPE, extra)

    def _names(self, query: str) -> frozenset[str] | None:
        """The ``name[]`` values of a query string (None = no filter), cached: scrapers repeat one query."""
        if query in self._names_cache:
            return self._names_cache[query]
        values = parse_qs(query).get("name[]")
        names = frozenset(values) if values else None
        if len(self._names_cache) > 64:
            self._names_cache.clear()
        self._names_cache[query] = names
        return names

    # ------------------------------------------------------------------------------------------ completions
    def _start_completion(
        self, request: HttpRequest, exchange: HttpExchange, *, chat: bool
    ) -> Coroutine[Any, Any, None] | None:
        """Validate and admit at once (errors need no task); the returned coroutine paces the answer."""
        try:
            call = parse_call(request.body, chat=chat)
            lora = self._adapter_for(call.model)
            if call.max_tokens is not None:
                output, finish = min(call.max_tokens, self.max_tokens_cap), FINISH_LENGTH
            else:
                output, finish = self.default_max_tokens, FINISH_STOP
            snap = self._model.snapshot()
            hashes = (
                prefix_hashes(call.prompt, snap.block_size * CHARS_PER_TOKEN) if self._hash_prefixes else ()
            )
            handle = self._model.admit(
                LoadRequest(call.prompt_tokens, output, finish, lora, hashes), self._now()
            )
        except OpenAIError as exc:
            exchange.respond(exc.status, exc.body(), _JSON)
            return None
        except LoadRejectedError as exc:
            exchange.respond(400, error_body(str(exc), "BadRequestError", None, 400), _JSON)
            return None
        self._schedule()
        self._requests += 1
        prefix = "chatcmpl-" if chat else "cmpl-"
        ident = ResponseIdentity(f"{prefix}{self._rng.getrandbits(128):032x}", int(time.time()), call.model)
        return self._answer(call, ident, self._requests, handle, exchange)

    def _adapter_for(self, model: str) -> str | None:
        if model in self.models:
            return None
        if model in self.lora_adapters:
            return model
        raise OpenAIError(404, f"The model `{model}` does not exist.", code="model_not_found")

    async def _answer(
        self,
        call: CompletionCall,
        ident: ResponseIdentity,
        request_no: int,
        handle: LoadHandle,
        exchange: HttpExchange,
    ) -> None:
        try:
            if call.stream:
                await self._stream(call, ident, request_no, handle, exchange)
            else:
                while not handle.done:
                    await self._wait(handle, every_token=False)
                body = completion_body(
                    call, ident, request_no, handle.output_tokens, handle.finish_reason or ""
                )
                exchange.respond(200, body, _JSON)
        finally:
            if not handle.done:  # the client went away (or the server stops): free the engine slot
                self._model.abort(handle, self._now())
                self._schedule()

    async def _stream(
        self,
        call: CompletionCall,
        ident: ResponseIdentity,
        request_no: int,
        handle: LoadHandle,
        exchange: HttpExchange,
    ) -> None:
        exchange.start_stream(200, _SSE, (("cache-control", "no-cache"),))
        # As vLLM: headers go out at once, but the first event (chat: the role chunk) only comes with the
        # first token, so the first body byte marks the end of prefill, as the EPP assumes.
        prelude = stream_start(call, ident)
        sent = 0
        while True:
            produced = handle.output_tokens
            if produced > sent:
                last = produced - 1
                finish = handle.finish_reason if handle.done else None
                exchange.send(
                    prelude
                    + b"".join(
                        stream_token(call, ident, request_no, i, finish if i == last else None)
                        for i in range(sent, produced)
                    )
                )
                prelude = b""
                sent = produced
                await exchange.drain()
            if handle.done:
                break
            await self._wait(handle, every_token=True)
        exchange.send(prelude + stream_end(call, ident, sent))
        exchange.end_stream()


class FakeFleet:
    """Many fake servers in one process and event loop, started and stopped together."""

    def __init__(self, servers: Sequence[FakeServer]) -> None:
        self.servers = tuple(servers)

    @classmethod
    def uniform(cls, count: int, engine: str = "vllm", *, seed: int = 0, **options: Any) -> FakeFleet:
        """``count`` servers of one engine on ephemeral ports, seeds ``seed``, ``seed + 1``, ..., sharing
        parsed pages. ``options`` are :class:`FakeServer` keywords."""
        pages = options.pop("pages", None) or PageLibrary()
        return cls([FakeServer(engine, seed=seed + i, pages=pages, **options) for i in range(count)])

    async def start(self) -> None:
        """Start every server; if one fails, stop those already started and raise."""
        results = await asyncio.gather(*(s.start() for s in self.servers), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of each server, as ``--static-endpoints`` takes them (join with commas)."""
        return [s.address for s in self.servers]

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[FakeServer]:
        return iter(self.servers)

    def __getitem__(self, index: int) -> FakeServer:
        return self.servers[index]


async def run_fake_server(server: FakeServer) -> None:
    """Serve ``server`` (constructed, not started) until cancelled, then stop it (``picker fake-server``).
    See the module docstring for the recommended command-line options."""
    await server.start()
    logger.info("fake %s server on %s serving %s", server.engine, server.url, ", ".join(server.models))
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
