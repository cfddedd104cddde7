"""Continuation credit (``continuationCredit``): the server that answered a prompt a new one extends is
credited with that prompt and its answer; every other server keeps what the index lists for it."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

from scoring import ConfigurationError, EndpointMatrix, EndpointRow
from scoring.prefix import ApproxPrefixCache, PrefixConfig
from scoring.prefix.continuations import Continuations, prompt_end
from scoring.types import PrefixMatch

BLOCK = 64  # bytes of a block of the default 16 tokens
SYSTEM = random.Random(1).randbytes(40 * BLOCK)  # a shared system prompt: 40 blocks, five entries of 8


def pool(*names: str) -> EndpointMatrix:
    return EndpointMatrix.from_rows(EndpointRow(n, f"10.0.0.{i}:8000") for i, n in enumerate(names))


def cache(*, credit: bool = True, per_entry: int = 8) -> ApproxPrefixCache:
    return ApproxPrefixCache(PrefixConfig(blocks_per_entry=per_entry, continuation_credit=credit))


def words(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(b"abcdefghij ") for _ in range(size))


def match(p: ApproxPrefixCache, m: EndpointMatrix, data: bytes, answer_tokens: int = 0) -> PrefixMatch:
    hashes = p.hashes("m", "", data)
    got = p.match(
        hashes,
        m,
        now=0.0,
        blocks=p.blocks(len(data)),
        data=data,
        seed=p.seed("m"),
        answer_tokens=answer_tokens,
    )
    assert got is not None
    return got


def blocks_of(got: PrefixMatch) -> list[float]:
    return [0.0] * 3 if got.matched is None else got.matched.tolist()


def route(
    p: ApproxPrefixCache, m: EndpointMatrix, row: int, data: bytes, answer_tokens: int = 0
) -> list[float]:
    got = match(p, m, data, answer_tokens)
    p.record(m, row, got)
    return blocks_of(got)


def test_the_server_of_the_previous_turn_is_credited_with_its_answer() -> None:
    m = pool("a", "b", "c")
    p = cache()
    for row in (1, 2):  # b and c hold the system prompt
        route(p, m, row, SYSTEM + words(row, 100))
    turn1 = SYSTEM + b" question one?"  # 2,574 bytes: 41 blocks, the last partial
    route(p, m, 0, turn1, answer_tokens=250)  # a answers it: 1,000 bytes of answer
    answer = words(7, 1000)
    turn2 = turn1 + b" " + answer + b" question two?"
    got = route(p, m, 1, turn2)
    # b and c: the system prompt's 5 entries; a: turn 1 and its 1,000-byte answer, in blocks
    assert got[1] == got[2] == 40
    assert got[0] == -(-(len(turn1) + 1000) // BLOCK) == 56
    # the same without the credit: a's lead is one entry (the question's few bytes end entry 5)
    q = cache(credit=False)
    for row in (1, 2):
        route(q, m, row, SYSTEM + words(row, 100))
    route(q, m, 0, turn1)
    assert route(q, m, 1, turn2) == [40.0, 40.0, 40.0]


def test_without_max_tokens_the_whole_continuation_is_credited() -> None:
    m = pool("a", "b", "c")
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1)  # no max_tokens
    turn2 = turn1 + words(3, 3000)
    assert route(p, m, 1, turn2)[0] == p.blocks(len(turn2))


def test_a_repeated_prompt_is_not_its_own_continuation() -> None:
    m = pool("a", "b", "c")
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1, answer_tokens=1000)
    again = route(p, m, 1, turn1)
    assert again[0] == p.blocks(len(turn1))  # the index's own match: the whole prompt, no more
    longer = turn1 + b"!" * 200  # a continuation, credited to the prompt's most recent server
    got = route(p, m, 2, longer)
    assert got[1] == p.blocks(len(longer))
    assert got[0] == 40


def test_a_prompt_that_diverges_before_the_end_is_not_a_continuation() -> None:
    m = pool("a", "b", "c")
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1, answer_tokens=1000)
    other = SYSTEM + b" question two?" + words(5, 2000)  # same system prompt, another question
    got = route(p, m, 1, other)
    assert got[0] == 40  # the index's entries only


def test_no_credit_once_the_index_no_longer_lists_the_prompt() -> None:
    m = pool("a", "b")
    # six entries of 8 blocks: one prompt of 41 blocks at a time
    p = ApproxPrefixCache(PrefixConfig(capacity=48, blocks_per_entry=8, continuation_credit=True))
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1, answer_tokens=1000)
    for k in range(3):  # a's small cache fills with other prompts: turn 1 is evicted
        route(p, m, 0, words(100 + k, 41 * BLOCK))
    turn2 = turn1 + words(9, 3000)
    assert route(p, m, 1, turn2)[0] == 0


def test_a_purged_endpoint_loses_its_prompt_ends() -> None:
    m = pool("a", "b")
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1, answer_tokens=1000)
    assert p.continuations is not None
    assert len(p.continuations) == 1
    alone = pool("b")
    p.match(p.hashes("m", "", b"x" * 100), alone, now=0.0)
    p.match(p.hashes("m", "", b"x" * 100), alone, now=p.purge_after + 1.0)
    assert len(p.continuations) == 0


def test_prompts_reaching_the_window_have_no_end() -> None:
    p = cache()
    data = words(1, p.window)
    hashes = p.hashes("m", "", data)
    assert prompt_end(p.seed("m"), hashes, data, p.hasher.entry_bytes, p.window, 10) is None
    shorter = data[:-1]
    end = prompt_end(p.seed("m"), p.hashes("m", "", shorter), shorter, p.hasher.entry_bytes, p.window, 10)
    assert end is not None
    assert end.end == len(shorter)
    assert end.answer_bytes == 40
    huge = prompt_end(p.seed("m"), p.hashes("m", "", shorter), shorter, 512, p.window, 2**70)
    assert huge is not None
    assert huge.answer_bytes == p.window  # nothing beyond the window can be credited


@pytest.mark.parametrize("size", [BLOCK, 8 * BLOCK - 1, 8 * BLOCK, 8 * BLOCK + 1, 17 * BLOCK + 5])
def test_every_end_position_is_found_from_a_longer_prompt(size: int) -> None:
    """Ends inside entry 0 (keyed by the seed), on an entry boundary (the token is the last hash) and
    inside a later entry are all found, and only by a prompt that extends them."""
    m = pool("a", "b")
    p = cache()
    first = words(size, size)
    route(p, m, 0, first, answer_tokens=64)
    got = route(p, m, 1, first + words(99, 700))
    assert got[0] == p.blocks(size + 256)
    assert route(p, m, 1, words(size + 1, size) + words(99, 700))[0] == 0


def test_the_longest_earlier_prompt_wins() -> None:
    m = pool("a", "b", "c")
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1, answer_tokens=10)
    turn2 = turn1 + words(2, 300) + b" question two?"
    route(p, m, 1, turn2, answer_tokens=10)
    turn3 = turn2 + words(3, 300) + b" question three?"
    got = route(p, m, 2, turn3)
    assert got[1] == p.blocks(len(turn2) + 40)
    assert got[0] >= 40  # a still holds turn 1, matched by the index (and its own, older credit)


def test_the_parameter() -> None:
    config, _ = PrefixConfig.from_params("p", "prefix-cache-scorer", {"continuationCredit": True})
    assert config.continuation_credit
    assert not PrefixConfig.from_params("p", "prefix-cache-scorer", {})[0].continuation_credit
    with pytest.raises(ConfigurationError):
        PrefixConfig.from_params("p", "prefix-cache-scorer", {"continuationCredit": "sometimes"})
    assert cache(credit=False).continuations is None


def test_matches_without_bytes_are_the_index_alone() -> None:
    m = pool("a", "b")
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1, answer_tokens=1000)
    turn2 = turn1 + words(9, 3000)
    got = p.match(p.hashes("m", "", turn2), m, now=0.0, blocks=p.blocks(len(turn2)))
    assert got is not None
    assert got.matched is not None
    assert got.matched[0] == 40
    assert got.end is None


def test_memory_is_bounded() -> None:
    """The ends kept stay at the capacity, and the memory they take within 600 bytes each (both maps)."""
    store = Continuations(capacity=4096)
    p = cache()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for k in range(3 * 4096):
            data = k.to_bytes(8, "little") * 20
            end = prompt_end(p.seed("m"), p.hashes("m", "", data), data, p.hasher.entry_bytes, p.window, 5)
            assert end is not None
            store.add(f"ep-{k % 50}", end)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(store) == 4096
    assert used < 4096 * 600, used


def test_np_arrays_of_the_credit_are_read_only() -> None:
    m = pool("a", "b", "c")
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, m, 0, turn1, answer_tokens=10)
    got = match(p, m, turn1 + words(1, 500))
    assert got.matched is not None
    assert not got.matched.flags.writeable
    assert got.best == int(np.max(got.matched))


def test_the_credit_follows_the_endpoint_when_the_pool_changes() -> None:
    """The credited row is the endpoint's row in the snapshot being matched, whatever its row was when
    the earlier prompt was recorded (endpoints come and go between turns)."""
    p = cache()
    turn1 = SYSTEM + b" question one?"
    route(p, pool("a", "b", "c"), 0, turn1, answer_tokens=100)
    turn2 = turn1 + words(4, 600)
    later = pool("c", "x", "a")
    got = match(p, later, turn2)
    assert got.matched is not None
    assert got.matched.tolist() == [0.0, 0.0, float(p.blocks(len(turn1) + 400))]
    assert match(p, pool("b", "c"), turn2).matched is None  # a left: nobody to credit
