"""Token-load scorers: prefer endpoints with less prompt work pending, from our own token accounting.

The count-based load scorers (``load.py``) treat a 50-token question and a 12,000-token document alike,
yet the second occupies the engine's prefill budget for several steps and every request queued behind it
waits. These scorers read the two token columns the owner maintains (``prefill_tokens``,
``inflight_tokens``; when they move: :class:`scoring.matrix.LoadCharge`), so they see the work we sent the
moment we send it, with no scrape delay. Family README: ``scoring/scorers/README.md`` ("Token load").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from scoring._params import Params
from scoring.matrix import F64, EndpointMatrix, LoadCharge
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.scorers.load import MinMaxLoadScorer
from scoring.types import PickRequest

#: Default ``minRangeTokens`` of ``prefill-queue-scorer``: two engine steps of prefill at vLLM's default
#: ``max_num_batched_tokens`` on H100-class GPUs (8,192; ``benchmarks/sim/profiles.py``, VLLM_ARG_DEFAULTS),
#: about 0.7 s of prefill for an 8B model on one H100 — the scale of a 1 s TTFT objective. Chosen with the
#: fleet simulator between one step (8,192: on LoRA traffic the estimate's noise then outweighs adapter
#: affinity and requests starve waiting for adapter slots) and four (32,768: gives back part of the tail
#: gain on the Azure trace); see ``benchmarks/results/quality-tuning.md``.
DEFAULT_MIN_RANGE_TOKENS = 16384.0
#: Reference default of ``queueThresholdTokens`` ("128 requests @ 32K per request").
DEFAULT_QUEUE_THRESHOLD_TOKENS = 4_194_304


class PrefillQueueScorer(MinMaxLoadScorer):
    """``prefill-queue-scorer`` (ours) — less prompt work waiting for its first token is better.

    Formula: ``(top - L) / (top - min(L))`` over the candidates with ``top = max(max(L), min(L) + f)``,
    1.0 when all are equal; ``f`` = ``minRangeTokens`` (default 16,384; 0 gives plain min-max as in
    ``queue-scorer``). ``L = prefill_tokens - saving`` where ``prefill_tokens`` = estimated prompt tokens
    of the streaming requests we routed to the endpoint that have not produced their first response byte
    yet (queued or being prefilled), and ``saving`` = the prompt tokens a prefix-cache hit there saves this
    request (:meth:`~scoring.types.PrefixMatch.saving`: the blocks the endpoint is believed to hold,
    or the whole prompt when the whole hashed window matched; 0 without a prefix match, i.e. whenever the
    profile has no ``prefix-cache-scorer``). Up to a constant (the request's prompt) ``L`` is the prefill
    ahead of the request's first token at the endpoint, its own uncached part included.
    A spread of ``L`` below ``f`` shades the scores proportionally instead of using the whole [0, 1] range,
    so estimate noise of a few hundred tokens cannot outweigh affinity or KV terms.
    Inputs: ``prefill_tokens`` (owner-maintained, never NaN; a matrix without it reads zeros, so the scorer
    gives every endpoint 1.0 and changes no pick), ``PickRequest.prefix`` and ``prompt_tokens_estimate``.
    Category: distribution. Output in [0, 1] by construction (no clamp needed: ``min(L) <= L <= top``).

    Why: the time to first token of a new request is, to first order, the prefill work ahead of it in the
    engine's first-come-first-served queue divided by the engine's prefill rate (``max_num_batched_tokens``
    per step, about 8,192 tokens every ~0.33 s on an 8B model on one H100: see
    ``benchmarks/sim/profiles.py``). On identical endpoints the rate cancels out of a comparison, so the
    endpoint with the least pending prefill is the one that answers first. The request counts that
    ``queue-scorer`` reads cannot tell one long prompt from many short ones, and the scraped ``waiting``
    gauge does not include requests the engine has admitted but not finished prefilling (vLLM admits a
    long prompt and prefills it in chunks over several steps while later arrivals wait behind it).

    The same min-max arithmetic as the other load scorers (:func:`~scoring.scorers.load.weighted_min_max`),
    so the batch replays it incrementally: after each pick the chosen endpoint's ``prefill_tokens`` grows by
    the request's :class:`~scoring.matrix.LoadCharge` prefill (:meth:`charge`), exactly as the owner does.
    Why the saving: a holder of the request's prefix prefills less, so its first token comes sooner by
    the saving. Without it this term charged a holder for its whole backlog while the prefix scorer's load
    guard discounted its credit for the same backlog: the backlog counted twice, and with our default
    weights a holder of a fully cached 7,200-token prompt lost the request at about 3,700 extra pending
    tokens, about half its break-even; on the long-question many-system-prompt benchmark shape the profile
    kept 40 % prefix hits against the reference profile's 46 % and served 0.95x its capacity. With the
    saving counted here the holder keeps it up to about 5,300 tokens (the count-based ``queue-scorer``
    still charges the extra request) and never past the break-even (``benchmarks/RESULTS.md``, "Prefix-cache
    affinity"; ``tests/unit/scoring/test_prefix_scorer.py``). A per-request part of ``L`` is not
    replayed by the batch's O(1) updates: a batch with prefix matches is picked one by one (same results).
    Limits: only our own traffic is counted (another router's requests, or another EPP replica's, are not),
    and non-streaming requests are not counted (their prefill end is never seen; see ``LoadCharge``).
    """

    type_name: ClassVar[str] = "prefill-queue-scorer"
    column: ClassVar[str] = ""
    accounting: ClassVar[str] = "prefill_tokens"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ("minRangeTokens",))
        self.floor = params.number("minRangeTokens", DEFAULT_MIN_RANGE_TOKENS, minimum=0.0, maximum=1e9)
        Scorer.__init__(self, name, params.effective)

    def own(self, v: View, req: PickRequest, /) -> F64 | None:
        """Minus the prefill a prefix hit saves the request at each candidate (``PrefixMatch.saving``);
        None without a prefix match (the request's own prefill is then the same everywhere)."""
        match = req.prefix
        if match is None or match.matched is None:
            return None
        saving = match.saving(v.take(match.matched), float(req.prompt_tokens_estimate))
        np.negative(saving, out=saving)
        return saving

    def charge(self, req: PickRequest, /) -> float:
        return LoadCharge.for_request(req).prefill


class TokenLoadScorer(Scorer[None]):
    """``token-load-scorer`` (reference type) — fewer tokens in flight, this request's included, is better.

    Formula: ``1 - min(T, q) / q`` with ``T = inflight_tokens + r``, 1.0 when ``T <= 0``; ``q`` is
    ``queueThresholdTokens`` (default 4,194,304; a value ≤ 0 means the default, as in the reference) and
    ``r`` the request's own prompt-token estimate (:class:`~scoring.matrix.LoadCharge`; the reference adds
    the request's uncached prompt tokens, and without a prefix index every token is uncached).
    Inputs: ``inflight_tokens`` (owner-maintained: estimated prompt tokens of the streams open through us
    to the endpoint), the request's ``prompt_tokens_estimate``. Category: distribution.

    An absolute scale rather than min-max: with the default threshold an endpoint holding 128 requests of
    32k tokens scores 0, so scores spread only under heavy token load; alone with ``max-score-picker`` it
    ranks endpoints by in-flight tokens. Differences from the reference: the reference's in-flight load
    producer also estimates output tokens; ours counts prompt tokens only (the output length is not known
    when the request is routed, and guessing it as a multiple of the prompt adds no information to a
    ranking). Not incremental in the batch: a profile using it makes ``schedule_batch`` fall back to
    sequential picks (same results, slower).
    """

    type_name: ClassVar[str] = "token-load-scorer"
    category: ClassVar[Category] = Category.DISTRIBUTION
    dependence: ClassVar[Dependence] = Dependence.LOAD

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ("queueThresholdTokens",))
        configured = params.integer("queueThresholdTokens", DEFAULT_QUEUE_THRESHOLD_TOKENS)
        self.threshold = float(configured if configured > 0 else DEFAULT_QUEUE_THRESHOLD_TOKENS)
        params.effective["queueThresholdTokens"] = int(self.threshold)
        super().__init__(name, params.effective)

    def prepare(self, _v: View, /) -> None:
        return None

    def inputs(self, _m: EndpointMatrix, /) -> tuple[object, ...]:
        return ()  # the live inflight_tokens column only

    def score(self, v: View, _state: None, req: PickRequest, _dispatched: F64, /) -> F64:
        load = v.take(v.m.inflight_tokens) + LoadCharge.for_request(req).tokens
        # fmax/fmin: a NaN (never written by a correct owner) reads as 0 load instead of poisoning the sum
        np.fmax(load, 0.0, out=load)
        np.fmin(load, self.threshold, out=load)
        load /= -self.threshold
        load += 1.0
        return load
