"""A scheduler that keeps prepared state across snapshots scores every snapshot as a fresh one would.

The scheduler reuses each scorer's prepared state on a new snapshot while that scorer's inputs hold the
same bits (``scoring.cache``); these properties replay sequences of snapshots in which random columns
change (and the unchanged ones are new arrays with the same values, as the datastore publishes them) and
compare every total with a scheduler that has never seen an earlier snapshot, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import (
    EndpointMatrix,
    EndpointRow,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    Scheduler,
    build_scheduler,
    default_scheduler,
)

NOW = 10.0
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ADAPTERS = ("a1", "a2", "a3")
#: the columns a step may change, each with the values it may take
CHANGES: dict[str, Any] = {
    "waiting": st.one_of(st.floats(0, 20), st.just(math.nan)),
    "running": st.one_of(st.floats(0, 20), st.just(math.nan)),
    "kv_usage": st.one_of(st.floats(0, 1), st.just(math.nan)),
    "gpu_util": st.one_of(st.floats(0, 1), st.just(math.nan)),
    "max_lora": st.sampled_from([math.nan, 1.0, 2.0, 4.0]),
    "lora_active": st.lists(st.sampled_from(ADAPTERS), max_size=2, unique=True).map(tuple),
    "models": st.sampled_from([(), ("base",), ("base", "other")]),
    "price_in": st.one_of(st.floats(0, 10), st.just(math.nan)),
    "ttft_per_1k": st.one_of(st.floats(0.01, 2), st.just(math.nan)),
}


def _everything() -> Scheduler:
    """A snapshot, a request and a load term of every kind whose inputs differ."""
    types = {
        "queue-scorer": 1.0,
        "running-requests-size-scorer": 0.5,
        "kv-cache-utilization-scorer": 2.0,
        "gpu-utilization-scorer": 0.5,
        "lora-affinity-scorer": 2.0,
        "cost-scorer": 1.0,
        "latency-scorer": 1.5,
        "prefill-queue-scorer": 2.0,
    }
    specs = [PluginSpec(t, t) for t in types]
    specs.append(PluginSpec("pick", "max-score-picker", {"maxNumOfEndpoints": 3}))
    refs: list[tuple[str, float | None]] = [*types.items(), ("pick", None)]
    return build_scheduler(specs, [ProfileSpec("p", refs)])


PROFILES: dict[str, Any] = {"ours": default_scheduler, "every kind": _everything}


@st.composite
def snapshot_sequences(draw: st.DrawFn) -> list[EndpointMatrix]:
    """2-5 snapshots of the same endpoints; between two, each column changes on a random subset of rows
    or not at all, and every snapshot is built anew (no array shared with the one before)."""
    n = draw(st.integers(1, 12))
    rows = [
        EndpointRow(
            name=f"e{i}",
            address=f"10.0.0.{i}:8000",
            scraped_at=NOW,
            dispatched=float(draw(st.integers(0, 4))),
            **{column: draw(values) for column, values in CHANGES.items()},
        )
        for i in range(n)
    ]
    out = [EndpointMatrix.from_rows(rows)]
    for _ in range(draw(st.integers(1, 4))):
        for column in draw(st.lists(st.sampled_from(sorted(CHANGES)), max_size=3, unique=True)):
            for i in draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)):
                rows[i] = dataclasses.replace(rows[i], **{column: draw(CHANGES[column])})
        out.append(EndpointMatrix.from_rows(rows))
    return out


REQUESTS = tuple(PickRequest(target_model=model) for model in ("base", "a1", "a3", "unknown"))


def _totals(scheduler: Scheduler, m: EndpointMatrix, mask: np.ndarray | None) -> list[bytes]:
    v = scheduler.candidates_view(m, mask)
    prepared = scheduler.prepared(m, v)
    dispatched = v.take(m.dispatched)
    out = []
    for req in REQUESTS:
        arrays = scheduler.terms.arrays(v, prepared, req, dispatched)
        floats = scheduler.terms.floats(v, prepared, req, dispatched)
        assert np.array(floats, dtype=np.float64).tobytes() == arrays.tobytes()
        out.append(arrays.tobytes())
    return out


@SETTINGS
@given(
    snapshots=snapshot_sequences(),
    profile=st.sampled_from(sorted(PROFILES)),
    masked=st.booleans(),
)
def test_a_scheduler_that_saw_earlier_snapshots_scores_each_as_a_fresh_one(
    snapshots: list[EndpointMatrix], profile: str, masked: bool
) -> None:
    kept = PROFILES[profile]()
    for m in snapshots:
        mask = (np.arange(len(m)) % 3 != 1) if masked and len(m) > 1 else None
        assert _totals(kept, m, mask) == _totals(PROFILES[profile](), m, mask)
