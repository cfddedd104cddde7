"""The scale decision, one tick at a time: pure and deterministic (time comes in the observation).

Sizing (``need``), with demand d = (r requests/s, k tokens/s), capacity per replica at the SLO c_req
requests/s and (optionally) c_tok tokens/s, headroom h::

    u(d)        = max(r / c_req, k / c_tok)           replicas' worth of work (no c_tok: r / c_req)
    need(u, h)  = ceil(u x (1 + h))
    backlog     = queue x u(d) / r + max(0, u(d) - ready) x warmup    (replica-seconds until new ones serve)
    load        = u(d) + backlog / backlogClear
    up          = clamp(max(need(load, h), need(u(forecast), h)), lo, hi)
    trigger     = clamp(max(need(load, h/2), need(u(forecast), h)), lo, hi)
    down        = clamp(max(largest need(u(1-minute mean of d), h) over the stabilization window,
                            need(u(forecast), h)), lo, hi)

The queue (requests) is converted at the current mix, ``u(d) / r`` (1 / c_req with no demand). Why the max
of two budgets and not one weighted unit: :mod:`.capacity`.

``lo``/``hi`` come from the schedule (the minimum read a warm-up ahead, see :mod:`.schedule`). A request
held for scale-from-zero counts as a need of one replica. Why each term:

* the **backlog** term: replicas added now serve only after ``warmup``; until then the excess demand queues
  up, and sizing for demand alone would leave that queue to the headroom to work off (minutes of missed
  SLOs after every jump in the replay). Sized to clear it within ``backlogClear`` instead.
* the **trigger** at half the headroom is hysteresis: demand noise around a boundary would otherwise add
  a replica that the next stabilization window removes again (each such pair pays a warm-up for nothing).
* the **1-minute mean** in the down window: the largest of noisy per-tick samples would keep one too many.

Up fast: when ``replicas < trigger`` the count is raised to ``up`` at once (bounded only by
``scaleUp.maxReplicasPerHour``). When the pool is saturated although the sizing says it is big enough
(capacity overestimated, or a burst inside the tick), ``saturationStep`` replicas are added, once the
previous ones are ready.

Down slow: when ``replicas > down`` for a full stabilization window (at once when above the schedule's
maximum), and the pool is not saturated, no metric is stale, every replica is ready, the cooldown since
the last scale-down has passed and the hourly bound allows it, *one* replica is removed:

1. choose the victim (:mod:`.victim`); none eligible → hold;
2. DRAIN: the victim gets no new requests (the datastore's draining mark); wait until its in-flight
   requests end (REMOVE, reason ``drained``) or ``drainTimeout`` passes (REMOVE, ``drain-timeout``); if
   demand comes back meanwhile (``up`` ≥ replicas) or the pool saturates: CANCEL_DRAIN, nothing changed;
3. REMOVE: the actuator marks the victim cheapest to delete (``pod-deletion-cost``) and lowers the replica
   count by one;
4. VERIFY: once the victim is gone and every other pod that existed is still there: VERIFIED; another pod
   went away: VERIFY_FAILED (``wrong-pod``); nothing went away within ``verifyTimeout``: VERIFY_FAILED
   (``not-removed``: the count is put back by the next up decision if needed).

Dry run: the same decisions, but a scale-down stops at "would drain": no draining state is entered, so
every tick reports what would happen now (the controller de-duplicates the Events).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from picker.config.scaling import ScalingConfig
from picker.scaler.capacity import CapacityEstimate
from picker.scaler.decision import Action, Decision, Drain, Observation, Removal
from picker.scaler.schedule import Bounds, Schedule
from picker.scaler.victim import Candidate, choose, rank

__all__ = ["Action", "Decision", "Observation", "Planner"]

HOUR_S = 3600.0
#: demand is averaged over this long for the scale-down window (the scale-up path uses the last tick)
SMOOTHING_S = 60.0
#: the scale-up trigger uses this share of the headroom (module doc: hysteresis)
HYSTERESIS = 0.5


@dataclass(slots=True)
class _History:
    needs: deque[tuple[float, int]] = field(default_factory=deque)
    demand: deque[tuple[float, float, float]] = field(default_factory=deque)
    ups: deque[tuple[float, int]] = field(default_factory=deque)
    downs: deque[tuple[float, int]] = field(default_factory=deque)
    first: float | None = None
    last_up: float = -math.inf
    last_down: float = -math.inf


class Planner:
    """The stateful decision procedure of the module docstring. One instance per target workload."""

    def __init__(
        self, cfg: ScalingConfig, *, ordered_removal: bool, capacity: CapacityEstimate | None = None
    ) -> None:
        self.cfg = cfg
        self.schedule = Schedule(cfg)
        self.ordered_removal = ordered_removal
        cap = cfg.replica_capacity
        self.capacity = capacity or CapacityEstimate(
            cap.requests_per_second, learn=cap.learn, configured_tps=cap.tokens_per_second
        )
        self.drain: Drain | None = None
        self.removal: Removal | None = None
        self.last_ranking: list[Candidate] = []
        self._h = _History()

    def reconfigure(self, cfg: ScalingConfig) -> None:
        """A reloaded section for the same target: new parameters, history kept."""
        self.cfg = cfg
        self.schedule = Schedule(cfg)
        cap = cfg.replica_capacity
        now = (self.capacity.configured, self.capacity.configured_tps, self.capacity.learn)
        if (cap.requests_per_second, cap.tokens_per_second, cap.learn) != now:
            self.capacity = CapacityEstimate(
                cap.requests_per_second, learn=cap.learn, configured_tps=cap.tokens_per_second
            )

    def abort(self) -> str | None:
        """Forget a drain or removal in progress (leadership lost, section removed); returns the pod to
        un-drain, if any."""
        victim = self.drain.victim if self.drain else self.removal.victim if self.removal else None
        self.drain = None
        self.removal = None
        return victim

    # ------------------------------------------------------------------------------------ sizing
    def need(self, rps: float | None, tps: float | None = None, *, headroom: float | None = None) -> int:
        """Replicas for ``rps`` requests and ``tps`` tokens per second with headroom (0 for no demand)."""
        return self._need(self.capacity.replicas(rps or 0.0, tps), headroom)

    def _need(self, work: float, headroom: float | None = None) -> int:
        """Replicas for ``work`` replicas' worth of demand (:meth:`CapacityEstimate.replicas`)."""
        if work <= 0:
            return 0
        h = self.cfg.headroom if headroom is None else headroom
        return math.ceil(work * (1.0 + h) - 1e-9)

    def _load(self, obs: Observation) -> float:
        """Demand plus the backlog to clear, in replicas' worth of work (module doc). With no replica ready
        there is no serving capacity to compare with (scale from zero): demand alone."""
        cap = self.capacity
        work = cap.replicas(obs.demand_rps, obs.demand_tps)
        per_request = work / obs.demand_rps if obs.demand_rps > 0 else 1.0 / cap.rps
        backlog = obs.queue * per_request
        if obs.ready > 0:
            backlog += max(0.0, work - obs.ready) * self.cfg.warmup
        return work + backlog / self.cfg.scale_up.backlog_clear

    def _window_need(self, now: float, rps: float, tps: float | None) -> int:
        """The largest need over the stabilization window, each sample the mean demand of the last minute
        (a single tick's count is noisy; its maximum over a long window would keep a replica too many)."""
        h = self._h
        h.demand.append((now, rps, tps or 0.0))
        while h.demand and h.demand[0][0] <= now - SMOOTHING_S:
            h.demand.popleft()
        count = len(h.demand)
        need_now = self.need(sum(d[1] for d in h.demand) / count, sum(d[2] for d in h.demand) / count)
        h.needs.append((now, need_now))
        horizon = now - self.cfg.scale_down.stabilization
        while h.needs and h.needs[0][0] < horizon:
            h.needs.popleft()
        return max(n for _, n in h.needs)

    @staticmethod
    def _used(events: deque[tuple[float, int]], now: float) -> int:
        while events and events[0][0] <= now - HOUR_S:
            events.popleft()
        return sum(n for _, n in events)

    # ------------------------------------------------------------------------------------ the tick
    def step(self, obs: Observation) -> Decision:
        h = self._h
        now = obs.now
        if h.first is None:
            h.first = now
        steady = obs.ready >= obs.replicas > 0 and not obs.stale
        self.capacity.observe(
            demand_rps=obs.demand_rps,
            demand_tps=obs.demand_tps,
            ready=obs.ready,
            saturated=obs.saturated,
            steady=steady,
        )
        bounds = self.schedule.bounds(now)
        if obs.hpa_floor is not None and bounds.lo < 1:
            bounds = Bounds(lo=1, hi=max(bounds.hi, 1), window=bounds.window, ahead=bounds.ahead)
        load = self._load(obs)
        need_now = self._need(load)
        need_fc = self.need(obs.forecast_rps, obs.forecast_tps)
        floor = 1 if obs.held > 0 else 0
        up = min(max(need_now, need_fc, floor, bounds.lo), bounds.hi)
        window = self._window_need(now, obs.demand_rps, obs.demand_tps)
        down = min(max(window, need_fc, floor, bounds.lo), bounds.hi)
        ctx = _Ctx(obs, bounds, need_now, need_fc, up, down, self)
        if self.removal is not None:
            verdict = self._verify(ctx)
            if verdict is not None:
                return verdict
        if self.drain is not None:
            return self._drain_step(ctx)
        trigger = self._need(load, HYSTERESIS * self.cfg.headroom)
        if obs.replicas < min(max(trigger, need_fc, floor, bounds.lo), bounds.hi):
            return self._scale_up(ctx, up, ctx.up_reason())
        if (
            obs.saturated
            and not obs.stale
            and obs.replicas < bounds.hi
            and obs.ready >= obs.replicas
            and now - h.last_up >= self.cfg.warmup
        ):
            to = min(bounds.hi, obs.replicas + self.cfg.scale_up.saturation_step)
            return self._scale_up(ctx, to, "saturation")
        if obs.hpa_floor is not None and obs.replicas > obs.hpa_floor:
            # the HPA keeps more replicas than our floor: it removes them itself when its metric says so; we
            # only bring the floor down (no victim, no drain)
            if obs.hpa_floor > down and self._down_ready(ctx) == "":
                self._h.last_down = now
                return ctx.decision(Action.LOWER_FLOOR, "down", "low-demand", max(down, obs.hpa_floor - 1))
            return ctx.decision(Action.HOLD, "none", "hpa-decides", obs.replicas)
        if obs.replicas > down:
            return self._scale_down(ctx)
        return ctx.decision(Action.HOLD, "none", "steady", obs.replicas)

    def _scale_up(self, ctx: _Ctx, to: int, reason: str) -> Decision:
        h = self._h
        obs = ctx.obs
        budget = self.cfg.scale_up.max_replicas_per_hour - self._used(h.ups, obs.now)
        if budget <= 0:
            return ctx.decision(Action.HOLD, "up", "rate-limit", obs.replicas)
        to = min(to, obs.replicas + budget)
        if not self.cfg.dry_run:
            h.ups.append((obs.now, to - obs.replicas))
            h.last_up = obs.now
        return ctx.decision(Action.SCALE_UP, "up", reason, to)

    def _down_ready(self, ctx: _Ctx) -> str:
        """Why a scale-down may not happen now ("" = it may)."""
        h = self._h
        obs = ctx.obs
        cfg = self.cfg.scale_down
        above_max = obs.replicas > ctx.bounds.hi
        assert h.first is not None
        return (
            "saturated"
            if obs.saturated
            else "stale-metrics"
            if obs.stale
            else "transition"
            if obs.ready < obs.replicas
            else "stabilizing"
            if not above_max and obs.now - h.first < cfg.stabilization
            else "cooldown"
            if obs.now - h.last_down < cfg.cooldown
            else "rate-limit"
            if self._used(h.downs, obs.now) >= cfg.max_replicas_per_hour
            else ""
        )

    def _scale_down(self, ctx: _Ctx) -> Decision:
        h = self._h
        obs = ctx.obs
        reason = "schedule-max" if obs.replicas > ctx.bounds.hi else "low-demand"
        blocked = self._down_ready(ctx)
        if blocked:
            return ctx.decision(Action.HOLD, "down", blocked, obs.replicas)
        self.last_ranking = rank(obs.pods, ordered_removal=self.ordered_removal)
        victim = choose(obs.pods, ordered_removal=self.ordered_removal)
        if victim is None:
            why = "no-candidate" if not self.last_ranking else "adapter-pinned"
            return ctx.decision(Action.HOLD, "down", why, obs.replicas)
        h.last_down = obs.now
        if not self.cfg.dry_run:
            self.drain = Drain(victim.pod, obs.now, obs.replicas, reason)
        return ctx.decision(Action.DRAIN, "down", reason, obs.replicas - 1, victim=victim.pod)

    def _drain_step(self, ctx: _Ctx) -> Decision:
        d = self.drain
        assert d is not None
        obs = ctx.obs
        pod = obs.pod(d.victim)
        cancel = (
            "victim-gone"
            if pod is None or obs.replicas != d.from_replicas
            else "demand-returned"
            if ctx.up >= d.from_replicas
            else "saturated"
            if obs.saturated
            else ""
        )
        if cancel:
            self.drain = None
            return ctx.decision(Action.CANCEL_DRAIN, "none", cancel, obs.replicas, victim=d.victim)
        assert pod is not None
        done = "drained" if pod.inflight <= 0 else ""
        if not done and obs.now - d.started >= self.cfg.scale_down.drain_timeout:
            done = "drain-timeout"
        if not done:
            return ctx.decision(Action.HOLD, "down", "draining", obs.replicas, victim=d.victim)
        self.drain = None
        others = frozenset(p.name for p in obs.pods if p.name != d.victim)
        self.removal = Removal(d.victim, obs.now, d.from_replicas - 1, others)
        self._h.downs.append((obs.now, 1))
        self._h.last_down = obs.now
        return ctx.decision(Action.REMOVE, "down", done, d.from_replicas - 1, victim=d.victim)

    def _verify(self, ctx: _Ctx) -> Decision | None:
        """The removal's outcome, or None to continue the tick normally (still waiting, or superseded)."""
        r = self.removal
        assert r is not None
        obs = ctx.obs
        if obs.existing is not None:
            lost = r.others - obs.existing
            if lost:
                self.removal = None
                gone = ", ".join(sorted(lost))
                return ctx.decision(
                    Action.VERIFY_FAILED, "down", "wrong-pod", obs.replicas, victim=r.victim, note=gone
                )
            if r.victim not in obs.existing:
                self.removal = None
                return ctx.decision(Action.VERIFIED, "down", "verified", obs.replicas, victim=r.victim)
        if obs.now - r.started >= self.cfg.scale_down.verify_timeout:
            self.removal = None
            return ctx.decision(Action.VERIFY_FAILED, "down", "not-removed", obs.replicas, victim=r.victim)
        if obs.replicas < ctx.up:
            return None  # demand is back: scale up now, keep watching the removal
        return ctx.decision(Action.HOLD, "down", "verifying", obs.replicas, victim=r.victim)

    def to_dict(self) -> dict[str, object]:
        return {
            "capacity": self.capacity.to_dict(),
            "drain": None
            if self.drain is None
            else {"victim": self.drain.victim, "since": self.drain.started, "reason": self.drain.reason},
            "removal": None
            if self.removal is None
            else {
                "victim": self.removal.victim,
                "since": self.removal.started,
                "target": self.removal.target,
            },
            "victimRanking": [c.to_dict() for c in self.last_ranking],
        }


