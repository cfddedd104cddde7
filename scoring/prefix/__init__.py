"""The approximate prefix index (``approx-prefix-cache-producer``): chained block hashes of prompts, a
per-endpoint LRU of the hashes routed there, and the lookup ``prefix-cache-scorer`` reads.

Pure stdlib + numpy + xxhash. How it works, its cost and its memory bound: ``README.md`` next to this file.
"""

from scoring.prefix.hashing import CHARS_PER_TOKEN, PrefixHasher
from scoring.prefix.index import (
    BYTES_PER_ENTRY,
    DEFAULT_CAPACITY,
    MAX_CAPACITY,
    EndpointPrefixStats,
    PrefixIndex,
)
from scoring.prefix.producer import PREFIX_PARAMETERS, PURGE_AFTER_S, ApproxPrefixCache, PrefixConfig
from scoring.types import PrefixMatch

__all__ = [
    "BYTES_PER_ENTRY",
    "CHARS_PER_TOKEN",
    "DEFAULT_CAPACITY",
    "MAX_CAPACITY",
    "PREFIX_PARAMETERS",
    "PURGE_AFTER_S",
    "ApproxPrefixCache",
    "EndpointPrefixStats",
    "PrefixConfig",
    "PrefixHasher",
    "PrefixIndex",
    "PrefixMatch",
]
