"""A fake NVIDIA DCGM exporter: the real exporter page, with GPU utilization per pod that tests set.

The page is the captured DCGM-exporter output in ``pages/dcgm-exporter-datadog-fixture.txt`` (provenance
in ``pages/SOURCES.md``), served unchanged, so a real Prometheus scraping this fake parses what a real
exporter prints. Only ``DCGM_FI_DEV_GPU_UTIL`` gains samples: one per GPU of every pod the test
registered, built on the page's own label set (``gpu``, ``UUID``, ``device``, ``modelName``, ...) plus the
``container``/``namespace``/``pod`` labels that dcgm-exporter's Kubernetes mapping adds. The original
unlabelled-by-pod sample stays, like a GPU no pod holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from picker.testing.web import start_app

PAGE = "dcgm-exporter-datadog-fixture.txt"
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")


def load_page() -> str:
    return resources.files("picker.testing").joinpath("pages", PAGE).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class _Gpu:
    pod: str
    namespace: str
    index: int


class FakeDcgmExporter:
    """Serves ``/metrics`` on 127.0.0.1. ``set_utilization(pod, namespace, percent)`` changes the page."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, container: str = "vllm") -> None:
        self._host = host
        self._port = port
        self._container = container
        self._page = load_page()
        if not self._page.endswith("\n"):
            self._page += "\n"  # the capture lacks the final newline the exposition format requires
        lines = self._page.splitlines()
        self._util_at = next(i for i, line in enumerate(lines) if line.startswith(GPU_UTIL + "{"))
        m = _SAMPLE.match(lines[self._util_at])
        if m is None:
            raise ValueError(f"unexpected {GPU_UTIL} sample in {PAGE}")
        self._labels = m.group("labels")
        uuid = re.search(r'UUID="([^"]*)"', self._labels)
        self._uuid = uuid.group(1) if uuid else ""
        self._lines = lines
        self._util: dict[_Gpu, float] = {}
        self._runner: web.AppRunner | None = None
        self.scrapes = 0

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("exporter not started")
        return f"http://{self._host}:{self._port}"

    @property
    def target(self) -> str:
        """``host:port`` for a Prometheus ``static_configs`` target."""
        return f"{self._host}:{self._port}"

    def set_utilization(self, pod: str, namespace: str, percent: float | list[float]) -> None:
        """GPU utilization in percent (0..100), one value per GPU of the pod."""
        values = percent if isinstance(percent, list) else [percent]
        self.remove(pod, namespace)
        for i, v in enumerate(values):
            self._util[_Gpu(pod, namespace, i)] = float(v)

    def remove(self, pod: str, namespace: str) -> None:
        for gpu in [g for g in self._util if g.pod == pod and g.namespace == namespace]:
            del self._util[gpu]

    def render(self) -> str:
        extra = []
        for n, (gpu, value) in enumerate(
            sorted(self._util.items(), key=lambda kv: (kv[0].namespace, kv[0].pod))
        ):
            labels = re.sub(r'gpu="\d+"', f'gpu="{gpu.index}"', self._labels)
            uuid_prefix = self._uuid[:-4]
            labels = labels.replace(f'UUID="{self._uuid}"', f'UUID="{uuid_prefix}{n:04x}"')
            labels += f',container="{self._container}",namespace="{gpu.namespace}",pod="{gpu.pod}"'
            extra.append(f"{GPU_UTIL}{{{labels}}} {value:g}")
        lines = self._lines[: self._util_at + 1] + extra + self._lines[self._util_at + 1 :]
        return "\n".join(lines) + "\n"

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(text=self.render(), content_type="text/plain", charset="utf-8")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner, self._port = await start_app(app, self._host, self._port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeDcgmExporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
