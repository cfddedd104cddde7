"""The per-request check of multi-turn shapes: where later turns go (``benchmarks.sim.session_turns``)."""

from __future__ import annotations

import pytest

from benchmarks.sim.session_turns import SHIFTED, main, run, sessions
from benchmarks.sim.shared_prefix import SHAPES, SharedPrefixShape

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
