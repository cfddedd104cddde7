"""Fast extraction of the few endpoint fields we route on from a Prometheus text page.

A model server's page is 5-100 KB with ~100 families; we need at most seven of them. Parsing the whole
page (``prometheus_client``'s parser, or a Go-style full parse as the reference EPP does) spends most
of its time on families nobody reads, for every endpoint every 50 ms. So an :class:`Extractor` is
compiled once per engine mapping into one regular expression that matches only sample lines of the
wanted names; per page, a single ``findall`` (one pass in C, which skips from newline to newline and
gives up on a line at its first differing byte) returns just those lines, already split into labels,
value and timestamp. Nothing splits the page into lines or builds a parse tree in Python.

It never raises on page content: junk, truncation, NaN/Inf, negative counts, duplicate series,
missing ``# TYPE``, CRLF line ends, invalid UTF-8 and label values with escaped quotes / commas /
braces all degrade to "field unknown" (NaN / None) for the affected field only. Aggregation rules
and the TGI approximation are documented in ``picker/scrape/README.md``.

Why one module of this size: the compiled pattern, the label decoding and the per-field aggregation rules
share the pattern's group layout and the page's byte offsets; they change together whenever a field or a
spec form is added.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from typing import TypeVar

from picker.labels import MAX_LABEL_LENGTH
from picker.scrape.engines import EngineSpec, Specs
from picker.state.metrics import EndpointMetrics

__all__ = ["Extractor"]

_isnan = math.isnan
_NAN = math.nan
_INF = math.inf
_NEG_INF = -math.inf

#: One parsed sample line: (raw label block without braces, value, timestamp or -inf).
_Sample = tuple[bytes, float, float]
_Labels = dict[bytes, bytes]
_V = TypeVar("_V")

# A sample line after its metric name. The byte right after the name must be "{" or a blank, so
# families sharing a prefix (``_by_reason``, ``_total``, ``_created``, ``_bucket``) never match.
# The label block's content is only checked when a label is actually needed (lenient elsewhere).
# Quoted label values may hold escaped quotes, commas and braces; the label block is an "unrolled
# loop" of possessive character-class runs — 4x faster in the regex engine than a per-character
# alternation, and nothing in the pattern can backtrack, so junk costs linear time. The value
# excludes "_" (float() would accept "1_0", Prometheus does not). An exemplar ("# {...} v ts") and
# a CR before the LF are allowed; anything else on the line rejects the line.
_REST = (
    rb'(?:[ \t]*+\{([^"}\\\n]*+(?:"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"[^"}\\\n]*+)*+)\}[ \t]*+|[ \t]++)'
    rb"([^\s#_]++)(?:[ \t]++([-+]?[0-9.][0-9.eE+-]*+))?[ \t]*+(?:#[^\n]*+)?(?=\r?(?:\n|\Z))"
)
_LABEL_PAIR = re.compile(rb'[ \t]*+([^\s=",{}]++)[ \t]*+=[ \t]*+"((?:[^"\\\n]|\\.)*+)"[ \t]*+,?')
_ESCAPED = re.compile(rb"\\(.)")
_UNESCAPE = {b"n": b"\n", b"\\": b"\\", b'"': b'"'}


def _unescape(match: re.Match[bytes]) -> bytes:
    ch = match.group(1)
    return _UNESCAPE.get(ch, b"\\" + ch)


def _labels(body: bytes) -> _Labels | None:
    """Label block text → {name: unescaped value}; None if malformed."""
    out: _Labels = {}
    if b"\\" not in body:
        # No escapes: quotes delimit values exactly, so one C-level split does the tokenizing.
        parts = body.split(b'"')
        last = len(parts) - 1
        if last & 1:
            return None
        for i in range(0, last, 2):
            key = parts[i].strip()
            if i:
                if key[:1] != b",":
                    return None
                key = key[1:].lstrip()
            if key[-1:] != b"=":
                return None
            key = key[:-1].rstrip()
            if not key:
                return None
            out[key] = parts[i + 1]
        return out if parts[last].strip() in (b"", b",") else None
    pos = 0
    end = len(body)
    while pos < end:
        m = _LABEL_PAIR.match(body, pos)
        if m is None:
            return None if body[pos:].strip() else out
        out[m.group(1)] = _ESCAPED.sub(_unescape, m.group(2))
        pos = m.end()
    return out


def _label_value(body: bytes, key: bytes) -> bytes | None:
    """One label's value (unescaped); b"" when absent (as PromQL treats it); None if malformed.

    The common case (no escapes) is a ``find`` for ``key="`` at a label start outside any quoted
    value — without tokenizing the 30-label ``cache_config_info`` block.
    """
    if b"\\" not in body:
        needle = key + b'="'
        i = body.find(needle)
        while i >= 0:
            if (i == 0 or body[i - 1] == 44) and not body.count(b'"', 0, i) & 1:  # 44 = ","
                # an opening quote outside any value has its closing quote: the line pattern saw to it
                start = i + len(needle)
                return body[start : body.find(b'"', start)]
            i = body.find(needle, i + 1)
    labels = _labels(body)
    return None if labels is None else labels.get(key, b"")


def _distinct(samples: list[_Sample]) -> list[_Sample]:
    """Drop duplicate series (same label text): the newest timestamp wins, the first on ties."""
    best: dict[bytes, _Sample] = {}
    for s in samples:
        prev = best.get(s[0])
        if prev is None or s[2] > prev[2]:
            best[s[0]] = s
    return list(best.values())


def _sum_counts(samples: list[_Sample]) -> float:
    """Sum over series (data-parallel ranks / engines). Any NaN, Inf or negative → unknown."""
    total = 0.0
    for _, v, _ in samples:
        if not 0.0 <= v < _INF:
            return _NAN
        total += v
    return total if samples else _NAN


def _mean_fraction(samples: list[_Sample]) -> float:
    """Mean over series, each clamped to ≤ 1. Any NaN, Inf or negative → unknown."""
    total = 0.0
    for _, v, _ in samples:
        if not 0.0 <= v < _INF:
            return _NAN
        total += min(v, 1.0)
    return total / len(samples) if samples else _NAN


def _newest(samples: list[_Sample]) -> _Sample:
    """The series with the latest timestamp, the first on ties (the reference's rule)."""
    best = samples[0]
    for s in samples:
        if s[2] > best[2]:
            best = s
    return best


def _newest_positive(samples: list[_Sample]) -> float:
    """The newest series' value if it is a finite number ≥ 1 (a block size or count)."""
    if not samples:
        return _NAN
    v = _newest(samples)[1]
    return v if 1.0 <= v < _INF else _NAN


def _label_number(raw: bytes | None, minimum: float) -> float:
    """A whole number ≥ ``minimum`` from a label value, else NaN (absent, "None", junk)."""
    if not raw:
        return _NAN
    try:
        v = float(raw)
    except ValueError:
        return _NAN
    return v if minimum <= v < _INF and v.is_integer() else _NAN


#: adapters kept per list (a server holds a handful resident; ``max_lora`` is rarely above 64) and the
#: longest adapter name kept: a page is written by the model server, and what is kept lives in every
#: snapshot and in ``/debug/endpoints`` (label bounds, see :mod:`picker.labels`)
MAX_ADAPTERS = 256
MAX_ADAPTER_NAME = MAX_LABEL_LENGTH
#: label blocks longer than this are parsed every time instead of memoized (so the memo stays small)
_MAX_MEMO_KEY = 4096


def _adapters(raw: bytes | None) -> tuple[str, ...]:
    """A comma-separated adapter list → names, trimmed, empties and repeats dropped, order kept; names
    longer than :data:`MAX_ADAPTER_NAME` are dropped and at most :data:`MAX_ADAPTERS` kept."""
    if not raw:
        return ()
    names = (a.strip() for a in raw.decode("utf-8", "replace").split(",", MAX_ADAPTERS * 4))
    kept = dict.fromkeys(a for a in names if a and len(a) <= MAX_ADAPTER_NAME and "," not in a)
    return tuple(itertools.islice(kept, MAX_ADAPTERS))


_LoraState = tuple[tuple[str, ...] | None, tuple[str, ...] | None, float]
#: served model names kept per endpoint (one base model per server in practice; a few with aliases)
MAX_MODEL_NAMES = 16
_NO_LORA: _LoraState = (None, None, _NAN)
#: Entries per memo before it is emptied: far above the distinct info-gauge label blocks of a fleet
#: (one per engine config and adapter set), far below anything that matters for memory.
_MEMO_LIMIT = 512


def _lora_from_labels(body: bytes) -> _LoraState:
    labels = _labels(body)
    if labels is None:
        return _NO_LORA
    return (
        _adapters(labels.get(b"running_lora_adapters")),
        _adapters(labels.get(b"waiting_lora_adapters")),
        _label_number(labels.get(b"max_lora"), 0.0),
    )


def _remember(memo: dict[bytes, _V], key: bytes, value: _V) -> None:
    if len(key) > _MAX_MEMO_KEY:
        return
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


class _Selector:
    """A compiled :class:`~picker.scrape.spec.MetricSpec`: sample name and matchers as bytes."""

    __slots__ = ("matchers", "name")

    def __init__(self, name: bytes, matchers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.name = name
        self.matchers = matchers


def _compile(specs: Specs) -> tuple[_Selector, ...]:
    return tuple(
        _Selector(s.name.encode(), tuple((k.encode(), v.encode()) for k, v in s.labels)) for s in specs
    )


class _Page:
    """The wanted sample lines of one page, by name; memoizes label lookups shared by several specs.

    (Triton reads four fields from two families told apart by one label.)
    """

    __slots__ = ("by_name", "groups")

    def __init__(self, by_name: dict[bytes, list[_Sample]]) -> None:
        self.by_name = by_name
        #: (name, label) → label value → that family's samples with that value, in page order
        self.groups: dict[tuple[bytes, bytes], dict[bytes, list[_Sample]]] = {}

    def series(self, sel: _Selector) -> list[_Sample]:
        samples = self.by_name.get(sel.name)
        if samples is None:
            return []
        if not sel.matchers:
            return samples
        key, want = sel.matchers[0]
        groups = self.groups.get((sel.name, key))
        if groups is None:
            groups = self.groups[(sel.name, key)] = {}
            for s in samples:
                value = _label_value(s[0], key)
                if value is not None:
                    groups.setdefault(value, []).append(s)
        picked = groups.get(want, [])
        for key, want in sel.matchers[1:]:  # rare: several matchers
            picked = [s for s in picked if _label_value(s[0], key) == want]
        return picked

    def first(self, sels: tuple[_Selector, ...], reduce: Callable[[list[_Sample]], float]) -> float:
        """The value from the first alternative that yields one."""
        for sel in sels:
            samples = self.series(sel)
            v = reduce(_distinct(samples) if len(samples) > 1 else samples)
            if not _isnan(v):
                return v
        return _NAN


class Extractor:
    """Page → :class:`EndpointMetrics` for one engine mapping; build once, share across endpoints.

    Besides its compiled patterns it keeps two small memos keyed by the exact label-block bytes of
    the info gauges (``cache_config_info``, ``lora_requests_info``): their labels are the same on
    every scrape, and decoding them is a third of the work on a small page. The memos hold pure
    results (same bytes → same answer), are bounded, and need no locking (single dict operations).
    """

    __slots__ = (
        "_block_label",
        "_blocks_label",
        "_cache_block_size",
        "_cache_info",
        "_cache_memo",
        "_cache_num_blocks",
        "_first_line",
        "_kv_tokens",
        "_kv_usage",
        "_lines",
        "_lora",
        "_lora_memo",
        "_max_batch_tokens",
        "_model_memo",
        "_queued",
        "_running",
        "_wanted",
        "spec",
    )

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._queued = _compile(spec.queued)
        self._running = _compile(spec.running)
        self._kv_usage = _compile(spec.kv_usage)
        self._lora = _compile(spec.lora)
        self._cache_info = _compile(spec.cache_info)
        self._cache_block_size = _compile(spec.cache_block_size)
        self._cache_num_blocks = _compile(spec.cache_num_blocks)
        self._kv_tokens = _compile(spec.kv_tokens)
        self._block_label = spec.cache_block_size_label.encode()
        self._blocks_label = spec.cache_num_blocks_label.encode()
        self._max_batch_tokens = spec.max_batch_total_tokens
        self._lora_memo: dict[bytes, _LoraState] = {}
        self._cache_memo: dict[bytes, tuple[float, float]] = {}
        self._model_memo: dict[bytes, str] = {}
        names: dict[str, None] = {}
        for group in (
            spec.queued,
            spec.running,
            spec.kv_usage,
            spec.lora,
            spec.cache_info,
            spec.cache_block_size,
            spec.cache_num_blocks,
            spec.kv_tokens,
        ):
            names.update((s.name, None) for s in group)
        self._wanted = tuple(names)
        # Either order of the alternatives is correct (the rest of the line must start with "{" or a
        # blank, so "foo" cannot match "foo_total ..."); longest first just saves a failed attempt.
        alternation = b"|".join(re.escape(n.encode()) for n in sorted(names, key=len, reverse=True))
        # A literal newline first lets the regex engine jump from line to line; a ^-anchored
        # MULTILINE pattern would try every offset and be ~10x slower on a 75 KB page.
        self._lines = re.compile(rb"\n[ \t]*+(" + alternation + rb")" + _REST) if names else None
        self._first_line = re.compile(rb"[ \t]*+(" + alternation + rb")" + _REST) if names else None

    def __repr__(self) -> str:
        return f"Extractor({self.spec.name!r})"

    def wanted_families(self) -> tuple[str, ...]:
        """The sample names this extractor reads, for ``?name[]=...`` filtering by the scraper.

        prometheus_client-based servers (vLLM, SGLang) then send only these families, which shrinks the
        75 KB vLLM test page to 1.6 KB. Servers that ignore the parameter are unaffected.
        """
        return self._wanted

    def _collect(self, page: bytes) -> dict[bytes, list[_Sample]]:
        """All sample lines of the wanted names, parsed, grouped by name (page order kept)."""
        by_name: dict[bytes, list[_Sample]] = {}
        if self._lines is None or self._first_line is None:
            return by_name
        found = self._lines.findall(page)
        m = self._first_line.match(page)
        if m is not None:
            found.insert(0, m.groups(b""))
        for name, body, raw, stamp in found:
            try:
                value = float(raw)
            except ValueError:
                value = _NAN  # a junk value: this series is unknown, not absent
            ts = _NEG_INF
            if stamp:
                try:
                    ts = float(stamp)
                except ValueError:
                    ts = _NEG_INF
                if not -_INF < ts < _INF:
                    ts = _NEG_INF
            samples = by_name.get(name)
            if samples is None:
                by_name[name] = [(body, value, ts)]
            else:
                samples.append((body, value, ts))
        return by_name

    def extract(self, page: bytes | bytearray | memoryview | str) -> EndpointMetrics:
        """Read the engine's fields from one page. Never raises on page content; see module doc."""
        if not isinstance(page, bytes):
            page = page.encode("utf-8", "surrogatepass") if isinstance(page, str) else bytes(page)
        pg = _Page(self._collect(page))
        kv = pg.first(self._kv_usage, _mean_fraction)
        if _isnan(kv) and self._max_batch_tokens is not None and self._kv_tokens:
            # TGI: tokens the running batch may occupy over the server's token budget (README).
            kv = min(pg.first(self._kv_tokens, _sum_counts) / self._max_batch_tokens, 1.0)
        lora_active, lora_waiting, max_lora = self._lora_state(pg)
        block_size, num_blocks = self._cache_state(pg)
        return EndpointMetrics(
            waiting=pg.first(self._queued, _sum_counts),
            running=pg.first(self._running, _sum_counts),
            kv_usage=kv,
            lora_active=lora_active,
            lora_waiting=lora_waiting,
            max_lora=max_lora,
            block_size=block_size,
            num_blocks=num_blocks,
            models=self._models(pg),
        )

    def _models(self, pg: _Page) -> tuple[str, ...] | None:
        """The ``model_name`` label values of the queue and running series (vLLM and SGLang label every
        series with the served model name); None when no series carries one. At most
        :data:`MAX_MODEL_NAMES` names, so a page with thousands of series cannot grow the snapshot."""
        names: dict[str, None] = {}
        memo = self._model_memo
        for sels in (self._queued, self._running):
            for sel in sels:
                for body, _, _ in pg.series(sel):
                    name = memo.get(body)
                    if name is None:
                        raw = _label_value(body, b"model_name")
                        name = raw.decode("utf-8", "replace") if raw else ""
                        _remember(memo, body, name)
                    if name and len(names) < MAX_MODEL_NAMES:
                        names[name] = None
        return tuple(names) if names else None

    def _lora_state(self, pg: _Page) -> _LoraState:
        """The series with the largest value (its creation time: the newest) describes the adapters."""
        for sel in self._lora:
            best: _Sample | None = None
            for s in pg.series(sel):
                if -_INF < s[1] < _INF and (best is None or s[1] > best[1]):
                    best = s
            if best is None:
                continue
            state = self._lora_memo.get(best[0])
            if state is None:
                state = _lora_from_labels(best[0])
                _remember(self._lora_memo, best[0], state)
            if state[0] is not None:
                return state
        return _NO_LORA

    def _cache_state(self, pg: _Page) -> tuple[float, float]:
        """Block size / count from an info gauge's labels (newest series), else from plain gauges."""
        block_size = num_blocks = _NAN
        for sel in self._cache_info:
            samples = pg.series(sel)
            if samples:
                body = _newest(samples)[0]
                sizes = self._cache_memo.get(body)
                if sizes is None:
                    sizes = (
                        _label_number(_label_value(body, self._block_label), 1.0),
                        _label_number(_label_value(body, self._blocks_label), 1.0),
                    )
                    _remember(self._cache_memo, body, sizes)
                block_size, num_blocks = sizes
                break
        if _isnan(block_size):
            block_size = pg.first(self._cache_block_size, _newest_positive)
        if _isnan(num_blocks):
            num_blocks = pg.first(self._cache_num_blocks, _newest_positive)
        return block_size, num_blocks
