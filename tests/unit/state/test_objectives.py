import random

import pytest

from picker.state.objectives import (
    ModelRewrite,
    Objective,
    ObjectiveStore,
    RewriteRule,
    RewriteStore,
    RewriteTarget,
)


def test_objective_priority_lookup():
    s = ObjectiveStore()
    s.set(Objective("critical", 10))
    s.set(Objective("batch", -1))
    assert s.priority("critical") == 10
    assert s.priority("batch") == -1
    assert s.priority("unknown") == 0
    assert s.priority(None) == 0
    s.delete("critical")
    assert s.priority("critical") == 0


def rule(matches, *targets):
    return RewriteRule(tuple(matches), tuple(RewriteTarget(m, w) for m, w in targets))


def test_exact_beats_generic_regardless_of_age():
    s = RewriteStore()
    s.set(ModelRewrite("generic", (rule([], ("base", 0)),), created=1))
    s.set(ModelRewrite("exact", (rule(["m"], ("m-v2", 0)),), created=2))
    rng = random.Random(0)
    assert s.resolve("m", rng).target_model == "m-v2"
    assert s.resolve("other", rng).target_model == "base"


def test_oldest_object_wins_ties_then_first_rule():
    s = RewriteStore()
    s.set(ModelRewrite("newer", (rule(["m"], ("from-newer", 0)),), created=20))
    s.set(
        ModelRewrite(
            "older",
            (rule(["x"], ("x1", 0)), rule(["m"], ("from-older-1", 0)), rule(["m"], ("from-older-2", 0))),
            created=10,
        )
    )
    choice = s.resolve("m", random.Random(0))
    assert choice.rewrite_name == "older"
    assert choice.target_model == "from-older-1"
    s.delete("older")
    assert s.resolve("m", random.Random(0)).target_model == "from-newer"


def test_no_rule_no_rewrite():
    s = RewriteStore()
    s.set(ModelRewrite("r", (rule(["a"], ("b", 1)),)))
    assert s.resolve("zzz", random.Random(0)) is None


def test_weighted_split_follows_weights():
    s = RewriteStore()
    s.set(ModelRewrite("canary", (rule(["m"], ("v1", 90), ("v2", 10)),)))
    rng = random.Random(42)
    picks = [s.resolve("m", rng).target_model for _ in range(5000)]
    share = picks.count("v2") / len(picks)
    assert 0.08 < share < 0.12


def test_all_zero_weights_is_uniform():
    s = RewriteStore()
    s.set(ModelRewrite("u", (rule(["m"], ("a", 0), ("b", 0)),)))
    rng = random.Random(1)
    picks = [s.resolve("m", rng).target_model for _ in range(4000)]
    assert picks.count("a") / len(picks) == pytest.approx(0.5, abs=0.04)
