"""The optional GPU-utilization signal: DCGM exporter metrics read back from Prometheus.

Every ``interval_s`` (default 5 s) one instant query goes to Prometheus through
``prometheus_api_client.PrometheusConnect``; the result (one value per pod, 0..1) replaces the datastore's
GPU column via ``Datastore.set_gpu_utilization``, which feeds the ``gpu-utilization-scorer``.

Default PromQL (label names configurable, because kube-prometheus setups without ``honorLabels`` rename
the exporter's ``pod``/``namespace`` to ``exported_pod``/``exported_namespace``)::

    avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{namespace="<pool namespace>"}) / 100

``DCGM_FI_DEV_GPU_UTIL`` is a percentage per GPU; a pod with several GPUs gets their mean. A custom query
must return utilization in 0..1 with a pod label; values are clamped, and a value above 1 (a forgotten
``/ 100``) is warned about once.

Failure semantics: Prometheus down, slow (``timeout_s``) or answering garbage → the signal becomes
*unknown* (``set_gpu_utilization(None)``: NaN columns, which the scorer treats as "no information"),
routing continues on the other signals. One log line when the signal goes away, one when it comes back.
Why not keep the last values: GPU utilization moves within seconds; a minutes-old figure would steer
traffic more wrongly than none.

The query is a blocking ``requests`` call, so it runs in a worker thread (bounded by the timeout), never
on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from prometheus_api_client import PrometheusConnect

from picker.scrape.promql import QueryFailedError, instant_query, prometheus_client

log = logging.getLogger(__name__)

GPU_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"


class GpuSink(Protocol):
    """Where the signal goes (``Datastore.set_gpu_utilization``)."""

    def set_gpu_utilization(self, by_pod: Mapping[str, float] | None) -> None: ...


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def default_query(namespace: str, *, pod_label: str = "pod", namespace_label: str = "namespace") -> str:
    """The default PromQL: mean DCGM GPU utilization per pod of ``namespace``, as a fraction."""
    selector = f'{{{namespace_label}="{_label_value(namespace)}"}}' if namespace else ""
    return f"avg by ({namespace_label}, {pod_label}) ({GPU_UTIL_METRIC}{selector}) / 100"


def utilization_by_pod(
    samples: Sequence[Mapping[str, Any]],
    *,
    namespace: str,
    pod_label: str = "pod",
    namespace_label: str = "namespace",
) -> tuple[dict[str, float], bool]:
    """Instant-vector samples → {pod: utilization in [0, 1]} and whether any value exceeded 1.

    Samples of another namespace are dropped (pod names are only unique within one); several samples
    for one pod are averaged; NaN and unparsable values are skipped.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    above_one = False
    for sample in samples:
        labels = sample.get("metric") or {}
        pod = labels.get(pod_label)
        if not pod:
            continue
        ns = labels.get(namespace_label)
        if namespace and ns is not None and ns != namespace:
            continue
        try:
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if math.isnan(value):
            continue
        above_one = above_one or value > 1.0
        sums[pod] = sums.get(pod, 0.0) + min(max(value, 0.0), 1.0)
        counts[pod] = counts.get(pod, 0) + 1
    return {pod: sums[pod] / counts[pod] for pod in sums}, above_one


class GpuUtilizationSource:
    """Polls Prometheus for per-pod GPU utilization. ``run()`` until :meth:`close`."""

    def __init__(
        self,
        sink: GpuSink,
        *,
        url: str,
        namespace: str,
        query: str | None = None,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        pod_label: str = "pod",
        namespace_label: str = "namespace",
        verify_tls: bool = True,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("GPU poll interval and timeout must be positive")
        if not url:
            raise ValueError("the Prometheus URL is empty")
        self._sink = sink
        self._url = url.rstrip("/")
        self._namespace = namespace
        self.query = query or default_query(namespace, pod_label=pod_label, namespace_label=namespace_label)
        self._interval = interval_s
        self._timeout = timeout_s
        self._pod_label = pod_label
        self._namespace_label = namespace_label
        self._verify_tls = verify_tls
        self._closed = asyncio.Event()
        #: None before the first poll, then whether the last poll succeeded
        self.available: bool | None = None
        self._warned_scale = False
        self.polls = 0

    def make_client(self) -> PrometheusConnect:
        """The client ``run()`` uses (the caller closes it): see :func:`prometheus_client`."""
        return prometheus_client(self._url, timeout_s=self._timeout, verify_tls=self._verify_tls)

    async def run(self) -> None:
        client = self.make_client()
        try:
            loop = asyncio.get_running_loop()
            while not self._closed.is_set():
                started = loop.time()
                await self.poll_once(client)
                delay = max(0.0, self._interval - (loop.time() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout=delay)
        finally:
            client.close()

    async def close(self) -> None:
        self._closed.set()

    async def poll_once(self, client: PrometheusConnect) -> bool:
        """Query once and update the sink; True when the signal is available."""
        self.polls += 1
        try:
            samples = await instant_query(client, self.query, timeout_s=self._timeout)
        except QueryFailedError as exc:
            self._unavailable(str(exc))
            return False
        values, above_one = utilization_by_pod(
            samples,
            namespace=self._namespace,
            pod_label=self._pod_label,
            namespace_label=self._namespace_label,
        )
        if above_one and not self._warned_scale:
            self._warned_scale = True
            log.warning(
                "GPU query %r returned values above 1; they are clamped (the query must yield 0..1)",
                self.query,
            )
        if self.available is not True:
            log.info("GPU utilization from %s available (%d pod(s))", self._url, len(values))
        self.available = True
        self._sink.set_gpu_utilization(values)
        return True

    def _unavailable(self, reason: str) -> None:
        if self.available is not False:
            log.warning(
                "GPU utilization from %s unavailable, signal unknown, routing continues: %s",
                self._url,
                reason,
            )
        self.available = False
        self._sink.set_gpu_utilization(None)
