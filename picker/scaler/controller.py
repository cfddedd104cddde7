"""The scaler at run time: one tick every ``interval``, on the leader only, carrying out the plan.

Each tick (:meth:`Scaler.tick`):

1. the ``scaling`` section in force (hot-reloaded: a new target starts over, other changes keep the
   history); none, or not the leader → any drain in progress is given up (un-drained, mark removed);
2. read the workload (replicas, readiness, its HPA) and sample the pool (per-pod load, requests sent,
   saturation, staleness, held requests, tokens served); demand = requests (and tokens) sent since the
   previous tick / its length (the first tick has none and decides nothing, unless a request is held:
   then demand counts as 0);
3. the forecast from the last history read (refreshed every ``forecast.refresh`` in the background: a slow
   Prometheus never delays a tick);
4. :meth:`picker.scaler.plan.Planner.step`, then carry the decision out — unless ``dryRun``:
   scale-up → the scale subresource (or the HPA's ``minReplicas``); drain → the datastore's draining
   mark; remove → ``pod-deletion-cost`` on the victim, then the count (or the HPA's floor) minus one;
   verify/cancel → mark and annotation removed;
5. every decision that differs from the previous one: a log line, an Event on the workload (reason
   prefixed ``DryRun`` in dry run) and ``picker_scaler_decisions_total{direction,reason}``.

A failed API call is counted (``picker_scaler_errors_total{operation}``), logged once per streak, and the
tick is abandoned; a drain whose removal failed is given up (un-drained), so no pod stays out of rotation
because the API server was away. :meth:`wake` runs a tick at once (a request was held by an empty pool).

Why one module: the tick, carrying a decision out and giving a drain up share one piece of state (the
planner's drain and removal, the pod marked draining, the annotation set); split, each half would have to
re-derive what the other did to the cluster. The pure decision is elsewhere (``plan.py``), and so are the
adapters (``signals.py``, ``ports.py``, ``metrics.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from picker.config.scaling import ScaleTarget, ScalingConfig
from picker.errors import PickerError
from picker.scaler.forecast import Forecast, PoolHistory, forecast
from picker.scaler.plan import Action, Decision, Observation, Planner
from picker.scaler.ports import (
    DrainMarker,
    HistorySource,
    PoolSample,
    PoolSignals,
    ReplicaActuator,
    ScalerObserver,
    TickReport,
    WorkloadView,
)
from picker.scaler.victim import PodView, ordinal_of

log = logging.getLogger(__name__)

#: smoothing of a pod's in-flight count for the victim rule's "recent load" (per tick)
RECENT_LOAD_ALPHA = 0.1
EVENT_REASONS = {
    Action.SCALE_UP: ("Normal", "ScaleUp"),
    Action.DRAIN: ("Normal", "DrainStarted"),
    Action.CANCEL_DRAIN: ("Normal", "DrainCancelled"),
    Action.REMOVE: ("Normal", "ScaleDown"),
    Action.VERIFIED: ("Normal", "ScaleDownVerified"),
    Action.VERIFY_FAILED: ("Warning", "ScaleDownUnverified"),
    Action.LOWER_FLOOR: ("Normal", "HpaFloorLowered"),
}


VICTIM_RULE = (
    "never the only pod holding an adapter in use; then fewest requests in flight (ours + queued); then "
    "least prefix-cache value (the prefix index, when wired) else least recently useful; then least recent "
    "load; then the youngest; then the name. StatefulSet/LeaderWorkerSet: the highest ordinal only."
)


class _PodMemory:
    """What the victim rule needs that no single sample shows: when each pod was last busy, its smoothed
    load, when it joined."""

    def __init__(self) -> None:
        self.last_busy: dict[str, float] = {}
        self.recent: dict[str, float] = {}
        self.joined: dict[str, float] = {}

    def update(self, sample: PoolSample, now: float) -> None:
        names = {p.name for p in sample.pods}
        for p in sample.pods:
            self.joined.setdefault(p.name, now)
            waiting = p.waiting if p.waiting == p.waiting else 0.0
            running = p.running if p.running == p.running else 0.0
            if p.inflight > 0 or waiting > 0 or running > 0:
                self.last_busy[p.name] = now
            prev = self.recent.get(p.name, p.inflight)
            self.recent[p.name] = prev + RECENT_LOAD_ALPHA * (p.inflight - prev)
        for table in (self.last_busy, self.recent, self.joined):
            for gone in set(table) - names:
                del table[gone]


class Scaler:
    """Constructing it starts nothing; :meth:`run` until :meth:`close`."""

    def __init__(
        self,
        *,
        section: Callable[[], ScalingConfig | None],
        actuator_for: Callable[[ScaleTarget], ReplicaActuator],
        pool: PoolSignals,
        marker: DrainMarker,
        history_for: Callable[[ScalingConfig], HistorySource | None] | None = None,
        observer: ScalerObserver | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        keep_decisions: int = 50,
    ) -> None:
        self._section = section
        self._actuator_for = actuator_for
        self._pool = pool
        self._marker = marker
        self._history_for = history_for
        self._observer = observer
        self._is_leader = is_leader
        self._wall = wall_clock
        self._clock = clock
        self.decisions: deque[Decision] = deque(maxlen=keep_decisions)
        self._cfg: ScalingConfig | None = None
        self._planner: Planner | None = None
        self._actuator: ReplicaActuator | None = None
        self._draining: frozenset[str] = frozenset()
        self._drain_started: dict[str, float] = {}
        self._pods = _PodMemory()
        self._prev: tuple[float, PoolSample] | None = None
        self._history: PoolHistory | None = None
        self._history_at = -math.inf
        self._history_task: asyncio.Task[None] | None = None
        self._history_error = ""
        self._last_key: tuple[object, ...] | None = None
        self._failing: set[str] = set()
        self._last: dict[str, Any] = {}
        self._saved_gpu_hours = 0.0
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        while not self._closed.is_set():
            try:
                await self.tick()
            except PickerError as exc:  # an unexpected failure class of an adapter: loud, but keep going
                self._failed("tick", exc)
            cfg = self._cfg
            interval = cfg.interval if cfg is not None else 15.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken(), timeout=interval)
            self._wake.clear()

    async def _woken(self) -> None:
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._closed.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def wake(self) -> None:
        """Tick now (a request is held by an empty pool)."""
        self._wake.set()

    async def close(self) -> None:
        self._closed.set()
        if self._history_task is not None:
            self._history_task.cancel()
        await self._stand_down("shutting down")

    # ------------------------------------------------------------------------------------ the tick
    async def tick(self) -> Decision | None:
        """One decision (None when disabled, not leading, or nothing could be read)."""
        cfg = self._section()
        if cfg is None or not self._is_leader():
            await self._stand_down("scaling disabled" if cfg is None else "not the leader")
            return None
        self._configure(cfg)
        planner, actuator = self._planner, self._actuator
        assert planner is not None
        assert actuator is not None
        try:
            workload = await actuator.read()
        except PickerError as exc:
            self._failed("read", exc)
            return None
        self._ok("read")
        planner.ordered_removal = workload.ordered_removal
        now, mono = self._wall(), self._clock()
        sample = self._pool.sample()
        measured = self._demand(mono, sample)
        self._pods.update(sample, now)
        if measured is None:
            if sample.held == 0:
                return None  # the first sample: demand needs two
            # a request held by an empty pool needs a replica now, not one interval later
            measured = (0.0, None)
        demand, tokens = measured
        fc, fc_tokens = self._forecast(cfg, now)
        existing = None
        if planner.removal is not None:
            try:
                existing = await actuator.existing_pods(workload.selector)
            except PickerError as exc:
                self._failed("list-pods", exc)
        hpa = workload.hpa
        obs = Observation(
            now=now,
            replicas=workload.replicas,
            ready=workload.ready,
            demand_rps=demand,
            pods=self._pod_views(sample, ordered=workload.ordered_removal),
            saturated=sample.saturated,
            stale=sample.stale,
            held=sample.held,
            queue=sample.queue,
            forecast_rps=None if fc is None else fc.rps,
            demand_tps=tokens,
            forecast_tps=None if fc_tokens is None else fc_tokens.rps,
            existing=existing,
            hpa_floor=None if hpa is None else hpa.min_replicas,
        )
        decision = planner.step(obs)
        await self._carry_out(decision, workload, cfg)
        self._record(decision, obs, workload, (fc, fc_tokens), cfg)
        return decision

    # ------------------------------------------------------------------------------------ inputs
    def _configure(self, cfg: ScalingConfig) -> None:
        if self._cfg is not None and self._planner is not None and cfg.target == self._cfg.target:
            if cfg != self._cfg:
                self._planner.reconfigure(cfg)
                if cfg.forecast != self._cfg.forecast:
                    self._history, self._history_at = None, -math.inf
            self._cfg = cfg
            return
        if self._planner is not None:
            self._give_up_drain()
        self._cfg = cfg
        self._planner = Planner(cfg, ordered_removal=cfg.target.kind != "Deployment")
        self._actuator = self._actuator_for(cfg.target)
        self._history, self._history_at = None, -math.inf
        self._prev = None
        log.info(
            "scaler: managing %s (%s)", self._actuator.description, "dry run" if cfg.dry_run else "enabled"
        )

    def _demand(self, mono: float, sample: PoolSample) -> tuple[float, float | None] | None:
        """(requests/s, tokens/s or None) since the previous sample; None for the first."""
        prev, self._prev = self._prev, (mono, sample)
        if prev is None or mono <= prev[0]:
            return None
        elapsed = mono - prev[0]
        before = prev[1].sent
        grown = sum(max(0.0, v - before[k]) for k, v in sample.sent.items() if k in before)
        was, now = prev[1].tokens, sample.tokens
        # a counter that went down (a --workers worker replaced before its totals were merged) reads as 0
        tokens = None if was is None or now is None else max(0.0, now - was) / elapsed
        return grown / elapsed, tokens

    def _pod_views(self, sample: PoolSample, *, ordered: bool) -> tuple[PodView, ...]:
        mem = self._pods
        return tuple(
            PodView(
                name=p.name,
                inflight=p.inflight,
                waiting=p.waiting,
                running=p.running,
                adapters=p.adapters,
                waiting_adapters=p.waiting_adapters,
                last_busy=mem.last_busy.get(p.name, -math.inf),
                recent_load=mem.recent.get(p.name, 0.0),
                joined=mem.joined.get(p.name, 0.0),
                ordinal=ordinal_of(p.name) if ordered else None,
                draining=p.name in self._draining,
                cache_value=p.cache_value,
            )
            for p in sample.pods
        )

    def _forecast(self, cfg: ScalingConfig, now: float) -> tuple[Forecast | None, Forecast | None]:
        """The request and the token forecast (each None without usable history)."""
        if cfg.forecast is None or self._history_for is None:
            return None, None
        horizon = cfg.warmup + 2 * cfg.interval
        due = now - self._history_at >= cfg.forecast.refresh
        if due and (self._history_task is None or self._history_task.done()):
            source = self._history_for(cfg)
            if source is not None:
                self._history_task = asyncio.create_task(
                    self._refresh(source, now, horizon), name="scaler:history"
                )
        history = self._history
        if history is None:
            return None, None
        weeks, trend, lookback = cfg.forecast.weeks, cfg.forecast.trend, cfg.forecast.sample_window
        requests = forecast(history.requests, now, horizon, weeks=weeks, trend=trend, lookback_s=lookback)
        tokens = None
        if history.tokens is not None and cfg.replica_capacity.tokens_per_second is not None:
            tokens = forecast(history.tokens, now, horizon, weeks=weeks, trend=trend, lookback_s=lookback)
        return requests, tokens

    async def _refresh(self, source: HistorySource, now: float, horizon: float) -> None:
        try:
            history = await source.fetch(now, horizon_s=horizon)
        except PickerError as exc:
            self._history_at = now  # retry at the next refresh, not every tick
            self._history_error = exc.message
            self._failed("history", exc)
            return
        self._ok("history")
        self._history, self._history_at, self._history_error = history, now, ""

    # ------------------------------------------------------------------------------------ acting
    async def _carry_out(self, d: Decision, workload: WorkloadView, cfg: ScalingConfig) -> None:
        if d.dry_run or d.action is Action.HOLD:
            return
        actuator = self._actuator
        assert actuator is not None
        hpa = workload.hpa
        hi = d.bounds.hi if d.bounds is not None else cfg.max_replicas
        try:
            if d.action in {Action.SCALE_UP, Action.LOWER_FLOOR}:
                await self._set_count(actuator, hpa, d.desired, hi)
            elif d.action is Action.DRAIN and d.victim:
                self._set_draining(self._draining | {d.victim})
                self._drain_started[d.victim] = self._clock()
            elif d.action is Action.CANCEL_DRAIN and d.victim:
                await self._undrain(d.victim)
            elif d.action is Action.REMOVE and d.victim:
                started = self._drain_started.pop(d.victim, None)
                if started is not None and self._observer is not None:
                    self._observer.drained(self._clock() - started)
                await actuator.mark_victim(d.victim)
                await self._set_count(actuator, hpa, d.desired, hi)
            elif d.action in {Action.VERIFIED, Action.VERIFY_FAILED} and d.victim:
                await self._undrain(d.victim)
        except PickerError as exc:
            self._failed(str(d.action), exc)
            if d.action is Action.REMOVE and d.victim:
                self._give_up_drain()
                with contextlib.suppress(PickerError):
                    await actuator.unmark_victim(d.victim)
            return
        self._ok(str(d.action))

    @staticmethod
    async def _set_count(actuator: ReplicaActuator, hpa: Any, desired: int, hi: int) -> None:
        if hpa is None:
            await actuator.set_replicas(desired)
        else:
            floor = max(1, desired)
            await actuator.set_hpa_bounds(hpa.name, floor, max(hi, floor))

    def _set_draining(self, pods: frozenset[str]) -> None:
        self._draining = pods
        self._marker.set_draining(pods)

    async def _undrain(self, pod: str) -> None:
        self._drain_started.pop(pod, None)
        if pod in self._draining:
            self._set_draining(self._draining - {pod})
        if self._actuator is not None:
            await self._actuator.unmark_victim(pod)

    def _give_up_drain(self) -> None:
        """Forget the planner's drain or removal and put the pod back into rotation."""
        victim = self._planner.abort() if self._planner is not None else None
        if self._draining:
            self._set_draining(frozenset())
        self._drain_started.clear()
        if victim is not None:
            log.info("scaler: drain of %s given up", victim)

    async def _stand_down(self, why: str) -> None:
        if self._observer is not None:
            self._observer.inactive()
        if self._planner is None:
            return
        victim = self._planner.abort()
        self._give_up_drain()
        if victim is not None and self._actuator is not None:
            with contextlib.suppress(PickerError):
                await self._actuator.unmark_victim(victim)
        log.info("scaler: standing down (%s)", why)
        self._planner = None
        self._cfg = None
        self._prev = None
        self._last_key = None

    # ------------------------------------------------------------------------------------ reporting
    def _record(
        self,
        d: Decision,
        obs: Observation,
        workload: WorkloadView,
        forecasts: tuple[Forecast | None, Forecast | None],
        cfg: ScalingConfig,
    ) -> None:
        fc, fc_tokens = forecasts
        capacity = self._planner.capacity if self._planner is not None else None
        bounds = d.bounds
        hi = bounds.hi if bounds is not None else cfg.max_replicas
        # against the schedule's maximum in force (not read ahead): what the pool would cost without us
        raw_max = self._planner.schedule.raw(obs.now)[1] if self._planner is not None else hi
        saved = max(0, raw_max - workload.replicas) * cfg.gpus_per_replica * cfg.interval / 3600
        self._saved_gpu_hours += saved
        if self._observer is not None:
            self._observer.tick(
                TickReport(
                    current=workload.replicas,
                    desired=d.desired,
                    ready=workload.ready,
                    max_replicas=hi,
                    demand_rps=obs.demand_rps,
                    forecast_rps=obs.forecast_rps,
                    capacity_rps=capacity.rps if capacity is not None else math.nan,
                    demand_tps=obs.demand_tps,
                    forecast_tps=obs.forecast_tps,
                    capacity_tps=capacity.tps if capacity is not None else None,
                    saturated=obs.saturated,
                    held=obs.held,
                    dry_run=cfg.dry_run,
                    hpa=workload.hpa is not None,
                    gpu_hours_saved=saved,
                )
            )
        self._last = {
            "at": obs.now,
            "replicas": workload.replicas,
            "ready": workload.ready,
            "hpa": None
            if workload.hpa is None
            else {
                "name": workload.hpa.name,
                "min": workload.hpa.min_replicas,
                "max": workload.hpa.max_replicas,
            },
            "demandRps": round(obs.demand_rps, 4),
            "demandTps": None if obs.demand_tps is None else round(obs.demand_tps, 2),
            "queue": obs.queue,
            "saturated": obs.saturated,
            "stale": obs.stale,
            "held": obs.held,
            "bounds": None
            if bounds is None
            else {"min": bounds.lo, "max": bounds.hi, "window": bounds.window, "raisedAhead": bounds.ahead},
            "forecast": None
            if fc is None
            else {"rps": fc.rps, "baseRps": fc.base_rps, "trend": fc.trend, "weeklyPeaks": list(fc.peaks)},
            "tokenForecast": None
            if fc_tokens is None
            else {
                "tps": fc_tokens.rps,
                "baseTps": fc_tokens.base_rps,
                "trend": fc_tokens.trend,
                "weeklyPeaks": list(fc_tokens.peaks),
            },
            "forecastError": self._history_error or None,
            "desired": d.desired,
            "gpuHoursSavedSinceStart": round(self._saved_gpu_hours, 3),
        }
        if not d.changes or d.key() == self._last_key:
            return
        self._last_key = d.key()
        self.decisions.append(d)
        if self._observer is not None:
            self._observer.decided(d)
        level = logging.WARNING if d.action is Action.VERIFY_FAILED else logging.INFO
        log.log(level, "scaler%s: %s", " (dry run)" if d.dry_run else "", d.message)
        type_, reason = EVENT_REASONS.get(d.action, ("Normal", "Scaling"))
        if self._actuator is not None:
            task = asyncio.get_running_loop().create_task(
                self._actuator.post_event(
                    type_=type_,
                    reason=("DryRun" + reason) if d.dry_run else reason,
                    message=("dry run: would " if d.dry_run else "") + d.message,
                ),
                name="scaler:event",
            )
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _failed(self, operation: str, exc: PickerError) -> None:
        if self._observer is not None:
            self._observer.failed(operation)
        if operation not in self._failing:
            self._failing.add(operation)
            log.warning("scaler: %s failed (%s): %s", operation, exc.code, exc.message)

    def _ok(self, operation: str) -> None:
        if operation in self._failing:
            self._failing.discard(operation)
            log.info("scaler: %s works again", operation)

    def debug(self) -> dict[str, Any]:
        """``/debug/scaler``: configuration, the last tick, the plan (drain, ranking), recent decisions."""
        cfg = self._cfg
        return {
            "enabled": cfg is not None,
            "leader": self._is_leader(),
            "target": None if self._actuator is None or cfg is None else self._actuator.description,
            "dryRun": None if cfg is None else cfg.dry_run,
            "last": self._last,
            "plan": None if self._planner is None else self._planner.to_dict(),
            "draining": sorted(self._draining),
            "decisions": [d.to_dict() for d in reversed(self.decisions)],
            "victimRule": VICTIM_RULE,
        }
