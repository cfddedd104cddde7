"""``prefix-cache-scorer``: the reference formula, and the load guard that keeps a hot prefix from piling
up."""

from __future__ import annotations

import numpy as np
import pytest

from scoring import (
    ConfigurationError,
    EndpointMatrix,
    EndpointRow,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    View,
    build_scheduler,
)
from scoring.matrix import LoadCharge
from scoring.prefix import ApproxPrefixCache
from scoring.scorers import PrefixCacheScorer
from scoring.types import PrefixMatch


def matrix(n: int, **columns: list[float]) -> EndpointMatrix:
    rows = []
    for i in range(n):
        values = {k: v[i] for k, v in columns.items()}
        rows.append(EndpointRow(f"e{i}", f"10.0.0.{i}:8000", scraped_at=0.0, **values))
    return EndpointMatrix.from_rows(rows)


def prefix(matched: list[float], total: int, block_tokens: int = 16) -> PrefixMatch:
    arr = np.array(matched)
    arr.flags.writeable = False
    return PrefixMatch(tuple(range(total)), arr, int(max(matched)), block_tokens)


def score(s: PrefixCacheScorer, m: EndpointMatrix, req: PickRequest) -> list[float]:
    v = View(m)
    return s.score(v, s.prepare(v), req, m.dispatched).tolist()


def test_reference_formula_without_the_guard() -> None:
    s = PrefixCacheScorer("p", {"loadGuard": False})
    m = matrix(3, waiting=[0.0, 50.0, 0.0], prefill_tokens=[0.0, 1e6, 0.0])
    assert score(s, m, PickRequest(prefix=prefix([8.0, 4.0, 0.0], 8))) == [1.0, 0.5, 0.0]


def test_no_match_scores_zero() -> None:
    s = PrefixCacheScorer("p")
    m = matrix(2, waiting=[0.0, 0.0])
    assert score(s, m, PickRequest()) == [0.0, 0.0]
    empty = PrefixMatch((1, 2), None, 0, 16)
    assert score(s, m, PickRequest(prefix=empty)) == [0.0, 0.0]


def test_guard_equals_the_reference_when_backlogs_are_equal() -> None:
    s = PrefixCacheScorer("p")
    m = matrix(3, waiting=[2.0, 2.0, 2.0], prefill_tokens=[500.0, 500.0, 500.0])
    assert score(s, m, PickRequest(prefix=prefix([8.0, 4.0, 0.0], 8))) == [1.0, 0.5, 0.0]


def test_guard_discounts_the_holder_by_its_extra_backlog_in_tokens() -> None:
    s = PrefixCacheScorer("p", {"queuedRequestTokens": 100})
    # 10 blocks of 16 tokens = 160 tokens; e0 holds all, e1 half; e0 has 64 more backlog tokens than e2
    m = matrix(3, waiting=[0.0, 0.0, 0.0], prefill_tokens=[64.0, 0.0, 0.0])
    assert score(s, m, PickRequest(prefix=prefix([10.0, 5.0, 0.0], 10))) == pytest.approx([0.6, 0.5, 0.0])
    # the scraped queue counts as queuedRequestTokens per request (max with our own prefill accounting)
    q = matrix(3, waiting=[1.0, 0.0, 0.0], prefill_tokens=[64.0, 0.0, 0.0])
    assert score(s, q, PickRequest(prefix=prefix([10.0, 5.0, 0.0], 10))) == pytest.approx(
        [60 / 160, 0.5, 0.0]
    )
    # a tolerance lets the holder carry some extra backlog at full credit
    tolerant = PrefixCacheScorer("p", {"queuedRequestTokens": 100, "backlogToleranceTokens": 50})
    assert score(tolerant, m, PickRequest(prefix=prefix([10.0, 5.0, 0.0], 10))) == pytest.approx(
        [(160 - 14) / 160, 0.5, 0.0]
    )
    # beyond the saving, no credit at all
    far = matrix(3, waiting=[0.0, 0.0, 0.0], prefill_tokens=[10_000.0, 0.0, 0.0])
    assert score(s, far, PickRequest(prefix=prefix([10.0, 5.0, 0.0], 10))) == [0.0, 0.5, 0.0]


