"""A peer's ``content-length`` header never raises: only ASCII digits are a length (the long fuzz run found
``¹``, which ``str.isdigit`` accepts and ``int`` refuses, ending the stream with an error logged)."""

from __future__ import annotations

import pytest

from picker.extproc.request_body import declared_length


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("1048576", 1 << 20),
        ("9" * 18, int("9" * 18)),
        ("", None),
        ("¹", None),
        ("٣", None),  # an Arabic-Indic digit: int() would accept it, a proxy never sends it
        ("9" * 19, None),
        ("9" * 5000, None),  # int() refuses over 4,300 digits
        (" 12", None),
        ("-1", None),
        ("1e3", None),
    ],
)
def test_declared_length(value: str, expected: int | None) -> None:
    assert declared_length(value) == expected
