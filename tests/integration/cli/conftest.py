"""Run the command line as a user does: the ``picker`` console script and ``python -m picker``, as
subprocesses, with no Kubernetes configuration in their environment (the ``spawn`` fixture and
:class:`~tests.integration.conftest.Process` are the integration folder's, shared with other folders)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.integration.conftest import PICKER, Spawn

#: both ways the issue names to start the CLI
LAUNCHERS = {"console-script": [PICKER], "python-m": [sys.executable, "-m", "picker"]}


def rss(pid: int) -> int:
    """The resident set of process ``pid`` in bytes (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The largest resident set of process ``pid`` while the context is open: sampled every
    ``interval_s`` in the background, at entry and at exit (so what stays resident is always seen)."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        self.peak = max(self.peak, rss(self.pid))
        return self.peak

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> PeakRss:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()


async def run_to_exit(spawn: Spawn, argv: Sequence[str], deadline_s: float = 90.0) -> tuple[int, str]:
    """Run a command that is expected to exit by itself; returns (exit code, stderr)."""
    process = await spawn(argv)
    try:
        code = await asyncio.wait_for(process.proc.wait(), deadline_s)
    except TimeoutError:
        raise AssertionError(f"{argv} did not exit; output:\n{process.output}") from None
    assert process.reader is not None
    await process.reader
    return code, process.output
