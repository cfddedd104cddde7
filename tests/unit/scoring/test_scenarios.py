"""The reference EPP's hermetic scenario table (gie-epp.md §5.1): same metrics → same chosen endpoint.

The reference test configuration: queue, kv-cache, prefix-cache and lora-affinity scorers at weight 1, a
max-score picker. Pods are ``pod-<i>`` at ``192.168.1.<i+1>:8000`` with MaxActiveModels = 0.
Subset rows build the candidate mask the way the service does: endpoints whose IP is in the hint.
"""

from __future__ import annotations

import numpy as np
import pytest

from scoring import (
    EndpointMatrix,
    EndpointRow,
    NoEndpointsAvailable,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    Scheduler,
    build_scheduler,
    subset_mask,
)

NOW = 100.0


def pod(i: int, queue: float, kv: float, *active: str) -> EndpointRow:
    return EndpointRow(
        name=f"pod-{i}-rank-0",
        address=f"192.168.1.{i + 1}:8000",
        waiting=queue,
        running=0.0,
        kv_usage=kv,
        lora_active=active,
        max_lora=0.0,
        scraped_at=NOW,
    )


@pytest.fixture
def scheduler() -> Scheduler:
    types = ["queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "lora-affinity-scorer"]
    plugins = [PluginSpec(t, t) for t in [*types, "max-score-picker"]]
    profile = ProfileSpec("default", [*((t, 1.0) for t in types), ("max-score-picker", None)])
    return build_scheduler(plugins, [profile])


def chosen_address(
    s: Scheduler, rows: list[EndpointRow], target: str, subset: list[str] | None = None
) -> str:
    m = EndpointMatrix.from_rows(rows)
    mask = None if subset is None else subset_mask(m, subset)
    result = s.schedule(
        m, PickRequest(target_model=target), now=NOW, rng=np.random.default_rng(7), candidates=mask
    )
    assert len(result.indices) == 1
    return m.addresses[result.primary]


@pytest.mark.parametrize(
    ("row", "pods", "target", "subset", "expected"),
    [
        (
            "1 select lower queue and kv cache",
            [pod(0, 3, 0.2), pod(1, 0, 0.1), pod(2, 10, 0.2)],
            "my-model-12345",
            None,
            "192.168.1.2:8000",
        ),
        (
            "2 select active lora, low queue",
            [
                pod(0, 0, 0.2, "foo", "bar"),
                pod(1, 0, 0.1, "foo", "sql-lora-1fdg2"),
                pod(2, 10, 0.2, "foo", "bar"),
            ],
            "sql-lora-1fdg2",
            None,
            "192.168.1.2:8000",
        ),
        (
            "5 select lora despite higher kv",
            [pod(0, 10, 0.2), pod(1, 10, 0.4, "sql-lora-1fdg2"), pod(2, 10, 0.3)],
            "sql-lora-1fdg2",
            None,
            "192.168.1.2:8000",
        ),
        (
            "7 do not shed by default",
            [pod(0, 6, 0.2, "sql-lora-1fdg2"), pod(1, 0, 0.85), pod(2, 10, 0.9)],
            "sql-lora-1fdg2",
            None,
            "192.168.1.1:8000",
        ),
        (
            "9 split body across chunks",
            [pod(0, 4, 0.2, "sql-lora-1fdg3"), pod(1, 4, 0.85, "sql-lora-1fdg3")],
            "sql-lora-1fdg3",
            None,
            "192.168.1.1:8000",
        ),
        (
            "10 subsetting: best from subset",
            [pod(0, 0, 0.2), pod(1, 0, 0.1, "sql-lora-1fdg2"), pod(2, 10, 0.2)],
            "sql-lora-1fdg2",
            ["192.168.1.1:8000", "192.168.1.2:8000", "192.168.1.3:8000"],
            "192.168.1.2:8000",
        ),
        (
            "11 subsetting: partial match",
            [pod(0, 0, 0.2), pod(1, 0, 0.1, "sql-lora-1fdg2"), pod(2, 10, 0.2)],
            "sql-lora-1fdg2",
            ["192.168.1.3:8000"],
            "192.168.1.3:8000",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v[0].isdigit() else "",
)
def test_reference_scenario(
    scheduler: Scheduler,
    *,
    row: str,
    pods: list[EndpointRow],
    target: str,
    subset: list[str] | None,
    expected: str,
) -> None:
    assert chosen_address(scheduler, pods, target, subset) == expected


@pytest.mark.parametrize(
    ("pods", "target", "totals"),
    [
        ([pod(0, 3, 0.2), pod(1, 0, 0.1), pod(2, 10, 0.2)], "my-model-12345", (1.5, 1.9, 0.8)),
        (
            [pod(0, 10, 0.2), pod(1, 10, 0.4, "sql-lora-1fdg2"), pod(2, 10, 0.3)],
            "sql-lora-1fdg2",
            (1.8, 2.6, 1.7),
        ),
        (
            [pod(0, 6, 0.2, "sql-lora-1fdg2"), pod(1, 0, 0.85), pod(2, 10, 0.9)],
            "sql-lora-1fdg2",
            (2.2, 1.15, 0.1),
        ),
    ],
)
def test_reference_worked_totals(
    scheduler: Scheduler, pods: list[EndpointRow], target: str, totals: tuple[float, ...]
) -> None:
    """The totals the reference documents for rows 1, 5 and 7 (Σ of the four weight-1 scores)."""
    m = EndpointMatrix.from_rows(pods)
    result = scheduler.schedule(
        m, PickRequest(target_model=target), now=NOW, rng=np.random.default_rng(0), explain=True
    )
    assert result.decision is not None
    got = tuple(result.decision.totals[name] for name in m.names)
    assert got == pytest.approx(totals, abs=1e-12)


def test_row_12_no_subset_match_gives_empty_candidates(scheduler: Scheduler) -> None:
    """The service answers 503 on an empty mask before scheduling; the scheduler refuses it too."""
    m = EndpointMatrix.from_rows([pod(0, 0, 0.2), pod(1, 0, 0.1)])
    mask = subset_mask(m, ["192.168.1.99:8000"])
    assert not mask.any()
    with pytest.raises(NoEndpointsAvailable, match=r"^failed to find target endpoint: "):
        scheduler.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), candidates=mask)


def test_empty_subset_hint_gives_empty_candidates() -> None:
    m = EndpointMatrix.from_rows([pod(0, 0, 0.2)])
    assert not subset_mask(m, []).any()
