"""The ``--workers`` supervisor: starts, watches and restarts the worker processes (:class:`WorkerPool`),
reserves each pool's shared port, and runs the ordinary :class:`picker.service.Service` with, per pool, a
datastore that publishes to that pool's shared memory (:class:`picker.workers.hosts.PoolHost`; see
:mod:`picker.workers`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from picker.extproc.tls import generate_self_signed
from picker.service import Service
from picker.settings import Settings
from picker.state.codec import HealthInputs
from picker.state.datastore import Datastore
from picker.state.publisher import SharedPublisher
from picker.state.segment import SharedLayout, SharedSegment
from picker.wiring import (
    BuildInfo,
    cannot_listen,
    freeze_startup_objects,
    run_main,
    snapshot_interval,
    start_documents,
)
from picker.workers.channel import DRAIN_S, POOL, Channel
from picker.workers.hosts import PoolHost
from picker.workers.worker import worker_main

log = logging.getLogger("picker.workers")

#: more restarts than this within RESTART_WINDOW_S and the supervisor exits
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


class _Slot:
    """One worker index: its current process, channel, and whether it reported serving."""

    __slots__ = ("channel", "pid", "process", "reader", "serving")

    def __init__(self) -> None:
        self.process: BaseProcess | None = None
        self.channel: Channel | None = None
        self.reader: asyncio.Task[None] | None = None
        self.serving = False
        self.pid = 0


class WorkerPool:
    """Starts, watches and restarts the worker processes. ``run()`` until cancelled."""

    def __init__(
        self, settings: Settings, hosts: Sequence[PoolHost], *, key_pair: tuple[bytes, bytes] | None
    ) -> None:
        """``hosts``: each pool's segment, datastore and answers to the workers (in ``--pool`` order);
        every worker serves every pool."""
        self.settings = settings
        self.hosts = tuple(hosts)
        self._key_pair = key_pair
        self._slots = [_Slot() for _ in range(settings.workers)]
        self._restarts: deque[float] = deque()
        self._ctx = multiprocessing.get_context("spawn")
        self._failed: asyncio.Future[None] | None = None
        self._stopping = False
        #: set whenever no worker process is running (what a stop waits for)
        self._none_running = asyncio.Event()

    # ----------------------------------------------------------------------------------- status
    def all_serving(self) -> bool:
        return all(slot.serving for slot in self._slots)

    def stats(self, pool: int = 0) -> list[dict[str, Any]]:
        """``/debug/workers`` of the pool at index ``pool``: per worker index, its pid, whether it serves,
        the pool's picks and open streams in it, and the entries of its replica of the pool's prefix index
        (None until it reported them)."""
        out = []
        host = self.hosts[pool]
        ledger = host.datastore.ledger
        for i, slot in enumerate(self._slots):
            picks, inflight = ledger.row_stats(i)  # worker i writes counter row i of every pool
            out.append(
                {
                    "index": i,
                    "pid": slot.pid,
                    "alive": slot.process is not None and slot.process.is_alive(),
                    "serving": slot.serving,
                    "picks": picks,
                    "inflight": inflight,
                    "prefix_entries": host.prefix_entries(i),
                }
            )
        return out

    # ----------------------------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        for host in self.hosts:
            host.datastore.publish()  # workers read their first state right after they start
        try:
            for i in range(len(self._slots)):
                await self._start(i)
            await self._failed  # only a crash loop ends this; cancellation stops the pool
        finally:
            await self._stop_all()

    async def _start(self, index: int) -> None:
        slot = self._slots[index]
        parent, child = socket.socketpair()
        process = self._ctx.Process(
            target=worker_main,
            args=(self.settings, [h.segment.name for h in self.hosts], index, child, self._key_pair),
            name=f"picker-worker-{index}",
            daemon=False,
        )
        try:
            process.start()
        finally:
            child.close()
        self._none_running.clear()
        slot.process, slot.serving, slot.pid = process, False, process.pid or 0
        slot.channel = await Channel.open(parent)
        slot.reader = asyncio.create_task(self._watch(index, process, slot.channel), name=f"worker-{index}")
        log.info("started ext_proc worker %d (pid %d)", index, slot.pid)

    async def _watch(self, index: int, process: BaseProcess, channel: Channel) -> None:
        """Read one worker's messages until its end closes, then handle its exit."""
        slot = self._slots[index]
        while (message := await channel.recv()) is not None:
            if message[0] == POOL and len(message) == 3 and 0 <= message[1] < len(self.hosts):
                pool, inner = message[1], message[2]
                if inner[0] == "prefix":  # to every other worker, and applied here
                    for other in (
                        s for i, s in enumerate(self._slots) if i != index and s.channel is not None
                    ):
                        other.channel.send(message)  # type: ignore[union-attr]
                reply = self.hosts[pool].handle(index, inner)
                if reply is not None:
                    channel.send([POOL, pool, reply])
            elif message[0] == "serving":
                slot.serving = True
        channel.close()
        slot.serving = False
        # the socket closes when the process exits; wait for the exit itself (kill a process that
        # closed its socket and lingers)
        exited = asyncio.get_running_loop().run_in_executor(None, process.join, DRAIN_S + 2.0)
        await exited
        if process.is_alive():
            process.kill()
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5.0)
        self._exited(index, process)

    def _exited(self, index: int, process: BaseProcess) -> None:
        slot = self._slots[index]
        slot.process, slot.channel, slot.reader = None, None, None
        released = sum(host.retire(index) for host in self.hosts)
        if all(s.process is None for s in self._slots):
            self._none_running.set()
        if self._stopping:
            return
        log.error(
            "ext_proc worker %d (pid %d) exited with %s; %d open streams released",
            index,
            slot.pid,
            process.exitcode,
            int(released),
        )
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) > MAX_RESTARTS:
            if self._failed is not None and not self._failed.done():
                self._failed.set_exception(
                    RuntimeError(
                        f"ext_proc workers died {len(self._restarts)} times within {RESTART_WINDOW_S:g} s"
                    )
                )
            return
        delay = min(10.0, 0.5 * 2 ** (len(self._restarts) - 1))
        asyncio.get_running_loop().call_later(delay, self._restart, index)

    def _restart(self, index: int) -> None:
        if not self._stopping and self._slots[index].process is None:
            task = asyncio.ensure_future(self._start(index))
            task.add_done_callback(self._restart_done)

    def _restart_done(self, task: asyncio.Future[None]) -> None:
        exc = task.exception() if not task.cancelled() else None
        if exc is not None and self._failed is not None and not self._failed.done():
            self._failed.set_exception(exc)

    async def _stop_all(self) -> None:
        """Ask every worker to drain and exit; kill those still running after the drain period."""
        self._stopping = True
        for slot in self._slots:
            if slot.channel is not None:
                slot.channel.send(["stop"])
        if any(s.process is not None for s in self._slots):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S + 8.0):
                    await self._none_running.wait()
        for slot in self._slots:
            if slot.process is not None:  # pragma: no cover - _watch kills lingering workers first
                slot.process.kill()
            if slot.reader is not None:
                slot.reader.cancel()


