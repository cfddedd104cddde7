"""Prefix-sharing workloads (text from units, the shared_prefix shapes) and the true-state oracle."""

from __future__ import annotations

import numpy as np

from benchmarks.sim.fleet import FleetConfig, simulate
from benchmarks.sim.metrics import summarize
from benchmarks.sim.oracle import Oracle
from benchmarks.sim.policies import RoundRobin
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.server import RequestTable, SimServer
from benchmarks.sim.shared_prefix import SHAPES, UNIT_TOKENS, workload
from benchmarks.sim.text import CHARS_PER_TOKEN, prompt_text, unit_block
from benchmarks.sim.traces import SHARED_PREFIX_SHAPES, TRACE_NAMES, Workload, named_trace
from tests.unit.sim.workloads import prefix_workload


# ------------------------------------------------------------------------------------------------ text
def test_unit_text_is_a_pure_function_of_the_id() -> None:
    assert unit_block(7, 256) == unit_block(7, 256)
    assert len(unit_block(7, 256)) == 256
    assert unit_block(7, 256) != unit_block(8, 256)
    a = prompt_text((1, 2, 3), 300, 128, request=0)
    b = prompt_text((1, 2, 4), 300, 128, request=9)
    assert len(a) == 300 * CHARS_PER_TOKEN
    shared = 2 * 128 * CHARS_PER_TOKEN
    assert a[:shared] == b[:shared]
    assert a[shared : shared + 8] != b[shared : shared + 8]
    assert prompt_text((1, 2, 3), 300, 128, request=0, max_chars=100) == a[:100]


def test_requests_without_units_never_share_text() -> None:
    a = prompt_text((), 50, 0, request=1)
    b = prompt_text((), 50, 0, request=2)
    assert len(a) == len(b) == 200
    assert a[:8] != b[:8]


# ------------------------------------------------------------------------------------------------ shapes
def test_the_four_reference_shapes_are_bundled_workloads() -> None:
    assert set(SHAPES) == set(SHARED_PREFIX_SHAPES)
    assert {f"shared-prefix-{s}" for s in SHAPES} <= set(TRACE_NAMES)
    w = named_trace("shared-prefix-short-q-many-sys", seed=1)
    assert w.name == "shared-prefix-short-q-many-sys"
    assert len(w) == SHAPES["short-q-many-sys"].requests
    assert (w.prompt_tokens == 6000 + 1200).all()
    assert (w.output_tokens == 1000).all()


def group_of(w: Workload, k: int, system_units: int) -> tuple[int, ...]:
    return w.units[k][:system_units]


