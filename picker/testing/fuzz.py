"""Fuzzing the whole service: random ext_proc message sequences, random bodies and random metric pages.

:class:`FuzzRig` runs a real :class:`picker.service.Service` on its own event loop in a background thread (so
a hypothesis test, which is synchronous, can drive it), one hostile model server whose ``/metrics`` page
each example replaces, and an Envoy-like client. :func:`exchanges` is the hypothesis strategy of what a
proxy may send. ``tests/property/service/test_fuzz_service.py`` runs a bounded number of examples in
``make test``; ``python -m benchmarks.fuzz_service`` runs many more.

What every example must leave true (:meth:`FuzzRig.check`): the service task still runs, every RPC ended
(the client's deadline would report one that did not), and nothing was logged at ERROR. After a batch,
in-flight counts return to 0 (:meth:`FuzzRig.settled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import strategies as st

from picker.testing.envoy import (
    EnvoyClient,
    request_body,
    request_headers,
    request_trailers,
    response_body,
    response_headers,
    response_trailers,
)
from picker.testing.hostile import HostileMetricsServer

__all__ = ["FuzzRig", "exchanges", "metric_pages"]

_T = TypeVar("_T")

_JSON_BODIES = st.one_of(
    st.binary(max_size=256),
    st.builds(
        lambda model, prompt, extra: (
            b'{"model":' + model + b',"prompt":' + prompt + b',"stream":' + extra + b"}"
        ),
        st.sampled_from([b'"m"', b'""', b"7", b"null", b'"' + b"x" * 300 + b'"']),
        st.sampled_from([b'"hi"', b"[1,2]", b'["a","b"]', b"{}", b'"\\ud800"']),
        st.sampled_from([b"true", b"false", b"1", b"null"]),
    ),
)
_HEADER_NAMES = st.sampled_from(
    [
        ":path",
        ":method",
        "content-type",
        "content-length",
        "x-request-id",
        "x-gateway-inference-objective",
        "x-gateway-model-name-rewrite",
        ":status",
        "status",
        "x-other",
    ]
)
_HEADER_VALUES = st.one_of(
    st.sampled_from(
        ["/v1/completions", "/v1/chat/completions", "application/json", "text/event-stream", "200"]
    ),
    st.integers(-5, 1 << 40).map(str),
    st.text(max_size=40),
)
_HEADERS = st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6)
_RESPONSE_CHUNKS = st.one_of(
    _JSON_BODIES,
    st.sampled_from(
        [
            b'data: {"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n',
            b'"usage":{{' * 200,
            b'{"usage":' + b"[" * 5000,
            b"data: [DONE]\n\n",
        ]
    ),
)
_MESSAGE = st.one_of(
    st.builds(lambda h, e: request_headers(h, end_of_stream=e), _HEADERS, st.booleans()),
    st.builds(lambda b, e: request_body(b, end_of_stream=e), _JSON_BODIES, st.booleans()),
    st.builds(request_trailers, _HEADERS),
    st.builds(lambda h, e: response_headers(h, end_of_stream=e), _HEADERS, st.booleans()),
    st.builds(lambda b, e: response_body(b, end_of_stream=e), _RESPONSE_CHUNKS, st.booleans()),
    st.builds(response_trailers, _HEADERS),
)


def exchanges() -> st.SearchStrategy[list[Any]]:
    """Message sequences a proxy might send, most starting like a real request."""
    start = st.builds(
        lambda h, b: [
            request_headers([(":path", "/v1/completions"), ("content-type", "application/json"), *h]),
            request_body(b, end_of_stream=True),
        ],
        _HEADERS,
        _JSON_BODIES,
    )
    return st.builds(lambda a, b: a + b, st.one_of(start, st.just([])), st.lists(_MESSAGE, max_size=6))


def metric_pages() -> st.SearchStrategy[bytes]:
    """Metric pages: real-looking vLLM lines with random values and labels, and junk."""
    line = st.builds(
        lambda name, labels, value: name + labels + b" " + value + b"\n",
        st.sampled_from(
            [
                b"vllm:num_requests_waiting",
                b"vllm:num_requests_running",
                b"vllm:kv_cache_usage_perc",
                b"vllm:lora_requests_info",
                b"sglang:num_queue_reqs",
                b"# TYPE vllm:num_requests_waiting gauge\n#",
            ]
        ),
        st.one_of(
            st.just(b""),
            st.builds(
                lambda v: b'{running_lora_adapters="' + v + b'",max_lora="2"}',
                st.binary(max_size=64).map(lambda b: b.replace(b'"', b"").replace(b"\n", b"")),
            ),
        ),
        st.one_of(
            st.sampled_from([b"0", b"1.5", b"NaN", b"+Inf", b"-1", b"1e400", b"x"]), st.binary(max_size=8)
        ),
    )
    return st.one_of(st.lists(line, max_size=20).map(b"".join), st.binary(max_size=512))


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()[:300]}")


class FuzzRig:
    """A service, a hostile metrics server and a client on a private event loop thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-loop", daemon=True)
        self.errors = _ErrorCounter()
        self.streams = 0
        self._service: Any = None
        self._task: asyncio.Task[None] | None = None
        self._client: EnvoyClient | None = None
        self._metrics = HostileMetricsServer("page", body=b"vllm:num_requests_waiting 0\n")

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 60.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        logging.getLogger("picker").addHandler(self.errors)
        self.call(self._start())

    async def _start(self) -> None:
        from picker.service import Service
        from picker.testing.local import local_settings, run_started

        await self._metrics.start()
        settings = local_settings(
            static_endpoints=f"{self._metrics.address}@vllm",
            seed=1,
            refresh_metrics_interval=0.02,
            scrape_timeout=0.5,
            max_buffered_body_bytes=1 << 20,
        )
        self._service = Service.load(settings)
        ports, self._task = await run_started(self._service)
        self._client = EnvoyClient(f"127.0.0.1:{ports.grpc}", tls=False, timeout=20.0)
        await self._client.connect()

    def page(self, body: bytes) -> None:
        self._metrics.body = body

    def exchange(self, messages: list[Any]) -> None:
        """Send ``messages`` on one stream and read until the server ends it (the client's deadline
        bounds a stream the server would never end: it then reports DEADLINE_EXCEEDED)."""
        assert self._client is not None
        result = self.call(self._client.raw(messages))
        self.streams += 1
        if result.code is not None and result.code.name == "DEADLINE_EXCEEDED":
            raise AssertionError(f"a stream never ended: {messages!r}"[:2000])

    def check(self) -> None:
        """The process lives and nothing was logged at ERROR."""
        assert self._task is not None
        assert not self._task.done(), "the service stopped"
        assert not self.errors.records, self.errors.records[:5]

    def settled(self, deadline_s: float = 30.0) -> None:
        """In-flight counts return to 0 once every stream ended."""
        service = self._service
        end = time.monotonic() + deadline_s
        while True:
            m = service.datastore.snapshot()
            if int(m.inflight.sum()) == 0:
                return
            if time.monotonic() > end:
                raise AssertionError(f"in-flight counts stuck at {list(m.inflight)}")
            time.sleep(0.05)

    def stop(self) -> None:
        logging.getLogger("picker").removeHandler(self.errors)
        with contextlib.suppress(Exception):
            self.call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._service is not None:
            self._service.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 15)
        await self._metrics.stop()