def _reserve_port(flag: str, host: str, port: int) -> socket.socket:
    """Bind (never listen) ``host:port`` with SO_REUSEPORT so the workers can share it; port 0 → a free
    port, read from the socket. A port taken by another process is a :class:`StartupError` naming
    ``flag`` (``--grpc-port`` or the pool's ``--pool NAME``), as in one process."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cannot_listen(flag, host, port, exc) from exc
    return sock


async def _supervise(settings: Settings) -> None:
    starts = start_documents(settings)  # ConfigError before anything starts
    reservations: list[socket.socket] = []
    segments: list[SharedSegment] = []
    service: Service | None = None
    try:
        reservations.extend(
            _reserve_port(ps.grpc_port_flag, settings.host, ps.grpc_port) for ps in settings.pool_settings()
        )
        if not settings.pools:  # --grpc-port 0: the port the reservation got (a --pool names its port)
            settings = settings.model_copy(update={"grpc_port": reservations[0].getsockname()[1]})
        key_pair = None
        if settings.secure_serving and not settings.cert_path:
            key_pair = generate_self_signed(("localhost", "127.0.0.1"))
        #: metric updates reach the workers this often, as they reach the snapshot in one process
        interval = snapshot_interval(settings)
        hosts: list[PoolHost] = []
        for i, (_, text, source) in enumerate(starts):
            segment = SharedSegment.create(SharedLayout(workers=settings.workers))
            segments.append(segment)

            def health(i: int = i) -> HealthInputs:
                if service is None:
                    return HealthInputs()
                h = service.pools[i].health_state()
                ready = all(check() for check in service.readiness_checks)
                return HealthInputs(h.synced and ready, h.leader, h.protocol_ok, h.leader_election)

            def active_config(i: int = i, text: str = text, source: str = source) -> tuple[str, str, str]:
                if service is None:
                    return text, source, ""
                active = service.pools[i].config_store.active
                return active.text, active.source, active.digest

            datastore = Datastore(
                min_publish_interval_s=interval,
                publisher=SharedPublisher(segment, health=health, config=active_config),
            )
            hosts.append(PoolHost(segment, datastore))
        pool_ref: list[WorkerPool] = []
        (config, text, source), *others = starts
        service = Service(
            settings,
            config,
            config_text=text,
            config_source=source,
            documents=others,
            build=BuildInfo.from_environment(),
            datastores=[h.datastore for h in hosts],
            serve_extproc=False,
            debug_workers=lambda pool: pool_ref[0].stats(pool) if pool_ref else [],
        )
        for host, served in zip(hosts, service.pools, strict=True):
            host.attach(served)
        pool = WorkerPool(settings, hosts, key_pair=key_pair)
        pool_ref.append(pool)
        service.readiness_checks.append(pool.all_serving)

        async def publisher() -> None:
            while True:
                for host in hosts:
                    host.datastore.publish()
                await asyncio.sleep(interval)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run(
            on_started=freeze_startup_objects,
            extra_tasks={"shared-publisher": publisher, "workers": pool.run},
        )
    finally:
        for reservation in reservations:
            reservation.close()
        for segment in segments:
            segment.close()
            segment.unlink()


def run_workers(settings: Settings) -> int:
    """``picker serve --workers N`` (N > 1). Returns the process exit code."""
    return run_main(_supervise(settings))
