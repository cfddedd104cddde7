"""Go-style duration strings (``50ms``, ``2s``, ``1m30s``), as the reference EPP's flags accept them."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | float | int) -> float:
    """Return seconds. Accepts a Go duration string, or a bare number meaning seconds.

    Raises ValueError with the offending text for anything else (negative, empty, unknown unit).
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}")  # noqa: TRY004 - callers handle ValueError only
    s = text.strip()
    if s in {"0", "0s"}:
        return 0.0
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return value
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"invalid duration {text!r} (use e.g. 50ms, 2s, 1m)")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for display (``0.05`` → ``50ms``)."""
    if seconds and seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"
