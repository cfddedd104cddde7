"""The demo's summary line must say a worse result as worse (it once printed "cut p50 by -7%")."""

from picker.demo import _change


def test_relative_changes_read_the_right_way_round() -> None:
    assert _change(0.77, 1.0) == "23% lower"
    assert _change(1.07, 1.0) == "7% higher"
    assert _change(1.001, 1.0) == "the same"
