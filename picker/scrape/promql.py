"""One instant PromQL query against Prometheus, bounded in time: what the GPU signal
(:mod:`picker.scrape.gpu`) and the ``prometheus-scorer`` queries (:mod:`picker.scrape.signals`) share.

The query is a blocking ``requests`` call through ``prometheus_api_client``, so it runs in a worker thread,
never on the loop. Its HTTP timeout applies per socket operation; twice that bounds the whole call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util import Retry

__all__ = ["QueryFailedError", "instant_query", "prometheus_client"]


class QueryFailedError(Exception):
    """The query did not answer a vector: unreachable, slow, an error status or a malformed answer."""


def prometheus_client(url: str, *, timeout_s: float, verify_tls: bool = True) -> PrometheusConnect:
    """A client for :func:`instant_query` (the caller closes it).

    No retries inside it: the next poll is the retry, and the library's default (3 retries with backoff,
    also on 503) would multiply the time it takes to notice that Prometheus is gone.
    """
    return PrometheusConnect(url=url, disable_ssl=not verify_tls, retry=Retry(total=0), timeout=timeout_s)


async def instant_query(
    client: PrometheusConnect, query: str, *, timeout_s: float
) -> list[Mapping[str, Any]]:
    """The instant-vector samples ``query`` returns now; raises :class:`QueryFailedError` with a reason."""
    # Prometheus durations take no fractions ("1.5s" is a 400): whole milliseconds
    params = {"timeout": f"{max(1, round(timeout_s * 1000))}ms"}
    try:
        result = await asyncio.wait_for(
            asyncio.to_thread(client.custom_query, query, params=params), timeout=timeout_s * 2
        )
    except (OSError, TimeoutError, PrometheusApiClientException, ValueError, KeyError, TypeError) as exc:
        raise QueryFailedError(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(result, list):
        raise QueryFailedError(f"unexpected result type {type(result).__name__}")
    return [s for s in result if isinstance(s, Mapping)]
