"""Plugin parameter reading: strict keys, typed values with the plugin named in errors."""

from __future__ import annotations

import pytest

from scoring._params import Params
from scoring.errors import ConfigurationError


def test_params_reject_unknown_keys_naming_the_plugin() -> None:
    with pytest.raises(
        ConfigurationError, match=r"plugin 'p' \(type 't'\): unknown parameter\(s\) b.*allowed: a"
    ):
        Params("p", "t", {"a": 1, "b": 2}, ("a",))
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        Params("p", "t", [1, 2], ("a",))  # type: ignore[arg-type]


def test_params_typed_access_and_effective_values() -> None:
    p = Params("p", "t", {"n": 2.0, "f": 3, "d": "1s", "s": "x", "b": False}, ("n", "f", "d", "s", "b", "m"))
    assert p.integer("n", 1) == 2  # 2.0 is an integer
    assert p.number("f", 0.5, minimum=0.0) == 3.0
    assert p.duration("d", "200ms") == 1.0
    assert p.string("s", "y", choices=("x", "y")) == "x"
    assert p.boolean("b", True) is False
    assert p.integer("m", 7) == 7  # default
    assert p.effective == {"n": 2, "f": 3, "d": "1s", "s": "x", "b": False, "m": 7}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.integer("v", 1), "must be an integer"),
        (lambda p: p.number("v", 1.0), "must be a finite number"),
        (lambda p: p.boolean("v", True), "must be true or false"),
        (lambda p: p.duration("v", "1s"), "duration"),
        (lambda p: p.string("v", "a", choices=("a", "b")), "one of a, b"),
    ],
)
def test_params_type_errors(call: object, message: str) -> None:
    p = Params("p", "t", {"v": "zzz" if "one of" in message else [1]}, ("v",))
    with pytest.raises(ConfigurationError, match=message):
        call(p)  # type: ignore[operator]


def test_params_ranges() -> None:
    p = Params("p", "t", {"a": 0, "b": 0.0, "c": 2.0}, ("a", "b", "c"))
    with pytest.raises(ConfigurationError, match=">= 1"):
        p.integer("a", 1, minimum=1)
    with pytest.raises(ConfigurationError, match="> 0"):
        p.number("b", 1.0, minimum=0.0, exclusive_minimum=True)
    with pytest.raises(ConfigurationError, match="<= 1"):
        p.number("c", 1.0, maximum=1.0)
