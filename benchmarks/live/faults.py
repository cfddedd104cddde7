"""bench_failover's fault injection: what happens to which fake server at the fault's onset and end,
through the servers' ``/_fake/control`` (a killed server is a stopped process)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

__all__ = ["control", "inject"]


class _Fleet(Protocol):
    @property
    def addresses(self) -> list[str]: ...

    async def start(self, i: int) -> None: ...

    async def kill(self, i: int) -> None: ...


class _Config(Protocol):
    @property
    def servers(self) -> int: ...

    @property
    def before_s(self) -> float: ...

    @property
    def fault_s(self) -> float: ...

    @property
    def slowdown(self) -> float: ...

    @property
    def saturate_slowdown(self) -> float: ...


async def control(session: Any, address: str, doc: dict[str, Any]) -> None:
    async with session.post(f"http://{address}/_fake/control", json=doc) as resp:
        if resp.status != 200:
            raise RuntimeError(f"control of {address} failed: {resp.status} {await resp.text()}")


async def inject(
    fault: str, cfg: _Config, fleet: _Fleet, session: Any, *, t0: float, events: dict[str, float]
) -> None:
    """``fault`` from ``t0 + before_s`` for ``fault_s`` seconds, on server 0 (or on the whole pool and the
    external endpoint, the fleet's last server); ``events`` gets the onset and the recovery times."""
    bad = fleet.addresses[0]
    pool = fleet.addresses[: cfg.servers]
    saturating = fault in ("saturated", "external-saturated", "external-503")
    await asyncio.sleep(max(0.0, t0 + cfg.before_s - time.monotonic()))
    events["fault_s"] = time.monotonic() - t0
    if fault == "killed":
        await fleet.kill(0)
    elif fault == "error-503":
        await control(session, bad, {"fault": "error-503"})
    elif saturating:
        for address in pool:
            await control(session, address, {"slowdown": cfg.saturate_slowdown})
        if fault == "external-503":
            await control(session, fleet.addresses[-1], {"fault": "error-503"})
    else:
        await control(session, bad, {"slowdown": cfg.slowdown})
    await asyncio.sleep(max(0.0, t0 + cfg.before_s + cfg.fault_s - time.monotonic()))
    events["recovered_s"] = time.monotonic() - t0
    if fault == "killed":
        await fleet.start(0)
    elif fault == "error-503":
        await control(session, bad, {"fault": "none"})
    elif saturating:
        for address in pool:
            await control(session, address, {"slowdown": 1.0})
        if fault == "external-503":
            await control(session, fleet.addresses[-1], {"fault": "none"})
    else:
        await control(session, bad, {"slowdown": 1.0})
