"""``--metrics-endpoint-auth`` end to end: the EPP's real HTTP server asks the API-server emulator
(TokenReview, then SubjectAccessReview through the official client) before serving ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from picker.testing.kube_api import KubeApiEmulator
from picker.testing.poll import eventually
from picker.testing.prometheus_server import PrometheusServer
from picker.testing.tools import tool
from tests.integration.kube_e2e.conftest import SCRAPER_TOKEN, SCRAPER_USER, StartEpp

pytestmark = pytest.mark.integration


async def _get(port: int, path: str = "/metrics", token: str | None = None, method: str = "GET") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


async def test_metrics_answers_only_allowed_tokens(start_epp: StartEpp, emulator: KubeApiEmulator) -> None:
    emulator.access.add_token("bob-token", "bob")
    epp = await start_epp()
    port = epp.ports.metrics

    status, body, headers = await _get(port)
    assert (status, body.strip(), headers.get("WWW-Authenticate")) == (401, "Unauthorized", "Bearer")
    assert emulator.count("create", "tokenreviews") == 0  # no token, no review
    status, body, _ = await _get(port, token="not-a-token")
    assert (status, body.strip()) == (401, "Unauthorized")
    status, body, _ = await _get(port, token="bob-token")
    assert (status, body.strip()) == (403, "Authorization denied for user bob")
    status, body, headers = await _get(port, token=SCRAPER_TOKEN)
    assert status == 200
    assert "inference_pool_ready_pods" in body, body[:300]
    assert headers["Content-Type"].startswith("text/plain")
    assert (await _get(port, token="bob-token", method="HEAD"))[0] == 403
    assert (await _get(port, token=SCRAPER_TOKEN, method="HEAD"))[0] == 200
    # probes and the kubelet never carry tokens: health stays open
    assert (await _get(port, "/healthz"))[0] == 200
    assert (await _get(port, "/readyz"))[0] in {200, 503}

    # What the EPP asked: the token as sent, then a non-resource review for the user the server named.
    reviews = [r for r in emulator.requests if r.plural in {"tokenreviews", "subjectaccessreviews"}]
    assert [r.plural for r in reviews] == [
        "tokenreviews",  # not-a-token: unauthenticated, so no access review
        "tokenreviews",  # bob
        "subjectaccessreviews",
        "tokenreviews",  # the scraper
        "subjectaccessreviews",
    ]  # and the two HEAD requests were answered from the cache


async def test_reviews_are_cached_per_token(start_epp: StartEpp, emulator: KubeApiEmulator) -> None:
    epp = await start_epp()
    for _ in range(10):
        assert (await _get(epp.ports.metrics, token=SCRAPER_TOKEN))[0] == 200
    assert emulator.count("create", "tokenreviews") == 1
    assert emulator.count("create", "subjectaccessreviews") == 1
    assert epp.service.metrics_auth is not None
    assert len(epp.service.metrics_auth) == 1


async def test_failed_reviews_answer_errors_and_are_retried(
    start_epp: StartEpp, emulator: KubeApiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    epp = await start_epp()
    port = epp.ports.metrics
    # The EPP's ServiceAccount lacks `create tokenreviews` (the metrics-auth component not applied).
    emulator.fail("create", plural="tokenreviews", status=403, message="tokenreviews is forbidden")
    status, body, _ = await _get(port, token=SCRAPER_TOKEN)
    assert (status, body.strip()) == (401, "Authentication failed")
    emulator.fail("create", plural="subjectaccessreviews", status=403, message="forbidden")
    status, body, _ = await _get(port, token=SCRAPER_TOKEN)
    assert (status, body.strip()) == (500, f"Authorization for user {SCRAPER_USER} failed")
    assert (await _get(port, token=SCRAPER_TOKEN))[0] == 200  # fixed: nothing stale was cached
    assert "TokenReview failed: 403" in caplog.text
    assert SCRAPER_TOKEN not in caplog.text


async def test_auth_can_be_turned_off(start_epp: StartEpp, emulator: KubeApiEmulator) -> None:
    epp = await start_epp(metrics_endpoint_auth=False)
    status, body, _ = await _get(epp.ports.metrics)
    assert status == 200
    assert "inference_pool_ready_pods" in body
    assert emulator.count("create", "tokenreviews") == 0


async def test_static_endpoints_leave_metrics_open_unless_asked(
    start_epp: StartEpp, emulator: KubeApiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="picker")
    static = {"pool_name": "", "static_endpoints": "127.0.0.2:8000"}
    open_epp = await start_epp(**static)
    assert (await _get(open_epp.ports.metrics))[0] == 200
    assert "metrics endpoint auth off: --static-endpoints has no Kubernetes API" in caplog.text
    # Asked for explicitly, it uses --kubeconfig for the reviews alone.
    guarded = await start_epp(**static, metrics_endpoint_auth=True)
    assert (await _get(guarded.ports.metrics))[0] == 401
    assert (await _get(guarded.ports.metrics, token=SCRAPER_TOKEN))[0] == 200
    assert emulator.count("list", "pods") == 0  # nothing but the reviews went to the API server


def _prometheus_up(url: str) -> dict[str, float]:
    """``up`` per job from the Prometheus HTTP API (blocking; called on a worker thread)."""
    with urllib.request.urlopen(f"{url}/api/v1/query?query=up", timeout=2) as r:
        doc = json.loads(r.read())
    return {s["metric"]["job"]: float(s["value"][1]) for s in doc["data"]["result"]}


@pytest.mark.slow
async def test_a_real_prometheus_scrapes_with_its_token_and_is_refused_without(
    start_epp: StartEpp, tmp_path: Path
) -> None:
    """Debian's Prometheus scrapes the EPP twice: with the scraper's bearer token (``authorization`` in
    the scrape config, as a ServiceMonitor renders it) the target is up, without it down (401)."""
    tool("prometheus", apt="prometheus")  # skips, or fails under PICKER_REQUIRE_TOOLS
    epp = await start_epp()
    target = f"127.0.0.1:{epp.ports.metrics}"
    prometheus = PrometheusServer(
        tmp_path,
        f"- job_name: with-token\n  authorization: {{credentials: {SCRAPER_TOKEN}}}\n"
        f"  static_configs: [{{targets: ['{target}']}}]\n"
        f"- job_name: without-token\n  static_configs: [{{targets: ['{target}']}}]\n",
    ).start()
    try:

        async def both_scraped() -> bool:
            try:
                up = await asyncio.to_thread(_prometheus_up, prometheus.url)
            except OSError:
                return False
            return set(up) == {"with-token", "without-token"} and up == {
                "with-token": 1.0,
                "without-token": 0.0,
            }

        await eventually(both_scraped, within=60, what="Prometheus: up with the token, down without")
    finally:
        prometheus.stop()
