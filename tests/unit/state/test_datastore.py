import math

import numpy as np
import pytest

from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint, PoolInfo, join_host_port, parse_static_endpoints
from picker.state.metrics import EndpointMetrics
from scoring.matrix import LoadCharge


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ep(i: int, pod: str | None = None, port: int = 8000) -> Endpoint:
    return Endpoint(name=f"{pod or f'pod-{i}'}-rank-0", ip=f"10.0.0.{i}", port=port, pod=pod or f"pod-{i}")


def test_snapshot_reflects_membership_and_metrics():
    clock = FakeClock()
    ds = Datastore(clock=clock)
    ds.replace_endpoints([ep(1), ep(2)])
    m = ds.snapshot()
    assert m.names == ("pod-1-rank-0", "pod-2-rank-0")
    assert m.addresses == ("10.0.0.1:8000", "10.0.0.2:8000")
    assert np.isnan(m.waiting).all()
    assert np.isneginf(m.scraped_at).all()
    ds.record_scrape("pod-2-rank-0", EndpointMetrics(waiting=3, running=1, kv_usage=0.5))
    m2 = ds.snapshot()
    assert m2 is not m
    assert m2.waiting[1] == 3
    assert m2.kv_usage[1] == 0.5
    assert m2.scraped_at[1] == 100.0
    assert math.isnan(m2.waiting[0])
    assert ds.snapshot() is m2, "unchanged datastore must reuse the cached snapshot"


def test_snapshot_columns_are_read_only_copies():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=1))
    m = ds.snapshot()
    with pytest.raises(ValueError, match="read-only"):
        m.waiting[0] = 5
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=7))
    assert m.waiting[0] == 1, "an old snapshot must not change under a reader"


def test_missing_fields_keep_last_good_value():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=2, running=3, kv_usage=0.4))
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=5))
    m = ds.snapshot()
    assert (m.waiting[0], m.running[0], m.kv_usage[0]) == (5, 3, 0.4)


def test_failure_keeps_values_and_age():
    clock = FakeClock()
    ds = Datastore(clock=clock)
    ds.replace_endpoints([ep(1)])
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=2))
    clock.t = 105.0
    ds.record_scrape_failure("pod-1-rank-0", "timeout")
    m = ds.snapshot()
    assert m.waiting[0] == 2
    assert m.scraped_at[0] == 100.0
    st = ds.status("pod-1-rank-0")
    assert st is not None
    assert st.last_error == "timeout"
    assert st.scrapes_failed == 1


def test_a_failed_scrape_of_an_endpoint_never_scraped_is_published_until_one_lands():
    """``scrape_failed`` tells "cannot be scraped" from "not scraped yet" (both ``scraped_at = -inf``): 0
    until an attempt fails, 1 from the first failure of an endpoint with no success, 0 again once a scrape
    lands, and a failure after a success leaves it 0 (the age of ``scraped_at`` says that one). The
    first failure publishes a new snapshot; later ones change nothing and reuse it."""
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1), ep(2)])
    before = ds.snapshot()
    assert before.scrape_failed.tolist() == [0.0, 0.0], "no attempt has ended: not known to fail"
    ds.record_scrape_failure("pod-1-rank-0", "connection refused")
    failed = ds.snapshot()
    assert failed is not before
    assert failed.scrape_failed.tolist() == [1.0, 0.0]
    assert np.isneginf(failed.scraped_at).all()
    ds.record_scrape_failure("pod-1-rank-0", "connection refused")
    assert ds.snapshot() is failed, "the same state: nothing to publish"
    ds.replace_endpoints([ep(1), ep(2), ep(3)])
    assert ds.snapshot().scrape_failed.tolist() == [1.0, 0.0, 0.0], "kept across a membership change"
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=1))
    ds.record_scrape_failure("pod-1-rank-0", "timeout")
    ds.record_scrape("pod-2-rank-0", EndpointMetrics(waiting=1))
    ds.record_scrape_failure("pod-2-rank-0", "timeout")
    assert ds.snapshot().scrape_failed.tolist() == [0.0, 0.0, 0.0]


