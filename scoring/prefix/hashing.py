"""Chained block hashes of a prompt: the keys of the approximate prefix index.

The reference EPP (``gie-epp.md`` §3.6) cuts the prompt's bytes into blocks of ``blockSizeTokens x 4``
characters (4 characters per token is its estimate, 64 bytes by default), keeps at most
``maxPrefixBlocksToMatch`` of them, and chains xxHash64 over them: block *i*'s hash covers block *i* and,
through the previous hash, every block before it, starting from a seed that is the hash of the target
model (and ``cache_salt``). Two prompts share hash *i* exactly when they share the model, the salt and the
first *i + 1* blocks, which is what a model server's prefix cache shares too. The trailing partial block
is hashed as well (reference #2823), so a repeated prompt matches to its last byte.

**The chain, computed for all blocks at once (ours; the values differ from the reference's).** The
reference calls xxHash64 once per block, each call seeded with the previous hash: 256 calls per prompt,
about 50 µs from Python. Here the whole window is hashed by a handful of numpy operations (about
18 µs for 256 blocks; ``python -m benchmarks.bench_prefix --parts`` times it in the request):

1. the window is read as little-endian 64-bit words (32-bit words when a block is not a multiple of 8
   bytes; the trailing partial block is zero-padded), and each word *w* becomes ``x = fmix64(w ^ K)``,
   MurmurHash3's 64-bit finaliser: a bijection whose every output bit depends on every input bit, so any
   change of a word changes ``x`` unpredictably (a plain multiply would carry a change only upwards);
2. block *k* of ``W`` words gets ``s_k = Σ_c x_{k,c} P^(W-1-c)`` (mod 2^64), and a partial block adds a
   mark of its length, so a short tail and the same tail padded with zero bytes (token id 0) differ;
3. the chain is a polynomial over the blocks: ``H_k = H_(k-1) Q + s_k`` with ``H_(-1)`` the seed and
   ``Q = P^W``, i.e. the polynomial hash of every word before the block's end. Because ``P`` is odd, ``Q``
   is invertible modulo 2^64 and the recurrence has the closed form ``H_k = Q^k (seed Q + Σ_(j<=k) s_j
   Q^-j)``: one multiplication, one ``cumsum`` and one more multiplication over the blocks, all in
   wrapping uint64 arithmetic.

``H_k`` depends on the seed (model, salt) and on every byte of blocks 0..k and on nothing after, which is
all the index needs. **Collisions.** Two different prompts of the same length in words share ``H_k``
only if ``Σ (x_j - x'_j) P^(n-j) = 0 (mod 2^64)`` (the seed enters the same way). A single differing word
never collides (``fmix64`` is a bijection and ``P`` a unit). Beyond that the differences ``x_j - x'_j``
are outputs of the finaliser, uncorrelated with the text's structure, so two honest prompts collide
with probability about 2^-64 per pair: the chance that any collision exists in a full index of 31
million entries (1,000 endpoints x the default 31,250) is under 10^-4. The finaliser is what makes this
hold for text: without it a polynomial modulo 2^64 over raw words lets two prompts that differ only in
the top bytes of two words collide with probability 1/256, because a product carries a difference only
upwards (``tests/unit/scoring/test_prefix_hashing.py`` checks 4,096 such variants). Like xxHash64 with
the reference's public seed, this is not a cryptographic hash: a client that crafts a collision can only
make the index believe an endpoint holds one more block of its own prompt — a routing preference, which
the load guard bounds; nothing is read or answered from the index. The hash values never leave the
EPP (``--workers`` replicas exchange them, and all run this code), so no one outside can tell that they
differ from the reference's.

**Repeated windows.** A prompt at least one window long hashes only its first window, and that window
often repeats exactly: every later turn of a conversation whose history passed 16 KB, every request
behind a shared system prompt of 16 KB or more. Such chains are memoized under a 128-bit fingerprint of
the window (xxh3, about a microsecond for 16 KB) and the seed, in a small LRU (:data:`MEMO_ENTRIES`
chains); a fingerprint collision would need 2^64 distinct windows.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import numpy as np
import xxhash
from numpy.typing import NDArray

#: Characters per token the reference assumes when it has no tokenizer.
CHARS_PER_TOKEN: Final = 4
#: Distinct (model, salt) seeds remembered; requests name few models, a hostile client could name many.
_MAX_SEEDS: Final = 4096

#: memoized chains of full windows (each about 11 KB of Python ints at 256 blocks: about 6 MB in all)
MEMO_ENTRIES: Final = 512

_MASK: Final = (1 << 64) - 1
#: the polynomial's base: odd (a unit modulo 2^64), the 64-bit golden ratio
P: Final = 0x9E3779B97F4A7C15
#: xor key of every word before the finaliser (fmix64(0) = 0: zero words would otherwise add nothing)
_KEY: Final = 0x6A09E667F3BCC909
#: MurmurHash3's fmix64 multipliers
_M1: Final = 0xFF51AFD7ED558CCD
_M2: Final = 0xC4CEB9FE1A85EC53

_xxh64 = xxhash.xxh64_intdigest
_xxh128 = xxhash.xxh3_128_intdigest
_U64 = np.uint64


def fmix64(x: int) -> int:
    """MurmurHash3's 64-bit finaliser on a Python int (the scalar twin of :func:`_fmix_inplace`)."""
    x &= _MASK
    x ^= x >> 33
    x = (x * _M1) & _MASK
    x ^= x >> 33
    x = (x * _M2) & _MASK
    return x ^ (x >> 33)


