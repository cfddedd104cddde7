import pytest

from picker.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("0", 0.0),
        ("3", 3.0),
        ("0.2", 0.2),
        (5, 5.0),
    ],
)
def test_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "5x", "-1s", "1s2", "s1", "--", -3])
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_roundtrip():
    for s in (0.05, 2.0, 60.0):
        assert parse_duration(format_duration(s)) == pytest.approx(s)
