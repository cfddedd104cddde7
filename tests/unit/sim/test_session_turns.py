"""The per-request check of multi-turn shapes: where later turns go (``benchmarks.sim.session_turns``)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.sim.fleet import FleetConfig, simulate
from benchmarks.sim.policies import RoundRobin
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.session_turns import SHIFTED, main, run, sessions
from benchmarks.sim.shared_prefix import SHAPES, UNIT_TOKENS, SharedPrefixShape, workload

#: 2 groups x 4 prompts = 8 sessions, two rounds of them; short outputs keep the replay cheap
TINY = SharedPrefixShape("tiny-chat", 2, 4, 256, 30, 0, 8, multi_turn=True, requests=16)


def test_rotation_returns_every_later_turn_to_its_session_when_sessions_divide_by_servers() -> None:
    by_policy = {r.policy: r for r in run(TINY, ["round-robin", SHIFTED], [5.0], n_servers=4)}
    rr, shifted = by_policy["round-robin"], by_policy[SHIFTED]
    assert rr.later_turns == shifted.later_turns == 8
    assert rr.later_on_session_server == 1.0
    assert shifted.later_on_session_server == 0.0
    # both spread the requests and the later turns evenly
    assert rr.requests_per_server == shifted.requests_per_server == (4, 4)
    assert rr.later_turns_per_server == shifted.later_turns_per_server == (2, 2)
    # a later turn on its session's server finds more of its prompt cached than elsewhere
    assert rr.prefix_hit_rate > shifted.prefix_hit_rate


def test_rotation_loses_the_coincidence_when_sessions_do_not_divide_by_servers() -> None:
    (rr,) = run(TINY, ["round-robin"], [5.0], n_servers=3)
    assert rr.later_on_session_server < 1.0


def test_single_turn_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="single-turn"):
        sessions(SHAPES["short-q-many-sys"])


def test_the_bundled_chat_shape_has_a_multiple_of_16_sessions() -> None:
    # what makes round-robin's figure on it a coincidence of arithmetic with 16 servers (module docstring)
    assert sessions(SHAPES["short-q-few-sys-chat"]) % 16 == 0


def test_cli_prints_a_table_and_rejects_bad_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "40", "--rates", "50", "--policies", f"round-robin,{SHIFTED}"]) == 0
    out = capsys.readouterr().out
    assert "| round-robin | 50 |" in out
    assert f"| {SHIFTED} | 50 |" in out
    assert main(["--requests", "40", "--rates", "50", "--policies", "round-robin", "--servers", "3"]) == 0
    assert "| round-robin | 50 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--rates", "0"])
    with pytest.raises(SystemExit):
        main(["--servers", "0"])


def test_a_later_turn_waits_for_its_answer_and_finds_it_at_home() -> None:
    # at 200 req/s the second rounds are scheduled long before the first answers (200 tokens) end
    chatty = SharedPrefixShape("tiny-chat-200", 2, 4, 256, 30, 0, 200, multi_turn=True, requests=16)
    w = workload(chatty, seed=0)
    users = sessions(chatty)
    res = simulate(w.with_rate(200.0), RoundRobin(), FleetConfig(LLAMA3_8B_H100, n_servers=4, seed=0))
    later = np.arange(users, len(w))
    assert np.array_equal(res.arrival[later], res.finish[later - users])
    # the server that answered holds the first prompt and the whole units of its answer
    home = res.server[later] == res.server[later - users]
    assert home.any()
    held = (w.prompt_tokens[later - users] + w.output_tokens[later - users] - 1) // UNIT_TOKENS * UNIT_TOKENS
    assert np.array_equal(res.cached_tokens[later][home], np.minimum(held, w.prompt_tokens[later] - 1)[home])
    assert (res.cached_tokens[later][~home] < res.cached_tokens[later][home].min()).all()


def test_the_earlier_replay_is_one_flag_away() -> None:
    new, old = workload(TINY, seed=0), workload(TINY, seed=0, wait_for_answers=False, cache_answers=False)
    users = sessions(TINY)
    assert new.after is not None
    assert new.after.tolist() == [-1] * users + list(range(len(new) - users))
    assert len(new.response_units) == len(new)
    assert old.after is None
    assert old.response_units == ()
    assert new.units == old.units
