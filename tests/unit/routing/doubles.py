"""Test doubles of the director's collaborators, shared by the routing unit tests: a fixed routing state
(the datastore's snapshot, objectives, rewrites and leases) and an observer that counts failovers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from picker.state.accounting import NullLease
from picker.state.objectives import ObjectiveStore, RewriteStore
from picker.state.outcomes import Outcome
from scoring import EndpointMatrix
from scoring.matrix import LoadCharge


@dataclass
class State:
    """A routing state over a fixed matrix: ``waiting`` decides the queue scorer's choice."""

    matrix: EndpointMatrix
    objectives: ObjectiveStore = field(default_factory=ObjectiveStore)
    rewrites: RewriteStore = field(default_factory=RewriteStore)
    acquired: list[str] = field(default_factory=list)
    #: outcomes of requests sent to an external endpoint first (the pool was their fallback)
    reported: list[Outcome] = field(default_factory=list)

    def snapshot(self) -> EndpointMatrix:
        return self.matrix

    def acquire(self, name: str, charge: LoadCharge = LoadCharge(0.0, 0.0), /) -> NullLease:  # noqa: B008
        self.acquired.append(name)
        return NullLease()

    def report(self, outcome: Outcome, /) -> None:
        self.reported.append(outcome)


@dataclass
class Observer:
    failovers: Counter[str] = field(default_factory=Counter)

    def rewrite_decision(self, rewrite_name: str, model: str, target: str) -> None:
        pass

    def failover(self, reason: str) -> None:
        self.failovers[reason] += 1
