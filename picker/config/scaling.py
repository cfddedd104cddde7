"""The ``scaling`` section of our ``PickerConfig`` document: the off-peak scale-down (and back up) scheduler.

Validated like the rest of the document (strict, camelCase, frozen), so a bad section rejects the whole
reload with a reason and the last good configuration stays. Every field says its unit, default and why::

    scaling:
      target: {kind: Deployment, name: vllm-llama3}     # or StatefulSet, LeaderWorkerSet
      dryRun: true                                      # decide, log, count, post Events; change nothing
      minReplicas: 1                                    # outside every schedule window
      maxReplicas: 16
      replicaCapacity: {requestsPerSecond: 12, learn: false}
      headroom: 0.2
      warmup: 180s
      schedules:
      - {name: weeknights, start: "0 22 * * 1-5", end: "0 7 * * 2-6", timeZone: Europe/Berlin,
         minReplicas: 1, maxReplicas: 2}
      forecast: {prometheusUrl: "http://prometheus.monitoring:9090", weeks: 2}
      scaleToZero: {holdTimeout: 60s}

The scheduler itself (``picker.scaler``) reads this model; nothing here does I/O.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from typing import Any, Literal

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from picker.config.base import StrictModel
from scoring.durations import parse_duration

#: workload kinds whose replica count the scaler can change through the ``scale`` subresource
TARGET_KINDS = ("Deployment", "StatefulSet", "LeaderWorkerSet")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: our own request counter, summed over every EPP replica (a standby routes nothing, so it adds nothing)
DEFAULT_FORECAST_QUERY = "sum(rate(inference_objective_request_total[5m]))"
_PROMPT_TOKENS = "sum(rate(inference_objective_input_tokens_sum[5m]))"
_COMPLETION_TOKENS = "sum(rate(inference_objective_output_tokens_sum[5m]))"
#: our own token counters (the ``_sum`` of the prompt and completion token histograms, fed by the model
#: servers' ``usage``), summed over every EPP replica. Summed per name first: ``rate()`` drops the name, so
#: one selector over both would hold two series with the same labels. The ``or`` keeps a pool that never
#: reported completion tokens (embeddings) or prompt tokens on one series, and a gap in the data a gap.
DEFAULT_TOKEN_QUERY = f"({_PROMPT_TOKENS} + {_COMPLETION_TOKENS}) or {_PROMPT_TOKENS} or {_COMPLETION_TOKENS}"


#: the longest duration of any field unless it says otherwise (every delay and period here is minutes)
_DAY = 86_400.0


def _seconds(v: object, *, minimum: float = 0.0, maximum: float = _DAY, what: str = "duration") -> float:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"must be a {what} such as 30s or 5m, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
    seconds = parse_duration(v)
    if not math.isfinite(seconds) or seconds < minimum:
        raise ValueError(f"must be at least {minimum:g}s")
    if seconds > maximum:
        raise ValueError(f"must be at most {maximum:g}s")
    return seconds


class ScaleTarget(StrictModel):
    """The model-server workload behind the pool; changed only through its ``scale`` subresource."""

    #: ``Deployment``, ``StatefulSet`` or ``LeaderWorkerSet`` (the latter only when its CRD is installed)
    kind: Literal["Deployment", "StatefulSet", "LeaderWorkerSet"]
    #: object name
    name: str = Field(min_length=1, max_length=253)
    #: namespace; empty = the pool's namespace (the EPP's RBAC is namespaced, so it usually must be)
    namespace: str = ""

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid object name (lowercase DNS subdomain)")
        return v


class ReplicaCapacity(StrictModel):
    """How much demand one replica serves at the SLO: the divisor of the sizing rule."""

    #: requests per second one replica serves while meeting the latency SLO. Measure it once (a load test at
    #: the SLO, or ``benchmarks/bench_scaling.py``'s calibration for a simulated server); with ``learn`` it
    #: is only the starting value.
    requests_per_second: float = Field(gt=0, le=1e6)
    #: tokens per second (prompt + completion, as the model servers report them in ``usage``) one replica
    #: serves while meeting the SLO. Set, a replica's worth of demand is whichever budget binds:
    #: max(requests/s / requestsPerSecond, tokens/s / tokensPerSecond), so a shift toward longer prompts or
    #: answers adds replicas that a request count would miss. Unset (the default): sizing on requests only.
    #: Measure it with the same load test (the token rate at the SLO); ``learn`` adapts it like the request
    #: figure.
    tokens_per_second: float | None = Field(default=None, gt=0, le=1e9)
    #: adapt the capacity to observed saturation: each tick where the pool is saturated below the estimate
    #: pulls it toward demand / ready replicas (with tokens: the figure that binds), each tick served
    #: unsaturated above it pushes it up; at most a factor 4 away from the configured value either way
    #: (see ``picker/scaler/README.md``)
    learn: bool = False


class ScaleUpConfig(StrictModel):
    #: replicas that may be added within any sliding hour (a runaway bound, not a brake: up is fast)
    max_replicas_per_hour: int = Field(default=100, ge=1, le=100_000)
    #: replicas added at once when the pool saturates although demand / capacity says it is big enough
    saturation_step: int = Field(default=1, ge=1, le=1000)
    #: a queue (and what will pile up while new replicas warm up) is sized to be worked off within this
    #: long; shorter adds more replicas after a jump, for the minutes until the stabilization window ends
    backlog_clear: float = 30.0

    @field_validator("backlog_clear", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _seconds(v, minimum=1.0, maximum=3600.0)


class ScaleDownConfig(StrictModel):
    #: demand must have stayed low enough for this long (the largest need inside the window decides)
    stabilization: float = 15 * 60.0
    #: minimum gap between two scale-downs (one replica at a time, never a cliff)
    cooldown: float = 120.0
    #: longest wait for the victim's streams to end before it is removed anyway
    drain_timeout: float = 300.0
    #: longest wait for Kubernetes to remove the victim after the replica count was lowered
    verify_timeout: float = 180.0
    #: replicas that may be removed within any sliding hour
    max_replicas_per_hour: int = Field(default=10, ge=1, le=100_000)

    @field_validator("stabilization", "cooldown", "drain_timeout", "verify_timeout", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _seconds(v)


class ScheduleWindow(StrictModel):
    """A recurring window (cron, in a time zone) with its own replica bounds, like KEDA's cron scaler.

    Active from each ``start`` firing until the next ``end`` firing (or for ``duration``). When windows
    overlap, the first one listed wins.
    """

    name: str = Field(min_length=1, max_length=63)
    #: five-field cron expression of the window's start, e.g. ``0 22 * * 1-5`` (22:00 Monday to Friday)
    start: str
    #: cron expression of its end; give this or ``duration``
    end: str = ""
    #: the window's length (e.g. ``9h``) instead of ``end``
    duration: float | None = None
    #: IANA time zone the expressions are read in (default UTC); daylight-saving changes follow the zone
    time_zone: str = "UTC"
    min_replicas: int = Field(ge=0, le=100_000)
    max_replicas: int = Field(ge=0, le=100_000)

    @field_validator("start", "end")
    @classmethod
    def _cron(cls, v: str) -> str:
        if v and (len(v.split()) != 5 or not croniter.is_valid(v)):
            raise ValueError(f"{v!r} is not a five-field cron expression (minute hour day month weekday)")
        return v

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _seconds(v, minimum=60.0, maximum=7 * _DAY)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)") from exc
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleWindow:
        if bool(self.end) == (self.duration is not None):
            raise ValueError(f"schedule {self.name!r}: give exactly one of end and duration")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"schedule {self.name!r}: minReplicas > maxReplicas")
        return self


class ForecastConfig(StrictModel):
    """Demand history from Prometheus: the same time of week over the last ``weeks`` weeks."""

    #: Prometheus base URL (http or https)
    prometheus_url: str = Field(min_length=1)
    #: PromQL returning the pool's demand in requests per second (several series are summed). The default
    #: sums our own request counter over every EPP replica; add a ``namespace``/``job`` matcher when one
    #: Prometheus sees several pools.
    query: str = Field(default=DEFAULT_FORECAST_QUERY, min_length=1, max_length=4096)
    #: PromQL returning the pool's demand in tokens per second (prompt + completion); read only when
    #: ``replicaCapacity.tokensPerSecond`` is set. The default sums our own token counters over every EPP
    #: replica, the same counters the live token rate comes from.
    token_query: str = Field(default=DEFAULT_TOKEN_QUERY, min_length=1, max_length=4096)
    #: weeks of history averaged (1..8)
    weeks: int = Field(default=2, ge=1, le=8)
    #: resolution of the history read (Prometheus ``step``)
    step: float = 300.0
    #: the window each history sample averages over, ending at its timestamp: the range of the queries'
    #: ``rate()`` (5m in the defaults; 0 for an instantaneous gauge). The forecast reads the samples up to
    #: this long after the horizon, which is where last week's demand of the horizon is recorded; without it
    #: every rise of last week is seen this late (``picker/scaler/README.md``, Forecast)
    sample_window: float = 300.0
    #: how often the history is read again
    refresh: float = 600.0
    #: scale last weeks' values by how today's last hour compares with theirs (growth, holidays), within
    #: 0.5x..2x. Off by default: on the two-week replay (``benchmarks/bench_scaling.py``) the correction
    #: mostly followed dips and never bought SLO attainment; turn it on for steadily growing traffic.
    trend: bool = False
    #: timeout of one Prometheus query
    timeout: float = 10.0

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("step", "refresh", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _seconds(v, minimum=1.0)

    @field_validator("sample_window", mode="before")
    @classmethod
    def _window(cls, v: object) -> float:
        return _seconds(v, maximum=6 * 3600.0)

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: object) -> float:
        return _seconds(v, minimum=1.0, maximum=300.0)


class ScaleToZeroConfig(StrictModel):
    """Requests that arrive while the pool has no replica are held, not answered 503."""

    #: longest a request is held waiting for the first replica (then 503 as usual); the proxy's ext_proc
    #: message timer is extended with ``override_message_timeout`` (this + 5 s) meanwhile, so Envoy's
    #: ``max_message_timeout`` must be at least that (``picker.routing.hold``)
    hold_timeout: float = 120.0
    #: requests held at once per EPP process; more get 503 at once (memory bound)
    max_held_requests: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("hold_timeout", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        seconds = _seconds(v, minimum=1.0)
        if seconds > 3600:
            raise ValueError("must be at most 1h")
        return seconds


class ScalingConfig(StrictModel):
    """The whole ``scaling`` section. Present = the scheduler runs (on the leader); ``dryRun`` by default."""

    target: ScaleTarget
    #: decide, log, export metrics and post Events, but never change the workload, an HPA or a pod
    dry_run: bool = True
    #: bounds outside every schedule window. 0 allows scale to zero (requests are then held, see
    #: ``scaleToZero``)
    min_replicas: int = Field(default=1, ge=0, le=100_000)
    max_replicas: int = Field(ge=1, le=100_000)
    replica_capacity: ReplicaCapacity
    #: spare capacity on top of demand / capacity (0.2 = 20 %): absorbs bursts while new replicas warm up
    headroom: float = Field(default=0.2, ge=0.0, le=10.0)
    #: time from adding a replica to it serving (model load); the forecast and the schedule are read this far
    #: ahead, so capacity is back before a ramp
    warmup: float = 180.0
    #: decision period
    interval: float = 15.0
    #: GPUs per replica (for the GPU-hours saved estimate only)
    gpus_per_replica: float = Field(default=1.0, gt=0, le=1024)
    scale_up: ScaleUpConfig = ScaleUpConfig()
    scale_down: ScaleDownConfig = ScaleDownConfig()
    schedules: tuple[ScheduleWindow, ...] = ()
    forecast: ForecastConfig | None = None
    scale_to_zero: ScaleToZeroConfig = ScaleToZeroConfig()

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup(cls, v: object) -> float:
        return _seconds(v)

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v: object) -> float:
        seconds = _seconds(v, minimum=1.0)
        if seconds > 600:
            raise ValueError("must be at most 10m")
        return seconds

    @model_validator(mode="after")
    def _consistent(self) -> ScalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas > maxReplicas")
        names = [w.name for w in self.schedules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"schedules: duplicate name(s) {', '.join(duplicates)}")
        return self

    @property
    def allows_zero(self) -> bool:
        """True when some bound allows zero replicas (requests may then be held)."""
        return self.min_replicas == 0 or any(w.min_replicas == 0 for w in self.schedules)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")
