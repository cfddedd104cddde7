"""The one Go-duration parser (flags, both configuration documents, plugin parameters)."""

from __future__ import annotations

import pytest

from scoring.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("200ms", 0.2),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("250us", 250e-6),
        ("250µs", 250e-6),  # MICRO SIGN, U+00B5
        ("250μs", 250e-6),  # GREEK SMALL LETTER MU, U+03BC (Go accepts both)
        ("100ns", 100e-9),
        (" 2s ", 2.0),
        ("0", 0.0),
        ("0s", 0.0),
        # our extension: a bare number means seconds
        ("3", 3.0),
        ("0.2", 0.2),
        (5, 5.0),
        (0.05, 0.05),
    ],
)
def test_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "ms",
        "5x",
        "5 parsecs",
        "1d",  # not a Go unit (durationpy accepts it; Go and we do not)
        "-1s",
        "+1s",
        "1s2",
        "s1",
        "--",
        "1.2.3s",
        "nan",
        "inf",
        "1e400h",
        -3,
        -0.5,
        float("nan"),
        float("inf"),
        True,
        None,
        [1],
    ],
)
def test_parse_rejects_with_a_value_error_naming_the_value(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.05, 0.5, 2.0, 60.0, 90.0, 1.25])
def test_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
