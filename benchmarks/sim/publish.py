"""When polls start and when landed scrapes reach the picks: the publish interval, or whole scrape rounds.

The service does not show a page to the picks when it lands: ``Datastore.record_scrape`` writes it into
working columns and the next snapshot folds every page landed so far, built at the first pick at least
``min_publish_interval_s`` after the previous one (``picker.wiring.snapshot_interval``). Until then a pick
reads the gauges of the last publish and the ``dispatched`` they account for: the ledger subtracts what a
scrape saw only when its gauges are published (``picker/state/README.md``, "Dispatched since the scrape
began"), so both move together.

:class:`Landings` is that rule for the simulator. ``begin`` (a poll starts) marks the requests sent to the
server so far, ``land`` (it completes) keeps the page until a publish, and ``due`` publishes every kept
page into the :class:`~benchmarks.sim.fleet.FleetView` (values, ``scraped_at`` = the landing time) and
subtracts ``dispatched`` from the latest mark, exactly as the ledger does (``sent - baseline``), however many
polls of one server started or landed before the publish.

``rounds``: the alternative of phase-aligned scrape rounds (every server polled at the same instants),
published once no poll of the round is in flight instead of on the interval.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.sim.server import Snapshot

if TYPE_CHECKING:
    from benchmarks.sim.fleet import FleetConfig

#: what :meth:`Landings.due` calls per landed page: ``(server, snapshot, landed at)``
Publish = Callable[[int, Snapshot, float], None]


def next_poll(busy: bool, t: float, next_arrival: float, interval: float) -> float:
    """When the poll after the one at ``t`` starts: ``t + interval``, except that a server idle (not
    ``busy``) until the next arrival shows every poll the same page, so only the last two before the
    arrival matter (what they publish, ``scraped_at``): skipping the rest makes idle gaps cheap and changes
    nothing the picker sees. The polls stay on the server's phase grid, so scrape rounds stay aligned."""
    if busy:
        return t + interval
    return t + max(1, math.ceil((next_arrival - t) / interval) - 2) * interval


class Landings:
    """Pages landed and not yet published, and the ledger's marks (see the module docstring).

    ``dispatched`` is the view's live column (requests sent since the published scrape began); the
    requests ever sent to server ``i`` are ``dispatched[i] + baseline[i]``.
    """

    __slots__ = ("_baseline", "_dispatched", "_interval", "_landed", "_marks", "_published_at", "_rounds")

    def __init__(self, dispatched: np.ndarray, *, interval_s: float, rounds: bool = False) -> None:
        if interval_s < 0:
            raise ValueError(f"publish interval must be >= 0, not {interval_s!r}")
        n = len(dispatched)
        self._dispatched = dispatched
        self._interval = interval_s
        self._rounds = rounds
        self._baseline = np.zeros(n)
        #: per server: (snapshot, sent at its start) of polls started and not landed, in start order
        self._marks: list[list[tuple[Snapshot, float]]] = [[] for _ in range(n)]
        #: per server that landed since the last publish: (snapshot, sent at its start, landed at)
        self._landed: dict[int, tuple[Snapshot, float, float]] = {}
        self._published_at = float("-inf")

    def begin(self, i: int, snap: Snapshot) -> None:
        """A poll of server ``i`` starts and reads ``snap``."""
        self._marks[i].append((snap, float(self._dispatched[i] + self._baseline[i])))

    def land(self, i: int, at: float) -> None:
        """Server ``i``'s oldest poll in flight completes at ``at`` (its page waits for the next publish)."""
        snap, mark = self._marks[i].pop(0)
        self._landed[i] = (snap, mark, at)

    def in_flight(self) -> bool:
        return any(self._marks)

    def due(self, now: float, publish: Publish) -> bool:
        """Publish what landed if the rule says so at ``now`` (before a pick); True if it did."""
        if not self._landed:
            return False
        if self._rounds:
            if self.in_flight():
                return False
        elif now - self._published_at < self._interval:
            return False
        dispatched, baseline = self._dispatched, self._baseline
        for i, (snap, mark, at) in self._landed.items():
            publish(i, snap, at)
            dispatched[i] -= mark - baseline[i]
            baseline[i] = mark
        self._landed.clear()
        self._published_at = now
        return True


def publish_config(cfg: FleetConfig, spec: str | None) -> FleetConfig:
    """``cfg`` with the publish rule of a command line's ``--publish``: an interval in seconds (>= 0), or
    ``rounds``; None keeps ``cfg``'s. A bad value raises ``SystemExit`` with what is accepted."""
    if spec is None:
        return cfg
    if spec == "rounds":
        return dataclasses.replace(cfg, scrape_rounds=True)
    try:
        interval = float(spec)
    except ValueError:
        interval = -1.0
    if not 0.0 <= interval < float("inf"):
        raise SystemExit(f"--publish takes an interval in seconds (>= 0) or 'rounds', not {spec!r}")
    return dataclasses.replace(cfg, publish_interval_s=interval, scrape_rounds=False)
