"""The admin API: ``/config``, ``/debug/*`` and ``POST /debug/explain``, for operators. Nothing here is on
the request path; everything is read-only.

It listens on its own port (``--admin-port``, 9091), bound to ``127.0.0.1`` by default (``--admin-bind``):
what it shows (every endpoint's state, the effective configuration, tenants' budgets, what the router would
do with any request) is for someone on the Pod (``kubectl port-forward``, ``kubectl exec``), not for the
network, and the Service does not expose it. ``/metrics`` and the probes' ``/healthz``/``/readyz`` are on
the metrics port (:mod:`picker.admin.metrics`).

``/debug/explain`` runs the real router with ``explain=True``: same parsing, rewrites, objectives,
admission and scheduling as a live request, but no in-flight accounting and no metrics, so asking why
does not change the answer. No prompt text is echoed back: the response carries models, scores and
endpoint names only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from picker.admin.limits import DEFAULT_ADMIN_MAX_BODY_BYTES, BodyCap
from picker.errors import PickerError
from picker.routing.types import Explainer, RoutingRequest
from picker.state.config_store import ConfigStore
from picker.state.datastore import Datastore
from picker.state.prefix import PrefixCacheState


def _num(v: float) -> float | None:
    """JSON has no NaN/Inf: unknown values become null."""
    return None if math.isnan(v) or math.isinf(v) else v


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = "/v1/completions"
    headers: dict[str, str] = Field(default_factory=dict)
    #: the request body: a JSON object, or a raw string sent as is
    body: dict[str, Any] | str = Field(default_factory=dict)
    #: subset hint entries (ip or ip:port); omit for "no hint"
    subset: list[str] | None = None


def _plain(value: Any) -> Any:
    """A decision record as JSON-ready data. ``dataclasses.asdict`` cannot be used: the record's mappings
    are read-only ``MappingProxyType`` views, which it tries (and fails) to deep-copy."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _orjson(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def build_admin_app(
    *,
    datastore: Datastore,
    router: Explainer,
    config: ConfigStore,
    staleness_s: Callable[[], float],
    clock: Callable[[], float] = time.monotonic,
    workers: Callable[[], list[dict[str, Any]]] | None = None,
    tenants: Callable[[], dict[str, Any]] | None = None,
    scaler: Callable[[], dict[str, Any] | None] | None = None,
    max_body_bytes: int = DEFAULT_ADMIN_MAX_BODY_BYTES,
    prefix: PrefixCacheState | None = None,
    external: Callable[[], list[Mapping[str, Any]]] | None = None,
) -> FastAPI:
    """The admin API; request bodies over ``max_body_bytes`` get 413 while being read (:mod:`.limits`)."""
    app = FastAPI(title="picker admin", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.add_middleware(BodyCap, limit=max_body_bytes)

    @app.get("/debug/endpoints")
    def endpoints() -> Response:
        m = datastore.snapshot()
        now = clock()
        threshold = staleness_s()
        out = []
        for i, name in enumerate(m.names):
            st = datastore.status(name)
            age = now - float(m.scraped_at[i])
            row = m.row(i)
            out.append(
                {
                    "name": name,
                    "address": m.addresses[i],
                    "pod": st.endpoint.pod if st else "",
                    "engine": row.engine,
                    "waiting": _num(row.waiting),
                    "running": _num(row.running),
                    "kv_usage": _num(row.kv_usage),
                    "gpu_util": _num(row.gpu_util),
                    "lora_active": list(row.lora_active),
                    "lora_waiting": list(row.lora_waiting),
                    #: model names its pages report it serves (LoRA affinity treats them as base models)
                    "models": list(row.models),
                    "max_lora": _num(row.max_lora),
                    "block_size": _num(row.block_size),
                    "num_blocks": _num(row.num_blocks),
                    "metrics_age_s": _num(age),
                    "stale": not age <= threshold,
                    "dispatched_since_scrape": row.dispatched,
                    "inflight": row.inflight,
                    #: estimated prompt tokens routed here still waiting for their first response byte
                    "prefill_tokens": row.prefill_tokens,
                    #: estimated prompt tokens of the streams open through us to this endpoint
                    "inflight_tokens": row.inflight_tokens,
                    #: blocks the approximate prefix index lists for this endpoint
                    "prefix_entries": prefix.entries(name) if prefix is not None else 0,
                    #: currency units per million tokens (NaN → null: unknown) and where each came from
                    "price": {
                        "input_per_1m": _num(row.price_in),
                        "output_per_1m": _num(row.price_out),
                        "sources": list(st.priced.sources)
                        if st is not None and st.priced is not None
                        else None,
                    },
                    "last_error": st.last_error if st else None,
                    "scrapes_ok": st.scrapes_ok if st else 0,
                    "scrapes_failed": st.scrapes_failed if st else 0,
                    #: passive health (outlier detection): state, runs, ejections, last failure
                    "health": health.to_doc() if (health := datastore.health_view(name)) else None,
                    #: observed latency averages the latency-scorer reads (seconds; null = unknown)
                    "latency": {
                        "ttft_per_1k_s": _num(float(m.ttft_per_1k[i])),
                        "tpot_s": _num(float(m.tpot[i])),
                        "ntpot_s": _num(float(m.ntpot[i])),
                    },
                }
            )
        pool = datastore.pool
        return _orjson({"pool": pool.to_doc() if pool is not None else None, "endpoints": out})

    @app.post("/debug/explain")
    def explain(req: ExplainRequest) -> Response:
        body = req.body.encode() if isinstance(req.body, str) else orjson.dumps(req.body)
        headers = {k.lower(): v for k, v in req.headers.items()}
        rr = RoutingRequest(
            request_id=headers.get("x-request-id", "explain"),
            headers=headers,
            path=req.path,
            body=body,
            subset=tuple(req.subset) if req.subset is not None else None,
        )
        try:
            dispatch = router.explain(rr)
        except PickerError as exc:
            return _orjson(
                {
                    "error": {
                        "code": exc.code,
                        "status": exc.http_status,
                        "message": exc.message,
                        "wire_body": exc.wire_body(),
                    }
                },
                status=200,
            )
        record = _plain(dispatch.decision) if dispatch.decision is not None else None
        return _orjson(
            {
                "endpoints": list(dispatch.endpoints),
                "destination": dispatch.destination,
                "incoming_model": dispatch.incoming_model,
                "target_model": dispatch.target_model,
                "priority": dispatch.priority,
                "profile": {"name": dispatch.profile, "chosen_by": dispatch.profile_reason},
                "body_rewritten": dispatch.body is not rr.body,
                "decision": record,
                #: candidates left out because they must not be primary (ejected, probing), and whether the
                #: scorer's own choice was one of them (the reason ai_failover_total would count)
                "avoided": dict(dispatch.avoided or {}),
                "failover": dispatch.failover,
                #: whether it would go to an external endpoint first, and why or why not (the pool
                #: saturated, unhealthy or empty, its objective asked; each endpoint's limits and health)
                "spill": dispatch.spill,
            }
        )

    @app.get("/config")
    def effective_config() -> Response:
        active = config.active
        last = config.last_result
        return _orjson(
            {
                "source": active.source,
                "digest": active.digest,
                "config": active.config.to_dict(),
                "last_reload": dataclasses.asdict(last) if last is not None else None,
            }
        )

    @app.get("/debug/prefix")
    def debug_prefix() -> Response:
        """The prefix index per endpoint: entries, entries no other endpoint holds (what the pool loses
        if it goes), blocks that matched it when chosen, capacity. Walks every entry: not for polling."""
        cache = prefix.cache if prefix is not None else None
        if cache is None:
            return _orjson({"enabled": False, "size": 0, "endpoints": []})
        out = []
        for name in sorted(cache.index.endpoints()):
            st = cache.stats(name)
            if st is not None:
                out.append({"name": name, **st._asdict()})
        return _orjson(
            {
                "enabled": True,
                "size": len(cache.index),
                "block_size_tokens": cache.config.block_size_tokens,
                "max_blocks": cache.config.max_blocks,
                "endpoints": out,
            }
        )

    if workers is not None:

        @app.get("/debug/workers")
        def debug_workers() -> Response:
            """``--workers``: each ext_proc worker process, its picks, its streams in flight and the
            entries of its prefix-index replica, next to this process's (the supervisor's) replica: equal
            numbers say the index is shared."""
            entries = prefix.size() if prefix is not None else 0
            return _orjson({"workers": workers(), "prefix_entries": entries})

    if tenants is not None:

        @app.get("/debug/tenants")
        def debug_tenants() -> Response:
            """Tenants: per tenant each meter's limit, used, reserved, remaining and seconds to reset."""
            return _orjson(tenants())

    if scaler is not None:

        @app.get("/debug/scaler")
        def debug_scaler() -> Response:
            """The scaler: the section in force, the last tick (demand, forecast, bounds), the plan (drain in
            progress, the victim ranking with reasons) and recent decisions; ``enabled: false`` when no
            scaler runs in this process (no Kubernetes pool)."""
            return _orjson(scaler() or {"enabled": False})

    if external is not None:

        @app.get("/debug/external")
        def debug_external() -> Response:
            """External endpoints: limits, what is used and reserved in the current windows, requests sent."""
            return _orjson({"external": external()})

    @app.exception_handler(ValueError)
    async def _value_error(_request: Request, exc: ValueError) -> Response:
        return _orjson({"error": {"code": "BadRequest", "message": str(exc)}}, status=400)

    return app
