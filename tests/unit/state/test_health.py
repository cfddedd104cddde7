"""The outlier detector: Envoy's consecutive-failure and failure-percentage rules, ejection time, the pool
share cap, half-open probes, with an explicit clock (every call takes ``now``)."""

from __future__ import annotations

import pytest

from picker.state.health import EjectionReason, FailureKind, Health, OutlierDetector, OutlierPolicy

POOL = ("a", "b", "c", "d")


def detector(**policy: object) -> OutlierDetector:
    d = OutlierDetector(OutlierPolicy(**policy))  # type: ignore[arg-type]
    d.retain(POOL)
    d.sweep(0.0)  # starts the interval clock at 0
    return d


def fail(
    d: OutlierDetector, name: str, n: int, now: float, kind: FailureKind = FailureKind.STATUS_5XX
) -> None:
    for _ in range(n):
        d.observe(name, failed=1, kind=kind, now=now)


def test_consecutive_failures_eject_at_the_threshold():
    d = detector()
    fail(d, "a", 4, 1.0)
    assert d.state("a") is Health.HEALTHY
    fail(d, "a", 1, 1.0)
    assert d.state("a") is Health.EJECTED
    assert d.ejections_total[EjectionReason.CONSECUTIVE_5XX] == 1
    assert d.out == 1


def test_a_success_resets_the_run():
    d = detector()
    fail(d, "a", 4, 1.0)
    d.observe("a", ok=1, now=1.0)
    fail(d, "a", 4, 1.0)
    assert d.state("a") is Health.HEALTHY


def test_a_mixed_batch_resets_the_run_but_counts_in_the_window():
    d = detector(minimum_requests=4, failure_percentage=50.0)
    fail(d, "a", 4, 1.0)
    d.observe("a", ok=1, failed=3, now=2.0)
    assert d.state("a") is Health.HEALTHY
    view = d.view("a", 2.0)
    assert view is not None
    assert (view.consecutive_failures, view.interval_ok, view.interval_failed) == (0, 1, 7)


def test_batched_failures_add_up_to_the_threshold():
    d = detector()
    d.observe("a", failed=3, now=1.0)
    d.observe("a", failed=2, now=1.1)
    assert d.state("a") is Health.EJECTED


def test_consecutive_rule_off_at_zero():
    d = detector(consecutive_failures=0)
    fail(d, "a", 50, 1.0)
    assert d.state("a") is Health.HEALTHY


def test_failure_percentage_ejects_at_the_interval_with_enough_volume():
    d = detector(consecutive_failures=0, failure_percentage=50.0, minimum_requests=20, interval_s=10.0)
    for i in range(10):
        d.observe("a", ok=1, failed=1, now=1.0 + i * 0.1)
    d.sweep(9.9)
    assert d.state("a") is Health.HEALTHY, "only at the interval boundary"
    d.sweep(10.0)
    assert d.state("a") is Health.EJECTED
    assert d.ejections_total[EjectionReason.FAILURE_PERCENTAGE] == 1


def test_failure_percentage_needs_the_minimum_volume_and_the_threshold():
    d = detector(consecutive_failures=0, failure_percentage=50.0, minimum_requests=20, interval_s=10.0)
    for _ in range(9):
        d.observe("a", ok=1, failed=1, now=1.0)  # 18 outcomes: too few
    d.observe("b", ok=15, failed=10, now=1.0)  # 10 of 25 failed: 40 %
    d.sweep(10.0)
    assert d.state("a") is Health.HEALTHY
    assert d.state("b") is Health.HEALTHY
    # the windows restarted: the next interval starts from zero
    view = d.view("a", 10.0)
    assert view is not None
    assert (view.interval_ok, view.interval_failed) == (0, 0)


def test_ejection_time_grows_with_ejections_in_a_row_and_is_capped():
    policy = OutlierPolicy(base_ejection_s=30.0, max_ejection_s=100.0)
    assert [policy.ejection_time(k) for k in (1, 2, 3, 4, 10)] == [30.0, 60.0, 90.0, 100.0, 100.0]
    assert OutlierPolicy(base_ejection_s=30.0, max_ejection_s=10.0).ejection_time(3) == 30.0


def test_half_open_probe_success_reinstates():
    d = detector(base_ejection_s=30.0)
    fail(d, "a", 5, 1.0)
    d.sweep(30.9)
    assert d.state("a") is Health.EJECTED
    d.sweep(31.0)
    assert d.state("a") is Health.PROBING
    assert d.out == 1, "a probing endpoint still counts as out"
    d.observe("a", ok=1, now=31.5)
    assert d.state("a") is Health.HEALTHY
    assert d.out == 0