def test_dispatched_counts_only_requests_sent_since_the_scrape_started():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    name = "pod-1-rank-0"
    for _ in range(3):
        ds.acquire(name)
    ds.begin_scrape(name)  # the page will include those 3
    ds.acquire(name)  # sent while the scrape is in flight: not in the page
    ds.record_scrape(name, EndpointMetrics(waiting=3))
    m = ds.snapshot()
    assert m.dispatched[0] == 1
    assert m.inflight[0] == 4


def test_failed_scrape_does_not_forget_dispatched():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    name = "pod-1-rank-0"
    ds.acquire(name)
    ds.begin_scrape(name)
    ds.record_scrape_failure(name, "boom")
    assert ds.snapshot().dispatched[0] == 1


def test_lease_release_is_idempotent_and_survives_removal():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1), ep(2)])
    lease = ds.acquire("pod-2-rank-0")
    assert ds.snapshot().inflight[1] == 1
    lease.release()
    lease.release()
    assert ds.snapshot().inflight[1] == 0
    lease2 = ds.acquire("pod-2-rank-0")
    ds.remove_pod("pod-2")
    lease2.release()  # endpoint gone: no error, nothing to decrement
    assert ds.inflight_total() == 0


def test_membership_change_keeps_metrics_and_load_of_survivors():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1), ep(2)])
    ds.record_scrape("pod-2-rank-0", EndpointMetrics(waiting=9))
    ds.acquire("pod-2-rank-0")
    ds.replace_endpoints([ep(3), ep(2)])
    m = ds.snapshot()
    assert m.names == ("pod-3-rank-0", "pod-2-rank-0")
    assert m.waiting[1] == 9
    assert m.inflight[1] == 1
    assert math.isnan(m.waiting[0])
    assert m.inflight[0] == 0


def test_address_change_resets_the_endpoint():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=9))
    moved = Endpoint(name="pod-1-rank-0", ip="10.9.9.9", port=8000, pod="pod-1")
    ds.upsert_endpoint(moved)
    m = ds.snapshot()
    assert m.addresses == ("10.9.9.9:8000",)
    assert math.isnan(m.waiting[0])


def test_listeners_fire_on_membership_changes_only():
    ds = Datastore(clock=FakeClock())
    calls: list[int] = []
    ds.add_listener(lambda: calls.append(len(ds)))
    ds.upsert_endpoint(ep(1))
    ds.upsert_endpoint(ep(1))  # no-op
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=1))
    ds.upsert_endpoint(ep(2))
    ds.remove_endpoint("pod-1-rank-0")
    assert calls == [1, 2, 1]


def test_pool_deleted_clears_everything():
    from picker.state.objectives import Objective

    ds = Datastore(clock=FakeClock())
    ds.set_pool(PoolInfo(name="p", namespace="ns", target_ports=(8000,)))
    ds.replace_endpoints([ep(1)])
    ds.objectives.set(Objective("critical", 5))
    assert ds.synced
    ds.set_pool(None)
    assert not ds.synced
    assert len(ds) == 0
    assert ds.objectives.priority("critical") == 0


def test_lora_sets_become_boolean_columns():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1), ep(2)])
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(lora_active=("a", "b"), lora_waiting=(), max_lora=4))
    ds.record_scrape("pod-2-rank-0", EndpointMetrics(lora_active=("b",), lora_waiting=("c",), max_lora=2))
    m = ds.snapshot()
    b = m.lora_vocab["b"]
    assert m.lora_active[:, b].tolist() == [True, True]
    assert m.lora_waiting[:, m.lora_vocab["c"]].tolist() == [False, True]
    assert m.lora_count.tolist() == [2, 2]
    assert m.max_lora.tolist() == [4, 2]


def test_gpu_utilization_maps_by_pod_and_applies_to_new_endpoints():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    ds.set_gpu_utilization({"pod-1": 0.25, "pod-2": 0.75})
    assert ds.snapshot().gpu_util.tolist() == [0.25]
    ds.upsert_endpoint(ep(2))
    assert ds.snapshot().gpu_util.tolist() == [0.25, 0.75]
    ds.set_gpu_utilization(None)
    assert np.isnan(ds.snapshot().gpu_util).all()


