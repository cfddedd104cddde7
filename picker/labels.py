"""Bounded label values: the one mechanism for every metric label whose values come from a peer.

Label values that come from requests (model names, rewrite targets, tenant ids) or from model servers
(LoRA adapter names on metric pages) are chosen by someone else. Each distinct value is a series kept
for the life of the process, and each value is stored once per series and written on every scrape, so
both the number of values and their length must be bounded: one request whose ``model`` was a 1 MiB
string once made ``/metrics`` 353 MB.

:class:`BoundedLabel` maps a raw value to the value to use: the value itself while it is at most
``max_length`` characters and fewer than ``max_values`` distinct values were seen, else ``other``.
Values given to :meth:`BoundedLabel.pin` (configured names: priced models, objectives) always map to
themselves and do not use up the budget. Cheap on the hot path: a set lookup for a known value.

Use one instance per label (or per group of labels sharing a vocabulary, as ``model_name`` and
``target_model_name`` do). Users: ``picker.telemetry`` (model and rewrite names), ``picker.tenants.metrics``
(tenant ids and their ``model`` label), ``picker.tenants.flow`` (flow-control fairness ids). Objective
names are never a label (``scoring.profiles`` keeps none longer than an object name past the request).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["MAX_LABEL_LENGTH", "MAX_LABEL_VALUES", "OTHER", "BoundedLabel"]

#: distinct values per label before new ones are recorded as :data:`OTHER`
MAX_LABEL_VALUES: Final = 1000
#: longest label value kept as is, in characters (a Hugging Face model path is well under it)
MAX_LABEL_LENGTH: Final = 256
OTHER: Final = "other"


class BoundedLabel:
    """Maps peer-supplied values of one label onto at most ``max_values`` + pinned values, each at most
    ``max_length`` characters; the rest become ``other``. Not thread-safe for writers (one event loop)."""

    __slots__ = ("_max_length", "_max_values", "_pinned", "_seen", "other")

    def __init__(
        self,
        *,
        max_values: int = MAX_LABEL_VALUES,
        max_length: int = MAX_LABEL_LENGTH,
        other: str = OTHER,
        pinned: Iterable[str] = (),
    ) -> None:
        if max_values < 0 or max_length < 1:
            raise ValueError("max_values must be >= 0 and max_length >= 1")
        self._max_values = max_values
        self._max_length = max_length
        self.other = other
        self._pinned: set[str] = set()
        self._seen: set[str] = set()
        self.pin(pinned)

    def pin(self, values: Iterable[str]) -> None:
        """Values that always map to themselves (configured names), whatever the budget."""
        self._pinned.update(v for v in values if len(v) <= self._max_length)

    def __call__(self, value: str) -> str:
        if value in self._seen or value in self._pinned:
            return value
        if len(value) > self._max_length or len(self._seen) >= self._max_values:
            return self.other
        self._seen.add(value)
        return value

    def __len__(self) -> int:
        """Distinct values admitted so far (pinned ones not counted)."""
        return len(self._seen)
