"""Strict reading of a plugin's ``parameters`` mapping.

``scoring`` may not depend on pydantic, and plugin parameters are few and flat, so a small reader does:
it rejects unknown keys (a typo such as ``maxNumOfEndpoint`` silently falling back to the default is the
worst kind of configuration bug), checks types and ranges, and names the plugin and the key in every
error message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from scoring.durations import format_duration, parse_duration
from scoring.errors import ConfigurationError

#: the largest integer parameter unless a plugin says otherwise: the reference's parameters are Go ints,
#: and no count, size or threshold means anything beyond 32 bits
INT_MAX = 2**31 - 1
#: the longest duration parameter unless a plugin says otherwise (thresholds, half-lives: seconds to
#: minutes in practice; a day is already no limit)
DURATION_MAX = 86_400.0


class Params:
    """Typed access to one plugin's parameters; every accessor validates and records the effective value.

    ``effective`` (the value actually used for every known key, defaults included) is what the ``/config``
    admin endpoint shows, so an operator sees e.g. ``maxNumOfEndpoints: 1`` even when it was omitted.
    """

    def __init__(
        self, plugin_name: str, plugin_type: str, raw: Mapping[str, Any] | None, known: Iterable[str]
    ) -> None:
        self._where = f"plugin {plugin_name!r} (type {plugin_type!r})"
        self._raw: Mapping[str, Any] = raw if raw is not None else {}
        if not isinstance(self._raw, Mapping):
            raise ConfigurationError(f"{self._where}: parameters must be a mapping, got {raw!r}")
        known_set = set(known)
        unknown = sorted(str(k) for k in self._raw if k not in known_set)
        if unknown:
            allowed = ", ".join(sorted(known_set)) or "none"
            raise ConfigurationError(
                f"{self._where}: unknown parameter(s) {', '.join(unknown)} (allowed: {allowed})"
            )
        self.effective: dict[str, Any] = {}

    def _fail(self, key: str, what: str, value: object) -> ConfigurationError:
        return ConfigurationError(f"{self._where}: parameter {key!r} {what}, got {value!r}")

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
    ) -> float:
        value = self._raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._fail(key, "must be a finite number", value)
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            raise self._fail(key, f"must be {'>' if exclusive_minimum else '>='} {minimum:g}", value)
        if maximum is not None and value > maximum:
            raise self._fail(key, f"must be <= {maximum:g}", value)
        self.effective[key] = value
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int | None = None, maximum: int = INT_MAX) -> int:
        value = self._raw.get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "must be an integer", value)
        if minimum is not None and value < minimum:
            raise self._fail(key, f"must be >= {minimum}", value)
        if value > maximum:
            raise self._fail(key, f"must be <= {maximum}", value)
        self.effective[key] = value
        return value

    def duration(self, key: str, default: str, *, maximum: float = DURATION_MAX) -> float:
        value = self._raw.get(key, default)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self._fail(key, "must be a duration such as 200ms or 2s", value) from exc
        if seconds > maximum:
            raise self._fail(key, f"must be at most {format_duration(maximum)}", value)
        self.effective[key] = value
        return seconds

    def string(self, key: str, default: str, *, choices: Iterable[str] | None = None) -> str:
        value = self._raw.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "must be a string", value)
        if choices is not None:
            options = tuple(choices)
            if value not in options:
                raise self._fail(key, f"must be one of {', '.join(options)}", value)
        self.effective[key] = value
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "must be true or false", value)
        self.effective[key] = value
        return value
