"""The victim rule, one criterion at a time (table-driven), and its explanation."""

from __future__ import annotations

import math

import pytest

from picker.scaler.victim import PodView, adapters_in_use, choose, ordinal_of, rank


def names(ranked: list[object]) -> list[str]:
    return [c.pod for c in ranked]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pods", "victim"),
    [
        # 2. fewest in flight (ours + scraped queue)
        ([PodView("a", inflight=2), PodView("b", inflight=1), PodView("c", inflight=1, waiting=1)], "b"),
        # 3. then least recently useful
        ([PodView("a", last_busy=100.0), PodView("b", last_busy=50.0), PodView("c", last_busy=70.0)], "b"),
        ([PodView("a", last_busy=100.0), PodView("b")], "b"),  # never busy: -inf
        # 3'. the prefix index's cache value replaces recency when it is wired
        ([PodView("a", cache_value=5.0, last_busy=1.0), PodView("b", cache_value=2.0, last_busy=9.0)], "b"),
        # 4. then least recent load
        ([PodView("a", recent_load=3.0), PodView("b", recent_load=1.0)], "b"),
        # 5. then the youngest
        ([PodView("a", joined=10.0), PodView("b", joined=20.0)], "b"),
        # 6. then the name
        ([PodView("b"), PodView("a")], "a"),
        # an unknown queue counts as empty
        ([PodView("a", inflight=1, waiting=math.nan), PodView("b", inflight=2)], "a"),
        # draining pods are not candidates again
        ([PodView("a", draining=True), PodView("b", inflight=5)], "b"),
    ],
)
def test_rule_order(pods: list[PodView], victim: str) -> None:
    chosen = choose(pods, ordered_removal=False)
    assert chosen is not None
    assert chosen.pod == victim


def test_sole_holder_of_an_adapter_in_use_is_never_chosen() -> None:
    pods = [
        PodView("a", adapters=("x",), running=1.0),  # x in use, only a has it
        PodView("b", adapters=("y",), inflight=3),
        PodView("c", adapters=("y",), inflight=4),
        PodView("d", adapters=("z",), waiting_adapters=()),  # z held but not in use anywhere
    ]
    assert adapters_in_use(pods) == {"x", "y"}
    ranked = rank(pods, ordered_removal=False)
    assert names(ranked) == ["d", "b", "c", "a"]
    assert not ranked[-1].eligible
    assert "'x'" in ranked[-1].why
    # an adapter only queued for elsewhere still pins its sole holder
    queued = [PodView("a", adapters=("q",)), PodView("b", waiting_adapters=("q",), inflight=9)]
    chosen = choose(queued, ordered_removal=False)
    assert chosen is not None
    assert chosen.pod == "b"


def test_nobody_eligible_means_no_victim() -> None:
    pods = [PodView("a", adapters=("x",), running=1.0), PodView("b", adapters=("y",), running=1.0)]
    assert choose(pods, ordered_removal=False) is None
    assert choose([], ordered_removal=False) is None


def test_ordered_workloads_only_offer_the_highest_ordinal() -> None:
    pods = [PodView(f"vllm-{i}", inflight=float(10 - i), ordinal=i) for i in (0, 1, 10, 2)]
    ranked = rank(pods, ordered_removal=True)
    assert ranked[0].pod == "vllm-10"
    assert ranked[0].eligible
    assert all(not c.eligible and "ordinal" in c.why for c in ranked[1:])
    pinned = [*pods[:3], PodView("vllm-2", ordinal=2)]
    pinned[2] = PodView("vllm-10", ordinal=10, adapters=("x",), running=1.0)
    assert choose(pinned, ordered_removal=True) is None


def test_candidates_explain_themselves() -> None:
    c = rank([PodView("a", inflight=1, last_busy=5.0, joined=3.0)], ordered_removal=False)[0]
    assert c.to_dict() == {
        "pod": "a",
        "eligible": True,
        "why": "fewest in flight, then least recently useful",
        "load": 1.0,
        "usefulness": 5.0,
        "recent_load": 0.0,
        "joined": 3.0,
    }


@pytest.mark.parametrize(
    ("name", "ordinal"), [("vllm-0", 0), ("vllm-12", 12), ("vllm-abc", None), ("vllm", None), ("a-b-3", 3)]
)
def test_ordinal_from_name(name: str, ordinal: int | None) -> None:
    assert ordinal_of(name) == ordinal
