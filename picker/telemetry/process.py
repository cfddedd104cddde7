"""The standard ``process_*`` series (RSS, virtual memory, CPU seconds, start time, open and max fds).

prometheus_client's :class:`~prometheus_client.ProcessCollector` reads ``/proc/stat`` (the boot time) in
its constructor, and a service that builds one while it is constructed does file I/O there, which the
house rules forbid (constructors start nothing and read nothing). :class:`ProcessMetrics` registers at
once, so the families keep their place in the exposition, and builds the library's collector at the first
collect: the first ``/metrics`` scrape reads ``/proc``, as every later one does. Values and names are the
library's (every Prometheus client exports these by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["ProcessMetrics"]


class ProcessMetrics(Collector):
    """``process_*`` of one process on an injected registry; reads ``proc`` only when collected."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        proc: str = "/proc",
        pid: Callable[[], int | str] = lambda: "self",
    ) -> None:
        """``proc`` and ``pid``: where the process's files are (``/proc/self``), as the library takes them;
        a test points them at files it writes."""
        self._proc = proc
        self._pid = pid
        self._inner: ProcessCollector | None = None
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        if self._inner is None:  # its constructor reads the boot time (without /proc: no series)
            self._inner = ProcessCollector(proc=self._proc, pid=self._pid, registry=None)
        return self._inner.collect()
