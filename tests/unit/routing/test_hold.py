"""Scale from zero in the director (``picker.routing.hold``): a request to an empty pool is held — not
refused — while the active config allows zero replicas and is not a dry run; it is routed as soon as an
endpoint appears, refused with 503 after the hold timeout, refused at once beyond ``maxHeldRequests``; the
wait asks the proxy for a longer message timer; the count and the wake-up reach the scaler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import orjson
import pytest

from picker.config import load_config_text
from picker.errors import ServiceUnavailable
from picker.routing.director import Director
from picker.routing.hold import HOLD_MARGIN_S, EmptyPoolHold
from picker.routing.types import Dispatch, PendingRoute, RoutingRequest
from picker.state.accounting import NullLease
from picker.state.config_store import ConfigStore
from picker.state.objectives import ObjectiveStore, RewriteStore
from picker.testing.poll import eventually
from scoring import EndpointMatrix, EndpointRow
from scoring.matrix import LoadCharge

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def config(
    *, min_replicas: int = 0, dry_run: bool = False, hold: str = "2s", max_held: int = 10, extra: str = ""
) -> ConfigStore:
    text = (
        f"{EPP}---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        "scaling:\n"
        "  target: {kind: Deployment, name: vllm}\n"
        f"  dryRun: {str(dry_run).lower()}\n"
        f"  minReplicas: {min_replicas}\n"
        "  maxReplicas: 2\n"
        "  replicaCapacity: {requestsPerSecond: 10}\n"
        f"  scaleToZero: {{holdTimeout: {hold}, maxHeldRequests: {max_held}}}\n"
        f"{extra}"
    )
    return ConfigStore(load_config_text(text), source="test", text=text)


@dataclass
class Pool:
    """A routing state whose endpoints the test adds (a replica coming up)."""

    matrix: EndpointMatrix = field(default_factory=lambda: EndpointMatrix.from_rows([]))
    objectives: ObjectiveStore = field(default_factory=ObjectiveStore)
    rewrites: RewriteStore = field(default_factory=RewriteStore)
    acquired: list[str] = field(default_factory=list)

    def snapshot(self) -> EndpointMatrix:
        return self.matrix

    def acquire(self, name: str, charge: LoadCharge = LoadCharge(0.0, 0.0), /) -> NullLease:  # noqa: B008
        self.acquired.append(name)
        return NullLease()

    def replica_ready(self) -> None:
        self.matrix = EndpointMatrix.from_rows(
            [EndpointRow(name="a", address="10.0.0.1:8000", scraped_at=0.0)]
        )


def request() -> RoutingRequest:
    return RoutingRequest("r", {}, "/v1/completions", orjson.dumps({"model": "m", "prompt": "hi"}))


@dataclass
class Rig:
    pool: Pool
    hold: EmptyPoolHold
    director: Director
    wakes: list[int]
    counts: list[int]


def rig(store: ConfigStore) -> Rig:
    pool = Pool()
    wakes: list[int] = []
    counts: list[int] = []
    hold = EmptyPoolHold(pool.snapshot, wake=lambda: wakes.append(1), on_change=counts.append)
    d = Director(pool, store, rng=np.random.default_rng(0), hold=hold)
    return Rig(pool, hold, d, wakes, counts)


def route(d: Director, req: RoutingRequest) -> Dispatch | PendingRoute:
    """Resolve and route, as the ext_proc stream does."""
    return d.route(req, d.resolve(req))


async def test_a_request_to_an_empty_pool_is_held_until_a_replica_is_ready_then_routed() -> None:
    r = rig(config(hold="30s"))
    routed = route(r.director, request())
    assert isinstance(routed, PendingRoute)
    assert routed.extend_s == pytest.approx(30.0 + HOLD_MARGIN_S)
    task = asyncio.ensure_future(routed.wait())
    await eventually(lambda: r.hold.held == 1, "the request held")
    assert r.wakes == [1]  # the scaler is woken at once
    assert not task.done()
    r.pool.replica_ready()
    decision = await asyncio.wait_for(task, 10)
    assert isinstance(decision, Dispatch)
    assert decision.endpoints == ("10.0.0.1:8000",)
    assert r.pool.acquired == ["a"]
    assert r.hold.held == 0
    assert r.counts == [1, 0]


async def test_a_held_request_gets_503_after_the_hold_timeout() -> None:
    r = rig(config(hold="1s"))
    routed = route(r.director, request())
    assert isinstance(routed, PendingRoute)
    with pytest.raises(ServiceUnavailable, match=r"within the hold timeout \(1s\)"):
        await asyncio.wait_for(routed.wait(), 30)
    assert r.hold.held == 0
    assert r.pool.acquired == []


async def test_beyond_max_held_requests_the_next_one_is_refused_at_once() -> None:
    r = rig(config(hold="30s", max_held=2))
    waits = []
    for _ in range(2):
        routed = route(r.director, request())
        assert isinstance(routed, PendingRoute)
        waits.append(asyncio.ensure_future(routed.wait()))
    await eventually(lambda: r.hold.held == 2, "two requests held")
    with pytest.raises(ServiceUnavailable, match="too many requests already wait"):
        route(r.director, request())
    r.pool.replica_ready()
    decisions = await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert [d.endpoints for d in decisions] == [("10.0.0.1:8000",)] * 2


async def test_a_cancelled_held_request_is_no_longer_counted() -> None:
    r = rig(config(hold="30s"))
    routed = route(r.director, request())
    assert isinstance(routed, PendingRoute)
    task = asyncio.ensure_future(routed.wait())
    await eventually(lambda: r.hold.held == 1, "the request held")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.hold.held == 0


async def test_closing_the_hold_lets_waiting_requests_go_now() -> None:
    r = rig(config(hold="30s"))
    routed = route(r.director, request())
    assert isinstance(routed, PendingRoute)
    task = asyncio.ensure_future(routed.wait())
    await eventually(lambda: r.hold.held == 1, "the request held")
    r.hold.close()
    with pytest.raises(ServiceUnavailable):  # still no endpoint: refused as without holding
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize(
    ("store", "why"),
    [
        (lambda: config(min_replicas=1), "the scaling section never allows zero replicas"),
        (lambda: config(dry_run=True), "a dry run never scales to zero"),
        (
            lambda: ConfigStore(load_config_text(EPP), source="test", text=EPP),
            "no scaling section",
        ),
    ],
)
def test_without_scale_to_zero_an_empty_pool_is_refused_at_once(store: object, why: str) -> None:
    r = rig(store())  # type: ignore[operator]
    with pytest.raises(ServiceUnavailable):
        route(r.director, request())
    assert r.wakes == [], why


def test_a_pool_with_endpoints_is_routed_at_once_without_holding() -> None:
    r = rig(config())
    r.pool.replica_ready()
    decision = route(r.director, request())
    assert isinstance(decision, Dispatch)
    assert r.wakes == []


async def test_header_only_mode_holds_too() -> None:
    r = rig(config(hold="30s", extra="request: {modelHeader: x-model}\n"))
    req = RoutingRequest("r", {"x-model": "m"}, "/v1/completions", b"", headers_only=False)
    resolved = r.director.resolve_by_header(req)
    assert resolved is not None
    routed = r.director.route(req, resolved)
    assert isinstance(routed, PendingRoute)
    task = asyncio.ensure_future(routed.wait())
    await eventually(lambda: r.hold.held == 1, "the request held")
    r.pool.replica_ready()
    decision = await asyncio.wait_for(task, 10)
    assert decision.endpoints == ("10.0.0.1:8000",)
