"""The reference's prefix-indexer metrics (``gie-epp.md`` §3.6, §4): index size, hit ratio, hit bytes.

* ``inference_extension_prefix_indexer_size`` (gauge): entries of the approximate prefix index over all
  endpoints, read from the index when Prometheus scrapes (the reference refreshes it every second). With
  ``--workers`` it is the supervisor's replica, which every worker's records reach.
* ``inference_extension_prefix_indexer_hit_ratio`` / ``_hit_bytes`` (histograms, the reference's buckets):
  per routed request with a prefix (a prompt of at least one block, prefix scoring on), the part of its
  prompt the *chosen* endpoint was believed to hold: matched / total, and matched blocks x block size in
  characters (``blockSizeTokens`` x 4), as the reference records them after the pick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from picker.telemetry.buckets import ALPHA

__all__ = ["PREFIX_BYTES_BUCKETS", "PREFIX_RATIO_BUCKETS", "PrefixSizeCollector"]

PREFIX_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PREFIX_BYTES_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
HIT_RATIO_HELP = ALPHA + "Ratio of prefix length matched to total prefix length in the cache lookup."
HIT_BYTES_HELP = ALPHA + "Length of the prefix match in number of bytes in the cache lookup."


class PrefixSizeCollector(Collector):
    """``inference_extension_prefix_indexer_size`` from a callable (the process's prefix index)."""

    def __init__(self, size: Callable[[], int]) -> None:
        self._size = size

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "inference_extension_prefix_indexer_size",
            ALPHA + "Size of the prefix indexer.",
            value=float(self._size()),
        )
