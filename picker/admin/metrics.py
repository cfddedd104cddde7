"""The metrics port (``--metrics-port``, 9090): ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for
probes. Nothing else: the admin API has its own localhost port (:mod:`picker.admin.app`), so exposing this
port through the Service exposes only what a scraper and a kubelet need.

``/metrics`` is guarded by ``--metrics-endpoint-auth`` (:mod:`picker.admin.auth`) when that is on; the
probes never are (kubelets carry no token).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.concurrency import run_in_threadpool

from picker.admin.auth import MetricsAuth
from picker.telemetry.exposition import render


def build_metrics_app(
    *,
    registry: CollectorRegistry,
    ready: Callable[[], bool],
    endpoints: Callable[[], int],
    metrics_auth: MetricsAuth | None = None,
) -> FastAPI:
    """``metrics_auth`` guards ``/metrics`` (``--metrics-endpoint-auth``); ``None`` serves it openly."""
    app = FastAPI(title="picker metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics(request: Request) -> Response:
        """HEAD answers like GET without rendering the exposition (probes and load balancers use it).
        Rendering runs on a worker thread: it takes milliseconds for a large pool, which the event loop
        (and the ext_proc streams on it) must not wait for."""
        if metrics_auth is not None:
            outcome = await metrics_auth.check(request.headers.get("authorization"))
            if not outcome.ok:
                headers = {"WWW-Authenticate": "Bearer"} if outcome.status == 401 else None
                return PlainTextResponse(outcome.message + "\n", status_code=outcome.status, headers=headers)
        if request.method == "HEAD":
            return Response(media_type=CONTENT_TYPE_LATEST)
        page = await run_in_threadpool(render, registry)  # without *_created (picker.telemetry.exposition)
        return Response(page, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Mapping[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Response:
        ok = ready()
        return JSONResponse({"ready": ok, "endpoints": endpoints()}, status_code=200 if ok else 503)

    return app
