"""Pickers: primary + distinct fallbacks in score order, tie-breaks and sampling from the injected rng."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from scoring.errors import ConfigurationError
from scoring.pickers import MaxScorePicker, RandomPicker, WeightedRandomPicker, draw_index


def state(rng: np.random.Generator) -> object:
    return rng.bit_generator.state


@pytest.mark.parametrize(
    ("totals", "n", "expected"),
    [
        ([0.1, 0.9, 0.5], 1, [1]),
        ([0.1, 0.9, 0.5], 2, [1, 2]),
        ([0.1, 0.9, 0.5], 3, [1, 2, 0]),
        ([0.1, 0.9, 0.5], 5, [1, 2, 0]),  # more asked than exist: all, in order
        ([3.0, 1.0, 2.0, 0.0, 5.0], 3, [4, 0, 2]),
    ],
)
def test_max_score_without_ties_is_deterministic_and_draws_nothing(
    totals: list[float], n: int, expected: list[int]
) -> None:
    picker = MaxScorePicker("p", {"maxNumOfEndpoints": n})
    rng = np.random.default_rng(1)
    before = state(rng)
    assert picker.pick(np.array(totals), rng) == expected
    assert state(rng) == before


def test_max_score_breaks_ties_uniformly() -> None:
    picker = MaxScorePicker("p")
    totals = np.array([1.0, 2.0, 2.0, 0.5, 2.0])
    rng = np.random.default_rng(5)
    counts = Counter(picker.pick(totals, rng)[0] for _ in range(3000))
    assert set(counts) == {1, 2, 4}
    assert all(900 < c < 1100 for c in counts.values())


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 10_007])
def test_draw_index_is_uniform_in_range_and_takes_one_draw(count: int) -> None:
    rng, twin = np.random.default_rng(11), np.random.default_rng(11)
    draws = [draw_index(rng, count) for _ in range(7000)]
    twin.bit_generator.random_raw(7000)
    assert state(rng) == state(twin)  # one 64-bit draw each, whatever the count
    assert all(isinstance(d, int) and 0 <= d < count for d in draws)
    if count <= 16:
        counts = Counter(draws)
        assert set(counts) == set(range(count))
        expected = 7000 / count
        assert all(abs(c - expected) < 5 * expected**0.5 for c in counts.values())
    else:
        assert min(draws) < count // 10
        assert max(draws) > count - count // 10


def test_max_score_fallbacks_fill_ties_at_the_cut_randomly() -> None:
    picker = MaxScorePicker("p", {"maxNumOfEndpoints": 3})
    totals = np.array([1.0, 3.0, 1.0, 1.0, 0.0, 1.0])
    seen: Counter[tuple[int, ...]] = Counter()
    for seed in range(400):
        picked = picker.pick(totals, np.random.default_rng(seed))
        assert picked[0] == 1
        assert len(set(picked)) == 3
        assert totals[picked[1]] == totals[picked[2]] == 1.0
        seen[tuple(picked[1:])] += 1
    assert len(seen) == 12  # every ordered pair of the four tied endpoints appears


def test_max_score_equal_totals_among_chosen_are_shuffled() -> None:
    picker = MaxScorePicker("p", {"maxNumOfEndpoints": 2})
    totals = np.array([2.0, 2.0])
    firsts = {picker.pick(totals, np.random.default_rng(seed))[0] for seed in range(50)}
    assert firsts == {0, 1}


@pytest.mark.parametrize("count", [0, -3])
def test_non_positive_max_endpoints_means_one(count: int) -> None:
    picker = MaxScorePicker("p", {"maxNumOfEndpoints": count})
    assert picker.max_endpoints == 1
    assert picker.parameters["maxNumOfEndpoints"] == 1


def test_picker_parameter_errors() -> None:
    with pytest.raises(ConfigurationError, match="maxNumOfEndpoints"):
        MaxScorePicker("p", {"maxNumOfEndpoints": "two"})
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        RandomPicker("p", {"maxNumOfEndpoint": 2})


def test_random_picker_ignores_scores_and_returns_distinct() -> None:
    picker = RandomPicker("r", {"maxNumOfEndpoints": 3})
    totals = np.array([100.0, 0.0, 0.0, 0.0])
    rng = np.random.default_rng(2)
    firsts = Counter()
    for _ in range(2000):
        picked = picker.pick(totals, rng)
        assert len(set(picked)) == 3
        firsts[picked[0]] += 1
    assert all(400 < firsts[i] < 600 for i in range(4))
    assert RandomPicker("r").pick(totals, rng)[0] in range(4)


def test_weighted_random_is_proportional_to_score() -> None:
    picker = WeightedRandomPicker("w")
    totals = np.array([1.0, 3.0, 0.0, 4.0])
    rng = np.random.default_rng(11)
    counts = Counter(picker.pick(totals, rng)[0] for _ in range(16000))
    assert counts[2] == 0
    assert counts[0] / 16000 == pytest.approx(1 / 8, abs=0.015)
    assert counts[1] / 16000 == pytest.approx(3 / 8, abs=0.015)
    assert counts[3] / 16000 == pytest.approx(4 / 8, abs=0.015)


def test_weighted_random_fallbacks_are_distinct_and_zero_scores_come_last() -> None:
    picker = WeightedRandomPicker("w", {"maxNumOfEndpoints": 3})
    totals = np.array([0.0, 2.0, 1.0, 0.0])
    for seed in range(50):
        picked = picker.pick(totals, np.random.default_rng(seed))
        assert sorted(picked[:2]) == [1, 2]
        assert picked[2] in (0, 3)


def test_weighted_random_all_zero_behaves_as_random() -> None:
    picker = WeightedRandomPicker("w")
    totals = np.zeros(3)
    firsts = {picker.pick(totals, np.random.default_rng(seed))[0] for seed in range(60)}
    assert firsts == {0, 1, 2}


def test_pickers_do_not_modify_totals() -> None:
    totals = np.array([1.0, 1.0, 0.5])
    totals.flags.writeable = False  # would raise on any write
    for picker in (
        MaxScorePicker("a", {"maxNumOfEndpoints": 2}),
        RandomPicker("b", {"maxNumOfEndpoints": 2}),
        WeightedRandomPicker("c", {"maxNumOfEndpoints": 2}),
    ):
        assert len(picker.pick(totals, np.random.default_rng(0))) == 2
