"""The tenants feature of one process: applies each config's ``tenants`` section, owns the backend in use.

Built by the composition root with the metrics registry; constructing it opens nothing. Every applied
config calls :meth:`TenantService.apply`: no section → tenancy off (the director skips it); a section →
the compiled policy, the estimator's ratios and tokenizers, and the backend it names (a changed Redis
section makes a new client; the memory backend's accounts survive reloads). :meth:`run` (a task of the
app's TaskGroup) keeps the Redis backend's writer and probe running and idle accounts swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry

from picker.config.tenants import RedisConfig, TenantsConfig
from picker.errors import ConfigError
from picker.labels import MAX_LABEL_LENGTH, MAX_LABEL_VALUES
from picker.tenants.backend import AccountView, MemoryBackend
from picker.tenants.estimate import TokenEstimator, Tokenizer, load_tokenizer
from picker.tenants.ledger import COST, LIMIT_NAMES, METERS, Vector, now_wall, window_end
from picker.tenants.meter import Tenancy
from picker.tenants.metrics import TenantMetrics
from picker.tenants.policy import NANO, TenantsPolicy
from picker.tenants.remote import SupervisorBackend

if TYPE_CHECKING:
    from picker.tenants.redis_backend import RedisBackend

__all__ = ["TenantService"]

log = logging.getLogger(__name__)

#: idle accounts of the memory backend are dropped this often
SWEEP_S: Final = 60.0


class TenantService:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = now_wall,
        monotonic: Callable[[], float] = time.monotonic,
        shared: SupervisorBackend | None = None,
        label_values: int = MAX_LABEL_VALUES,
        label_length: int = MAX_LABEL_LENGTH,
        redis_scope: str = "",
    ) -> None:
        """``shared``: a ``--workers`` worker's link to the supervisor's budget, used instead of a memory
        backend of its own (:mod:`picker.tenants.remote`). ``label_values`` / ``label_length``: the bound
        of the ``tenant`` metric label (``--metrics-label-max-*``, :mod:`picker.labels`). ``redis_scope``:
        the pool's name when the process serves several pools (:meth:`redis_config`)."""
        self._clock = clock
        self._redis_scope = redis_scope
        self._monotonic = monotonic
        self._shared = shared
        self.metrics = TenantMetrics(
            registry, self.accounts, label_values=label_values, label_length=label_length
        )
        self.memory = MemoryBackend(self.metrics, clock=clock)
        self.redis: RedisBackend | None = None
        self._redis_cfg: RedisConfig | None = None
        self.tenancy = Tenancy(self.memory, estimator=TokenEstimator(), clock=clock)
        self.tenancy.on_rejected = shared.rejected if shared is not None else self.metrics.rejected
        self._tokenizers: dict[str, tuple[str, Tokenizer]] = {}
        #: path → tokenizer loaded by :meth:`prepare` for a document not applied yet
        self._prepared: dict[str, Tokenizer] = {}
        self._changed = asyncio.Event()
        self._retired: list[RedisBackend] = []
        #: ``--workers`` supervisor: whether each worker's Redis backend answers (:meth:`merge_worker`)
        self._workers_up: dict[int, bool] = {}
        #: ``--workers`` supervisor, Redis: each worker's leases as it last reported them, and when
        self._worker_leases: dict[int, tuple[float, dict[str, Any]]] = {}
        #: ``--workers`` supervisor, memory: what each worker's running requests hold (:meth:`show_workers`)
        self._worker_holds: Callable[[], Mapping[str, Mapping[int, tuple[int, Vector]]]] | None = None

    @property
    def active(self) -> bool:
        return self.tenancy.active

    def prepare(self, cfg: TenantsConfig | None) -> None:
        """Load the tokenizers ``cfg`` names that are not loaded yet, so that a document naming a file
        that is not a tokenizer is rejected before it becomes active (a ``ConfigStore`` check; blocking
        I/O, run off the event loop on reload). :meth:`apply` then takes them from here."""
        if cfg is None:
            return
        for t in cfg.estimation.tokenizers:
            cached = self._tokenizers.get(t.model)
            if (cached is None or cached[0] != t.path) and t.path not in self._prepared:
                self._prepared[t.path] = load_tokenizer(t.path)

    def apply(self, cfg: TenantsConfig | None) -> None:
        """Apply a config's ``tenants`` section (None: off). Raises ConfigError for a tokenizer that cannot
        be loaded; the previous state is then kept."""
        if cfg is None:
            self.tenancy.apply(None)
            return
        tokenizers: dict[str, tuple[str, Tokenizer]] = {}
        for t in cfg.estimation.tokenizers:
            cached = self._tokenizers.get(t.model)
            tokenizers[t.model] = (
                cached
                if cached is not None and cached[0] == t.path
                else (
                    t.path,
                    self._prepared[t.path] if t.path in self._prepared else load_tokenizer(t.path),
                )
            )
        self._tokenizers = tokenizers
        self._prepared.clear()
        est = cfg.estimation
        self.tenancy.estimator.reconfigure(
            chars_per_token=est.chars_per_token,
            models=est.models,
            tokenizers={m: tok for m, (_p, tok) in tokenizers.items()},
            learn=est.learn,
        )
        self.metrics.price_models(p.model for p in cfg.prices)
        self.metrics.pin_tenants([cfg.anonymous, *(t.id for t in cfg.tenants)])
        if cfg.backend.type == "redis":
            assert cfg.backend.redis is not None
            redis_cfg = self.redis_config(cfg.backend.redis)
            if redis_cfg != self._redis_cfg or self.redis is None:
                if self.redis is not None:
                    self._retired.append(self.redis)
                self._workers_up.clear()
                self._worker_leases.clear()
                from picker.tenants.redis_backend import RedisBackend  # the client: only when configured

                self.redis = RedisBackend(redis_cfg, sink=self.metrics, clock=self._clock)
                self._redis_cfg = redis_cfg
                self._changed.set()
            self.tenancy.backend = self.redis
        else:
            if self.redis is not None:
                self._retired.append(self.redis)
                self.redis, self._redis_cfg = None, None
                self._workers_up.clear()
                self._worker_leases.clear()
                self._changed.set()
            self.tenancy.backend = self._shared if self._shared is not None else self.memory
        self.tenancy.apply(TenantsPolicy.from_config(cfg))

    def redis_config(self, cfg: RedisConfig) -> RedisConfig:
        """The Redis section as used: with several pools in one process (``redis_scope``, the pool's name)
        a ``keyPrefix`` the document leaves at its default gets the pool's name (``picker:tenants:<pool>:``),
        so each pool's budgets are its own in Redis as they are in memory, and the replicas serving the
        pool share them; a ``keyPrefix`` the document writes is used as written (the same one in two
        pools' documents makes their tenants' budgets one)."""
        if not self._redis_scope or "key_prefix" in cfg.model_fields_set:
            return cfg
        return cfg.model_copy(update={"key_prefix": f"{cfg.key_prefix}{self._redis_scope}:"})

    def apply_logged(self, cfg: TenantsConfig | None) -> None:
        """:meth:`apply` from a config listener: a failure is one error line, the last state kept."""
        try:
            self.apply(cfg)
        except ConfigError as exc:
            log.error("tenants section not applied: %s", exc.message)

    def show_workers(self, holdings: Callable[[], Mapping[str, Mapping[int, tuple[int, Vector]]]]) -> None:
        """``--workers`` supervisor: ``/debug/tenants`` shows, next to the memory backend's shared meters,
        what each worker's running requests hold (``picker.tenants.remote.BudgetHost.holdings``)."""
        self._worker_holds = holdings

    def describe(self) -> dict[str, Any]:
        """``/debug/tenants``: per tenant, every meter's limit, used, reserved, remaining and reset time;
        this process's lease of it (Redis), and under ``--workers`` each worker's holding (``workers``)."""
        policy = self.tenancy.policy
        if policy is None:
            return {"enabled": False, "tenants": []}
        now = self._clock()
        redis = self.redis if self.tenancy.backend is self.redis else None
        leases = redis.lease_views() if redis is not None else {}
        holds = self._worker_holds() if redis is None and self._worker_holds is not None else {}
        worker_leases = sorted(self._worker_leases.items()) if redis is not None else []
        out = []
        for view in sorted(self.accounts(), key=lambda v: v.tenant):
            meters = {}
            for i, name in enumerate(LIMIT_NAMES):
                limit = view.limits[i] if view.limits is not None else None
                scale = _scale(i)
                end = window_end(i, view.windows[i])
                meters[name] = {
                    "limit": None if limit is None else limit / scale,
                    "used": view.used[i] / scale,
                    "reserved": view.reserved[i] / scale,
                    "remaining": None
                    if limit is None
                    else max(0, limit - view.used[i] - view.reserved[i]) / scale,
                    "resetsInSeconds": None if end == float("inf") else round(end - now, 3),
                }
            row: dict[str, Any] = {
                "tenant": view.tenant,
                "limited": view.limits is not None,
                "meters": meters,
            }
            if view.tenant in leases:
                row["lease"] = _lease_in_units(leases.pop(view.tenant))
            if redis is None and self._worker_holds is not None:
                row["workers"] = [
                    {
                        "worker": worker,
                        "requests": count,
                        "reserved": {name: held[i] / _scale(i) for i, name in enumerate(LIMIT_NAMES)},
                    }
                    for worker, (count, held) in sorted(holds.get(view.tenant, {}).items())
                ]
            elif worker_leases:
                row["workers"] = [
                    {
                        "worker": worker,
                        "lease": _lease_in_units(part["leases"][view.tenant]),
                        "reportedSecondsAgo": round(max(0.0, self._monotonic() - at), 3),
                    }
                    for worker, (at, part) in worker_leases
                    if view.tenant in part["leases"]
                ]
            out.append(row)
        doc: dict[str, Any] = {
            "enabled": True,
            "backend": "redis" if redis is not None else "memory",
            "backendUp": redis.up and all(self._workers_up.values()) if redis is not None else True,
            "currency": policy.currency,
            "trackedIds": self.tenancy.ids.tracked(),
            "tenants": out,
        }
        if redis is not None and redis.lease_config is not None:
            cfg = redis.lease_config
            by_worker = [
                {
                    "worker": worker,
                    "leases": len(part["leases"]),
                    "admittedLocally": part["admittedLocally"],
                    "admittedAfterRefill": part["admittedAfterRefill"],
                    "askedRedis": part["askedRedis"],
                }
                for worker, (_at, part) in worker_leases
            ]
            doc["leases"] = {
                "fraction": cfg.fraction,
                "ttlSeconds": cfg.ttl,
                "reportSeconds": cfg.report,
                "idleSeconds": cfg.idle,
                "admittedLocally": redis.local_admissions + sum(w["admittedLocally"] for w in by_worker),
                "admittedAfterRefill": redis.refill_admissions
                + sum(w["admittedAfterRefill"] for w in by_worker),
                "askedRedis": redis.remote_admissions + sum(w["askedRedis"] for w in by_worker),
            }
            if by_worker:
                doc["leases"]["workers"] = by_worker
        return doc

    # ------------------------------------------------------------------------ --workers and Redis
    # A worker's Redis backend counts into the worker's TenantMetrics, which no /metrics serves; the
    # supervisor's is the one. What each worker counted is a per-process counter: passed on as increments
    # and added up. The meters live once in Redis: each reply shows a tenant's whole state, so the supervisor
    # keeps the newest reply any worker saw and adds nothing up (two workers must not double a gauge).

    def export(self) -> list[Any] | None:
        """A worker's message for the supervisor's :meth:`merge_worker` (about once a second), or None
        when there is nothing to pass on: ``[usage rows, failures, backend up, changed meters, leases]``;
        ``leases`` (Redis): ``{"leases": {tenant: Lease.view}, "admittedLocally": n,
        "admittedAfterRefill": n, "askedRedis": n}`` (:class:`RedisBackend`'s counters),
        every lease this worker holds (one per tenant active within ``lease.idle``), or None."""
        rows, failures = self.metrics.take_counts()
        redis = self.redis if self.tenancy.backend is self.redis else None
        if redis is None:
            return [rows, failures, True, [], None] if rows or failures else None
        leases = {
            "leases": redis.lease_views(),
            "admittedLocally": redis.local_admissions,
            "admittedAfterRefill": redis.refill_admissions,
            "askedRedis": redis.remote_admissions,
        }
        return [rows, failures, redis.up, redis.take_changed(), leases]

    def merge_worker(self, worker: int, export: list[Any]) -> None:
        """The supervisor's side of :meth:`export`: counts added, the backend up only while every worker
        says so, the newest meters kept, each worker's leases kept for ``/debug/tenants``."""
        rows, failures, up, views, leases = export
        self.metrics.add_counts(rows, failures)
        if self.redis is not None and self.tenancy.backend is self.redis:  # else: sent before a reload
            self._workers_up[worker] = bool(up)
            self.metrics.backend_up(up=all(self._workers_up.values()))
            self.redis.observe(views)
            if leases is not None:
                self._worker_leases[worker] = (self._monotonic(), leases)

    def retire_worker(self, worker: int) -> None:
        """The worker is gone: its backend state no longer counts (its counts stay added), its leases are
        no longer shown (Redis gives them back after ``lease.ttl``; until then the shared meters count them as
        reserved)."""
        self._worker_leases.pop(worker, None)
        if self._workers_up.pop(worker, None) is not None:
            self.metrics.backend_up(up=all(self._workers_up.values()))

    def accounts(self) -> Iterator[AccountView]:
        backend = self.tenancy.backend
        if backend is self.redis and self.redis is not None:
            return self.redis.accounts()
        return self.memory.accounts()

    async def run(self) -> None:
        """Keep the current Redis backend's writer running (restarted when the section changes), close
        retired clients, sweep idle memory accounts. Until cancelled."""
        task: asyncio.Task[None] | None = None
        current: RedisBackend | None = None
        try:
            while True:
                if current is not self.redis:
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                    current = self.redis
                    task = (
                        asyncio.create_task(current.run(), name="tenants-redis")
                        if current is not None
                        else None
                    )
                while self._retired:
                    await self._retired.pop().close()
                if task is not None and task.done():
                    task.result()  # a crashed writer takes the process down loudly
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SWEEP_S):
                        await self._changed.wait()
                self.memory.sweep()
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.redis is not None:
                await self.redis.close()


def _scale(i: int) -> int:
    """Meter ``i``'s integer units per displayed unit (cost is kept in nano-units)."""
    return NANO if METERS[i] == COST else 1


def _lease_in_units(view: dict[str, Any]) -> dict[str, Any]:
    """A :meth:`picker.tenants.lease.Lease.view` with its cost meters in currency units, as the meters."""
    meters = {
        name: {k: v / _scale(LIMIT_NAMES.index(name)) for k, v in amounts.items()}
        if METERS[LIMIT_NAMES.index(name)] == COST
        else amounts
        for name, amounts in view["meters"].items()
    }
    return {**view, "meters": meters}
