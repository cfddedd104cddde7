"""The service's prefix index in the simulator: real text, real hashes, the real index.

A scoring policy whose profile has ``prefix-cache-scorer`` (weight > 0) gets what the service's director
does for it (``scoring/prefix/README.md``): per request, the prompt's chained block hashes
(:class:`scoring.prefix.ApproxPrefixCache`, configured from that scorer's parameters), matched against the
snapshot before the pick (``PickRequest.prefix``), recorded for the chosen endpoint after it, and the
request's load charge credited with the matched blocks (``LoadCharge.for_request(req, row)``). The loop
that does it is :func:`benchmarks.sim.fleet.simulate`.

The prompt bytes are the text :mod:`benchmarks.sim.text` gives the trace's prefix units, cut to the
hasher's window (only the first ``maxPrefixBlocksToMatch x blockSizeTokens x 4`` bytes matter), sent as a
completions prompt. Hashing a trace costs a second or two, so :func:`prompt_hashes` memoizes the last
two (trace, hasher) pairs: a capacity search replays the same trace a dozen times at different rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.sim.policies import Policy
from benchmarks.sim.text import prompt_text
from benchmarks.sim.traces import Workload
from scoring.matrix import EndpointMatrix
from scoring.prefix import ApproxPrefixCache, PrefixConfig, PrefixHasher
from scoring.scorers.prefix import PrefixCacheScorer
from scoring.types import PickRequest

if TYPE_CHECKING:
    from benchmarks.sim.fleet import SimContext


class Picking:
    """One pick as the service makes it: the policy's pick, with the prefix index around it when the
    policy's profile scores prefixes (:mod:`benchmarks.sim.prefix`): hashes matched against the snapshot
    before, the chosen endpoint recorded after. Policies that see more than a picker get ``bind`` first."""

    __slots__ = ("_blocks", "_cache", "_hashes", "_policy", "_requests", "_workload")

    def __init__(self, policy: Policy, ctx: SimContext, requests: list[PickRequest]) -> None:
        self._policy = policy
        self._requests = requests
        self._workload = ctx.workload
        bind = getattr(policy, "bind", None)
        if bind is not None:
            bind(ctx)
        config = prefix_config_of(policy)
        self._cache = ApproxPrefixCache(config) if config is not None else None
        models = [r.target_model for r in requests]
        self._hashes, self._blocks = (
            prompt_chains(ctx.workload, models, config) if config is not None else ((), ())
        )

    def pick(
        self, m: EndpointMatrix, k: int, now: float, rng: np.random.Generator
    ) -> tuple[int, PickRequest]:
        """Row chosen for request ``k``, and the request as scheduled (with its prefix match)."""
        req = self._requests[k]
        cache = self._cache
        if cache is None:
            return self._policy.pick(m, req, now, rng), req
        if cache.continuations is None:
            match = cache.match(self._hashes[k], m, now=now, blocks=self._blocks[k])
        else:  # continuation credit reads the bytes and the answer's length (max_tokens = the output)
            w = self._workload
            data = prompt_text(
                w.units[k],
                int(w.prompt_tokens[k]),
                w.unit_tokens,
                request=k,
                max_chars=cache.window,
                heads=w.unit_heads,
            ).encode()
            match = cache.match(
                self._hashes[k],
                m,
                now=now,
                blocks=self._blocks[k],
                data=data,
                seed=cache.seed(req.target_model),
                answer_tokens=int(w.output_tokens[k]),
            )
        req = req._replace(prefix=match)
        i = self._policy.pick(m, req, now, rng)
        if match is not None:
            cache.record(m, i, match)
        return i, req


def prefix_config_of(policy: Any) -> PrefixConfig | None:
    """The index configuration of a scoring policy's first prefix scorer with a positive weight (None:
    the policy does not score prefixes, or is not a scoring policy)."""
    scheduler = getattr(policy, "scheduler", None)
    for ws in getattr(scheduler, "scorers", ()):
        if isinstance(ws.scorer, PrefixCacheScorer) and ws.weight > 0.0:
            config: PrefixConfig = ws.scorer.prefix_config
            return config
    return None


def prompt_hashes(
    workload: Workload, models: Sequence[str], config: PrefixConfig
) -> tuple[tuple[int, ...], ...]:
    """Every request's block hashes (``models[k]`` is request ``k``'s target model, the hash seed)."""
    return prompt_chains(workload, models, config)[0]


def prompt_chains(
    workload: Workload, models: Sequence[str], config: PrefixConfig
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Every request's block hashes and its prompt's block count (what ``ApproxPrefixCache.match`` takes
    as ``blocks``; with ``blocksPerEntry`` > 1 the last hash may cover fewer blocks than the others)."""
    return _hashes(
        workload.units,
        prompts=workload.prompt_tokens.astype(np.int64).tobytes(),
        unit_tokens=workload.unit_tokens,
        models=tuple(models),
        block_tokens=config.block_size_tokens,
        max_blocks=config.max_blocks,
        blocks_per_entry=config.blocks_per_entry,
        heads=tuple(workload.unit_heads.items()),
    )


@lru_cache(maxsize=2)
def _hashes(
    units: tuple[tuple[int, ...], ...],
    *,
    prompts: bytes,
    unit_tokens: int,
    models: tuple[str, ...],
    block_tokens: int,
    max_blocks: int,
    blocks_per_entry: int,
    heads: tuple[tuple[int, tuple[int, int]], ...],
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    hasher = PrefixHasher(block_tokens, max_blocks, blocks_per_entry)
    head_map = dict(heads)
    tokens = np.frombuffer(prompts, dtype=np.int64)
    out = []
    blocks = []
    for k, u in enumerate(units):
        data = prompt_text(
            u, int(tokens[k]), unit_tokens, request=k, max_chars=hasher.window, heads=head_map
        ).encode()
        out.append(hasher.hashes(models[k], "", data))
        blocks.append(hasher.blocks(len(data)))
    return tuple(out), tuple(blocks)