def test_our_default_profile_follows_a_cached_prompt_while_the_holder_is_the_faster_choice() -> None:
    """How prefix credit and load interact in the built-in profile. A repeated 7,200-token prompt; its
    holder has one more request in flight than three idle endpoints and ``extra`` more prefill tokens
    pending. The holder gives the first token sooner while ``extra`` < 7,200 (waiting vs. recomputing the
    prompt). ``prefill-queue-scorer`` counts the prefill the hit saves (it compares the prefill ahead of
    the request's first token, its own included), so the load terms no longer charge the holder for the
    backlog its saving pays for, on top of the guard's discount: the holder keeps the request up to about
    5,300 tokens (the count-based ``queue-scorer`` still charges it one request), where the earlier
    rule gave it away from about 3,700. Past the break-even it never keeps it."""
    from scoring import default_scheduler

    scheduler = default_scheduler()
    rng = np.random.default_rng(0)
    # the whole 256-block window matched at e0: the saving is the whole prompt
    req = PickRequest(
        target_model="model", prefix=prefix([256.0, 0.0, 0.0, 0.0], 256), prompt_tokens_estimate=7_200
    )

    def pick(extra: float) -> int:
        m = matrix(
            4, waiting=[0.0] * 4, running=[2.0] * 4, kv_usage=[0.3] * 4, prefill_tokens=[extra, 0, 0, 0]
        )
        m.dispatched[0] = 1.0
        return scheduler.schedule(m, req, now=0.0, rng=rng).primary

    assert [pick(x) for x in (0.0, 2_000.0, 3_500.0, 4_000.0, 4_500.0, 5_000.0)] == [0] * 6
    assert all(pick(x) != 0 for x in (5_600.0, 7_300.0, 9_000.0, 20_000.0))


def test_scores_stay_in_unit_interval_with_junk_gauges() -> None:
    s = PrefixCacheScorer("p")
    m = matrix(4, waiting=[np.nan, np.inf, -5.0, 1e300], prefill_tokens=[0.0, 0.0, 0.0, 0.0])
    out = score(s, m, PickRequest(prefix=prefix([3.0, 2.0, 1.0, 0.0], 3)))
    assert all(0.0 <= x <= 1.0 for x in out)


def test_a_match_from_another_snapshot_is_an_error() -> None:
    s = PrefixCacheScorer("p")
    with pytest.raises(ValueError, match="another snapshot"):
        score(s, matrix(2, waiting=[0.0, 0.0]), PickRequest(prefix=prefix([1.0, 0.0, 0.0], 1)))


def test_parameters_are_validated_and_shown() -> None:
    s = PrefixCacheScorer("p", {"blockSizeTokens": 32, "lruCapacityPerServer": 1000, "autoTune": False})
    assert s.prefix_config.block_size_tokens == 32
    assert s.prefix_config.capacity == 1000
    assert not s.prefix_config.auto_tune
    assert s.parameters["maxPrefixBlocksToMatch"] == 256
    assert s.parameters["loadGuard"] is True
    assert s.parameters["queuedRequestTokens"] == 1024
    assert s.parameters["backlogToleranceTokens"] == 0
    with pytest.raises(ConfigurationError, match="queuedRequestTokens"):
        PrefixCacheScorer("p", {"queuedRequestTokens": -1})
    with pytest.raises(ConfigurationError, match="loadGuard"):
        PrefixCacheScorer("p", {"loadGuard": 1})


# ------------------------------------------------------------------------------------------------ load guard
SYSTEM = b"You are a careful assistant for the ACME support desk. Answer briefly and cite the manual. " * 80


def reference_profile(load_guard: bool) -> object:
    plugins = [
        PluginSpec("queue-scorer", "queue-scorer"),
        PluginSpec("kv-cache-utilization-scorer", "kv-cache-utilization-scorer"),
        PluginSpec("prefix-cache-scorer", "prefix-cache-scorer", {"loadGuard": load_guard}),
        PluginSpec("max-score-picker", "max-score-picker"),
    ]
    profile = ProfileSpec(
        "default",
        [
            ("queue-scorer", 2.0),
            ("kv-cache-utilization-scorer", 2.0),
            ("prefix-cache-scorer", 3.0),
            ("max-score-picker", None),
        ],
    )
    return build_scheduler(plugins, [profile])


