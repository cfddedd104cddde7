"""Token accounting columns, the load charge, and the token-load scorers (prefill queue, in-flight tokens)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from scoring import (
    ConfigurationError,
    EndpointMatrix,
    EndpointRow,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    Scheduler,
    Scorer,
    View,
    build_scheduler,
    default_registry,
    default_scheduler,
)
from scoring.matrix import MAX_CHARGE_TOKENS, LoadCharge
from scoring.plugin import Category, Dependence
from scoring.scorers import PrefillQueueScorer, TokenLoadScorer
from scoring.scorers.load import LoadTrack, weighted_min_max
from scoring.scorers.tokens import DEFAULT_MIN_RANGE_TOKENS, DEFAULT_QUEUE_THRESHOLD_TOKENS
from scoring.types import PrefixMatch

NOW = 5.0


def fleet(n: int, **columns: list[float]) -> EndpointMatrix:
    rows = []
    for i in range(n):
        values: dict[str, Any] = {"waiting": 0.0, "running": 0.0, "kv_usage": 0.2, "scraped_at": NOW}
        values.update({k: v[i] for k, v in columns.items()})
        rows.append(EndpointRow(f"e{i}", f"10.0.0.{i}:8000", **values))
    return EndpointMatrix.from_rows(rows)


def scores(scorer: Scorer[Any], m: EndpointMatrix, tokens: int = 0) -> list[float]:
    v = View(m)
    out = scorer.score(v, scorer.prepare(v), PickRequest(prompt_tokens_estimate=tokens), m.dispatched)
    return [float(x) for x in out]


Spec = tuple[str, float, dict[str, object]]


def profile(*entries: Spec) -> Scheduler:
    plugins = [PluginSpec(t, t, params) for t, _, params in entries]
    refs: list[tuple[str, float | None]] = [(t, w) for t, w, _ in entries]
    return build_scheduler(plugins, [ProfileSpec("p", refs)])


# ------------------------------------------------------------------------------------------ columns
def test_token_columns_default_to_zero_and_survive_take_row_and_with_load() -> None:
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("a", "10.0.0.1:8000"),
            EndpointRow("b", "10.0.0.2:8000", prefill_tokens=300.0, inflight_tokens=900.0),
        ]
    )
    assert m.prefill_tokens.tolist() == [0.0, 300.0]
    assert m.inflight_tokens.tolist() == [0.0, 900.0]
    assert m.row(1).prefill_tokens == 300.0
    assert m.row(1).inflight_tokens == 900.0
    taken = m.take([1, 0])
    assert taken.prefill_tokens.tolist() == [300.0, 0.0]
    taken.prefill_tokens[0] += 1.0
    assert m.prefill_tokens[1] == 300.0, "take copies the mutable columns"
    copy = m.with_load_copies()
    copy.inflight_tokens[0] = 7.0
    assert m.inflight_tokens[0] == 0.0
    shared = m.with_load(m.dispatched)
    assert shared.prefill_tokens is m.prefill_tokens, "with_load shares what it is not given"


def test_a_matrix_built_without_the_token_columns_gets_zeros() -> None:
    """Callers that construct the matrix field by field (the datastore today) keep working."""
    m = EndpointMatrix.from_rows([EndpointRow("a", "10.0.0.1:8000"), EndpointRow("b", "10.0.0.2:8000")])
    fields = {
        f.name: getattr(m, f.name)
        for f in dataclasses.fields(m)
        if not f.name.startswith("_") and f.name not in {"prefill_tokens", "inflight_tokens"}
    }
    bare = EndpointMatrix(**fields)
    assert bare.prefill_tokens.tolist() == [0.0, 0.0]
    assert bare.inflight_tokens.tolist() == [0.0, 0.0]
    assert bare.prefill_tokens.flags.writeable, "owner-maintained columns are mutable"
    result = default_scheduler().schedule(bare, PickRequest(), now=NOW, rng=np.random.default_rng(0))
    assert result.primary in (0, 1)


# ------------------------------------------------------------------------------------------ the charge
@pytest.mark.parametrize(
    ("estimate", "tokens"),
    [
        (1200, 1200.0),
        (0, 0.0),
        (-5, 0.0),
        (12.9, 12.0),
        (math.nan, 0.0),
        (math.inf, 0.0),
        (10**15, float(MAX_CHARGE_TOKENS)),
    ],
)
def test_charge_is_the_clipped_integer_estimate(estimate: float, tokens: float) -> None:
    assert LoadCharge.of(estimate).tokens == tokens


def test_charge_adds_one_request_and_its_tokens_to_the_four_columns() -> None:
    m = fleet(2)
    LoadCharge.of(500).add(m, 1)
    LoadCharge.of(20).add(m, 1)
    LoadCharge.for_request(PickRequest(prompt_tokens_estimate=300, stream=False)).add(m, 0)
    assert m.dispatched.tolist() == [1.0, 2.0]
    assert m.inflight.tolist() == [1.0, 2.0]
    assert m.prefill_tokens.tolist() == [0.0, 520.0], "a non-streaming request charges no prefill"
    assert m.inflight_tokens.tolist() == [300.0, 520.0]


def test_a_scheduled_request_charges_by_its_estimate_and_stream_flag() -> None:
    assert LoadCharge.for_request(PickRequest(prompt_tokens_estimate=77)) == LoadCharge(77.0, 77.0)
    assert LoadCharge.for_request(PickRequest(prompt_tokens_estimate=77, stream=False)) == LoadCharge(
        77.0, 0.0
    )
    assert PrefillQueueScorer("p").charge(PickRequest(prompt_tokens_estimate=77, stream=False)) == 0.0


def test_adding_and_releasing_many_charges_returns_exactly_to_zero() -> None:
    """Integer charges are exact in float64: no drift however long the service runs."""
    rng = np.random.default_rng(3)
    column = np.zeros(1)
    charges = [LoadCharge.of(float(x)) for x in rng.integers(1, 130_000, size=5000)]
    for c in charges:
        column[0] += c.tokens
    for c in reversed(charges[::2]):
        column[0] -= c.tokens
    for c in charges[1::2]:
        column[0] -= c.tokens
    assert column[0] == 0.0


# ------------------------------------------------------------------------------------------ prefill queue
def test_prefill_queue_scorer_metadata_and_defaults() -> None:
    s = PrefillQueueScorer("p")
    assert s.category is Category.DISTRIBUTION
    assert s.dependence is Dependence.LOAD
    assert s.accounting == "prefill_tokens"
    assert s.parameters == {"minRangeTokens": DEFAULT_MIN_RANGE_TOKENS}
    assert s.charge(PickRequest(prompt_tokens_estimate=77)) == 77.0


@pytest.mark.parametrize(
    ("prefill", "min_range", "expected"),
    [
        ([0.0, 20_000.0, 40_000.0], 8192.0, [1.0, 0.5, 0.0]),  # spread above the floor: plain min-max
        ([0.0, 20_000.0, 40_000.0], 0.0, [1.0, 0.5, 0.0]),
        ([0.0, 2048.0, 4096.0], 8192.0, [1.0, 0.75, 0.5]),  # spread below the floor: 1 - (L - min) / floor
        ([0.0, 2048.0, 4096.0], 0.0, [1.0, 0.5, 0.0]),  # no floor: min-max magnifies small spreads
        ([1000.0, 1000.0], 8192.0, [1.0, 1.0]),  # all equal → 1
        ([1000.0, 1000.0], 0.0, [1.0, 1.0]),
        ([5000.0, 1000.0], 8192.0, [0.5117, 1.0]),  # only the difference counts, not the level
    ],
)
def test_prefill_queue_scorer_formula(prefill: list[float], min_range: float, expected: list[float]) -> None:
    m = fleet(len(prefill), prefill_tokens=prefill)
    got = scores(PrefillQueueScorer("p", {"minRangeTokens": min_range}), m)
    assert got == pytest.approx(expected, abs=1e-4)
    assert all(0.0 <= x <= 1.0 for x in got)


def test_prefill_queue_scorer_ignores_request_counts_and_gauges() -> None:
    """One 40k-token prompt outweighs ten short ones; the scraped queue plays no part."""
    m = fleet(2, prefill_tokens=[40_000.0, 10 * 150.0], waiting=[0.0, 10.0], dispatched=[1.0, 10.0])
    assert scores(PrefillQueueScorer("p"), m) == pytest.approx([0.0, 1.0])


def hit(matched: list[float], total: int, block_tokens: int = 16) -> PrefixMatch:
    arr = np.array(matched)
    arr.flags.writeable = False
    return PrefixMatch(tuple(range(total)), arr, int(max(matched)), block_tokens)


def test_prefill_queue_scorer_counts_the_prefill_a_prefix_hit_saves_the_request() -> None:
    """With a prefix match, ``L`` is the pending prefill minus what a hit saves the request there, i.e.
    (up to a constant) the prefill ahead of its first token including its own: a holder of the whole
    7,200-token prompt with 5,000 tokens pending is 2,200 tokens sooner than an idle endpoint."""
    s = PrefillQueueScorer("p")  # minRangeTokens 16,384
    m = fleet(3, prefill_tokens=[5_000.0, 0.0, 3_000.0])
    v = View(m)
    # 256 blocks hashed (4,096 tokens); e0 holds them all (the whole 7,200-token prompt), e2 64 blocks
    req = PickRequest(prefix=hit([256.0, 0.0, 64.0], 256), prompt_tokens_estimate=7_200)
    got = s.score(v, s.prepare(v), req, m.dispatched).tolist()
    # L = [5,000 - 7,200, 0, 3,000 - 1,024] = [-2,200, 0, 1,976]; top = min + 16,384
    assert got == pytest.approx([1.0, 1 - 2_200 / 16_384, 1 - 4_176 / 16_384])
    # without a match the request's own prefill is the same everywhere: the scores of the plain formula
    plain = s.score(v, s.prepare(v), PickRequest(prompt_tokens_estimate=7_200), m.dispatched).tolist()
    assert plain == pytest.approx([1 - 5_000 / 16_384, 1.0, 1 - 3_000 / 16_384])
    # a holder waiting longer than the hit saves is behind: the saving is no licence to pile up
    busy = fleet(2, prefill_tokens=[9_000.0, 0.0])
    bv = View(busy)
    req2 = PickRequest(prefix=hit([256.0, 0.0], 256), prompt_tokens_estimate=7_200)
    assert s.score(bv, s.prepare(bv), req2, busy.dispatched).tolist() == pytest.approx(
        [1 - 1_800 / 16_384, 1.0]
    )


def test_a_routed_request_is_charged_the_prefill_its_hit_does_not_save() -> None:
    """The charge credits the hit exactly as the guard and the prefill term weigh it (one rule,
    ``PrefixMatch.saving``): a history held beyond the hashed window is not charged as pending prefill
    (it was: ``estimate - 4,096``, which made a conversation's holder look busy with prefill it never
    did)."""
    # 256 blocks hashed (4,096 tokens) of a 7,200-token prompt: e0 holds the whole window, e1 none, e2 64
    match = hit([256.0, 0.0, 64.0], 256)
    req = PickRequest(prefix=match, prompt_tokens_estimate=7_200)
    assert [LoadCharge.for_request(req, row) for row in range(3)] == [
        LoadCharge(7_200.0, 0.0),
        LoadCharge(7_200.0, 7_200.0),
        LoadCharge(7_200.0, 7_200.0 - 1_024.0),
    ]
    assert match.matched is not None
    uncached = (7_200.0 - match.saving(match.matched, 7_200.0)).clip(0)
    assert [LoadCharge.for_request(req, row).prefill for row in range(3)] == uncached.tolist()
    # a prompt within the window: the matched blocks in tokens, never below 0
    short = PickRequest(prefix=hit([4.0, 2.0], 4), prompt_tokens_estimate=60)
    assert [LoadCharge.for_request(short, row).prefill for row in range(2)] == [0.0, 28.0]
    # no row (the batch's own estimate) or a non-streaming request: the plain charge
    assert LoadCharge.for_request(req) == LoadCharge(7_200.0, 7_200.0)
    assert LoadCharge.for_request(req._replace(stream=False), 0) == LoadCharge(7_200.0, 0.0)


def test_a_batch_of_requests_with_prefix_matches_equals_sequential_picks() -> None:
    """The batch's O(1) load updates cannot replay a per-request part of ``L``; such a batch is picked
    one by one (same results as sequential picks, each charged its uncached prompt)."""
    s = profile(("queue-scorer", 1.0, {}), ("prefill-queue-scorer", 2.0, {}))
    assert s.batchable
    assert s.terms.request_loads
    m = fleet(4, prefill_tokens=[4_000.0, 0.0, 1_000.0, 0.0])
    reqs = [
        PickRequest(
            prefix=hit([64.0, 0.0, 64.0 * (k % 2), 0.0], 64), prompt_tokens_estimate=1_100, stream=True
        )
        for k in range(12)
    ]
    copy = m.with_load_copies()
    rng = np.random.default_rng(3)
    expected = []
    for req in reqs:
        row = s.schedule(copy, req, now=NOW, rng=rng).primary
        LoadCharge.for_request(req, row).add(copy, row)
        expected.append(row)
    got = [r.indices[0] for r in s.schedule_batch(m, reqs, now=NOW, rng=np.random.default_rng(3))]
    assert got == expected
    assert 0 in got  # the holder's saving beats its head start of pending prefill at least once


@pytest.mark.parametrize("bad", [-1.0, "8k", math.inf, True])
def test_prefill_queue_scorer_rejects_bad_parameters(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="minRangeTokens"):
        PrefillQueueScorer("p", {"minRangeTokens": bad})
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        PrefillQueueScorer("p", {"minRange": 1})


def test_floor_arithmetic_of_the_batch_track_matches_the_single_pick() -> None:
    """LoadTrack's one-element update repeats weighted_min_max's operations for floored scorers too."""
    base = np.zeros(6)
    accounted = np.array([0.0, 900.0, 3000.0, 3000.0, 12.0, 7000.0])
    track = LoadTrack(base, accounted, 2.5, 8192.0)
    values = accounted.copy()
    for position, extra in [(0, 100.0), (4, 5000.0), (0, 50.0), (1, 1.0), (3, 9000.0)]:
        values[position] += extra
        track.bump(position, float(values[position]))
        expected = weighted_min_max(base + values, 2.5, 8192.0)
        assert track.contribution.tolist() == expected.tolist()


# ------------------------------------------------------------------------------------------ token load
def test_token_load_scorer_reference_formula() -> None:
    """1 - min(T + r, q) / q with T = in-flight tokens, r = this request's estimate (reference)."""
    m = fleet(3, inflight_tokens=[0.0, 250.0, 750.0])
    s = TokenLoadScorer("t", {"queueThresholdTokens": 1000})
    assert s.category is Category.DISTRIBUTION
    assert scores(s, m, tokens=250) == pytest.approx([0.75, 0.5, 0.0])
    assert scores(s, m, tokens=0) == pytest.approx([1.0, 0.75, 0.25])
    over = fleet(1, inflight_tokens=[5000.0])
    assert scores(s, over, tokens=10) == [0.0]


