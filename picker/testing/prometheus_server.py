"""A real Prometheus server (Debian's ``/usr/bin/prometheus``) on 127.0.0.1 for tests and benchmarks.

It scrapes what the caller lists (``scrape_configs`` YAML items) every second into a fresh TSDB under
``workdir``; :meth:`PrometheusServer.stop` ends it (and is what a test calls to see Prometheus vanish).
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

from picker.testing.net import free_port

__all__ = ["PROMETHEUS", "PrometheusServer"]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class PrometheusServer:
    """Started by the constructor's caller with :meth:`start`; ``scrape_configs`` is the YAML list body."""

    def __init__(self, workdir: Path, scrape_configs: str, *, interval: str = "1s") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        self._config = (
            f"global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}\n"
            f"scrape_configs:\n{scrape_configs}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        config = self._workdir / "prometheus.yml"
        config.write_text(self._config, encoding="utf-8")
        log = (self._workdir / "prometheus.log").open("wb")
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - the Debian binary, fixed arguments
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        finally:
            log.close()  # the child holds its own descriptor
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:  # noqa: S310 - our own URL
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self) -> str:
        path = self._workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""
