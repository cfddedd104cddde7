"""Synthetic client traffic for the demo and benchmarks: single completions, multi-turn chats, and the
fake servers' prefix-cache counters that tell how much of the chats the servers found cached.

A chat client resends the whole conversation with every turn, so a model server's prefix cache can serve
all of a turn's prompt but its newest messages — if the turn reaches the server that computed the
earlier ones. :func:`conversations` builds such traffic: each conversation has its own long system prompt
and grows by one question and one answer per turn. :func:`prefix_counters` reads what the fake servers
(``GET /debug/stats``) served from their caches, whatever metrics their engine's page exports.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

__all__ = ["ChatMeter", "completions", "conversations", "prefix_counters", "prompt_tokens", "with_chats"]

_WORDS = (
    "order", "invoice", "refund", "shipping", "warranty", "account", "address", "delivery", "return",
    "receipt", "discount", "payment", "support", "product", "stock", "status",
)  # fmt: skip


def completions(n: int, seed: int, *, model: str, rate: float = 42.0) -> list[tuple[float, bytes]]:
    """(arrival offset s, ``/v1/completions`` body): Poisson arrivals at ``rate`` per second, chat-like
    prompt and output lengths; every prompt starts with its own index, so none shares a prefix."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not security
    t = 0.0
    out = []
    words = ("route", "token", "cache", "queue", "batch", "model", "prefix", "decode", "gateway", "pool")
    for i in range(n):
        t += rng.expovariate(rate)
        prompt_words = int(min(1500, rng.lognormvariate(5.0, 0.8)))
        max_tokens = int(min(256, max(8, rng.lognormvariate(3.8, 0.6))))
        prompt = f"request {i}: " + " ".join(rng.choice(words) for _ in range(prompt_words))
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
        out.append((t, body.encode()))
    return out


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def conversations(
    count: int, turns: int, *, span_s: float, seed: int, salt: str, model: str
) -> list[tuple[float, str, bytes]]:
    """``(arrival s, path, body)`` of ``count`` conversations of ``turns`` turns each, sorted by arrival.

    Conversation starts are spread over the first half of ``span_s`` and its turns over the rest, a few
    seconds apart, as a person types. ``salt`` goes into every system prompt: two calls with different
    salts produce traffic of the same shape that shares no prefix (so a second replay on the same servers
    finds nothing the first one cached).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not security
    out: list[tuple[float, str, bytes]] = []
    gap = span_s / 2 / max(1, turns)
    for c in range(count):
        system = f"[{salt}-{c}] You are the support assistant of a hardware store. " + _sentence(rng, 220)
        history: list[dict[str, Any]] = [{"role": "system", "content": system}]
        at = rng.uniform(0.0, span_s / 2)
        for t in range(turns):
            history.append({"role": "user", "content": f"question {t}: " + _sentence(rng, 30)})
            body = {"model": model, "messages": history, "max_tokens": 24, "temperature": 0}
            out.append((at, "/v1/chat/completions", json.dumps(body).encode()))
            history = [*history, {"role": "assistant", "content": _sentence(rng, 40)}]
            at += gap * rng.uniform(0.6, 1.4)
    out.sort(key=lambda item: item[0])
    return out


def prompt_tokens(body: bytes) -> int:
    """Prompt tokens the fake server counts for a chat body (``role\\ncontent\\n`` per message, 4 characters
    per token: ``picker.testing.fake_openai``)."""
    messages = json.loads(body)["messages"]
    chars = sum(len(f"{m['role']}\n{m['content']}\n") for m in messages)
    return -(-chars // 4)


async def prefix_counters(session: Any, addresses: Sequence[str]) -> tuple[int, int]:
    """Summed over the fake servers: (prompt tokens looked up in the prefix cache, tokens found there)."""
    queries = hits = 0
    for address in addresses:
        async with session.get(f"http://{address}/debug/stats") as resp:
            doc = json.loads(await resp.read())
        queries += int(doc["prefix_queries"])
        hits += int(doc["prefix_hits"])
    return queries, hits


def with_chats(
    workload: Sequence[tuple[float, str, bytes]], count: int, turns: int, *, seed: int, salt: str, model: str
) -> list[tuple[float, str, bytes]]:
    """``workload`` plus :func:`conversations` over the same span, sorted by arrival."""
    span = workload[-1][0] if workload else 10.0
    chats = conversations(count, turns, span_s=span, seed=seed, salt=salt, model=model)
    return sorted([*workload, *chats], key=lambda item: item[0])


class ChatMeter:
    """The share of a replay's chat prompt tokens the servers found in their prefix caches. Every hit is
    taken to be a chat's: the replay's other requests must share no prefix (the demo's are unique)."""

    def __init__(self, session: Any, addresses: Sequence[str], workload: Sequence[tuple[float, str, bytes]]):
        self._session = session
        self._addresses = addresses
        self._tokens = sum(prompt_tokens(b) for _, path, b in workload if path.endswith("/chat/completions"))
        self._before = 0

    async def start(self) -> None:
        _, self._before = await prefix_counters(self._session, self._addresses)

    async def rate(self) -> float:
        _, hits = await prefix_counters(self._session, self._addresses)
        return (hits - self._before) / max(1, self._tokens)