def test_token_load_scorer_threshold_defaults_like_the_reference() -> None:
    assert TokenLoadScorer("t").threshold == DEFAULT_QUEUE_THRESHOLD_TOKENS
    for non_positive in (0, -3):
        s = TokenLoadScorer("t", {"queueThresholdTokens": non_positive})
        assert s.threshold == DEFAULT_QUEUE_THRESHOLD_TOKENS
        assert s.parameters == {"queueThresholdTokens": DEFAULT_QUEUE_THRESHOLD_TOKENS}
    with pytest.raises(ConfigurationError, match="queueThresholdTokens"):
        TokenLoadScorer("t", {"queueThresholdTokens": "lots"})


def test_token_load_scorer_reads_nan_as_no_load() -> None:
    m = fleet(2, inflight_tokens=[math.nan, 2_000_000.0])
    got = scores(TokenLoadScorer("t"), m)
    assert got[0] == 1.0
    assert 0.0 < got[1] < 1.0


def test_both_types_are_registered_scorers() -> None:
    registry = default_registry()
    assert "prefill-queue-scorer" in registry.types()
    assert "token-load-scorer" in registry.types()


# ------------------------------------------------------------------------------------------ in a profile
def test_a_burst_of_long_and_short_prompts_is_spread_by_tokens_not_by_count() -> None:
    """Within one scrape interval the request counts say nothing; the token charge does."""
    s = profile(("prefill-queue-scorer", 1.0, {"minRangeTokens": 0}))
    m = fleet(2)
    rng = np.random.default_rng(0)
    sizes = [8000, 500, 500, 500, 500, 500, 500, 500, 500, 8000]
    placed: list[int] = []
    for size in sizes:
        req = PickRequest(prompt_tokens_estimate=size)
        i = s.schedule(m, req, now=NOW, rng=rng).primary
        LoadCharge.of(size).add(m, i)
        placed.append(i)
    first = placed[0]
    # the eight short prompts (4,000 tokens) all queue beside the long one, not behind it; the second long
    # prompt then joins the short ones (4,000 < 8,000 pending)
    assert placed == [first] + [1 - first] * 9
    assert sorted(m.prefill_tokens.tolist()) == [8000.0, 12_000.0]
    assert m.dispatched[first] == 1.0, "a count-based scorer would have alternated"


