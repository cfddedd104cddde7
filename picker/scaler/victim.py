"""Which pod a scale-down removes: the one whose loss costs least (pure; shown in ``/debug/scaler``).

The rule, in order (the first difference decides; smaller loses):

1. **Never the only pod holding an adapter that is in use** (a LoRA adapter some ready pod runs requests
   for, held active by this pod alone): removing it would force a reload elsewhere mid-traffic. Such pods
   are not candidates at all.
2. **Fewest requests in flight**: our open streams to it plus its scraped queue. Less to drain, sooner gone.
3. **Least cache value**: the prefix-cache value of the pod when a :class:`CacheValue` source is wired
   (the prefix index); until then **least recently useful**, the time the pod last held any work (a pod
   idle for minutes holds a cache nobody has asked for lately).
4. **Least recent load**: the smoothed in-flight count of the last minutes (a pod that carried less of the
   recent traffic has less warm state).
5. **Youngest**: the pod that joined last (least warmed up; also the ReplicaSet's own preference).
6. Name, so that the choice is deterministic.

StatefulSets and LeaderWorkerSets always remove their highest ordinal (the controllers ignore
``pod-deletion-cost``), so for them the highest-ordinal pod is the only candidate and the rule above only
decides whether it may go (rule 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class CacheValue(Protocol):
    """The seam for the prefix index: how much reusable prefix cache a pod holds (any unit, larger = more
    valuable), or None when unknown. Until a prefix index provides it, recency decides (module doc)."""

    def cache_value(self, pod: str) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PodView:
    """One pool member as the scaler sees it at a tick."""

    name: str
    #: requests in flight through us (all EPP workers)
    inflight: float = 0.0
    #: scraped queue length (NaN unknown)
    waiting: float = 0.0
    #: scraped running requests (NaN unknown)
    running: float = 0.0
    #: adapters the pod holds active
    adapters: tuple[str, ...] = ()
    #: adapters the pod has requests waiting for
    waiting_adapters: tuple[str, ...] = ()
    #: wall-clock time it last held any work (-inf: never seen busy)
    last_busy: float = -math.inf
    #: smoothed in-flight count over the last minutes
    recent_load: float = 0.0
    #: wall-clock time the scaler first saw it serving
    joined: float = 0.0
    #: StatefulSet / LeaderWorkerSet ordinal parsed from the name (None for Deployments)
    ordinal: int | None = None
    #: marked draining by us
    draining: bool = False
    #: prefix-cache value when a :class:`CacheValue` source is wired
    cache_value: float | None = None

    @property
    def load(self) -> float:
        """Requests in flight plus queued there (unknown queue counts as 0)."""
        waiting = self.waiting if self.waiting == self.waiting else 0.0
        return self.inflight + waiting

    @property
    def busy(self) -> bool:
        running = self.running if self.running == self.running else 0.0
        return self.load > 0 or running > 0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One pod's place in the ranking and why (``eligible=False`` explains the exclusion)."""

    pod: str
    eligible: bool
    why: str
    key: tuple[float, float, float, float, str]

    def to_dict(self) -> dict[str, object]:
        load, value, recent, joined, _ = self.key
        return {
            "pod": self.pod,
            "eligible": self.eligible,
            "why": self.why,
            "load": load,
            "usefulness": None if math.isinf(value) else value,
            "recent_load": round(recent, 3),
            "joined": -joined,
        }


def adapters_in_use(pods: Sequence[PodView]) -> frozenset[str]:
    """Adapters some pod is running or queueing requests for."""
    used: set[str] = set()
    for p in pods:
        if p.busy:
            used.update(p.adapters)
        used.update(p.waiting_adapters)
    return frozenset(used)


def _sole_holders(pods: Sequence[PodView], in_use: frozenset[str]) -> Mapping[str, str]:
    """pod -> an in-use adapter only that pod holds."""
    holders: dict[str, list[str]] = {}
    for p in pods:
        for a in p.adapters:
            holders.setdefault(a, []).append(p.name)
    return {names[0]: a for a, names in sorted(holders.items()) if a in in_use and len(names) == 1}


def rank(pods: Sequence[PodView], *, ordered_removal: bool) -> list[Candidate]:
    """Every non-draining pod, best victim first; ineligible pods last with the reason.

    ``ordered_removal``: the workload removes its highest ordinal itself (StatefulSet, LeaderWorkerSet).
    """
    live = [p for p in pods if not p.draining]
    sole = _sole_holders(live, adapters_in_use(live))
    highest = None
    if ordered_removal:
        with_ordinal = [p for p in live if p.ordinal is not None]
        highest = max(with_ordinal, key=lambda p: p.ordinal or 0).name if with_ordinal else None
    out: list[Candidate] = []
    for p in live:
        usefulness = p.cache_value if p.cache_value is not None else p.last_busy
        key = (p.load, usefulness, p.recent_load, -p.joined, p.name)
        if p.name in sole:
            out.append(Candidate(p.name, False, f"only pod holding adapter {sole[p.name]!r} in use", key))
        elif ordered_removal and p.name != highest:
            out.append(Candidate(p.name, False, "not the highest ordinal (removed in ordinal order)", key))
        else:
            why = "cache value" if p.cache_value is not None else "least recently useful"
            out.append(Candidate(p.name, True, f"fewest in flight, then {why}", key))
    out.sort(key=lambda c: (not c.eligible, c.key))
    return out


def choose(pods: Sequence[PodView], *, ordered_removal: bool) -> Candidate | None:
    """The pod to remove, or None when no pod may go."""
    ranked = rank(pods, ordered_removal=ordered_removal)
    return ranked[0] if ranked and ranked[0].eligible else None


def ordinal_of(name: str) -> int | None:
    """The trailing ``-<n>`` of a StatefulSet pod name (LeaderWorkerSet leaders too), else None."""
    _, _, tail = name.rpartition("-")
    return int(tail) if tail.isdigit() else None
