"""The scaler's controller with fakes at its seams (actuator, pool, marker, history) and a fake clock:
what it writes, when, and what it gives up."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from picker.config.scaling import ScaleTarget, ScalingConfig
from picker.errors import PickerError
from picker.scaler.controller import Scaler
from picker.scaler.forecast import WEEK_S, DemandHistory, PoolHistory
from picker.scaler.metrics import ScalerMetrics
from picker.scaler.plan import Action
from picker.scaler.ports import PodSignal, PoolSample, TickReport

T0 = 1_736_121_600.0


class ApiDownError(PickerError):
    code = "KubeApiError"
    transient = True


@dataclass
class Hpa:
    name: str
    min_replicas: int
    max_replicas: int


@dataclass
class Workload:
    replicas: int
    ready: int
    selector: str = "app=vllm"
    hpa: Hpa | None = None
    ordered_removal: bool = False


@dataclass
class FakeActuator:
    workload: Workload
    pods: set[str] = field(default_factory=set)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    description: str = "Deployment inference/vllm"

    def _maybe_fail(self, op: str) -> None:
        if op in self.fail:
            raise ApiDownError(f"{op}: injected")

    async def read(self) -> Workload:
        self._maybe_fail("read")
        return Workload(**self.workload.__dict__)

    async def existing_pods(self, selector: str) -> frozenset[str]:
        return frozenset(self.pods)

    async def set_replicas(self, replicas: int) -> None:
        self._maybe_fail("scale")
        self.calls.append(("scale", replicas))

    async def set_hpa_bounds(self, hpa: str, min_replicas: int, max_replicas: int) -> None:
        self.calls.append(("hpa", hpa, min_replicas, max_replicas))

    async def mark_victim(self, pod: str) -> None:
        self.calls.append(("mark", pod))

    async def unmark_victim(self, pod: str) -> None:
        self.calls.append(("unmark", pod))

    async def post_event(self, *, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class Pool:
    def __init__(self, pods: int) -> None:
        self.inflight = {f"p{i}": 1.0 for i in range(pods)}
        self.sent = 0.0
        self.tokens: float | None = None
        self.saturated = False
        self.held = 0

    def sample(self) -> PoolSample:
        return PoolSample(
            pods=tuple(PodSignal(n, inflight=v, waiting=0.0, running=v) for n, v in self.inflight.items()),
            sent={"all": self.sent},
            saturated=self.saturated,
            held=self.held,
            tokens=self.tokens,
        )


class Marker:
    def __init__(self) -> None:
        self.draining: frozenset[str] = frozenset()

    def set_draining(self, pods: frozenset[str]) -> None:
        self.draining = pods


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def wall(self) -> float:
        return self.now

    def mono(self) -> float:
        return self.now - T0


def section(**over: Any) -> ScalingConfig:
    doc: dict[str, Any] = {
        "target": {"kind": "Deployment", "name": "vllm"},
        "dryRun": False,
        "maxReplicas": 8,
        "replicaCapacity": {"requestsPerSecond": 10},
        "headroom": 0.0,
        "interval": "15s",
        "scaleDown": {"stabilization": "1m", "cooldown": "30s"},
    }
    doc.update(over)
    return ScalingConfig.model_validate(doc)


class Rig:
    def __init__(self, cfg: ScalingConfig | None, replicas: int = 4, **kw: Any) -> None:
        self.cfg = cfg
        self.clock = Clock()
        self.pool = Pool(replicas)
        self.actuator = FakeActuator(Workload(replicas, replicas), pods=set(self.pool.inflight))
        self.marker = Marker()
        self.registry = CollectorRegistry()
        self.targets: list[ScaleTarget] = []
        self.leader = True

        def actuator_for(target: ScaleTarget) -> FakeActuator:
            self.targets.append(target)
            return self.actuator

        self.scaler = Scaler(
            section=lambda: self.cfg,
            actuator_for=actuator_for,
            pool=self.pool,
            marker=self.marker,
            observer=ScalerMetrics(self.registry),
            is_leader=lambda: self.leader,
            wall_clock=self.clock.wall,
            clock=self.clock.mono,
            **kw,
        )

    async def tick(self, rps: float, seconds: float = 15.0, *, tps: float | None = None) -> Any:
        self.pool.sent += rps * seconds
        if tps is not None:
            self.pool.tokens = (self.pool.tokens or 0.0) + tps * seconds
        self.clock.now += seconds
        d = await self.scaler.tick()
        await asyncio.sleep(0)  # let the Event tasks run
        return d

    async def until_drain(self) -> Any:
        """Tick at a low demand (15 requests/s) until the scaler starts a drain (a minute of low demand,
        then the cooldown); the DRAIN decision."""
        for _ in range(8):
            d = await self.tick(15.0)
            if d.action is Action.DRAIN:
                return d
        raise AssertionError("no drain after 8 ticks of low demand")

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


async def test_dry_run_decides_posts_events_once_and_changes_nothing() -> None:
    rig = Rig(section(dryRun=True))
    assert await rig.tick(0) is None  # the first sample only starts the demand measurement
    decisions = [await rig.tick(55.0) for _ in range(3)]
    assert all(d.action is Action.SCALE_UP and d.desired == 8 and d.dry_run for d in decisions)
    assert rig.actuator.calls == []
    assert [e[1] for e in rig.actuator.events] == ["DryRunScaleUp"]  # the same decision is not repeated
    assert rig.actuator.events[0][2].startswith("dry run: would scale-up 4->8")
    assert rig.metric("picker_scaler_decisions_total", direction="up", reason="demand") == 1
    assert rig.metric("picker_scaler_dry_run") == 1
    assert rig.metric("picker_scaler_desired_replicas") == 8
    assert rig.marker.draining == frozenset()


async def test_scale_down_drains_marks_removes_and_verifies() -> None:
    rig = Rig(section())
    await rig.tick(0)
    victim = (await rig.until_drain()).victim
    assert victim is not None
    assert rig.marker.draining == {victim}
    assert await rig.tick(15.0) is not None
    assert rig.actuator.calls == []
    rig.pool.inflight[victim] = 0.0
    d = await rig.tick(15.0)
    assert (d.action, d.reason) == (Action.REMOVE, "drained")
    assert rig.actuator.calls == [("mark", victim), ("scale", 3)]
    assert rig.metric("picker_scaler_drain_duration_seconds_count") == 1
    rig.actuator.workload = Workload(3, 3)
    rig.actuator.pods.discard(victim)
    del rig.pool.inflight[victim]
    d = await rig.tick(15.0)
    assert d.action is Action.VERIFIED
    assert rig.actuator.calls[-1] == ("unmark", victim)
    assert rig.marker.draining == frozenset()
    assert [e[1] for e in rig.actuator.events] == ["DrainStarted", "ScaleDown", "ScaleDownVerified"]


async def test_a_failed_removal_gives_the_drain_up() -> None:
    rig = Rig(section())
    await rig.tick(0)
    await rig.until_drain()
    rig.pool.inflight = dict.fromkeys(rig.pool.inflight, 0.0)
    rig.actuator.fail.add("scale")
    d = await rig.tick(15.0)
    assert d.action is Action.REMOVE
    assert rig.marker.draining == frozenset()  # back in rotation
    assert rig.actuator.calls[-1] == ("unmark", d.victim)
    assert rig.scaler._planner is not None
    assert rig.scaler._planner.removal is None
    assert rig.metric("picker_scaler_errors_total", operation="remove") == 1


async def test_hpa_floor_is_moved_instead_of_the_count() -> None:
    rig = Rig(section())
    rig.actuator.workload = Workload(4, 4, hpa=Hpa("vllm", 4, 8))
    await rig.tick(0)
    d = await rig.tick(55.0)
    assert (d.action, d.desired) == (Action.SCALE_UP, 8)
    assert rig.actuator.calls == [("hpa", "vllm", 8, 8)]
    # the HPA holds 6 while our floor is 2: no drain, the floor comes down one step per cooldown
    rig.actuator.workload = Workload(6, 6, hpa=Hpa("vllm", 3, 8))
    rig.actuator.calls.clear()
    decisions = [await rig.tick(5.0) for _ in range(8)]
    assert {d.action for d in decisions} <= {Action.HOLD, Action.LOWER_FLOOR}
    assert ("hpa", "vllm", 2, 8) in rig.actuator.calls
    assert rig.marker.draining == frozenset()


async def test_losing_leadership_or_the_section_stands_down_and_undrains() -> None:
    rig = Rig(section())
    await rig.tick(0)
    await rig.until_drain()
    assert rig.marker.draining
    rig.leader = False
    assert await rig.tick(15.0) is None
    assert rig.marker.draining == frozenset()
    assert rig.metric("picker_scaler_active") == 0
    rig.leader = True
    assert await rig.tick(15.0) is None  # leading again: demand is measured afresh
    await rig.tick(15.0)
    assert rig.metric("picker_scaler_active") == 1
    rig.cfg = None
    assert await rig.tick(15.0) is None
    assert rig.metric("picker_scaler_active") == 0


async def test_a_new_target_starts_over_other_changes_keep_the_history() -> None:
    rig = Rig(section())
    await rig.tick(0)
    await rig.tick(15.0)
    planner = rig.scaler._planner
    rig.cfg = section(headroom=0.5)
    await rig.tick(15.0)
    assert rig.scaler._planner is planner
    assert planner.cfg.headroom == 0.5
    rig.cfg = section(target={"kind": "Deployment", "name": "other"})
    assert await rig.tick(15.0) is None  # demand measurement starts again
    assert rig.scaler._planner is not planner
    assert [t.name for t in rig.targets] == ["vllm", "other"]


async def test_api_failures_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="picker.scaler.controller")
    rig = Rig(section())
    rig.actuator.fail.add("read")
    for _ in range(3):
        assert await rig.tick(10.0) is None
    assert rig.metric("picker_scaler_errors_total", operation="read") == 3
    assert sum("read failed" in r.message for r in caplog.records) == 1
    rig.actuator.fail.clear()
    await rig.tick(10.0)
    assert any("read works again" in r.message for r in caplog.records)


async def test_forecast_history_is_read_in_the_background_and_used() -> None:
    class History:
        def __init__(self) -> None:
            self.calls = 0

        async def fetch(self, now: float, *, horizon_s: float) -> PoolHistory:
            self.calls += 1
            return PoolHistory(DemandHistory.from_samples([now - WEEK_S], [48.0]))

    history = History()
    rig = Rig(
        section(forecast={"prometheusUrl": "http://prometheus:9090", "weeks": 1}),
        history_for=lambda c: history,
    )
    await rig.tick(0)
    d = await rig.tick(15.0)  # the read has only been started
    assert d.action is Action.HOLD
    await asyncio.sleep(0)
    d = await rig.tick(15.0)
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "forecast", 5)
    assert history.calls == 1
    assert rig.metric("picker_scaler_forecast_rps") == 48.0


async def test_token_demand_is_the_growth_of_the_token_counter_and_sizes_with_its_forecast() -> None:
    class History:
        async def fetch(self, now: float, *, horizon_s: float) -> PoolHistory:
            return PoolHistory(
                DemandHistory.from_samples([now - WEEK_S], [10.0]),
                DemandHistory.from_samples([now - WEEK_S], [52_000.0]),
            )

    capacity = {"requestsPerSecond": 10, "tokensPerSecond": 10_000}
    rig = Rig(section(replicaCapacity=capacity), replicas=4)
    await rig.tick(0, tps=0.0)
    # 20 rps need 2 replicas; 36,000 tokens/s need 4 (no scale-down, whatever the requests say)
    for _ in range(8):
        d = await rig.tick(20.0, tps=36_000.0)
        assert d.action is Action.HOLD
    assert rig.metric("picker_scaler_demand_tps") == pytest.approx(36_000.0)
    assert rig.metric("picker_scaler_capacity_tps") == 10_000.0
    assert rig.scaler.debug()["last"]["demandTps"] == pytest.approx(36_000.0)
    # the token forecast (only read with tokensPerSecond set) brings capacity back ahead of a ramp
    forecasting = Rig(
        section(replicaCapacity=capacity, forecast={"prometheusUrl": "http://p:9090", "weeks": 1}),
        history_for=lambda c: History(),
    )
    await forecasting.tick(0, tps=0.0)
    await forecasting.tick(10.0, tps=10_000.0)
    await asyncio.sleep(0)
    d = await forecasting.tick(10.0, tps=10_000.0)
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "forecast", 6)
    assert forecasting.metric("picker_scaler_forecast_tps") == 52_000.0
    assert forecasting.scaler.debug()["last"]["tokenForecast"]["tps"] == 52_000.0


async def test_without_a_token_meter_or_token_capacity_the_sizing_counts_requests() -> None:
    rig = Rig(section(), replicas=4)  # no tokensPerSecond: the token rate is shown, not used
    await rig.tick(0, tps=0.0)
    d = await rig.tick(20.0, tps=90_000.0)
    assert rig.metric("picker_scaler_demand_tps") == pytest.approx(90_000.0)
    assert d.desired == 4
    assert math.isnan(rig.metric("picker_scaler_capacity_tps") or 0.0)
    unmetered = Rig(section(replicaCapacity={"requestsPerSecond": 10, "tokensPerSecond": 10_000}))
    await unmetered.tick(0)
    d = await unmetered.tick(45.0)  # tokens: None (no meter): requests alone
    assert (d.action, d.desired) == (Action.SCALE_UP, 8)  # ceil(4.5 + 0.5 x 180 s / 30 s)
    assert "none tps" in d.message
    assert math.isnan(unmetered.metric("picker_scaler_demand_tps") or 0.0)


async def test_wake_runs_a_tick_without_waiting_for_the_interval() -> None:
    rig = Rig(section(minReplicas=0), replicas=0)
    rig.actuator.workload = Workload(0, 0)
    rig.pool.inflight = {}
    task = asyncio.create_task(rig.scaler.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if rig.scaler._prev is not None:
                break
        rig.pool.held = 2
        rig.clock.now += 1.0
        rig.scaler.wake()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if rig.actuator.calls:
                break
        assert rig.actuator.calls == [("scale", 1)]
    finally:
        await rig.scaler.close()
        await asyncio.wait_for(task, timeout=5)


async def test_a_held_request_scales_from_zero_at_the_very_first_tick() -> None:
    """Right after a start (or a new target) there is no previous sample to measure demand with; a held
    request must not wait an interval for it."""
    rig = Rig(section(minReplicas=0), replicas=0)
    rig.actuator.workload = Workload(0, 0)
    rig.pool.inflight = {}
    rig.pool.held = 1
    d = await rig.tick(0.0)
    assert d is not None
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "scale-from-zero", 1)
    assert rig.actuator.calls == [("scale", 1)]


def test_the_held_requests_gauge_is_read_live_when_a_source_is_given() -> None:
    held = [0]
    registry = CollectorRegistry()
    metrics = ScalerMetrics(registry, held=lambda: held[0])
    held[0] = 3  # no tick since: the scrape still sees it
    assert registry.get_sample_value("picker_scaler_held_requests") == 3
    report = TickReport(
        current=0,
        desired=1,
        ready=0,
        max_replicas=2,
        demand_rps=0.0,
        forecast_rps=None,
        capacity_rps=10.0,
        demand_tps=None,
        forecast_tps=None,
        capacity_tps=None,
        saturated=False,
        held=7,  # the tick's sample does not override the live count
        dry_run=False,
        hpa=False,
        gpu_hours_saved=0.0,
    )
    metrics.tick(report)
    held[0] = 0
    assert registry.get_sample_value("picker_scaler_held_requests") == 0
    # without a source, the last tick's count
    fallback = CollectorRegistry()
    ScalerMetrics(fallback).tick(report)
    assert fallback.get_sample_value("picker_scaler_held_requests") == 7
