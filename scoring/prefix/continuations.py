"""Continuation credit (ours, ``continuationCredit``): the server that answered a prompt holds its answer too.

A conversation's next request is the previous request's prompt, then the answer, then the new question
(chat: the earlier messages, the assistant's message, the new user message; inference-perf's multi-turn
sessions: ``prompt + " " + response``). The model server that answered the previous request keeps the
answer's blocks cached beside the prompt's (vLLM V1 caches every full block it computes, generated ones
included; SGLang's radix cache inserts prompt + output when a request finishes). The index, learned from
routed prompts, lists only the prompt: the holder's lead over every other server that shares the system
prompt is the previous question, often less than one index entry, so the answer it holds (often the
bulk of the next prompt) earns it nothing.

This module remembers where each routed prompt *ended*, so that a later prompt that extends it byte for
byte is recognised as its continuation and the endpoint that served it is credited with the prompt plus
its answer:

* **The end of a prompt** is its last hashed byte. The canonical prompt of every API is extendable
  (``picker/routing/prompt.py``: a chat message is ``role``, a newline, its content and a newline, so the
  next turn's text begins with this turn's), and only prompts shorter than the hasher's window have a
  known end (beyond it the next turn matches the whole window anyway).
* **What is stored.** With ``S`` bytes per index entry, a prompt ending at byte ``c`` has its last full
  entry's chain hash ``key`` (the model/salt seed when ``c < S``) and a tail of ``L = c mod S`` bytes; its
  end token is ``xxh64(tail, seed=key)`` (``key`` itself when ``L = 0``). Stored: the lengths ``L`` seen
  after each ``key`` (at most :data:`LENGTHS_PER_KEY`), and per end token the endpoint that served the
  prompt, ``c``, the answer's expected size and the prompt's last index hash. Both maps are LRU-bounded
  (:data:`CAPACITY` prompts: 15.2 MB when full).
* **Recognising a continuation.** For a new prompt of ``n`` bytes, walk its chain from the longest
  prefix down: at each entry boundary whose hash (or the seed) has stored lengths, hash the next ``L``
  bytes with it and look the token up; the first hit is the longest earlier prompt this one extends
  (it must be longer, so a repeated prompt is not its own continuation). One dictionary lookup per
  entry boundary, and one xxHash64 of under ``S`` bytes per stored length at a boundary that has any:
  microseconds.
* **The credit.** The serving endpoint, while the index still lists that prompt's last entry for it (not
  evicted, not purged), is credited with ``min(n, c + 4 x answer tokens)`` bytes in blocks (at least
  what the index matched for it), where the answer's tokens are the earlier request's
  ``output_tokens_estimate`` (its ``max_tokens``); without one, with the whole new prompt (the
  continuation is then taken to be that endpoint's answer). The score and the load guard then see the
  answer as cached there, as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import xxhash

from scoring.types import PromptEnd

#: routed prompts whose ends are remembered (LRU): about 490 bytes each with both maps (15.2 MB when full,
#: measured; at most 600 bytes each, tested: 20 MB)
CAPACITY: Final = 32768
#: distinct tail lengths remembered per entry boundary (most recent first)
LENGTHS_PER_KEY: Final = 4
#: bytes per token the hasher assumes (the answer's size in bytes is 4 x its tokens)
_CHARS_PER_TOKEN: Final = 4

_xxh64 = xxhash.xxh64_intdigest


class Continuation(NamedTuple):
    """An earlier prompt this one extends: who served it, where it ended, the answer expected after it."""

    name: str
    end: int
    answer_bytes: int
    last: int


def prompt_end(  # noqa: PLR0917 - the hasher's values and the request's
    seed: int,
    hashes: Sequence[int],
    data: bytes | bytearray | memoryview,
    entry_bytes: int,
    window: int,
    answer_tokens: int,
) -> PromptEnd | None:
    """The end of a hashed prompt (``data``: the bytes hashed into ``hashes``), or None when it is unknown:
    no hashes, or the prompt reaches the window (it may go on beyond it)."""
    size = len(data)
    if not hashes or size >= window:
        return None
    end = size
    i, length = divmod(end, entry_bytes)
    key = hashes[i - 1] if i else seed
    token = _xxh64(data[i * entry_bytes : end], key) if length else key
    # beyond the window nothing more can be credited; the cap also keeps a huge max_tokens within 64 bits
    answer = min(max(0, answer_tokens) * _CHARS_PER_TOKEN, window)
    return PromptEnd(key, length, token, end, hashes[-1], answer)


class Continuations:
    """Ends of routed prompts, and the lookup that finds the earlier prompt a new one extends."""

    __slots__ = ("_capacity", "_ends", "_lengths")

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        #: entry-boundary hash -> tail lengths seen after it (most recent first)
        self._lengths: dict[int, tuple[int, ...]] = {}
        #: end token -> (endpoint, end, answer bytes, last hash), least recent first
        self._ends: dict[int, Continuation] = {}

    def __len__(self) -> int:
        return len(self._ends)

    def add(self, name: str, end: PromptEnd) -> None:
        """``name`` served the prompt that ends at ``end`` (the most recent server wins)."""
        ends = self._ends
        ends.pop(end.token, None)
        ends[end.token] = Continuation(name, end.end, end.answer_bytes, end.last)
        lengths = self._lengths
        seen = lengths.pop(end.key, ())
        if end.length not in seen:
            seen = (end.length, *seen[: LENGTHS_PER_KEY - 1])
        lengths[end.key] = seen
        cap = self._capacity
        if len(ends) > cap:
            del ends[next(iter(ends))]
        if len(lengths) > cap:
            del lengths[next(iter(lengths))]

    def find(
        self, seed: int, hashes: Sequence[int], data: bytes | bytearray | memoryview, entry_bytes: int
    ) -> Continuation | None:
        """The longest earlier prompt that ``data`` (the bytes hashed into ``hashes``) extends, or None."""
        lengths = self._lengths
        if not lengths:
            return None
        size = len(data)
        ends = self._ends
        for j in range(min(len(hashes), (size - 1) // entry_bytes), -1, -1):
            key = hashes[j - 1] if j else seed
            seen = lengths.get(key)
            if seen is None:
                continue
            base = j * entry_bytes
            for length in sorted(seen, reverse=True):
                if base + length >= size:
                    continue
                token = _xxh64(data[base : base + length], key) if length else key
                hit = ends.get(token)
                if hit is not None and hit.end == base + length:
                    return hit
        return None

    def forget(self, name: str) -> None:
        """Drop the prompts an endpoint served (it left the pool)."""
        ends = self._ends
        for token in [t for t, c in ends.items() if c.name == name]:
            del ends[token]

    def clear(self) -> None:
        self._ends.clear()
        self._lengths.clear()