@dataclass(frozen=True, slots=True)
class _Ctx:
    """The tick's derived figures, shared by the branches and their messages."""

    obs: Observation
    bounds: Bounds
    need_now: int
    need_fc: int
    up: int
    down: int
    planner: Planner

    def up_reason(self) -> str:
        if self.obs.replicas == 0:
            return "scale-from-zero"
        if self.bounds.lo > max(self.need_now, self.need_fc):
            return "schedule-min"
        return "forecast" if self.need_fc > self.need_now else "demand"

    def decision(
        self,
        action: Action,
        direction: str,
        reason: str,
        desired: int,
        *,
        victim: str | None = None,
        note: str = "",
    ) -> Decision:
        obs, b, p = self.obs, self.bounds, self.planner
        cap = p.capacity
        fc = "none" if obs.forecast_rps is None else f"{obs.forecast_rps:.3g}"
        window = f" (window {b.window})" if b.window else ""
        ahead = f", floor raised by {b.ahead} ahead" if b.ahead else ""
        demand, forecast, capacity = f"{obs.demand_rps:.3g} rps", f"{fc} rps", f"{cap.rps:.3g} rps"
        if cap.tps is not None:  # the token figures follow the request ones ("none": not measured)
            now, ahead = ("none" if v is None else f"{v:.0f}" for v in (obs.demand_tps, obs.forecast_tps))
            binds = " (tokens bind)" if cap.token_bound(obs.demand_rps, obs.demand_tps) else ""
            demand += f" / {now} tps{binds}"
            forecast += f" / {ahead} tps"
            capacity += f" / {cap.tps:.0f} tps"
        message = (
            f"{action} {obs.replicas}->{desired} ({reason}{': ' + note if note else ''}"
            f"{', pod ' + victim if victim else ''}): demand {demand}, forecast {forecast}, "
            f"capacity {capacity}/replica, headroom {p.cfg.headroom:.0%} -> need "
            f"{self.need_now} now / {self.need_fc} forecast; bounds [{b.lo}, {b.hi}]{window}{ahead}; "
            f"ready {obs.ready}"
        )
        return Decision(
            at=obs.now,
            action=action,
            direction=direction,
            reason=reason,
            current=obs.replicas,
            desired=desired,
            message=message,
            victim=victim,
            dry_run=p.cfg.dry_run,
            need=max(self.need_now, self.need_fc),
            bounds=b,
        )