def test_half_open_probe_failure_ejects_again_for_longer():
    d = detector(base_ejection_s=30.0, interval_s=1000.0)
    fail(d, "a", 5, 1.0)
    d.sweep(31.0)
    d.observe("a", failed=1, kind=FailureKind.RESET, now=32.0)
    assert d.state("a") is Health.EJECTED
    assert d.ejections_total[EjectionReason.PROBE_FAILED] == 1
    view = d.view("a", 32.0)
    assert view is not None
    assert view.ejected_for_s == pytest.approx(60.0)
    assert (view.reason, view.last_failure, view.multiplier) == ("probe_failed", "reset", 2)
    assert d.out == 1


def test_outcomes_while_ejected_are_ignored():
    d = detector()
    fail(d, "a", 5, 1.0)
    d.observe("a", ok=5, now=2.0)
    assert d.state("a") is Health.EJECTED
    fail(d, "a", 50, 2.0)
    assert d.ejections_total[EjectionReason.CONSECUTIVE_5XX] == 1


def test_the_multiplier_decays_by_one_per_healthy_interval():
    d = detector(base_ejection_s=5.0, interval_s=10.0)
    fail(d, "a", 5, 1.0)
    d.sweep(6.0)
    d.observe("a", ok=1, now=6.0)  # probe succeeded; multiplier 1
    d.sweep(10.0)  # a healthy interval: back to 0
    fail(d, "a", 5, 11.0)
    view = d.view("a", 11.0)
    assert view is not None
    assert view.multiplier == 1
    assert view.ejected_for_s == pytest.approx(5.0), "after a healthy interval the time is the base again"


def test_at_most_the_share_of_the_pool_is_ejected_but_always_one():
    d = detector(max_ejection_percent=50.0)
    for name in POOL:
        fail(d, name, 5, 1.0)
    assert [d.state(n) for n in POOL].count(Health.EJECTED) == 2
    assert d.ejections_refused == 2
    one = OutlierDetector(OutlierPolicy(max_ejection_percent=0.0))
    one.retain(POOL)
    for name in POOL:
        fail(one, name, 5, 1.0)
    assert one.out == 1, "Envoy's rule: one endpoint can always be ejected"


def test_a_refused_ejection_happens_once_there_is_room():
    d = detector(max_ejection_percent=25.0, base_ejection_s=30.0)
    fail(d, "a", 5, 1.0)
    fail(d, "b", 5, 1.0)
    assert (d.state("a"), d.state("b")) == (Health.EJECTED, Health.HEALTHY)
    d.sweep(31.0)
    d.observe("a", ok=1, now=31.0)  # a is back
    fail(d, "b", 1, 32.0)
    assert d.state("b") is Health.EJECTED


def test_membership_changes():
    d = detector()
    fail(d, "a", 5, 1.0)
    d.retain(("b", "c", "e"))
    assert d.out == 0
    assert d.state("a") is Health.HEALTHY
    assert len(d) == 3
    d.observe("zzz", failed=100, now=2.0)  # not in the pool: ignored
    assert d.view("zzz", 2.0) is None


def test_disabling_reinstates_and_ignores():
    d = detector()
    fail(d, "a", 5, 1.0)
    d.set_policy(OutlierPolicy(enabled=False))
    assert d.state("a") is Health.HEALTHY
    assert d.out == 0
    fail(d, "b", 10, 2.0)
    assert d.state("b") is Health.HEALTHY


def test_states_column_and_version():
    d = detector()
    v0 = d.version
    assert d.states(POOL) == [0.0, 0.0, 0.0, 0.0]
    fail(d, "b", 5, 1.0)
    assert d.version > v0
    assert d.states(POOL) == [0.0, 1.0, 0.0, 0.0]
    d.sweep(40.0)
    assert d.states(("b", "unknown")) == [2.0, 0.0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"consecutive_failures": -1}, "must be >= 0"),
        ({"failure_percentage": 101.0}, "within"),
        ({"interval_s": 0.0}, "interval_s must be"),
        ({"base_ejection_s": float("inf")}, "base_ejection_s must be"),
    ],
)
def test_policy_validation(changes: dict[str, object], message: str):
    with pytest.raises(ValueError, match=message):
        OutlierPolicy(**changes)  # type: ignore[arg-type]


def test_sweep_wakes_up_for_an_ejection_made_at_an_interval_boundary():
    d = detector(consecutive_failures=0, minimum_requests=2, interval_s=10.0, base_ejection_s=5.0)
    d.observe("a", failed=2, now=1.0)
    d.sweep(10.0)  # the percentage rule ejects a until 15
    assert d.state("a") is Health.EJECTED
    d.sweep(15.0)
    assert d.state("a") is Health.PROBING