def test_single_turn_prompts_share_their_group_system_prompt_and_repeat_after_the_list() -> None:
    s = SHAPES["long-q-many-sys"]
    w = workload(s, seed=3, requests=1600)
    full_system_units = s.system_tokens // UNIT_TOKENS
    systems = {group_of(w, k, full_system_units) for k in range(len(w))}
    assert len(systems) == s.groups
    prompts = s.groups * s.prompts_per_group
    assert w.units[prompts + 5] == w.units[5], "the list of prompts is replayed in order"
    assert w.units[5] != w.units[6]
    # units beyond the system prompt are the prompt's own
    assert len(set(w.units[5][full_system_units:]) & set(w.units[6][full_system_units:])) == 0
    assert all(len(u) == -(-int(p) // UNIT_TOKENS) for u, p in zip(w.units, w.prompt_tokens, strict=True))


def test_multi_turn_rounds_extend_the_previous_round_of_the_same_session() -> None:
    s = SHAPES["short-q-few-sys-chat"]
    users = s.groups * s.prompts_per_group
    w = workload(s, seed=0, requests=users + 10)
    for k in range(10):
        first, second = w.units[k], w.units[users + k]
        kept = int(w.prompt_tokens[k]) // UNIT_TOKENS
        assert second[:kept] == first[:kept], "round 1 starts with round 0's whole units"
        # round 1 = round 0's prompt + its 1,000-token answer + the question again
        assert w.prompt_tokens[users + k] == w.prompt_tokens[k] + s.output_tokens + (
            w.prompt_tokens[k] - s.system_tokens
        )
    assert len({w.units[k][: s.system_tokens // UNIT_TOKENS] for k in range(users)}) == s.groups


def test_generated_workloads_depend_on_the_seed_only() -> None:
    a = workload("long-q-few-sys-chat", seed=4, requests=300)
    b = workload("long-q-few-sys-chat", seed=4, requests=300)
    c = workload("long-q-few-sys-chat", seed=5, requests=300)
    assert a.units == b.units
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)


# ------------------------------------------------------------------------------------------------ oracle
def test_the_oracle_keeps_prefixes_where_they_are_and_beats_round_robin_on_hits() -> None:
    # 40 system prompts of 2,048 tokens do not fit one server's 32,000-token cache; 10 do
    w = prefix_workload(600, rate=20.0, seed=2, groups=40)
    cfg = FleetConfig(LLAMA3_8B_H100.with_overrides(num_blocks=2000), n_servers=4)
    oracle = summarize(simulate(w, Oracle(), cfg))
    rr = summarize(simulate(w, RoundRobin(), cfg))
    assert oracle["prefix_hit_rate"] > 0.9
    assert oracle["prefix_hit_rate"] > rr["prefix_hit_rate"] + 0.05


def test_server_bookkeeping_for_the_oracle_returns_to_zero() -> None:
    w = prefix_workload(300, rate=200.0, seed=1)
    table = RequestTable(w)
    srv = SimServer(0, LLAMA3_8B_H100, table)
    for r in range(len(w)):
        srv.enqueue(r, float(w.arrival_s[r]))
    assert srv.waiting_tokens == int(w.prompt_tokens.sum())
    assert 0 < srv.pending_prefill_tokens() <= srv.waiting_tokens
    # every request of a group names the group's units as coming, before any is admitted
    assert srv.resident_prefix_tokens(0) == 0
    assert srv.resident_prefix_tokens(0, queued=True) == int(w.prompt_tokens[0])
    srv.advance(float("inf"))
    assert srv.waiting_tokens == srv.waiting_uncached == 0
    assert srv.queued == {}
    assert srv.pending_prefill_tokens() == 0
    assert srv.resident_prefix_tokens(1) == int(w.prompt_tokens[1]), "what ran stays cached"


# ------------------------------------------------------------------------------------------------ EPP index
def test_prompts_hash_to_shared_leading_blocks_exactly_where_their_units_agree() -> None:
    from benchmarks.sim.prefix import prompt_hashes
    from scoring.prefix import PrefixConfig

    w = prefix_workload(50, rate=1.0, seed=4, groups=2)
    hashes = prompt_hashes(w, ["m"] * len(w), PrefixConfig())
    same = [k for k in range(1, len(w)) if w.units[k][:32] == w.units[0][:32]]
    other = [k for k in range(1, len(w)) if w.units[k][:32] != w.units[0][:32]]
    assert same
    assert other
    shared_blocks = 32 * 64 * 4 // 64  # 32 units of 64 tokens, 4 characters a token, 64-character blocks
    for k in same:
        assert hashes[k][:shared_blocks] == hashes[0][:shared_blocks]
        assert hashes[k][shared_blocks] != hashes[0][shared_blocks]
    for k in other:
        assert hashes[k][0] != hashes[0][0]
    assert prompt_hashes(w, ["other-model"] * len(w), PrefixConfig())[0][0] != hashes[0][0], "seeded by model"


def test_a_profile_with_the_prefix_scorer_routes_on_the_real_index() -> None:
    from benchmarks.sim.policies import make_policy
    from benchmarks.sim.prefix import prefix_config_of

    assert prefix_config_of(make_policy("least-in-flight")) is None
    ref = make_policy("reference-default")  # queue 2, KV 2, prefix 3
    assert prefix_config_of(ref) is not None
    w = prefix_workload(600, rate=20.0, seed=2, groups=40)
    cfg = FleetConfig(LLAMA3_8B_H100.with_overrides(num_blocks=2000), n_servers=4)
    with_prefix = summarize(simulate(w, ref, cfg))
    rr = summarize(simulate(w, RoundRobin(), cfg))
    assert with_prefix["prefix_hit_rate"] > rr["prefix_hit_rate"] + 0.2
