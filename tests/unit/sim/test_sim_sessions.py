"""Closed-loop conversations in the simulator: a round waits for the previous answer, and answers are cached.

``Workload.after`` (a request sent only once another's response has ended, its latency counted from then)
and ``Workload.response_units`` (the engine keeps a finished request's prompt + answer cached): what
inference-perf's multi-turn sessions and vLLM's prefix cache do (``benchmarks/sim/fleet.py``,
``benchmarks/sim/server.py``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from benchmarks.sim import shared_prefix
from benchmarks.sim.fleet import FleetConfig, simulate
from benchmarks.sim.policies import RoundRobin, make_policy
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.server import RequestTable, SimServer
from benchmarks.sim.text import prompt_text
from benchmarks.sim.traces import Workload


def chat(
    arrivals: list[float],
    prompts: list[int],
    outputs: list[int],
    *,
    after: list[int] | None = None,
    units: list[tuple[int, ...]] | None = None,
    response_units: list[tuple[int, ...]] | None = None,
    unit_tokens: int = 0,
) -> Workload:
    n = len(prompts)
    return Workload(
        name="chat",
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        prompt_tokens=np.asarray(prompts, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        units=tuple(units) if units is not None else tuple(() for _ in range(n)),
        unit_tokens=unit_tokens,
        adapter=np.full(n, -1, dtype=np.int64),
        after=np.asarray(after, dtype=np.int64) if after is not None else None,
        response_units=tuple(response_units) if response_units is not None else (),
    )


def cfg(n: int = 2) -> FleetConfig:
    return FleetConfig(LLAMA3_8B_H100, n_servers=n, seed=0, prompt_estimate_sigma=0.0)


# ---------------------------------------------------------------------------------------------------- waiting
def test_a_round_is_sent_when_the_previous_answer_ends_and_timed_from_then() -> None:
    # request 1 is scheduled 0.1 s in, long before request 0's 300-token answer is back
    w = chat([0.0, 0.1], [500, 600], [300, 50], after=[-1, 0])
    res = simulate(w, RoundRobin(), cfg())
    assert res.finish[0] > 1.0
    assert res.arrival[1] == res.finish[0]  # sent the instant the answer ended, not at 0.1 s
    ttft = res.first_token[1] - res.arrival[1]
    assert 0.0 < ttft < 0.5  # an idle server: its TTFT is its own prefill, not the wait


def test_a_round_scheduled_after_the_answer_came_back_goes_at_its_own_time() -> None:
    w = chat([0.0, 60.0], [500, 600], [30, 50], after=[-1, 0])
    res = simulate(w, RoundRobin(), cfg())
    assert res.finish[0] < 60.0
    assert res.arrival[1] == 60.0


def test_chains_of_rounds_follow_their_answers_across_the_fleet() -> None:
    # 40 sessions of 3 rounds, all scheduled within half a second; every round waits for its previous one
    users, rounds = 40, 3
    n = users * rounds
    rng = np.random.default_rng(3)
    after = [k - users if k >= users else -1 for k in range(n)]
    w = chat(
        np.sort(rng.uniform(0.0, 0.5, n)).tolist(),
        rng.integers(100, 800, n).tolist(),
        rng.integers(20, 200, n).tolist(),
        after=after,
    )
    res = simulate(w, make_policy("least-in-flight"), cfg(4))
    assert np.isfinite(res.finish).all()
    later = np.arange(users, n)
    prev = later - users
    # each later round is sent exactly when its previous round's answer ended (they all end after 0.5 s)
    assert np.array_equal(res.arrival[later], res.finish[prev])
    assert (res.first_token[later] > res.arrival[later]).all()


def test_a_workload_whose_requests_wait_for_nothing_replays_exactly_as_without_the_column() -> None:
    rng = np.random.default_rng(5)
    n = 300
    base = chat(
        np.cumsum(rng.exponential(1 / 40.0, n)).tolist(),
        rng.integers(100, 2000, n).tolist(),
        rng.integers(10, 300, n).tolist(),
    )
    a = simulate(base, make_policy("default"), cfg(4))
    b = simulate(replace(base, after=np.full(n, -1, dtype=np.int64)), make_policy("default"), cfg(4))
    for col in ("arrival", "first_token", "finish", "server", "cached_tokens"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col


def test_slices_keep_who_waits_for_whom() -> None:
    w = chat([0.0, 0.1, 0.2, 0.3], [10] * 4, [5] * 4, after=[-1, -1, 0, 1])
    assert w.head(3).after is not None
    assert w.head(3).after.tolist() == [-1, -1, 0]
    part = w.part(1, 4)
    assert part.after is not None
    assert part.after.tolist() == [-1, -1, 0]  # request 2 waited for request 0, cut off: it waits for nothing


# -------------------------------------------------------------------------------------------- answers cached
def one_server(w: Workload, profile: object = LLAMA3_8B_H100) -> RequestTable:
    table = RequestTable(w)
    srv = SimServer(0, profile, table)  # type: ignore[arg-type]
    for r in range(len(w)):
        srv.advance(table.arrival[r])
        srv.enqueue(r, table.arrival[r])
    srv.advance(float("inf"))
    return table


#: a 128-token prompt (units 1, 2) answered with 200 tokens (units 3-5 whole, the rest a partial unit), then
#: the next round: the whole context (units 1-5, 320 tokens) and a new question (unit 9)
ROUND_1 = (1, 2)
CONTEXT = (1, 2, 3, 4, 5, 6)
ROUND_2 = (1, 2, 3, 4, 5, 9)


def test_the_server_that_answered_holds_the_answer_for_the_next_round() -> None:
    w = chat(
        [0.0, 30.0],
        [128, 340],
        [200, 10],
        units=[ROUND_1, ROUND_2],
        response_units=[CONTEXT, (*ROUND_2, 10)],
        unit_tokens=64,
    )
    table = one_server(w)
    assert table.cached[1] == 5 * 64  # the first prompt and the whole units of its answer
    without = one_server(replace(w, response_units=()))
    assert without.cached[1] == 2 * 64  # only the first prompt, as before


def test_the_answer_is_evicted_before_its_prompt() -> None:
    # 30 blocks: round 1 leaves its prompt (units 1-2, 8 blocks) and its answer (units 3-5, 12 blocks)
    # cached; request 1 then needs 17 blocks, so 8 cached blocks must go
    small = LLAMA3_8B_H100.with_overrides(num_blocks=30)
    w = chat(
        [0.0, 30.0, 60.0],
        [128, 64, 128],
        [200, 200, 2],
        units=[ROUND_1, (20,), ROUND_1],
        response_units=[CONTEXT, (20, 21), ()],
        unit_tokens=64,
    )
    table = one_server(w, small)
    # the answer's tail went (units 5 and 4, as vLLM frees a request's blocks tail first), the prompt's
    # units stayed: request 2, the same prompt, finds all of it but the last token (always recomputed)
    assert table.cached[2] == 127


@pytest.mark.parametrize("n_rounds", [2, 3])
def test_every_round_of_a_session_finds_its_whole_history_at_home(n_rounds: int) -> None:
    # one session on one server: round r sends the previous prompt + answer (whole units) + a question
    prompts, outputs, units, responses, after = [], [], [], [], []
    ctx: tuple[int, ...] = ()
    next_id = 100
    for r in range(n_rounds):
        prompt = len(ctx) * 64 + 64
        units.append((*ctx, next_id))
        prompts.append(prompt)
        outputs.append(130)  # KV holds all but the last token: 193 of them, three whole units
        ctx = (*ctx, next_id, next_id + 1, next_id + 2)  # the prompt's units and its answer's two
        responses.append(ctx)
        after.append(r - 1)
        next_id += 3
    w = chat(
        [0.0] * n_rounds, prompts, outputs, after=after, units=units, response_units=responses, unit_tokens=64
    )
    res = simulate(w, RoundRobin(), cfg(1))
    assert res.cached_tokens[0] == 0
    for r in range(1, n_rounds):
        assert res.cached_tokens[r] == prompts[r] - 64  # everything but the new question


@pytest.mark.parametrize("shape", ["short-q-few-sys-chat", "long-q-few-sys-chat"])
def test_a_rounds_text_goes_on_from_the_previous_rounds_whole_prompt(shape: str) -> None:
    """As the client sends it (``prompt + " " + response``): round 2's text begins with all of round 1's,
    the partial last unit included (``Workload.unit_heads``), so a router that hashes text can tell a
    continuation."""
    w = shared_prefix.workload(shape, requests=12000)
    users, window = 6000, 16384

    def text(k: int, heads: bool = True) -> str:
        h = w.unit_heads if heads else None
        return prompt_text(w.units[k], int(w.prompt_tokens[k]), 64, request=k, max_chars=window, heads=h)

    for k in (0, 1, 2, 4321):
        a, b = text(k), text(k + users)
        assert len(b) > len(a) or len(a) == window
        assert b.startswith(a), k
        if len(a) < window and int(w.prompt_tokens[k]) % 64:
            assert not text(k + users, heads=False).startswith(
                a
            )  # without the heads the partial unit differs
