"""The GPU signal end to end with the real Prometheus server (Debian's /usr/bin/prometheus).

Prometheus scrapes the fake DCGM exporter (the real exporter page, utilization per pod set by the test)
every second; the GPU source queries it with the default PromQL and writes the datastore's GPU column.
Then Prometheus is stopped: the signal must go unknown (NaN) while membership stays untouched.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from picker.scrape.gpu import GpuUtilizationSource
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint
from picker.testing.dcgm import FakeDcgmExporter
from picker.testing.poll import eventually
from picker.testing.prometheus_server import PrometheusServer
from picker.testing.tools import tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "inference"


@pytest.fixture
async def exporter() -> AsyncIterator[FakeDcgmExporter]:
    exp = FakeDcgmExporter()
    await exp.start()
    try:
        yield exp
    finally:
        await exp.stop()


@pytest.fixture
def prometheus(exporter: FakeDcgmExporter, tmp_path: Path) -> Iterator[PrometheusServer]:
    tool("prometheus", apt="prometheus")  # skips, or fails under PICKER_REQUIRE_TOOLS
    server = PrometheusServer(
        tmp_path,
        f"- job_name: dcgm\n  honor_labels: true\n  static_configs: [{{targets: ['{exporter.target}']}}]\n",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def gpu_by_endpoint(ds: Datastore) -> dict[str, float]:
    snap = ds.snapshot()
    return dict(zip(snap.names, (float(v) for v in snap.gpu_util), strict=True))


async def test_dcgm_utilization_reaches_the_datastore_and_goes_unknown_without_prometheus(
    exporter: FakeDcgmExporter, prometheus: PrometheusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="picker.scrape.gpu")
    ds = Datastore()
    for i, name in enumerate(("vllm-0", "vllm-1", "vllm-2")):
        ds.upsert_endpoint(
            Endpoint(name=f"{name}-rank-0", ip=f"10.0.0.{i + 1}", port=8000, pod=name, namespace=NS)
        )
    exporter.set_utilization("vllm-0", NS, 50)
    exporter.set_utilization("vllm-1", NS, [20, 60])  # two GPUs: the pod's mean
    exporter.set_utilization("vllm-2", "someone-else", 99)  # same pod name, other namespace: not ours

    await eventually(
        prometheus.ready, f"Prometheus ready; its log: {prometheus.log()}", within=30, interval=0.1
    )
    source = GpuUtilizationSource(ds, url=prometheus.url, namespace=NS, interval_s=0.5, timeout_s=1.0)
    task = asyncio.create_task(source.run())
    try:
        await eventually(
            lambda: gpu_by_endpoint(ds)["vllm-0-rank-0"] == pytest.approx(0.5),
            "first values",
            within=20,
            interval=0.1,
        )
        values = gpu_by_endpoint(ds)
        assert values["vllm-1-rank-0"] == pytest.approx(0.4)
        assert math.isnan(values["vllm-2-rank-0"])

        exporter.set_utilization("vllm-0", NS, 90)
        await eventually(
            lambda: gpu_by_endpoint(ds)["vllm-0-rank-0"] == pytest.approx(0.9),
            "a changed value",
            within=20,
            interval=0.1,
        )
        assert exporter.scrapes >= 2

        prometheus.stop()
        await eventually(lambda: source.available is False, "Prometheus gone", within=10, interval=0.1)
        assert all(math.isnan(v) for v in gpu_by_endpoint(ds).values()), "the signal is unknown, not stale"
        assert len(ds) == 3, "routing continues on the same endpoints"
        failed_at = source.polls
        await eventually(lambda: source.polls >= failed_at + 2, "more failed polls", within=10, interval=0.1)
        gone = [r for r in caplog.records if "unavailable" in r.getMessage()]  # one line per transition
        assert len(gone) == 1
        assert gone[0].levelno == logging.WARNING
    finally:
        await source.close()
        await asyncio.wait_for(task, 5)
