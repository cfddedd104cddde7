"""Go duration strings (``50ms``, ``2s``, ``1m30s``), the one parser of the project.

The reference EPP writes every duration the Go way (flags, plugin parameters, ``flowControl``), so
configuration copied from its documentation must load unchanged. The parser lives here, not in
``picker``, because scoring plugins parse their own parameters and ``scoring`` may import only numpy and
the standard library; the service (flags, configuration documents) imports it from here.

Why not the ``durationpy`` package (installed with ``kubernetes``): ``scoring`` may not depend on it, and
its grammar is not Go's either (it accepts ``d``, ``w``, ``mm`` and ``y`` units, which Go rejects, and
rounds to whole microseconds), so it would not make us more compatible than these thirty lines.

Accepted: Go's grammar without a sign (a sequence of decimal numbers each with a unit ``ns``, ``us``,
``µs``, ``μs``, ``ms``, ``s``, ``m``, ``h``; ``0`` alone), and, our extension, a bare non-negative number
(an int, a float or a numeric string) meaning seconds. Negative, non-finite or empty durations are errors.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

# µ (U+00B5) and μ (U+03BC) are both accepted by Go for microseconds
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: object) -> float:
    """Seconds from a Go duration string or a bare non-negative number of seconds.

    Raises ``ValueError`` naming the value for anything else (pydantic validators and the plugin parameter
    reader turn only ValueError into a field error, so a wrong *type* is a ValueError here too).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")  # noqa: TRY004 - see the docstring
    if isinstance(value, int | float):
        return _seconds(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}")  # noqa: TRY004 - see the docstring
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _seconds(number, value)
    pos = 0
    total = 0.0
    for part in _PART.finditer(text):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r} (use e.g. 50ms, 2s, 1m)")
    return _seconds(total, value)


def _seconds(seconds: float, value: object) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r} (must be a finite number of seconds >= 0)")
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for display (``0.05`` → ``50ms``)."""
    if seconds and seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"
