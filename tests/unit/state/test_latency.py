"""The latency averages: a time-based EWMA per endpoint and signal, aged out after ``max_age``."""

from __future__ import annotations

import math

import pytest

from picker.state.latency import LatencySettings, LatencySignal, LatencyTracker

TTFT = LatencySignal.TTFT_PER_1K


def test_first_sample_sets_the_value():
    t = LatencyTracker()
    t.observe("a", TTFT, 0.5, 1, now=1.0)
    assert t.value("a", TTFT, 1.0) == 0.5
    assert math.isnan(t.value("a", LatencySignal.TPOT, 1.0))
    assert math.isnan(t.value("b", TTFT, 1.0))


def test_one_half_life_moves_half_way():
    t = LatencyTracker(LatencySettings(half_life_s=10.0, max_age_s=1000.0))
    t.observe("a", TTFT, 1.0, 1, now=0.0)
    t.observe("a", TTFT, 3.0, 1, now=10.0)
    assert t.value("a", TTFT, 10.0) == pytest.approx(2.0)
    t.observe("a", TTFT, 3.0, 1, now=20.0)
    assert t.value("a", TTFT, 20.0) == pytest.approx(2.5)


def test_the_pace_does_not_depend_on_the_sample_rate():
    slow = LatencyTracker(LatencySettings(half_life_s=10.0))
    fast = LatencyTracker(LatencySettings(half_life_s=10.0))
    slow.observe("a", TTFT, 1.0, 1, now=0.0)
    fast.observe("a", TTFT, 1.0, 1, now=0.0)
    slow.observe("a", TTFT, 3.0, 1, now=10.0)
    for k in range(1, 101):
        fast.observe("a", TTFT, 3.0, 1, now=k * 0.1)
    assert fast.value("a", TTFT, 10.0) == pytest.approx(slow.value("a", TTFT, 10.0))


def test_a_batch_counts_as_its_mean():
    t = LatencyTracker()
    t.observe("a", TTFT, 6.0, 3, now=1.0)
    assert t.value("a", TTFT, 1.0) == 2.0


def test_samples_at_the_same_instant_do_not_move_the_average():
    t = LatencyTracker()
    t.observe("a", TTFT, 1.0, 1, now=1.0)
    t.observe("a", TTFT, 9.0, 1, now=1.0)
    assert t.value("a", TTFT, 1.0) == 1.0


def test_old_averages_are_unknown_and_restart():
    t = LatencyTracker(LatencySettings(max_age_s=60.0))
    t.observe("a", TTFT, 5.0, 1, now=0.0)
    assert t.value("a", TTFT, 60.0) == 5.0
    assert math.isnan(t.value("a", TTFT, 60.5))
    t.observe("a", TTFT, 1.0, 1, now=70.0)
    assert t.value("a", TTFT, 70.0) == 1.0, "a stale average restarts from the new sample"


@pytest.mark.parametrize(("total", "count"), [(float("nan"), 1), (float("inf"), 1), (-1.0, 1), (1.0, 0)])
def test_junk_is_ignored(total: float, count: int):
    t = LatencyTracker()
    t.observe("a", TTFT, total, count, now=1.0)
    assert math.isnan(t.value("a", TTFT, 1.0))


def test_columns_and_membership():
    t = LatencyTracker(LatencySettings(max_age_s=10.0))
    t.observe("a", TTFT, 0.2, 1, now=0.0)
    t.observe("b", LatencySignal.TPOT, 0.05, 1, now=5.0)
    t.observe("b", LatencySignal.NTPOT, 0.07, 1, now=5.0)
    cols = t.columns(("a", "b", "c"), now=12.0)
    assert math.isnan(cols[0][0]), "a's sample is 12 s old"
    assert cols[1][1] == 0.05
    assert math.isnan(cols[1][2])
    assert cols[2][1] == 0.07
    t.retain(("b",))
    assert math.isnan(t.value("a", TTFT, 0.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"half_life_s": 0.0}, "half_life_s"),
        ({"max_age_s": 0.0}, "max_age_s"),
    ],
)
def test_settings_validation(kwargs: dict[str, float], message: str):
    with pytest.raises(ValueError, match=message):
        LatencySettings(**kwargs)  # type: ignore[arg-type]
