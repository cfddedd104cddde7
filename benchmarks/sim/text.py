"""Deterministic prompt text for traces that carry prefix units instead of text.

Traces like Mooncake's give each request a list of ``hash_ids`` (512-token prefix blocks; equal ids = equal
content) but no text. Routers that look at text need some: the EPP hashes the prompt's characters
(reference prefix index), SGLang's router walks a character radix tree. So every unit id becomes a fixed
block of text, the same block every time the id appears:

    block(u) = "<u> " + a slice of a seeded word corpus chosen by u, cut to ``unit_chars`` characters
    prompt   = block(u_0) + block(u_1) + ... , cut to ``prompt_tokens x CHARS_PER_TOKEN`` characters

``CHARS_PER_TOKEN`` is 4, the rule the EPP uses to turn characters into tokens (``gie-epp.md`` §3.6), so a
unit of ``unit_tokens`` tokens is ``4 x unit_tokens`` characters and the EPP's block boundaries (64
characters by default) fall on unit boundaries. Equal units give equal text; two different units differ
within their first few characters (the ``<u>`` header), so character-level prefix matches agree with
unit-level ones to within those few characters.

Only what routers read is ever built: :func:`prompt_text` takes a character limit (the EPP hashes at most
``maxPrefixBlocksToMatch x 64`` characters), and tree-based routers use the unit structure directly
(:class:`benchmarks.sim.cache_aware.ApproxTree`), so a 12,000-request trace never materializes its
hundreds of megabytes of prompt text.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from functools import lru_cache

#: Characters per token, the EPP's estimate (and so the text length the simulator gives a token).
CHARS_PER_TOKEN = 4

_WORDS = (
    *("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on"),
    *("not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you"),
    *("were", "her", "she", "there", "one", "all", "we", "their", "been", "has", "when", "who", "will"),
    *("more", "no", "if", "out", "so", "said", "what", "up", "its", "about", "into", "than", "them", "can"),
    *("only", "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first", "any"),
    *("cache", "prefix", "token", "model", "server", "request", "answer", "question", "system", "prompt"),
)
_CORPUS_CHARS = 1 << 20


@lru_cache(maxsize=1)
def _corpus() -> str:
    """About 1 MB of space-separated words from a fixed seed (the same on every machine and run)."""
    rng = random.Random(20250613)
    parts: list[str] = []
    size = 0
    while size < _CORPUS_CHARS:
        w = rng.choice(_WORDS)
        parts.append(w)
        size += len(w) + 1
    return " ".join(parts)


@lru_cache(maxsize=65536)
def unit_block(unit: int, unit_chars: int) -> str:
    """The text of prefix unit ``unit``: exactly ``unit_chars`` characters, a pure function of the id."""
    corpus = _corpus()
    head = f"<{unit}> "
    body = unit_chars - len(head)
    if body <= 0:
        return head[:unit_chars]
    start = (unit * 2654435761) % (len(corpus) - body)
    return head + corpus[start : start + body]


#: unit size of the private filler of traces without units (any size would do: it is never shared)
FILLER_UNIT_TOKENS = 512


def private_unit(request: int, j: int) -> int:
    """The id of the ``j``-th filler unit of request ``request``: negative, so never equal to a trace's
    unit, and different for every (request, j)."""
    return -(request * 65536 + j + 1)


def unit_text(unit: int, unit_chars: int, heads: Mapping[int, tuple[int, int]]) -> str:
    """The text of ``unit``, whose first characters may be an earlier unit's (``heads``: unit ->
    (earlier unit, characters), ``Workload.unit_heads``); a plain :func:`unit_block` otherwise."""
    head = heads.get(unit) if heads else None
    if head is None:
        return unit_block(unit, unit_chars)
    earlier, chars = head
    chars = max(0, min(chars, unit_chars))
    return unit_text(earlier, unit_chars, heads)[:chars] + unit_block(unit, unit_chars)[chars:]


def prompt_text(
    units: tuple[int, ...],
    prompt_tokens: int,
    unit_tokens: int,
    *,
    request: int,
    max_chars: int = -1,
    heads: Mapping[int, tuple[int, int]] | None = None,
) -> str:
    """The prompt of request number ``request`` with these prefix units and this many tokens, optionally
    cut to ``max_chars`` characters (``-1`` = whole). Units cover the prompt in order, the last possibly
    partial. Tokens the units do not cover (a trace without units, such as Azure's) are private filler
    units of that request, so unrelated requests never share text. ``heads`` (``Workload.unit_heads``)
    makes a unit's text begin with an earlier unit's, where a prompt goes on from an earlier one's last,
    partial unit."""
    total = prompt_tokens * CHARS_PER_TOKEN
    limit = total if max_chars < 0 else min(total, max_chars)
    if unit_tokens <= 0:
        unit_tokens = FILLER_UNIT_TOKENS
    unit_chars = unit_tokens * CHARS_PER_TOKEN
    parts: list[str] = []
    size = 0
    for u in units:
        if size >= limit:
            break
        parts.append(unit_text(u, unit_chars, heads) if heads else unit_block(u, unit_chars))
        size += unit_chars
    j = 0
    while size < limit:
        parts.append(unit_block(private_unit(request, j), unit_chars))
        size += unit_chars
        j += 1
    return "".join(parts)[:limit]
