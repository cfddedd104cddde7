"""The planner tick by tick with a fake clock: up fast, down slow, drain/remove/verify/cancel, safety."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from picker.config.scaling import ScalingConfig
from picker.scaler.plan import Action, Decision, Observation, Planner
from picker.scaler.victim import PodView

T0 = 1_736_121_600.0  # a Monday, 00:00 UTC


def config(**over: object) -> ScalingConfig:
    doc: dict[str, object] = {
        "target": {"kind": "Deployment", "name": "vllm"},
        "dryRun": False,
        "minReplicas": 1,
        "maxReplicas": 8,
        "replicaCapacity": {"requestsPerSecond": 10},
        "headroom": 0.0,
        "warmup": "180s",
        "interval": "15s",
        "scaleDown": {"stabilization": "10m", "cooldown": "2m", "drainTimeout": "5m", "verifyTimeout": "3m"},
    }
    doc.update(over)
    return ScalingConfig.model_validate(doc)


def pods(n: int, *, inflight: float = 0.0, **fields: object) -> tuple[PodView, ...]:
    return tuple(PodView(f"p{i}", inflight=inflight, joined=float(i), **fields) for i in range(n))  # type: ignore[arg-type]


class Clock:
    """Drives a planner: one observation per 15 s tick."""

    def __init__(self, planner: Planner, start: float = T0) -> None:
        self.p = planner
        self.now = start

    def tick(
        self,
        replicas: int,
        demand: float,
        *,
        ready: int | None = None,
        seconds: float = 15.0,
        members: Sequence[PodView] | None = None,
        **obs: object,
    ) -> Decision:
        d = self.p.step(
            Observation(
                now=self.now,
                replicas=replicas,
                ready=replicas if ready is None else ready,
                demand_rps=demand,
                pods=tuple(members) if members is not None else pods(replicas),
                **obs,  # type: ignore[arg-type]
            )
        )
        self.now += seconds
        return d

    def run(self, seconds: float, replicas: int, demand: float, **kw: object) -> list[Decision]:
        out = []
        end = self.now + seconds
        while self.now < end:
            out.append(self.tick(replicas, demand, **kw))
        return out


def test_need_is_demand_with_headroom_over_capacity() -> None:
    p = Planner(config(headroom=0.2), ordered_removal=False)
    assert [p.need(x) for x in (0.0, None, 1.0, 10.0, 25.0, 50.0)] == [0, 0, 1, 2, 3, 6]


def test_scale_up_is_immediate_and_sized_to_clear_the_backlog_of_the_warmup() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    # 2 ready replicas serve 20 of 25 rps: 5 rps pile up for the 180 s warm-up (900 requests), to be
    # cleared within 30 s (+30 rps): need(25 + 30) = 6
    d = c.tick(2, 25.0)
    assert (d.action, d.reason, d.current, d.desired, d.direction) == (Action.SCALE_UP, "demand", 2, 6, "up")
    # a queue already there counts the same way: 300 queued / 30 s = +10 rps
    c2 = Clock(Planner(config(), ordered_removal=False))
    assert c2.tick(3, 25.0, queue=300.0).desired == 4
    # from zero there is no serving capacity to compare with: demand alone
    c3 = Clock(Planner(config(minReplicas=0), ordered_removal=False))
    assert c3.tick(0, 25.0, ready=0, members=()).desired == 3


def test_scale_up_needs_demand_beyond_half_the_headroom() -> None:
    c = Clock(Planner(config(headroom=0.2), ordered_removal=False))
    assert c.tick(4, 35.0).action is Action.HOLD  # need(35, 10 %) = 4: inside the hysteresis band
    d = c.tick(4, 37.0)  # need(37, 10 %) = 5: up, sized with the whole headroom: need(37, 20 %) = 5
    assert (d.action, d.desired) == (Action.SCALE_UP, 5)


def test_scale_up_stops_at_the_maximum_and_the_hourly_bound() -> None:
    c = Clock(Planner(config(scaleUp={"maxReplicasPerHour": 3}), ordered_removal=False))
    assert c.tick(1, 500.0).desired == 4  # need 50, max 8, bound 3 per hour
    d = c.tick(4, 500.0)
    assert (d.action, d.reason) == (Action.HOLD, "rate-limit")
    c.now += 3600
    assert c.tick(4, 500.0).desired == 7


def test_forecast_brings_capacity_back_before_the_ramp() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    d = c.tick(2, 15.0, forecast_rps=48.0)
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "forecast", 5)


def test_saturation_adds_a_step_once_previous_replicas_are_ready() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    d = c.tick(3, 20.0, saturated=True)
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "saturation", 4)
    assert c.tick(4, 20.0, ready=3, saturated=True).action is Action.HOLD  # still warming
    c.now += 180
    assert c.tick(4, 20.0, saturated=True).desired == 5
    # stale metrics read as saturated by the detector, but never trigger a step
    c.now += 180
    assert c.tick(5, 20.0, saturated=True, stale=True).action is Action.HOLD


def test_scale_down_waits_for_a_full_stabilization_window_of_low_demand() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    decisions = c.run(600, 4, 15.0)  # need 2, ticks at 0 s .. 585 s: the window is not covered yet
    assert {d.reason for d in decisions} == {"stabilizing"}
    d = c.tick(4, 15.0)
    assert (d.action, d.reason, d.desired, d.victim) == (Action.DRAIN, "low-demand", 3, "p3")


def test_one_spike_inside_the_window_holds_the_scale_down() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    c.run(300, 4, 15.0)
    c.run(60, 4, 39.0)  # need 4 for a minute, from 300 s
    decisions = c.run(600, 4, 15.0)  # up to 945 s: the minute's mean is still inside [now - 10 min, now]
    assert all(d.action is Action.HOLD for d in decisions)
    c.run(15, 4, 15.0)
    assert c.tick(4, 15.0).action is Action.DRAIN  # the spike has left the window


def test_a_single_noisy_tick_does_not_hold_the_scale_down() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    c.run(300, 4, 15.0)
    c.tick(4, 39.0)  # one tick: the minute's mean stays at need 3
    c.run(285, 4, 15.0)
    assert c.tick(4, 15.0).action is Action.DRAIN


@pytest.mark.parametrize(
    ("obs", "reason"),
    [
        ({"saturated": True}, "saturated"),
        ({"stale": True}, "stale-metrics"),
        ({"ready": 3}, "transition"),
    ],
)
def test_no_scale_down_while_unsafe(obs: dict[str, object], reason: str) -> None:
    # at the maximum, so that saturation cannot be answered by a scale-up instead
    c = Clock(Planner(config(maxReplicas=4), ordered_removal=False))
    c.run(600, 4, 5.0, members=pods(4))
    d = c.tick(4, 5.0, **obs)
    assert (d.action, d.reason) == (Action.HOLD, reason)


def drain_to_removal(c: Clock, replicas: int, demand: float) -> Decision:
    c.run(600, replicas, demand)
    d = c.tick(replicas, demand, members=pods(replicas, inflight=2.0))
    assert d.action is Action.DRAIN
    return d


def test_drain_waits_for_the_victims_streams_then_removes_and_verifies() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    members = list(pods(4, inflight=2.0))
    members[1] = PodView("p1", inflight=0.0, joined=1.0)  # the emptiest pod is the victim
    c.run(600, 4, 15.0, members=members)
    d = c.tick(4, 15.0, members=members)
    assert (d.action, d.victim) == (Action.DRAIN, "p1")
    busy = [*members[:1], PodView("p1", inflight=3.0, draining=True), *members[2:]]
    assert c.tick(4, 15.0, members=busy).reason == "draining"
    done = [*members[:1], PodView("p1", inflight=0.0, draining=True), *members[2:]]
    d = c.tick(4, 15.0, members=done)
    assert (d.action, d.reason, d.desired, d.victim) == (Action.REMOVE, "drained", 3, "p1")
    d = c.tick(3, 15.0, members=done, existing=frozenset({"p0", "p1", "p2", "p3"}))
    assert (d.action, d.reason) == (Action.HOLD, "verifying")
    d = c.tick(3, 15.0, members=done, existing=frozenset({"p0", "p2", "p3"}))
    assert (d.action, d.reason, d.victim) == (Action.VERIFIED, "verified", "p1")


def test_a_different_pod_going_away_fails_verification() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    drain_to_removal(c, 4, 15.0)
    c.now += 300  # drain timeout
    d = c.tick(4, 15.0, members=pods(4, inflight=1.0))
    assert (d.action, d.reason, d.victim) == (Action.REMOVE, "drain-timeout", "p3")
    d = c.tick(3, 15.0, existing=frozenset({"p1", "p2", "p3"}))
    assert (d.action, d.reason) == (Action.VERIFY_FAILED, "wrong-pod")
    assert "p0" in d.message


def test_nothing_going_away_fails_after_the_verify_timeout() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    drain_to_removal(c, 4, 15.0)
    c.tick(4, 15.0, members=pods(4))  # drained at once
    decisions = c.run(180, 4, 15.0, existing=frozenset({"p0", "p1", "p2", "p3"}))
    assert decisions[-1].reason == "not-removed"
    assert decisions[-1].action is Action.VERIFY_FAILED


def test_demand_coming_back_mid_drain_cancels_it() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    d = drain_to_removal(c, 4, 15.0)
    d2 = c.tick(4, 35.0, members=pods(4, inflight=1.0))
    assert (d2.action, d2.reason, d2.victim, d2.desired) == (
        Action.CANCEL_DRAIN,
        "demand-returned",
        d.victim,
        4,
    )
    assert c.p.drain is None


def test_saturation_mid_drain_cancels_it() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    drain_to_removal(c, 4, 15.0)
    assert c.tick(4, 15.0, members=pods(4, inflight=1.0), saturated=True).reason == "saturated"


def test_scale_downs_are_one_at_a_time_with_a_cooldown_and_an_hourly_bound() -> None:
    c = Clock(
        Planner(
            config(scaleDown={"stabilization": "1m", "cooldown": "2m", "maxReplicasPerHour": 2}),
            ordered_removal=False,
        )
    )
    c.run(60, 6, 5.0)
    replicas = 6
    removed = []
    for _ in range(400):  # 100 minutes
        d = c.tick(
            replicas,
            5.0,
            members=pods(replicas),
            existing=frozenset(p.name for p in pods(replicas)) - {removed[-1] if removed else ""},
        )
        if d.action is Action.REMOVE:
            removed.append(d.victim)
            replicas -= 1
            assert d.desired == replicas
    assert len(removed) == 4  # 2 in the first hour, 2 more after it
    assert c.p.cfg.scale_down.max_replicas_per_hour == 2


def test_never_below_the_schedule_minimum_and_down_to_the_schedule_maximum() -> None:
    window = {"name": "night", "start": "0 0 * * *", "end": "0 6 * * *", "minReplicas": 1, "maxReplicas": 2}
    c = Clock(Planner(config(minReplicas=3, schedules=[window]), ordered_removal=False), start=T0 + 3600)
    d = c.tick(5, 0.0)  # 01:00: above the window's maximum: no stabilization needed
    assert (d.action, d.reason, d.desired) == (Action.DRAIN, "schedule-max", 4)
    c2 = Clock(Planner(config(minReplicas=3), ordered_removal=False), start=T0 + 12 * 3600)
    decisions = c2.run(1200, 3, 0.0)
    assert all(d.action is Action.HOLD and d.reason == "steady" for d in decisions)


def test_scale_to_zero_and_back_for_a_held_request() -> None:
    c = Clock(Planner(config(minReplicas=0), ordered_removal=False))
    c.run(600, 1, 0.0)
    d = c.tick(1, 0.0, members=pods(1))
    assert (d.action, d.desired, d.victim) == (Action.DRAIN, 0, "p0")
    assert c.tick(1, 0.0, members=pods(1)).action is Action.REMOVE
    assert c.tick(0, 0.0, members=(), existing=frozenset()).action is Action.VERIFIED
    assert c.tick(0, 0.0, members=()).reason == "steady"
    d = c.tick(0, 0.0, members=(), held=3)
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "scale-from-zero", 1)


def test_dry_run_decides_but_enters_no_drain() -> None:
    c = Clock(Planner(config(dryRun=True), ordered_removal=False))
    c.run(600, 4, 15.0)
    d = c.tick(4, 15.0)
    assert (d.action, d.dry_run, d.victim) == (Action.DRAIN, True, "p3")
    assert c.p.drain is None
    assert c.tick(4, 15.0).reason == "cooldown"


def test_adapter_pinned_pods_are_kept() -> None:
    c = Clock(Planner(config(), ordered_removal=False))
    members = [PodView(f"p{i}", adapters=(f"lora-{i}",), running=1.0, joined=float(i)) for i in range(3)]
    c.run(600, 3, 5.0, members=members)
    d = c.tick(3, 5.0, members=members)
    assert (d.action, d.reason) == (Action.HOLD, "adapter-pinned")


def test_statefulsets_drain_their_highest_ordinal() -> None:
    c = Clock(Planner(config(), ordered_removal=True))
    members = [PodView(f"vllm-{i}", inflight=float(3 - i), ordinal=i) for i in range(3)]
    c.run(600, 3, 5.0, members=members)
    assert c.tick(3, 5.0, members=members).victim == "vllm-2"


def test_abort_returns_the_victim_to_undrain() -> None:
    p = Planner(config(), ordered_removal=False)
    c = Clock(p)
    d = drain_to_removal(c, 4, 15.0)
    assert p.abort() == d.victim
    assert p.abort() is None


def test_learned_capacity_moves_toward_observed_saturation_within_bounds() -> None:
    c = Clock(
        Planner(config(replicaCapacity={"requestsPerSecond": 10, "learn": True}), ordered_removal=False)
    )
    for _ in range(200):
        c.tick(4, 20.0, saturated=True)  # saturated at 5 rps per replica
    assert c.p.capacity.rps == pytest.approx(5.0, rel=0.01)
    for _ in range(400):
        c.tick(4, 400.0, ready=4)  # 100 per replica unsaturated: capped at 4x
    assert c.p.capacity.rps == pytest.approx(40.0)
    fixed = Planner(config(), ordered_removal=False)
    Clock(fixed).run(600, 4, 20.0, saturated=True)
    assert fixed.capacity.rps == 10.0


# ------------------------------------------------------------------------------------------------ tokens
def token_config(**over: object) -> ScalingConfig:
    """10 requests/s or 10,000 tokens/s per replica: the budgets agree at 1,000 tokens per request."""
    return config(replicaCapacity={"requestsPerSecond": 10, "tokensPerSecond": 10_000, **over})


def test_need_is_the_larger_of_the_request_and_the_token_budget() -> None:
    p = Planner(token_config(), ordered_removal=False)
    assert p.need(20.0, 20_000.0) == 2  # the mix the capacity was measured on: both say 2
    assert p.need(20.0, 45_000.0) == 5  # longer requests: tokens bind
    assert p.need(45.0, 20_000.0) == 5  # shorter ones: requests bind
    assert p.need(20.0, None) == p.need(20.0) == 2  # no token measurement: requests alone
    assert p.need(None, 30_000.0) == 3
    # without tokensPerSecond the token rate is ignored
    assert Planner(config(), ordered_removal=False).need(20.0, 45_000.0) == 2


def test_token_demand_scales_up_what_the_request_rate_would_not() -> None:
    c = Clock(Planner(token_config(), ordered_removal=False))
    assert c.tick(3, 25.0, demand_tps=25_000.0).action is Action.HOLD
    # the same request rate with longer answers: 35,000 tokens/s is 3.5 replicas' work; 3 ready serve 3, so
    # half a replica's work piles up for the 180 s warm-up (90 replica-seconds), cleared within 30 s (+3)
    d = c.tick(3, 25.0, demand_tps=35_000.0)
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "demand", 7)
    assert "tokens bind" in d.message
    assert "35000 tps" in d.message


def test_the_queue_is_weighed_at_the_current_token_mix() -> None:
    # 3 ready, 25 rps at 2,000 tokens each = 5 replicas' work per second; 300 queued requests are
    # 300 x 5 / 25 = 60 replica-seconds: +2 within 30 s; (5 - 3) x 180 s of warm-up backlog: +12
    capacity = {"requestsPerSecond": 10, "tokensPerSecond": 10_000}
    c = Clock(Planner(config(maxReplicas=32, replicaCapacity=capacity), ordered_removal=False))
    assert c.tick(3, 25.0, demand_tps=50_000.0, queue=300.0).desired == 5 + 2 + 12
    # requests only: 300 queued are 30 replica-seconds at 10 rps each
    c2 = Clock(Planner(config(maxReplicas=32), ordered_removal=False))
    assert c2.tick(3, 25.0, demand_tps=50_000.0, queue=300.0).desired == 4  # ceil(2.5 + 30 / 30)


def test_a_token_forecast_brings_capacity_back_before_the_ramp() -> None:
    c = Clock(Planner(token_config(), ordered_removal=False))
    d = c.tick(2, 15.0, demand_tps=15_000.0, forecast_rps=15.0, forecast_tps=48_000.0)
    assert (d.action, d.reason, d.desired) == (Action.SCALE_UP, "forecast", 5)


def test_token_demand_inside_the_window_holds_the_scale_down() -> None:
    c = Clock(Planner(token_config(), ordered_removal=False))
    # requests alone would allow 2 of 4 replicas; the tokens need all 4 (no scale-down), then 2
    decisions = c.run(1200, 4, 15.0, demand_tps=35_000.0)
    assert {d.action for d in decisions} == {Action.HOLD}
    decisions = c.run(615, 4, 15.0, demand_tps=15_000.0)
    assert decisions[-1].action is Action.DRAIN


def test_learned_token_capacity_moves_only_when_tokens_bind() -> None:
    c = Clock(Planner(token_config(learn=True), ordered_removal=False))
    for _ in range(200):  # saturated at 5 rps and 10,000 tokens/s per replica: tokens bind
        c.tick(4, 20.0, demand_tps=40_000.0, saturated=True)
    assert c.p.capacity.tps == pytest.approx(10_000.0)  # served = estimate: nothing to learn
    assert c.p.capacity.rps == 10.0  # requests did not run out: untouched
    for _ in range(200):  # saturated at 4 rps and 5,000 tokens/s per replica: tokens still bind
        c.tick(4, 16.0, demand_tps=20_000.0, saturated=True)
    assert c.p.capacity.tps == pytest.approx(5_000.0, rel=0.01)
    assert c.p.capacity.rps == 10.0
    for _ in range(400):  # unsaturated far above both: each capped at 4x its configured value
        c.tick(4, 400.0, ready=4, demand_tps=400_000.0)
    assert c.p.capacity.rps == pytest.approx(40.0)
    assert c.p.capacity.tps == pytest.approx(40_000.0)
    assert c.p.to_dict()["capacity"] == {
        "requestsPerSecond": 40.0,
        "configured": 10.0,
        "tokensPerSecond": 40_000.0,
        "configuredTokensPerSecond": 10_000.0,
        "mode": "learned",
        "updates": c.p.capacity.updates,
    }


def test_reconfiguring_the_token_capacity_starts_a_new_estimate() -> None:
    p = Planner(token_config(), ordered_removal=False)
    assert p.need(20.0, 45_000.0) == 5
    p.reconfigure(token_config(tokensPerSecond=5_000))
    assert p.need(20.0, 45_000.0) == 9
    p.reconfigure(config())
    assert p.capacity.tps is None
    assert p.need(20.0, 45_000.0) == 2
