"""Chained block hashes of a prompt: the keys of the approximate prefix index.

The reference EPP (``gie-epp.md`` §3.6) cuts the prompt's bytes into blocks of ``blockSizeTokens x 4``
characters (4 characters per token is its estimate, 64 bytes by default), keeps at most
``maxPrefixBlocksToMatch`` of them, and chains xxHash64 over them: block *i*'s hash covers block *i* and,
through the previous hash, every block before it, starting from a seed that is the hash of the target
model (and ``cache_salt``). Two prompts share hash *i* exactly when they share the model, the salt and the
first *i + 1* blocks, which is what a model server's prefix cache shares too. The trailing partial block
is hashed as well (reference #2823), so a repeated prompt matches to its last byte.

One difference, on purpose: the previous hash enters as xxHash64's *seed* instead of as eight extra
bytes appended to the block. The chain has the same property (each hash depends on the model, the salt
and every byte before it), and it saves building a 72-byte buffer per block: at the default 256 blocks
the chain costs about 40 µs (``benchmarks/bench_pick.py``), of a 150 µs budget for the whole prefix
scorer. Hash values are private to one EPP, so nothing outside can tell the difference.

**Repeated windows.** A prompt at least one window long hashes only its first window, and that window
often repeats exactly: every later turn of a conversation whose history passed 16 KB, every request
behind a shared system prompt of 16 KB or more. Such chains are memoized under a 128-bit fingerprint of
the window (xxh3, about a microsecond for 16 KB) and the seed, in a small LRU (:data:`MEMO_ENTRIES`
chains); a fingerprint collision would need 2^64 distinct windows.

**Coarser entries** (``blocks_per_entry`` = *s*, our parameter ``blocksPerEntry``; 1 is the reference).
The block stays the unit of size and of the window, but one hash covers *s* consecutive blocks: the chain
is ``h[i] = xxh64(segment_i, seed=h[i-1])`` over segments of ``s x block_bytes`` bytes, so a full window
costs ``max_blocks / s`` calls and gives as many index entries, and the trailing partial segment is
hashed like the reference's trailing partial block (a repeated prompt still matches to its last byte).
Hash *i* then identifies the first ``min((i + 1) x s, blocks)`` blocks; :meth:`PrefixHasher.blocks`
gives a prompt's block count (the score's denominator), which the hashes alone no longer tell.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import xxhash

#: Characters per token the reference assumes when it has no tokenizer.
CHARS_PER_TOKEN: Final = 4
#: Distinct (model, salt) seeds remembered; requests name few models, a hostile client could name many.
_MAX_SEEDS: Final = 4096

#: memoized chains of full windows (each about 11 KB of Python ints at 256 blocks: about 6 MB in all)
MEMO_ENTRIES: Final = 512

_xxh64 = xxhash.xxh64_intdigest
_xxh128 = xxhash.xxh3_128_intdigest


class PrefixHasher:
    """Turns prompt bytes into chained block hashes (``block_bytes`` per block, at most ``max_blocks``).

    ``window`` is the number of leading bytes that can matter (``block_bytes x max_blocks``): a parser
    only needs to hand over that much of the prompt. Inputs shorter than one block give no hashes (a
    model server caches nothing shorter than a block either; reference behaviour). Each hash covers
    ``blocks_per_entry`` blocks (the last one possibly fewer; see the module docstring).
    """

    __slots__ = (
        "_memo",
        "_seeds",
        "block_bytes",
        "block_size_tokens",
        "blocks_per_entry",
        "entry_bytes",
        "max_blocks",
        "window",
    )

    def __init__(self, block_size_tokens: int = 16, max_blocks: int = 256, blocks_per_entry: int = 1) -> None:
        if block_size_tokens < 1 or max_blocks < 1 or blocks_per_entry < 1:
            raise ValueError("block_size_tokens, max_blocks and blocks_per_entry must be >= 1")
        self.block_size_tokens = block_size_tokens
        self.block_bytes = block_size_tokens * CHARS_PER_TOKEN
        self.max_blocks = max_blocks
        self.blocks_per_entry = blocks_per_entry
        self.entry_bytes = self.block_bytes * blocks_per_entry
        self.window = self.block_bytes * max_blocks
        self._seeds: dict[tuple[str, str], int] = {}
        self._memo: OrderedDict[tuple[int, int], tuple[int, ...]] = OrderedDict()

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

    def blocks(self, size: int) -> int:
        """Blocks of a prompt of ``size`` bytes within the window, a trailing partial block included (0 when
        shorter than one block): what its hashes cover, the score's denominator."""
        step = self.block_bytes
        if size < step:
            return 0
        return -(-min(size, self.window) // step)

    def hashes(self, model: str, salt: str, data: bytes | bytearray | memoryview) -> tuple[int, ...]:
        """Chained hashes of the first ``window`` bytes of ``data``: one per ``blocks_per_entry`` blocks, the
        last may be partial.

        Empty when ``data`` is shorter than one block.
        """
        size = len(data)
        if size < self.block_bytes:
            return ()
        step = self.entry_bytes
        end = min(size, self.window)
        view = memoryview(data)[:end]  # a last segment cut by the window ends there
        h = self.seed(model, salt)
        key = None
        if end == self.window:
            key = (h, _xxh128(view))
            memo = self._memo
            cached = memo.get(key)
            if cached is not None:
                memo.move_to_end(key)
                return cached
        out: list[int] = []
        append = out.append
        hash64 = _xxh64
        for start in range(0, end, step):
            h = hash64(view[start : start + step], h)
            append(h)
        chain = tuple(out)
        if key is not None:
            memo = self._memo
            memo[key] = chain
            if len(memo) > MEMO_ENTRIES:
                memo.popitem(last=False)
        return chain