def _fmix_inplace(x: NDArray[np.uint64]) -> None:
    x ^= x >> _U64(33)
    x *= _U64(_M1)
    x ^= x >> _U64(33)
    x *= _U64(_M2)
    x ^= x >> _U64(33)


def _powers(base: int, n: int) -> NDArray[np.uint64]:
    """``base^0 .. base^(n-1)`` modulo 2^64."""
    out = np.full(max(n, 1), base & _MASK, dtype=np.uint64)
    out[0] = 1
    np.multiply.accumulate(out, out=out)
    return out[:n]


class PrefixHasher:
    """Turns prompt bytes into chained block hashes (``block_bytes`` per block, at most ``max_blocks``).

    ``window`` is the number of leading bytes that can matter (``block_bytes x max_blocks``): a parser
    only needs to hand over that much of the prompt. Inputs shorter than one block give no hashes (a
    model server caches nothing shorter than a block either; reference behaviour).
    """

    __slots__ = (
        "_dtype",
        "_memo",
        "_q",
        "_qinv",
        "_qpow",
        "_seeds",
        "_wpow",
        "block_bytes",
        "block_size_tokens",
        "max_blocks",
        "window",
    )

    def __init__(self, block_size_tokens: int = 16, max_blocks: int = 256) -> None:
        if block_size_tokens < 1 or max_blocks < 1:
            raise ValueError("block_size_tokens and max_blocks must be >= 1")
        self.block_size_tokens = block_size_tokens
        self.block_bytes = block_size_tokens * CHARS_PER_TOKEN
        self.max_blocks = max_blocks
        self.window = self.block_bytes * max_blocks
        self._seeds: dict[tuple[str, str], int] = {}
        self._memo: OrderedDict[tuple[int, int], tuple[int, ...]] = OrderedDict()
        word = 8 if self.block_bytes % 8 == 0 else 4
        self._dtype = np.dtype("<u8" if word == 8 else "<u4")
        words = self.block_bytes // word
        #: within a block, word c weighs P^(W-1-c): the block is the polynomial's next W digits
        self._wpow = _powers(P, words)[::-1].copy()
        self._q = pow(P, words, 1 << 64)
        self._qpow = _powers(self._q, max_blocks)
        self._qinv = _powers(pow(self._q, -1, 1 << 64), max_blocks)

    def seed(self, model: str, salt: str = "") -> int:
        """The chain's starting value: xxHash64 of the model name, then of the salt seeded with it."""
        key = (model, salt)
        seed = self._seeds.get(key)
        if seed is None:
            seed = _xxh64(model.encode("utf-8", "surrogatepass"))
            if salt:
                seed = _xxh64(salt.encode("utf-8", "surrogatepass"), seed)
            if len(self._seeds) >= _MAX_SEEDS:
                self._seeds.clear()
            self._seeds[key] = seed
        return seed

    def hashes(self, model: str, salt: str, data: bytes | bytearray | memoryview) -> tuple[int, ...]:
        """Chained hashes of the first ``window`` bytes of ``data``: one per block, the last may be partial.

        Empty when ``data`` is shorter than one block.
        """
        size = len(data)
        step = self.block_bytes
        if size < step:
            return ()
        end = min(size, self.window)
        view = memoryview(data)
        if view.itemsize != 1 or not view.c_contiguous:
            view = memoryview(bytes(view))
        seed = self.seed(model, salt)
        key = None
        if end == self.window:
            key = (seed, _xxh128(view[:end]))
            memo = self._memo
            cached = memo.get(key)
            if cached is not None:
                memo.move_to_end(key)
                return cached
        chain = self._chain(seed, view[:end])
        if key is not None:
            memo = self._memo
            memo[key] = chain
            if len(memo) > MEMO_ENTRIES:
                memo.popitem(last=False)
        return chain

    def _chain(self, seed: int, view: memoryview) -> tuple[int, ...]:
        """``H_0 .. H_(n-1)`` of ``view`` (one block to a window; the module docstring has the formulas)."""
        step = self.block_bytes
        end = len(view)
        n = -(-end // step)
        tail = end % step
        if tail:
            padded = bytearray(n * step)
            padded[:end] = view
            raw = np.frombuffer(padded, dtype=self._dtype)
        else:
            raw = np.frombuffer(view, dtype=self._dtype)
        x = raw.astype(np.uint64)  # a new array: the caller's buffer is never written
        x ^= _U64(_KEY)
        _fmix_inplace(x)
        blocks: NDArray[np.uint64] = x.reshape(n, -1) @ self._wpow  # wraps modulo 2^64, as every op here
        if tail:
            blocks[-1:] += _U64(fmix64(tail | 1 << 63))  # an array op: wraps without a warning
        blocks *= self._qinv[:n]
        np.cumsum(blocks, out=blocks)
        blocks += _U64((seed * self._q) & _MASK)
        blocks *= self._qpow[:n]
        return tuple(blocks.tolist())
