"""Our metrics OUT: the reference EPP's metric names, types, labels and buckets, plus ``picker_*`` extras.

The public surface is this package; its modules hold one concern each:

* :mod:`~picker.telemetry.observer` - :class:`Telemetry`, owner of every family and the ext_proc
  observer hooks (what is measured, label capping);
* :mod:`~picker.telemetry.fast` - counter / gauge / histogram families on plain Python numbers;
* :mod:`~picker.telemetry.batch` - stream facts queued on the request path, applied in batches;
* :mod:`~picker.telemetry.pool` - pool and per-endpoint gauges computed from the datastore at scrape time;
* :mod:`~picker.telemetry.external` - external endpoints' requests, window usage and limits at scrape time;
* :mod:`~picker.telemetry.merge` - ``--workers``: worker exports merged for the supervisor;
* :mod:`~picker.telemetry.pools` - ``--pool``: every pool's registry on one ``/metrics``, labelled ``pool``;
* :mod:`~picker.telemetry.exposition` - what ``/metrics`` renders (no ``*_created`` series);
* :mod:`~picker.telemetry.process` - the standard ``process_*`` series, ``/proc`` read when collected;
* :mod:`~picker.telemetry.buckets` - the reference's bucket boundaries.
"""

from picker.labels import OTHER
from picker.telemetry.batch import FLUSH_EVENTS
from picker.telemetry.buckets import (
    ALPHA,
    DURATION_BUCKETS,
    INPUT_TOKEN_BUCKETS,
    NTPOT_BUCKETS,
    OUTPUT_TOKEN_BUCKETS,
    REQUEST_SIZE_BUCKETS,
    RESPONSE_SIZE_BUCKETS,
    SCHEDULER_BUCKETS,
)
from picker.telemetry.external import ExternalCollector
from picker.telemetry.fast import FastCounter, FastGauge, FastHistogram
from picker.telemetry.merge import FamilyData, MergedRequestMetrics, export_families
from picker.telemetry.observer import MAX_MODEL_LABELS, Telemetry
from picker.telemetry.pool import SnapshotSource
from picker.telemetry.pools import PoolLabelled
from picker.telemetry.process import ProcessMetrics

__all__ = [
    "ALPHA",
    "DURATION_BUCKETS",
    "FLUSH_EVENTS",
    "INPUT_TOKEN_BUCKETS",
    "MAX_MODEL_LABELS",
    "NTPOT_BUCKETS",
    "OTHER",
    "OUTPUT_TOKEN_BUCKETS",
    "REQUEST_SIZE_BUCKETS",
    "RESPONSE_SIZE_BUCKETS",
    "SCHEDULER_BUCKETS",
    "ExternalCollector",
    "FamilyData",
    "FastCounter",
    "FastGauge",
    "FastHistogram",
    "MergedRequestMetrics",
    "PoolLabelled",
    "ProcessMetrics",
    "SnapshotSource",
    "Telemetry",
    "export_families",
]
