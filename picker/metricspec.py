"""Metric spec strings: which series of a model server's ``/metrics`` page feeds which endpoint field.

The syntax is the reference EPP's (``engineConfigs`` of ``core-metrics-extractor``): a PromQL instant
selector ``name{label=value,...}``, so operators can copy their existing configuration over. Parsing
happens once, at configuration time; a bad spec is a ``ValueError`` naming the offending text, so a bad
ConfigMap is rejected loudly instead of silently matching nothing for ever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Wrong *types* in a config document raise ValueError too (the TRY004 noqa's below): pydantic turns
# only ValueError into a validation error, and configuration is where these functions are called.
__all__ = ["MetricSpec", "parse_spec"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_BLANK = re.compile(r"\s*")
# A quoted value: PromQL accepts double and single quotes with backslash escapes.
_QUOTED = {
    '"': re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL),
    "'": re.compile(r"'((?:[^'\\]|\\.)*)'", re.DOTALL),
}
# An unquoted value (accepted, as the reference does): anything up to the next separator.
_UNQUOTED = re.compile(r"[^,}\s\"'=!~{]+")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One selector: a sample name plus equality label matchers (sorted, duplicates removed).

    A series matches when every matcher's label has exactly that value; as in PromQL, ``label=""``
    also matches series that lack the label.
    """

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        for key, value in self.labels:
            if not _LABEL_NAME.fullmatch(key) or not isinstance(value, str):
                raise ValueError(f"invalid label matcher {key!r}={value!r} in spec for {self.name!r}")

    def __str__(self) -> str:
        """The canonical spec text (round-trips through :func:`parse_spec`)."""
        if not self.labels:
            return self.name
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in self.labels)
        return f"{self.name}{{{inner}}}"


def is_label_name(text: object) -> bool:
    """True for a valid Prometheus label name (ASCII letters, digits, underscore; no leading digit)."""
    return isinstance(text, str) and _LABEL_NAME.fullmatch(text) is not None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value)


class _Cursor:
    """A tiny recursive-descent reader over the spec text; every error names the whole spec."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> ValueError:
        return ValueError(f"invalid metric spec {self.text!r}: {why} at offset {self.pos}")

    def skip_blank(self) -> None:
        m = _BLANK.match(self.text, self.pos)
        if m is not None:
            self.pos = m.end()

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def take(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        m = pattern.match(self.text, self.pos)
        if m is None:
            raise self.fail(f"expected {what}")
        self.pos = m.end()
        return m

    def matcher(self) -> tuple[str, str]:
        key = self.take(_LABEL_NAME, "a label name").group(0)
        self.skip_blank()
        op = self.text[self.pos : self.pos + 2]
        if op in {"!=", "=~", "!~"}:
            raise self.fail(f"matcher {op!r} on label {key!r} is not supported, only '='")
        if self.peek() != "=":
            raise self.fail(f"expected '=' after label {key!r}")
        self.pos += 1
        self.skip_blank()
        quote = self.peek()
        if quote in _QUOTED:
            return key, _unescape(self.take(_QUOTED[quote], "a closing quote").group(1))
        return key, self.take(_UNQUOTED, f"a value for label {key!r}").group(0)


def parse_spec(text: str) -> MetricSpec | None:
    """Parse ``name{label=value,l2="v"}``; the empty (or blank) string means "disabled" → None.

    Values may be double-quoted, single-quoted (with backslash escapes) or bare, as in the reference.
    Only ``=`` matchers exist: ``!=``, ``=~`` and ``!~`` raise instead of being dropped, because a
    dropped matcher would silently widen the selection. ``{__name__="x"}`` is accepted for the name.
    """
    if not isinstance(text, str):
        raise ValueError(f"metric spec must be a string, got {type(text).__name__}")  # noqa: TRY004
    cur = _Cursor(text)
    cur.skip_blank()
    if cur.pos == len(text):
        return None
    name = ""
    if cur.peek() != "{":
        name = cur.take(_METRIC_NAME, "a metric name").group(0)
        cur.skip_blank()
    labels: dict[str, str] = {}
    if cur.peek() == "{":
        cur.pos += 1
        cur.skip_blank()
        while cur.peek() != "}":
            key, value = cur.matcher()
            if labels.get(key, value) != value:
                raise cur.fail(f"label {key!r} given twice with different values")
            labels[key] = value
            cur.skip_blank()
            if cur.peek() == ",":
                cur.pos += 1
                cur.skip_blank()
            elif cur.peek() != "}":
                raise cur.fail("expected ',' or '}'")
        cur.pos += 1
        cur.skip_blank()
    if cur.pos != len(text):
        raise cur.fail("unexpected trailing text")
    if "__name__" in labels:
        alias = labels.pop("__name__")
        if name and alias != name:
            raise cur.fail(f"__name__ {alias!r} contradicts the metric name {name!r}")
        name = alias
    if not _METRIC_NAME.fullmatch(name):
        raise cur.fail(f"missing or invalid metric name {name!r}")
    return MetricSpec(name, tuple(sorted(labels.items())))