def test_detected_engine_is_recorded():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=0), engine="sglang")
    m = ds.snapshot()
    assert m.engine_names[int(m.engine[0])] == "sglang"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8001", [("127.0.0.1", 8001, None)]),
        ("127.0.0.1:8001, 127.0.0.1:8002@sglang", [("127.0.0.1", 8001, None), ("127.0.0.1", 8002, "sglang")]),
        ("[::1]:9000@vllm", [("::1", 9000, "vllm")]),
    ],
)
def test_parse_static_endpoints(text, expected):
    got = [(e.ip, e.port, e.engine) for e in parse_static_endpoints(text)]
    assert got == expected


@pytest.mark.parametrize("text", ["", "localhost", "1.2.3.4:x", "1.2.3.4:0", "a:1,a:1", "1.2.3.4:70000"])
def test_parse_static_endpoints_rejects(text):
    with pytest.raises(ValueError, match=r"static endpoint|empty"):
        parse_static_endpoints(text)


def test_join_host_port_brackets_ipv6():
    assert join_host_port("::1", 80) == "[::1]:80"
    assert join_host_port("10.0.0.1", 80) == "10.0.0.1:80"


def test_metric_updates_are_published_at_most_every_interval_but_membership_at_once():
    clock = FakeClock()
    ds = Datastore(clock=clock, min_publish_interval_s=0.005)
    ds.replace_endpoints([ep(1)])
    first = ds.snapshot()
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=4))
    assert ds.snapshot() is first, "a metric change within the interval reuses the published snapshot"
    clock.t += 0.006
    second = ds.snapshot()
    assert second is not first
    assert second.waiting[0] == 4
    ds.upsert_endpoint(ep(2))
    assert len(ds.snapshot()) == 2, "membership changes are visible immediately"
    lease = ds.acquire("pod-2-rank-0")
    assert ds.snapshot().inflight[1] == 1, "load accounting is live, not delayed"
    lease.release()


def test_a_requests_token_charge_is_live_in_the_snapshot_and_given_back_in_two_steps():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1), ep(2)])
    m = ds.snapshot()
    a = ds.acquire("pod-1-rank-0", LoadCharge.of(1200))
    b = ds.acquire("pod-1-rank-0", LoadCharge.of(800, stream=False))
    # the load columns are live arrays: the same snapshot object sees the charge
    assert m.prefill_tokens.tolist() == [1200.0, 0.0]
    assert m.inflight_tokens.tolist() == [2000.0, 0.0]
    assert (m.inflight.tolist(), m.dispatched.tolist()) == ([2.0, 0.0], [2.0, 0.0])
    a.first_byte()
    a.first_byte()
    assert m.prefill_tokens.tolist() == [0.0, 0.0]
    assert m.inflight_tokens.tolist() == [2000.0, 0.0]
    a.release()
    a.release()
    b.release()
    assert (m.prefill_tokens.tolist(), m.inflight_tokens.tolist(), m.inflight.tolist()) == (
        [0.0, 0.0],
        [0.0, 0.0],
        [0.0, 0.0],
    )


def test_a_stream_that_never_answers_gives_its_prefill_back_at_the_end():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1)])
    lease = ds.acquire("pod-1-rank-0", LoadCharge.of(900))
    lease.release()
    m = ds.snapshot()
    assert (m.prefill_tokens[0], m.inflight_tokens[0], m.inflight[0]) == (0.0, 0.0, 0.0)


def test_token_columns_follow_their_endpoint_through_membership_changes():
    ds = Datastore(clock=FakeClock())
    ds.replace_endpoints([ep(1), ep(2)])
    lease = ds.acquire("pod-2-rank-0", LoadCharge.of(400))
    ds.replace_endpoints([ep(3), ep(2)])  # pod-2 keeps its row content at a new index
    m = ds.snapshot()
    assert m.names == ("pod-3-rank-0", "pod-2-rank-0")
    assert m.prefill_tokens.tolist() == [0.0, 400.0]
    assert m.inflight_tokens.tolist() == [0.0, 400.0]
    ds.replace_endpoints([ep(3)])  # pod-2 leaves with its open stream
    lease.release()  # a release for an endpoint no longer in the pool is a no-op
    m = ds.snapshot()
    assert (m.prefill_tokens.tolist(), m.inflight_tokens.tolist()) == ([0.0], [0.0])
    ds.replace_endpoints([ep(3), ep(2)])  # and it comes back clean
    m = ds.snapshot()
    assert (m.prefill_tokens.tolist(), m.inflight_tokens.tolist()) == ([0.0, 0.0], [0.0, 0.0])
