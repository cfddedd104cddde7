"""What the planner reads and what it answers: one tick's observation, the decision, the drain state.

Plain immutable data (the drain and removal records are the planner's own, mutable by it alone), so a
decision can be logged, counted, posted as an Event and shown in ``/debug/scaler`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from picker.scaler.schedule import Bounds
from picker.scaler.victim import PodView


class Action(StrEnum):
    HOLD = "hold"
    SCALE_UP = "scale-up"
    DRAIN = "drain"
    CANCEL_DRAIN = "cancel-drain"
    REMOVE = "remove"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify-failed"
    #: lower an HPA's ``minReplicas`` without removing a pod (the HPA holds more replicas than our floor)
    LOWER_FLOOR = "lower-floor"


@dataclass(frozen=True, slots=True)
class Observation:
    """What the controller saw at one tick."""

    now: float  #: wall clock, epoch seconds
    replicas: int  #: the workload's replica count (spec)
    ready: int  #: replicas ready
    demand_rps: float  #: requests per second routed to the pool over the last tick(s)
    pods: tuple[PodView, ...] = ()  #: the pool's members (datastore view)
    saturated: bool = False  #: the saturation detector's verdict on the pool
    stale: bool = False  #: some member's metrics are older than the staleness threshold
    held: int = 0  #: requests held waiting for a first replica
    queue: float = 0.0  #: requests waiting in the model servers' queues (sum over the pool)
    forecast_rps: float | None = None  #: forecast peak over the next warm-up (None: no forecast)
    #: tokens per second (prompt + completion, from the model servers' usage) over the last tick(s); None:
    #: not measured (the sizing then uses requests only)
    demand_tps: float | None = None
    #: forecast peak token rate over the next warm-up (None: no token forecast)
    forecast_tps: float | None = None
    #: non-terminating pods of the workload; listed by the controller only while a removal is verified
    existing: frozenset[str] | None = None
    #: an HPA targets the workload and this is its ``minReplicas``: the scaler moves that floor instead of
    #: the count (never below 1, an HPA's own minimum)
    hpa_floor: int | None = None

    def pod(self, name: str) -> PodView | None:
        return next((p for p in self.pods if p.name == name), None)


@dataclass(frozen=True, slots=True)
class Decision:
    """One tick's outcome. ``desired`` is the replica count the scaler wants after this action."""

    at: float
    action: Action
    direction: str  #: "up", "down" or "none"
    reason: str  #: short, bounded vocabulary (metric label)
    current: int
    desired: int
    message: str
    victim: str | None = None
    dry_run: bool = False
    need: int = 0
    bounds: Bounds | None = None

    @property
    def changes(self) -> bool:
        """True for actions that change something (or would, in dry run)."""
        return self.action is not Action.HOLD

    def key(self) -> tuple[object, ...]:
        return (self.action, self.reason, self.current, self.desired, self.victim)

    def to_dict(self) -> dict[str, object]:
        return {
            "at": self.at,
            "action": str(self.action),
            "direction": self.direction,
            "reason": self.reason,
            "current": self.current,
            "desired": self.desired,
            "victim": self.victim,
            "dryRun": self.dry_run,
            "message": self.message,
        }


@dataclass(slots=True)
class Drain:
    victim: str
    started: float
    from_replicas: int
    reason: str


@dataclass(slots=True)
class Removal:
    victim: str
    started: float
    target: int
    others: frozenset[str]
