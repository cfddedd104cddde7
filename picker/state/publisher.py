"""What the ``--workers`` supervisor's datastore holds to share its state: the segment and the codec.

The :class:`~picker.state.datastore.Datastore` is the same in one process and in the supervisor; with a
:class:`SharedPublisher` its load accounting lives in the segment's counter rows (the supervisor writes
the last row, each worker its own), and whenever it publishes a snapshot it also writes the metric columns
into the segment and, when the rarely changing part changed, a new blob. Workers read both through a
:class:`~picker.state.view.SharedView`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from picker.state.accounting import CounterRows
from picker.state.codec import EndpointEntry, HealthInputs, encode_static
from picker.state.endpoints import PoolInfo
from picker.state.objectives import ModelRewrite, Objective
from picker.state.outcomes import OutcomeRows
from picker.state.segment import SharedSegment

__all__ = ["SharedPublisher", "StaticParts"]


class StaticParts(NamedTuple):
    """The datastore's part of the blob (the publisher adds health and the config document)."""

    pool: PoolInfo | None
    endpoints: Iterable[EndpointEntry]
    objectives: Iterable[Objective]
    rewrites: Iterable[ModelRewrite]
    #: the operator's Prometheus signals by key, each by endpoint name (``picker.state.signals``)
    signals: Mapping[str, Mapping[str, float]] = MappingProxyType({})


def _no_config() -> tuple[str, str, str]:
    return "", "default", ""


class SharedPublisher:
    """Writes a datastore's state into a :class:`~picker.state.segment.SharedSegment` for the workers.

    ``health`` and ``config`` are read at every publish: the health inputs a worker's gRPC health answers
    from, and ``(text, source, digest)`` of the active config document. Constructing it writes nothing.
    """

    def __init__(
        self,
        segment: SharedSegment,
        *,
        health: Callable[[], HealthInputs] = HealthInputs,
        config: Callable[[], tuple[str, str, str]] = _no_config,
    ) -> None:
        self.segment = segment
        self._health = health
        self._config = config
        self._static_key: Hashable = None

    def counters(self) -> CounterRows:
        """The segment's counter rows, written through the supervisor's row."""
        return CounterRows(self.segment.counters, self.segment.layout.supervisor_row)

    def outcomes(self) -> OutcomeRows:
        """The segment's outcome rows (the supervisor routes nothing: it only reads them)."""
        return OutcomeRows(self.segment.outcomes, self.segment.ticks, self.segment.layout.supervisor_row)

    def write_columns(self, slots: np.ndarray, floats: np.ndarray, engine: np.ndarray) -> None:
        """The metric columns and engine codes of the endpoints at ``slots``."""
        self.segment.write_columns(slots, floats, engine)

    def write_static(self, key: Hashable, parts: Callable[[], StaticParts]) -> bool:
        """Write a new blob unless ``key`` (the datastore's versions), the health inputs and the config
        digest are what was last written; ``parts`` is called only when writing. True if written."""
        text, source, digest = self._config()
        health = self._health()
        full_key = (key, health, digest)
        if full_key == self._static_key:
            return False
        p = parts()
        blob = encode_static(
            pool=p.pool,
            health=health,
            endpoints=p.endpoints,
            objectives=p.objectives,
            rewrites=p.rewrites,
            signals=p.signals,
            config_text=text,
            config_source=source,
            config_digest=digest,
        )
        self.segment.write_blob(blob)
        self._static_key = full_key
        return True