def route(
    scheduler: object, cache: ApproxPrefixCache, m: EndpointMatrix, n: int, rng: np.random.Generator
) -> list[int]:
    """Route n requests sharing SYSTEM (each with its own question); nothing completes in between."""
    picks = []
    for k in range(n):
        text = SYSTEM + f"Question {k}: where is my order number {k * 7919}?".encode()
        match = cache.match(cache.hashes("model", "", text), m, now=0.0)
        req = PickRequest(target_model="model", prefix=match, prompt_tokens_estimate=len(text) // 4)
        row = scheduler.schedule(m, req, now=0.0, rng=rng).primary  # type: ignore[attr-defined]
        assert match is not None
        cache.record(m, row, match)
        LoadCharge.for_request(req, row).add(m, row)
        picks.append(row)
    return picks


def test_a_hot_system_prompt_spreads_as_its_holder_backs_up_and_returns_when_it_drains() -> None:
    rng = np.random.default_rng(7)
    m = matrix(6, waiting=[0.0] * 6, running=[0.0] * 6, kv_usage=[0.1] * 6)
    cache = ApproxPrefixCache()
    scheduler = reference_profile(load_guard=True)
    first = route(scheduler, cache, m, 1, rng)[0]
    m.prefill_tokens[first] = m.dispatched[first] = 0.0  # its first token came back
    # cache hits add only their uncached tokens to the holder's backlog: it keeps the prompt for a while
    light = route(scheduler, cache, m, 10, rng)
    assert light == [first] * 10
    # its backlog keeps growing while nothing completes: the prompt spreads
    heavy = route(scheduler, cache, m, 60, rng)
    assert len(set(heavy)) == 6
    assert heavy[-30:].count(first) <= 10  # by then every endpoint holds it and the load terms share it out
    # the first holder drains (its requests produced their first tokens), the others stay busy: it is back
    m.prefill_tokens[first] = m.dispatched[first] = 0.0
    back = route(scheduler, cache, m, 3, rng)
    assert back == [first] * 3


def test_without_the_guard_the_holder_takes_everything() -> None:
    """The reference's additive score: prefix 3 x ~1 outweighs queue 2 x 1 however long the queue gets."""
    rng = np.random.default_rng(7)
    m = matrix(6, waiting=[0.0] * 6, running=[0.0] * 6, kv_usage=[0.1] * 6)
    picks = route(reference_profile(load_guard=False), ApproxPrefixCache(), m, 71, rng)
    assert len(set(picks[1:])) == 1


def test_the_guard_reads_the_scraped_queue_too() -> None:
    """Traffic we did not route (another gateway, non-streaming requests) shows in the scraped queue."""
    rng = np.random.default_rng(3)
    cache = ApproxPrefixCache()
    scheduler = reference_profile(load_guard=True)
    idle = matrix(4, waiting=[0.0] * 4, kv_usage=[0.1] * 4)
    holder = route(scheduler, cache, idle, 1, rng)[0]
    spread_at = None
    for queue in range(20):
        waiting = [0.0] * 4
        waiting[holder] = float(queue)
        m = matrix(4, waiting=waiting, kv_usage=[0.1] * 4)
        text = SYSTEM + b"one more question about my order"
        match = cache.match(cache.hashes("model", "", text), m, now=0.0)
        row = scheduler.schedule(m, PickRequest(target_model="model", prefix=match), now=0.0, rng=rng).primary  # type: ignore[attr-defined]
        if row != holder:
            spread_at = queue
            break
    # SYSTEM is about 1,800 tokens: credit gone after about two queued requests of 1,024 tokens
    assert spread_at is not None
    assert 1 <= spread_at <= 3


def test_the_decision_record_lists_matched_blocks_per_candidate() -> None:
    rng = np.random.default_rng(0)
    m = matrix(3, waiting=[0.0] * 3, kv_usage=[0.1] * 3)
    cache = ApproxPrefixCache()
    hashes = cache.hashes("model", "", SYSTEM)
    first = cache.match(hashes, m, now=0.0)
    assert first is not None
    cache.record(m, 1, first)
    match = cache.match(hashes, m, now=0.0)
    scheduler = reference_profile(load_guard=True)
    result = scheduler.schedule(  # type: ignore[attr-defined]
        m, PickRequest(target_model="model", prefix=match), now=0.0, rng=rng, explain=True
    )
    record = result.decision.prefix
    assert record.total_blocks == len(hashes)
    assert record.block_tokens == 16
    assert dict(record.matched_blocks) == {"e0": 0, "e1": len(hashes), "e2": 0}
    plain = scheduler.schedule(m, PickRequest(), now=0.0, rng=rng, explain=True)  # type: ignore[attr-defined]
    assert plain.decision.prefix is None


def test_a_whole_window_match_of_a_longer_prompt_saves_the_whole_prompt() -> None:
    s = PrefixCacheScorer("p", {"queuedRequestTokens": 0})
    # 4 blocks of 16 tokens hashed (64 tokens), the prompt is 10,000 tokens: a full window match at e0
    m = matrix(3, waiting=[0.0] * 3, prefill_tokens=[5_000.0, 0.0, 0.0])
    req = PickRequest(prefix=prefix([4.0, 4.0, 2.0], 4), prompt_tokens_estimate=10_000)
    # e0 waits 5,000 tokens to save 10,000: half its credit left; e1 the whole; e2 saved 32 tokens, no wait
    assert score(s, m, req) == pytest.approx([0.5, 1.0, 0.5])
    # without the guard: the reference's fractions
    assert score(PrefixCacheScorer("p", {"loadGuard": False}), m, req) == [1.0, 1.0, 0.5]