@pytest.mark.parametrize(
    "scorer_spec",
    [
        ("prefill-queue-scorer", 2.0, {}),
        ("prefill-queue-scorer", 1.0, {"minRangeTokens": 0}),
        ("token-load-scorer", 1.0, {"queueThresholdTokens": 5000}),
    ],
)
def test_batch_charges_the_same_amounts_as_sequential_picks(scorer_spec: Spec) -> None:
    s = profile(("queue-scorer", 1.0, {}), ("kv-cache-utilization-scorer", 1.0, {}), scorer_spec)
    rng_sizes = np.random.default_rng(11)
    pending = [0.0, 500.0, 0.0, 9000.0, 100.0, 0.0, 3000.0]
    m = fleet(7, prefill_tokens=pending, dispatched=[0, 1, 0, 0, 2, 0, 0])
    reqs = [
        PickRequest(prompt_tokens_estimate=int(x), stream=bool(x % 3))
        for x in rng_sizes.integers(0, 6000, size=40)
    ]
    copy = m.with_load_copies()
    rng = np.random.default_rng(4)
    expected = []
    for req in reqs:
        result = s.schedule(copy, req, now=NOW, rng=rng)
        LoadCharge.for_request(req).add(copy, result.primary)
        expected.append(result.indices)
    before = m.prefill_tokens.copy()
    got = [r.indices for r in s.schedule_batch(m, reqs, now=NOW, rng=np.random.default_rng(4))]
    assert got == expected
    assert m.prefill_tokens.tolist() == before.tolist(), "the batch charged copies, not the snapshot"


