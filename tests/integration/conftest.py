"""Fixtures shared by more than one integration folder: the Kubernetes API emulator, a real redis-server,
and the command line run as a user runs it (the ``picker`` console script as a subprocess, with no
Kubernetes configuration in its environment, its stderr collected line by line)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from picker.testing.kube_api import KubeApiEmulator
from picker.testing.redis_server import RedisServer
from picker.testing.tools import tool


@pytest.fixture
async def emulator() -> AsyncIterator[KubeApiEmulator]:
    """A Kubernetes API emulator on 127.0.0.1 (bookmarks every 0.3 s), stopped after the test."""
    emu = KubeApiEmulator(bookmark_interval=0.3)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


# ------------------------------------------------------------------------------------------ the CLI
BIN = Path(sys.executable).parent
PICKER = str(BIN / "picker")
#: ports 0 (ephemeral), loopback, plaintext: what every serving test passes unless it tests these flags
LOCAL = ["--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--admin-port=0", "--host=127.0.0.1"]
SERVING = re.compile(
    r"picker serving: ext_proc :(\d+) \((TLS|plaintext)\), health :(\d+), metrics :(\d+), admin [^ ]+:(\d+)"
)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server per test (installed by .ci/run, which fails when it is missing; skipped
    elsewhere)."""
    tool("redis-server", apt="redis-server")  # skips, or fails under PICKER_REQUIRE_TOOLS
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no KUBECONFIG, a HOME without ~/.kube, no in-cluster service account."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "PICKER_", "POD_", "NAMESPACE"))}
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Process:
    """A running CLI process whose stderr is collected line by line."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    async def wait_for(self, pattern: re.Pattern[str], deadline_s: float = 90.0) -> re.Match[str]:
        """The first output line matching ``pattern``; fails if the process exits or the deadline passes.

        A process that exited is read to its end first: its last lines (why it exited) may still be in
        the pipe when its exit is noticed, and they belong in the failure, as does the exit code."""
        end = time.monotonic() + deadline_s
        while True:
            exited = self.proc.returncode is not None
            if exited and self.reader is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.reader), 10.0)
            for line in self.lines:
                if m := pattern.search(line):
                    return m
            if exited or time.monotonic() > end:
                how = f"exited with {self.proc.returncode}" if exited else f"running after {deadline_s:g} s"
                raise AssertionError(f"no line matching {pattern.pattern!r} ({how}); output:\n{self.output}")
            await asyncio.sleep(0.02)

    async def stop(self, sig: int = signal.SIGTERM, deadline_s: float = 60.0) -> int:
        """Send ``sig`` and return the exit code (fails if the process does not exit in time)."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), deadline_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"process ignored signal {sig}; output:\n{self.output}") from None
        if self.reader is not None:
            await self.reader
        return code


@dataclass(frozen=True)
class Ports:
    grpc: int
    tls: bool
    health: int
    metrics: int
    admin: int


async def serving_ports(process: Process, deadline_s: float = 90.0) -> Ports:
    """The ports of the serving line. The wait ends at that line or at the process's exit; the deadline
    only catches a process hung before it, so it is :meth:`Process.wait_for`'s (it was 30 s, which a
    ``picker serve --workers`` start passed on a loaded machine, failing a test whose process was fine)."""
    m = await process.wait_for(SERVING, deadline_s)
    return Ports(int(m[1]), m[2] == "TLS", int(m[3]), int(m[4]), int(m[5]))


class Spawn(Protocol):
    """Start ``argv`` in the clean environment (plus ``env``) as a :class:`Process`."""

    def __call__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Awaitable[Process]: ...


def _kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads: the process and whatever it started (``--workers``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture
async def spawn(cli_env: dict[str, str], request: pytest.FixtureRequest) -> AsyncIterator[Spawn]:
    """Start a CLI process, in a process group of its own, killed with everything it started (a
    ``--workers`` supervisor's workers) at teardown, however the test ended: passed, failed, or stopped by
    its timeout. The group is killed first, before anything that could fail or wait, and once more by a
    plain finalizer, which runs even when the event loop cannot run this fixture's teardown."""
    started: list[Process] = []

    async def _spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Process:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**cli_env, **(env or {})},
            start_new_session=True,
        )
        request.addfinalizer(functools.partial(_kill_group, proc.pid))
        process = Process(proc)
        assert proc.stderr is not None
        process.reader = asyncio.create_task(process._read(proc.stderr))
        started.append(process)
        return process

    try:
        yield _spawn
    finally:
        for process in started:
            _kill_group(process.proc.pid)  # a no-op for a group already gone
        for process in started:
            await process.proc.wait()
            if process.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await process.reader
