"""The operator's Prometheus signals per pod (``prometheus-scorer``): the ``signals`` columns of the
snapshot.

The source (``picker/scrape/signals.py``) hands over, per signal key (``scoring.scorers.signal.signal_key``),
the fresh value of each pod it found; a pod without one is NaN in the column (the scorer makes it
neutral). Columns are rebuilt only when a signal or the membership changed, never on the request path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

__all__ = ["SignalStore"]

_NONE: Mapping[str, NDArray[np.float64]] = MappingProxyType({})


class SignalStore:
    """Values by signal key and pod name; the columns for a membership, cached."""

    def __init__(self) -> None:
        self._by_key: dict[str, Mapping[str, float]] = {}
        self.version = 0
        self._cache: Mapping[str, NDArray[np.float64]] = _NONE
        self._cache_key: tuple[int, int] | None = None

    def set(self, key: str, by_pod: Mapping[str, float] | None) -> None:
        """The fresh values of one signal (None: the signal is gone, e.g. its scorer was removed)."""
        if by_pod is None:
            if self._by_key.pop(key, None) is None:
                return
        else:
            self._by_key[key] = MappingProxyType(dict(by_pod))
        self.version += 1

    def keys(self) -> list[str]:
        return list(self._by_key)

    def columns(self, pods: Sequence[str], membership: int) -> Mapping[str, NDArray[np.float64]]:
        """One read-only column per signal over ``pods`` (NaN where a pod has no value)."""
        key = (membership, self.version)
        if key != self._cache_key:
            out: dict[str, NDArray[np.float64]] = {}
            for name, values in self._by_key.items():
                col = np.fromiter((values.get(p, math.nan) for p in pods), dtype=np.float64, count=len(pods))
                col.flags.writeable = False
                out[name] = col
            self._cache = MappingProxyType(out) if out else _NONE
            self._cache_key = key
        return self._cache

    def values(self, key: str) -> Mapping[str, float] | None:
        return self._by_key.get(key)

    def by_name(self, names: Sequence[str], pods: Sequence[str]) -> dict[str, dict[str, float]]:
        """Every signal by endpoint name (what a ``--workers`` worker gets: it knows names, not pods)."""
        return {
            key: {n: values[p] for n, p in zip(names, pods, strict=True) if p in values}
            for key, values in self._by_key.items()
        }
