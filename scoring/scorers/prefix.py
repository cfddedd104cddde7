"""``prefix-cache-scorer``: prefer endpoints that hold the request's prompt prefix, unless they are busy.

Family README: ``scoring/scorers/README.md`` ("Prefix cache"). The index behind it: ``scoring/prefix``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.prefix.producer import PrefixConfig
from scoring.scorers._impute import impute
from scoring.scorers.load import MAX_LOAD
from scoring.types import PickRequest, PrefixMatch

#: Default of ``queuedRequestTokens``: prefill tokens assumed per request in an endpoint's scraped queue
#: (a typical chat prompt; SGLang's least-load policy assumes 1,024 too).
QUEUED_REQUEST_TOKENS = 1024
#: Default of ``backlogToleranceTokens``: extra backlog a holder may carry before its credit shrinks.
BACKLOG_TOLERANCE_TOKENS = 0


class PrefixCacheScorer(Scorer[F64]):
    """``prefix-cache-scorer`` — the reference's prefix affinity, with a load guard (ours, on by default).

    Formula (reference): ``matched_i / total``, where ``total`` is the prompt's number of blocks and
    ``matched_i`` the leading blocks endpoint *i* is believed to hold (``PickRequest.prefix``, built by
    ``scoring.prefix.ApproxPrefixCache`` against the same snapshot); 0 everywhere without a match.

    Load guard (``loadGuard: true``): a cache hit at *i* saves ``saving_i`` prompt tokens of prefill, but
    the request also waits behind *i*'s backlog. The reference score is kept in the proportion of the
    saving that is left after the extra backlog *i* has over the least-loaded candidate::

        backlog_i = max(prefill_tokens_i, waiting_i x queuedRequestTokens)
        extra_i   = max(0, backlog_i - min_j backlog_j - backlogToleranceTokens)
        saving_i  = matched_i x blockSizeTokens, or the prompt's estimated tokens when all ``total`` blocks
                    matched and the prompt is longer than the hashed window (the index sees only the
                    first ``maxPrefixBlocksToMatch`` blocks; a full match there is, in a conversation,
                    the whole history)
        score_i   = (matched_i / total) x clip(1 - extra_i / saving_i, 0, 1)

    For a prompt within the window that is ``(matched_i x b - extra_i) / (total x b)``: the saving left,
    as a fraction of the prompt.

    ``prefill_tokens`` is our own accounting of the uncached prompt tokens we sent to *i* that have not
    produced a first byte yet (exact for our streaming traffic, instant; ``scoring.matrix.LoadCharge``);
    the scraped queue times an assumed prompt size covers traffic we did not route and non-streaming
    requests (``max``, not a sum: both estimate the same backlog, and our own requests show in both).
    With equal backlogs this is the reference's score. How it adds up with the load terms: the guard
    shrinks the credit by the holder's extra backlog, and ``prefill-queue-scorer`` counts the same
    backlog less the prefill the hit saves (:meth:`PrefixMatch.saving`, one definition for both), so the
    backlog a saving pays for is not charged twice. A hot prefix's holder keeps its credit while the
    wait it adds is smaller than the prefill it saves (at equal prefill speed, while it still gives the
    earlier first token); past that point the credit is gone, the load terms decide, the prefix spreads to
    another endpoint (which then holds it too) and comes back to the first holder as its backlog drains.
    Comparing a saving and a wait in one unit (prefill tokens) makes the guard scale with the prompt: a
    30,000-token shared document tolerates a longer queue than a 200-token system prompt. Without it the
    reference's additive score lets a full match (weight 3) beat a maximal queue penalty (weight 2) however
    long the queue grows, so a hot prefix piles onto one pod (``tests/unit/scoring/test_prefix_scorer.py``).

    Inputs: ``PickRequest.prefix``, ``PickRequest.prompt_tokens_estimate``, ``prefill_tokens``, ``waiting``
    (mean-imputed when missing).
    Category: affinity. Dependence: load (the guard reads an accounting column, which moves after every
    pick), so the scheduler computes it on every pick and never caches it.
    Parameters: the reference's (``autoTune``, ``blockSizeTokens``, ``maxPrefixBlocksToMatch``,
    ``maxPrefixTokensToMatch``, ``lruCapacityPerServer``, deprecated ``blockSize``; they configure the
    index, :class:`~scoring.prefix.producer.PrefixConfig`, with our ``blocksPerEntry`` and
    ``continuationCredit``), and ours: ``loadGuard`` (true),
    ``queuedRequestTokens`` (1024, ≥ 0), ``backlogToleranceTokens`` (0, ≥ 0).
    """

    type_name: ClassVar[str] = "prefix-cache-scorer"
    category: ClassVar[Category] = Category.AFFINITY
    dependence: ClassVar[Dependence] = Dependence.LOAD

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        config, params = PrefixConfig.from_params(
            name, self.type_name, parameters, ("loadGuard", "queuedRequestTokens", "backlogToleranceTokens")
        )
        #: the index configuration this scorer's parameters describe (the service builds its index from it)
        self.prefix_config = config
        self.load_guard = params.boolean("loadGuard", True)
        self.queued_request_tokens = float(
            params.integer("queuedRequestTokens", QUEUED_REQUEST_TOKENS, minimum=0)
        )
        self.backlog_tolerance = float(
            params.integer("backlogToleranceTokens", BACKLOG_TOLERANCE_TOKENS, minimum=0)
        )
        super().__init__(name, params.effective)

    def skips(self, req: PickRequest, /) -> bool:
        match = req.prefix
        return match is None or match.matched is None

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        return (m.waiting,)  # the match and the prefill backlog are the request's and the live columns

    def prepare(self, v: View, /) -> F64:
        """The scraped queue in prefill tokens (mean-imputed when missing), once per snapshot."""
        queued = impute(v.take(v.m.waiting), lo=0.0, hi=MAX_LOAD, fallback=0.0)
        tokens: F64 = queued * self.queued_request_tokens
        tokens.flags.writeable = False
        return tokens

    def score(self, v: View, queued: F64, req: PickRequest, _dispatched: F64, /) -> F64:
        match = req.prefix
        if match is None or match.matched is None:
            return np.zeros(v.n)
        if len(match.matched) != len(v.m):
            raise ValueError(
                f"prefix match has {len(match.matched)} rows, the matrix {len(v.m)}: it was built against "
                "another snapshot"
            )
        matched = v.take(match.matched)
        total = float(match.total)
        if not self.load_guard:
            scores: F64 = matched / total
            return scores
        backlog = np.maximum(v.take(v.m.prefill_tokens), queued)
        floor = float(backlog.min()) + self.backlog_tolerance
        holders = np.flatnonzero(matched)
        if len(holders) * 4 < v.n:
            # few holders (a conversation's one or two endpoints): the guard on their rows only
            out = np.zeros(v.n)
            out[holders] = _guarded(
                matched[holders],
                backlog[holders],
                floor=floor,
                total=total,
                match=match,
                req=req,
            )
            return out
        return _guarded(matched, backlog, floor=floor, total=total, match=match, req=req)


def _guarded(
    matched: F64, backlog: F64, *, floor: float, total: float, match: PrefixMatch, req: PickRequest
) -> F64:
    """``(matched / total) x clip(1 - extra / saving, 0, 1)`` (see :class:`PrefixCacheScorer`), computed in
    ``backlog``'s buffer, which must be the caller's own."""
    backlog -= floor
    np.maximum(backlog, 0.0, out=backlog)
    saving = match.saving(matched, float(req.prompt_tokens_estimate))
    # rows that match nothing score 0 below, whatever this is
    np.maximum(saving, match.block_tokens, out=saving)
    backlog /= saving
    np.subtract(1.0, backlog, out=backlog)
    np.maximum(backlog, 0.0, out=backlog)  # <= 1 already: the extra backlog is >= 0
    backlog *= matched
    backlog /= total
    return backlog