def test_decision_record_shows_the_prefill_scores() -> None:
    s = profile(("prefill-queue-scorer", 1.0, {"minRangeTokens": 0}))
    m = fleet(2, prefill_tokens=[100.0, 0.0])
    result = s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), explain=True)
    assert result.decision is not None
    (record,) = result.decision.scorers
    assert record.scorer_type == "prefill-queue-scorer"
    assert dict(record.scores) == {"e0": 0.0, "e1": 1.0}


def test_the_documented_default_profile_is_the_default_scheduler() -> None:
    """The YAML in scoring/README.md ("Our default profile") builds exactly ``default_scheduler()``."""
    readme = Path(__file__).resolve().parents[3] / "scoring" / "README.md"
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("## Our default profile") :]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None
    doc = yaml.safe_load(match.group(1))
    plugins = [
        PluginSpec(p.get("name") or p["type"], p["type"], p.get("parameters") or {}) for p in doc["plugins"]
    ]
    (prof,) = doc["schedulingProfiles"]
    refs = [(r["pluginRef"], r.get("weight")) for r in prof["plugins"]]
    documented = build_scheduler(plugins, [ProfileSpec(prof["name"], refs)])
    ours = default_scheduler()
    assert dict(documented.weights) == dict(ours.weights)
    assert documented.describe() == ours.describe()
