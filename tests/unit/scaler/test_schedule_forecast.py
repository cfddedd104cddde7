"""Schedule windows (cron + time zone, looking a warm-up ahead) and the seasonal forecast."""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo

import numpy as np
import pytest
from pydantic import ValidationError

from picker.config.scaling import DEFAULT_TOKEN_QUERY, ForecastConfig, ScalingConfig
from picker.scaler.forecast import WEEK_S, DemandHistory, forecast
from picker.scaler.schedule import Schedule
from picker.telemetry.observer import TOKEN_SUM_SAMPLES

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def cfg(**over: object) -> ScalingConfig:
    doc: dict[str, object] = {
        "target": {"kind": "Deployment", "name": "vllm"},
        "maxReplicas": 8,
        "replicaCapacity": {"requestsPerSecond": 10},
        "warmup": "180s",
        "schedules": [
            {
                "name": "weeknights",
                "start": "0 22 * * 1-5",
                "end": "0 7 * * 2-6",
                "timeZone": "Europe/Berlin",
                "minReplicas": 1,
                "maxReplicas": 2,
            },
            {"name": "sunday", "start": "0 0 * * 0", "duration": "24h", "minReplicas": 0, "maxReplicas": 1},
        ],
    }
    doc.update(over)
    return ScalingConfig.model_validate(doc, by_alias=True, by_name=False)


def at(*args: int, tz: dt.tzinfo = BERLIN) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(2025, 3, 4, 21, 59), (1, 8, "")),  # Tuesday evening: defaults
        (at(2025, 3, 4, 22, 0), (1, 2, "weeknights")),  # the start firing itself counts
        (at(2025, 3, 5, 6, 59), (1, 2, "weeknights")),
        (at(2025, 3, 5, 7, 0), (1, 8, "")),  # the end firing closes it
        (at(2025, 3, 8, 3, 0), (1, 2, "weeknights")),  # Friday 22:00 until Saturday 07:00
        (at(2025, 3, 8, 12, 0), (1, 8, "")),
        (at(2025, 3, 9, 12, 0, tz=dt.UTC), (0, 1, "sunday")),  # UTC window
        (at(2025, 3, 8, 22, 30), (1, 8, "")),  # Saturday 22:00 is no start (1-5 = Monday to Friday)
        (at(2025, 3, 30, 23, 0), (0, 1, "sunday")),  # 21:00 UTC on Sunday: the UTC window
    ],
)
def test_raw_bounds_follow_cron_windows_in_their_zone(when: float, expected: tuple[int, int, str]) -> None:
    assert Schedule(cfg()).raw(when) == expected


def test_daylight_saving_keeps_local_wall_time() -> None:
    s = Schedule(cfg())
    # 2025-03-31 is the first Monday of summer time: the window opens at 22:00 local = 20:00 UTC
    assert s.raw(at(2025, 3, 31, 20, 0, tz=dt.UTC))[2] == "weeknights"
    assert s.raw(at(2025, 3, 31, 19, 59, tz=dt.UTC))[2] == ""
    # in winter 22:00 local is 21:00 UTC
    assert s.raw(at(2025, 1, 6, 20, 30, tz=dt.UTC))[2] == ""
    assert s.raw(at(2025, 1, 6, 21, 0, tz=dt.UTC))[2] == "weeknights"


