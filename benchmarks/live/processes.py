"""The child processes: every one started by pid and stopped in order; the fake fleet in its own process
(``python -m benchmarks.bench_live --serve-fleet``) so clients and routers never slow the model's clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.live.workload import LiveConfig, load_params

#: seconds a router process may take to answer its health route
STARTUP_TIMEOUT_S = 40.0


class Processes:
    """Every child process this benchmark starts; :meth:`stop_all` ends them by pid, whatever happened."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(
        self, name: str, argv: Sequence[str], *, pipes: bool = False
    ) -> asyncio.subprocess.Process:
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if pipes else log,
                stderr=log,
                start_new_session=True,  # a Ctrl+C in the terminal reaches us, and we stop them in order
            )
        finally:
            log.close()
        self._procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 8) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.returncode is None

    async def stop(self, name: str, *, grace_s: float = 5.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop_all(self) -> None:
        for name in list(self._procs):
            await self.stop(name)


def epp_argv(
    addresses: Sequence[str],
    *,
    grpc_port: int,
    health_port: int,
    metrics_port: int,
    admin_port: int,
    pool_name: str,
    seed: int,
    config_text: str | None = None,
) -> list[str]:
    """``picker serve`` over ``addresses`` (vLLM fake servers) in plaintext on 127.0.0.1; ``admin_port`` 0
    is an ephemeral admin API; ``config_text`` None keeps the built-in scoring document."""
    argv = [
        sys.executable,
        "-m",
        "picker",
        "serve",
        "--static-endpoints",
        ",".join(f"{a}@vllm" for a in addresses),
        "--secure-serving=false",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--grpc-health-port",
        str(health_port),
        "--metrics-port",
        str(metrics_port),
        "--admin-port",
        str(admin_port),
        "--pool-name",
        pool_name,
        "--seed",
        str(seed),
    ]
    return argv if config_text is None else [*argv, "--config-text", config_text]


async def http_ok(session: Any, url: str) -> bool:
    import aiohttp

    try:
        async with session.get(url) as resp:
            await resp.read()
            return bool(resp.status == 200)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------------------------ the fleet
def fleet_main(servers: int, time_scale: float, seed: int) -> int:
    """``--serve-fleet``: run the fake fleet in this process until stdin closes; print stats as JSON."""
    from picker.testing.fake_server import FakeFleet

    params = load_params()

    async def serve() -> None:
        fleet = FakeFleet.uniform(servers, "vllm", seed=seed, time_scale=time_scale, load=params)
        async with fleet:
            print(json.dumps({"addresses": fleet.addresses}), flush=True)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            await reader.read()  # EOF: the benchmark is done with us
            stats = []
            for s in fleet:
                snap = s.snapshot()
                stats.append(
                    {
                        "requests": snap.requests_total,
                        "prompt_tokens": snap.prompt_tokens_total,
                        "generation_tokens": snap.generation_tokens_total,
                        "preemptions": snap.preemptions_total,
                        "prefix_queries": snap.prefix_queries_total,
                        "prefix_hits": snap.prefix_hits_total,
                    }
                )
            print(json.dumps({"stats": stats}), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


class Fleet:
    """The fake fleet as a child process (``--serve-fleet``): start, addresses, stats at the end."""

    def __init__(self, procs: Processes, cfg: LiveConfig, name: str) -> None:
        self._procs = procs
        self._cfg = cfg
        self._name = name
        self._proc: asyncio.subprocess.Process | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.bench_live",
            "--serve-fleet",
            "--servers",
            str(self._cfg.servers),
            "--time-scale",
            str(self._cfg.time_scale),
            "--seed",
            str(self._cfg.seed),
        ]
        self._proc = await self._procs.start(self._name, argv, pipes=True)
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), STARTUP_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line:
            raise RuntimeError(f"fake fleet did not start: {self._procs.log_tail(self._name)}")
        self.addresses = list(json.loads(line)["addresses"])

    async def finish(self) -> list[dict[str, float]]:
        """Close the fleet's stdin, read its counters, let it exit."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            return []
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
        except TimeoutError:
            line = b""
        await self._procs.stop(self._name)
        return list(json.loads(line)["stats"]) if line else []
