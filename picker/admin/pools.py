"""The admin API of a process serving several pools (``--pool``): each pool's own admin API under
``/pools/<name>/`` (``/pools/<name>/config``, ``/pools/<name>/debug/endpoints``, ``POST
/pools/<name>/debug/explain``...), and ``/debug/pools`` listing them.

Why a prefix per pool rather than a ``?pool=`` parameter: each pool's API is the very app a one-pool
process serves (:func:`picker.admin.app.build_admin_app` over that pool's datastore, router and config
store), so the two cannot drift apart, and a script written for one pool works on any pool by prefixing
its paths. The paths a one-pool process serves at the root answer 404 here with the pools' prefixes,
instead of silently showing one of the pools.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Response

from picker.admin.limits import DEFAULT_ADMIN_MAX_BODY_BYTES, BodyCap


def build_pools_admin_app(
    pools: Mapping[str, FastAPI],
    describe: Callable[[], list[dict[str, Any]]],
    *,
    max_body_bytes: int = DEFAULT_ADMIN_MAX_BODY_BYTES,
) -> FastAPI:
    """``pools``: each pool's admin app by pool name; ``describe``: ``/debug/pools``' rows (name, ext_proc
    port, endpoints, readiness, config source and digest)."""
    app = FastAPI(title="picker admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyCap, limit=max_body_bytes)

    @app.get("/debug/pools")
    def debug_pools() -> Response:
        """Every pool this process serves, with the prefix of its admin API."""
        rows = [{**row, "admin": f"/pools/{row['name']}/"} for row in describe()]
        return Response(orjson.dumps({"pools": rows}), media_type="application/json")

    @app.api_route("/config", methods=["GET"])
    @app.api_route("/debug/{rest:path}", methods=["GET", "POST"])
    def per_pool(rest: str = "") -> Response:
        """A one-pool path: which pool? Answered with the prefixes to use."""
        del rest  # every such path gets the same answer
        body = {
            "error": {
                "code": "NotFound",
                "message": "this process serves several pools: use /pools/<name>/... (see /debug/pools)",
                "pools": [f"/pools/{name}/" for name in pools],
            }
        }
        return Response(orjson.dumps(body), status_code=404, media_type="application/json")

    for name, sub in pools.items():
        app.mount(f"/pools/{name}", sub)
    return app