def test_minimum_is_read_a_warmup_ahead_but_maximum_is_not() -> None:
    s = Schedule(
        cfg(
            minReplicas=4,
            schedules=[
                {
                    "name": "day",
                    "start": "0 7 * * *",
                    "end": "0 19 * * *",
                    "minReplicas": 6,
                    "maxReplicas": 8,
                },
                {
                    "name": "night",
                    "start": "0 19 * * *",
                    "end": "0 7 * * *",
                    "minReplicas": 1,
                    "maxReplicas": 3,
                },
            ],
        )
    )
    before_day = at(2025, 3, 4, 6, 57, 30, tz=dt.UTC)
    b = s.bounds(before_day)
    assert (b.lo, b.hi, b.window, b.ahead) == (6, 6, "night", "day")  # floor raised; max lifted to the floor
    assert s.bounds(at(2025, 3, 4, 6, 56, 59, tz=dt.UTC)).lo == 1
    before_night = at(2025, 3, 4, 18, 58, tz=dt.UTC)
    b = s.bounds(before_night)
    assert (b.lo, b.hi) == (6, 8)  # a lower future minimum or maximum changes nothing yet


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "schedules",
            [{"name": "x", "start": "61 * * * *", "duration": "1h", "minReplicas": 1, "maxReplicas": 1}],
            "cron",
        ),
        (
            "schedules",
            [{"name": "x", "start": "0 1 * * *", "minReplicas": 1, "maxReplicas": 1}],
            "exactly one",
        ),
        (
            "schedules",
            [
                {
                    "name": "x",
                    "start": "0 1 * * *",
                    "end": "0 2 * * *",
                    "duration": "1h",
                    "minReplicas": 1,
                    "maxReplicas": 1,
                }
            ],
            "exactly one",
        ),
        (
            "schedules",
            [
                {
                    "name": "x",
                    "start": "0 1 * * *",
                    "duration": "1h",
                    "timeZone": "Mars/Olympus",
                    "minReplicas": 1,
                    "maxReplicas": 1,
                }
            ],
            "time zone",
        ),
        (
            "schedules",
            [{"name": "x", "start": "0 1 * * *", "duration": "1h", "minReplicas": 3, "maxReplicas": 1}],
            "minReplicas > maxReplicas",
        ),
        ("minReplicas", 9, "minReplicas > maxReplicas"),
        ("interval", "0.5s", "at least"),
        ("headroom", -0.1, "greater than or equal"),
        ("target", {"kind": "ReplicaSet", "name": "x"}, "Deployment"),
        ("target", {"kind": "Deployment", "name": "Not_A_Name"}, "valid object name"),
        ("forecast", {"prometheusUrl": "prometheus:9090"}, "http(s) URL"),
        ("replicaCapacity", {"requestsPerSecond": 10, "tokensPerSecond": 0}, "greater than 0"),
        ("forecast", {"prometheusUrl": "http://p:9090", "tokenQuery": ""}, "at least 1 character"),
    ],
)
def test_invalid_sections_are_rejected_with_a_reason(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg(**{field: value})


def test_duplicate_window_names_are_rejected() -> None:
    w = {"name": "x", "start": "0 1 * * *", "duration": "1h", "minReplicas": 1, "maxReplicas": 1}
    with pytest.raises(ValidationError, match="duplicate"):
        cfg(schedules=[w, w])


# ------------------------------------------------------------------------------------------------ forecast
def weekly(values_by_week: list[list[float]], step: float = 300.0, start: float = 0.0) -> DemandHistory:
    t: list[float] = []
    v: list[float] = []
    for week, values in enumerate(values_by_week):
        for i, x in enumerate(values):
            t.append(start + week * WEEK_S + i * step)
            v.append(x)
    return DemandHistory.from_samples(t, v)


def test_forecast_is_the_mean_of_weekly_peaks_over_the_horizon() -> None:
    # two weeks of history, same shape, the second twice as high; now = the start of week 3
    shape = [1.0, 2.0, 5.0, 3.0] + [1.0] * 20
    hist = weekly([shape, [2 * x for x in shape]])
    f = forecast(hist, 2 * WEEK_S, 900.0, weeks=2, trend=False)
    assert f is not None
    assert f.peaks == (10.0, 5.0)  # [now-1w, now-1w+15 min] holds 2, 4, 10, 6; the week before 1, 2, 5, 3
    assert f.rps == pytest.approx(7.5)
    assert f.trend == 1.0


def test_trend_scales_by_the_last_hour_within_bounds() -> None:
    step = 300.0
    week1 = [10.0] * (7 * 288)
    hist = weekly([week1], step=step)
    # this week so far: the last hour runs at 15
    now = WEEK_S + 3 * 3600.0
    recent = DemandHistory.from_samples(np.arange(now - 3600, now + 1, step), np.full(13, 15.0))
    f = forecast(hist.merged(recent), now, 600.0, weeks=1, trend=True)
    assert f is not None
    assert f.trend == pytest.approx(1.5)
    assert f.rps == pytest.approx(15.0)
    surge = DemandHistory.from_samples(np.arange(now - 3600, now + 1, step), np.full(13, 100.0))
    f = forecast(hist.merged(surge), now, 600.0, weeks=1, trend=True)
    assert f is not None
    assert f.trend == 2.0


def test_forecast_without_history_is_none_and_gaps_are_skipped() -> None:
    assert forecast(DemandHistory.empty(), 1e6, 600.0, weeks=2) is None
    hist = weekly([[4.0] * 10])  # only the week two weeks back has data
    f = forecast(hist, 2 * WEEK_S, 600.0, weeks=2, trend=False)
    assert f is not None
    assert math.isnan(f.peaks[0])
    assert f.peaks[1] == 4.0
    assert f.rps == 4.0


def test_a_short_horizon_between_samples_uses_the_sample_before() -> None:
    hist = DemandHistory.from_samples([0.0, 600.0, 1200.0], [1.0, 7.0, 2.0])
    f = forecast(hist, WEEK_S + 700.0, 60.0, weeks=1, trend=False)
    assert f is not None
    assert f.rps == 7.0


def test_samples_averaging_the_time_after_the_horizon_are_read_with_their_window() -> None:
    # 10-minute means stamped at their window's end: [0, 600) at 5, [600, 1200) at 5, [1200, 1800) at 20
    hist = DemandHistory.from_samples([600.0, 1200.0, 1800.0], [5.0, 5.0, 20.0])
    now = WEEK_S + 1000.0  # the horizon [1000, 1210] of last week reaches into the window of 20
    # read as instantaneous values the rise is missed: only the sample at 1200 is inside the horizon
    blind = forecast(hist, now, 210.0, weeks=1, trend=False)
    assert blind is not None
    assert blind.rps == 5.0
    # read with their 10-minute window, the sample at 1800 covers [1200, 1800]: the rise is seen
    seen = forecast(hist, now, 210.0, weeks=1, trend=False, lookback_s=600.0)
    assert seen is not None
    assert seen.rps == 20.0
    # early in the window nothing of the rise is inside the horizon, and the sample stamped at the horizon's
    # start (the mean of the window before it) is not read
    early = DemandHistory.from_samples([600.0, 1200.0, 1800.0], [30.0, 5.0, 20.0])
    f = forecast(early, WEEK_S + 600.0, 210.0, weeks=1, trend=False, lookback_s=600.0)
    assert f is not None
    assert f.rps == 5.0
    with pytest.raises(ValueError, match="lookback"):
        forecast(hist, now, 210.0, weeks=1, lookback_s=-1.0)


def test_the_sample_window_defaults_to_the_range_of_the_default_queries() -> None:
    c = cfg(forecast={"prometheusUrl": "http://p:9090"})
    assert c.forecast is not None
    assert c.forecast.sample_window == 300.0
    assert "[5m]" in c.forecast.query
    c = cfg(forecast={"prometheusUrl": "http://p:9090", "sampleWindow": "0s"})
    assert c.forecast is not None
    assert c.forecast.sample_window == 0.0
    with pytest.raises(ValidationError, match="at most"):
        cfg(forecast={"prometheusUrl": "http://p:9090", "sampleWindow": "7h"})


def test_history_cleans_its_input() -> None:
    h = DemandHistory.from_samples([3.0, 1.0, 2.0, 2.0, 4.0, 5.0], [3.0, 1.0, 9.0, 2.0, float("nan"), -1.0])
    assert h.t.tolist() == [1.0, 2.0, 3.0]
    assert h.rps.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="length"):
        DemandHistory.from_samples([1.0], [1.0, 2.0])


def test_the_default_token_query_reads_the_counters_the_live_token_rate_comes_from() -> None:
    # the live rate: Telemetry.tokens_served over these samples; the history: this query in Prometheus
    for name in TOKEN_SUM_SAMPLES:
        assert f"rate({name}[5m])" in DEFAULT_TOKEN_QUERY
    assert ForecastConfig(prometheus_url="http://p:9090").token_query == DEFAULT_TOKEN_QUERY
