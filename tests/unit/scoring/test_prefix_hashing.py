"""The chained block hashes of ``scoring.prefix.hashing`` (reference §3.6 semantics)."""

from __future__ import annotations

import pytest

from scoring.prefix import PrefixHasher
from scoring.prefix.hashing import _MAX_SEEDS


def test_blocks_are_four_bytes_per_token_and_the_window_is_bounded() -> None:
    h = PrefixHasher(block_size_tokens=16, max_blocks=256)
    assert h.block_bytes == 64
    assert h.window == 64 * 256
    assert len(h.hashes("m", "", b"x" * 64 * 300)) == 256
    assert PrefixHasher(8, 3).window == 96


def test_input_shorter_than_one_block_has_no_hashes() -> None:
    h = PrefixHasher()
    assert h.hashes("m", "", b"x" * 63) == ()
    assert h.hashes("m", "", b"") == ()
    assert len(h.hashes("m", "", b"x" * 64)) == 1


def test_trailing_partial_block_is_hashed() -> None:
    h = PrefixHasher()
    full = h.hashes("m", "", b"a" * 128)
    longer = h.hashes("m", "", b"a" * 128 + b"tail")
    assert len(longer) == 3
    assert longer[:2] == full
    assert h.hashes("m", "", b"a" * 128 + b"tale")[2] != longer[2]


def test_equal_prefixes_share_leading_hashes_and_diverge_after() -> None:
    h = PrefixHasher()
    system = b"You are a helpful assistant. " * 10  # 290 bytes: 4 full blocks + 34 bytes
    a = h.hashes("m", "", system + b"What is the capital of France? Please answer in one word only.")
    b = h.hashes("m", "", system + b"How do I sort a list in Python? Show me an example with a key.")
    assert a[:4] == b[:4]
    assert all(x != y for x, y in zip(a[4:], b[4:], strict=False))


def test_every_hash_depends_on_every_earlier_byte() -> None:
    h = PrefixHasher()
    base = bytes(range(256)) * 4
    changed = b"\xff" + base[1:]
    assert all(x != y for x, y in zip(h.hashes("m", "", base), h.hashes("m", "", changed), strict=True))


@pytest.mark.parametrize(("model", "salt"), [("other-model", ""), ("m", "tenant-a"), ("m", "tenant-b")])
def test_model_and_cache_salt_seed_the_chain(model: str, salt: str) -> None:
    h = PrefixHasher()
    data = b"z" * 640
    plain = h.hashes("m", "", data)
    seeded = h.hashes(model, salt, data)
    assert not set(plain) & set(seeded)
    assert h.hashes(model, salt, data) == seeded


def test_memoryview_and_bytearray_inputs_hash_like_bytes() -> None:
    h = PrefixHasher()
    data = b"0123456789" * 40
    assert (
        h.hashes("m", "", memoryview(data)) == h.hashes("m", "", bytearray(data)) == h.hashes("m", "", data)
    )


def test_seed_cache_is_bounded() -> None:
    h = PrefixHasher()
    for i in range(_MAX_SEEDS + 10):
        h.seed(f"model-{i}")
    assert len(h._seeds) <= _MAX_SEEDS


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        PrefixHasher(0, 256)
    with pytest.raises(ValueError, match=">= 1"):
        PrefixHasher(16, 0)


def test_a_repeated_full_window_reuses_its_chain_and_the_memo_is_bounded() -> None:
    from scoring.prefix.hashing import MEMO_ENTRIES

    h = PrefixHasher(block_size_tokens=1, max_blocks=4)  # a 16-byte window
    first = h.hashes("m", "", b"0123456789abcdefTAIL-1")
    again = h.hashes("m", "", b"0123456789abcdefTAIL-2")  # same window, other tail
    assert again is first
    assert h.hashes("other", "", b"0123456789abcdef") != first  # the seed is part of the key
    for i in range(MEMO_ENTRIES + 5):
        h.hashes("m", "", f"{i:016d}".encode())
    assert len(h._memo) == MEMO_ENTRIES


def test_a_tail_differs_from_the_same_tail_padded_with_zero_bytes() -> None:
    h = PrefixHasher()
    head = b"a" * 64
    short, padded, full = head + b"\x05\0\0\0", head + b"\x05\0\0\0\0\0\0\0", head + b"\x05" + bytes(63)
    assert len({h.hashes("m", "", d)[1] for d in (short, padded, full)}) == 3
    assert h.hashes("m", "", short)[0] == h.hashes("m", "", full)[0]


def test_structured_differences_in_the_top_bytes_of_two_words_do_not_collide() -> None:
    """A cheap linear chain (a polynomial modulo 2^64 over raw 64-bit words) lets such variants collide 1
    time in 256: a product carries a difference only upwards. Any replacement of xxHash64 must pass this."""
    h = PrefixHasher()
    base = bytearray(b"The quick brown fox jumps over the lazy dog. " * 3)[:128]
    seen = set()
    for a in range(64):
        for b in range(64):
            v = bytearray(base)
            v[7], v[15] = 0x40 + a, 0x40 + b  # the top byte of the first two little-endian words
            seen.add(h.hashes("m", "", bytes(v))[1])
    assert len(seen) == 64 * 64


def test_the_callers_buffer_is_not_written() -> None:
    h = PrefixHasher()
    data = bytearray(b"0123456789abcdef" * 40)
    before = bytes(data)
    h.hashes("m", "", data)
    h.hashes("m", "", memoryview(data)[3:])
    assert bytes(data) == before
