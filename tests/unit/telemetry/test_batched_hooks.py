"""The stream hooks queue their facts and the metrics apply them in batches: every scrape still sees every
stream reported before it, from any thread, also past the flush threshold and with reused ids."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from picker.extproc.usage import Usage
from picker.routing.types import Dispatch
from picker.state.accounting import NullLease
from picker.state.datastore import Datastore
from picker.telemetry import FLUSH_EVENTS, Telemetry

PAIR = (("model_name", "m"), ("target_model_name", "m"))
TOTAL = (("model_name", "m"), ("priority", "0"), ("target_model_name", "m"))


def decision() -> Dispatch:
    return Dispatch(
        endpoints=("10.0.0.1:8000",),
        incoming_model="m",
        target_model="m",
        priority=0,
        body=b"",
        lease=NullLease(),
        restore=None,
        scheduled_s=0.0002,
    )


def scrape(t: Telemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(t.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def stream(t: Telemetry, *, close: bool = True) -> Dispatch:
    d = decision()
    t.routed(d, 1000)
    t.response_complete(d, latency_s=0.3, response_bytes=50, usage=Usage(7, 3, 10, 0), status_ok=True)
    if close:
        t.stream_closed(d)
    return d


def test_a_scrape_right_after_the_hooks_sees_the_stream() -> None:
    t = Telemetry(Datastore(), registry=CollectorRegistry())
    held = stream(t, close=False)
    s = scrape(t)
    assert s[("inference_objective_request_total", TOTAL)] == 1
    assert s[("inference_objective_running_requests", (("model_name", "m"),))] == 1
    assert s[("inference_objective_input_tokens_sum", PAIR)] == 7
    assert s[("inference_objective_normalized_time_per_output_token_seconds_sum", PAIR)] == 0.3 / 3
    assert s[("inference_extension_scheduler_e2e_duration_seconds_count", ())] == 1
    t.stream_closed(held)
    assert scrape(t)[("inference_objective_running_requests", (("model_name", "m"),))] == 0


def test_many_streams_without_a_scrape_are_all_counted() -> None:
    t = Telemetry(Datastore(), registry=CollectorRegistry())
    n = FLUSH_EVENTS  # four facts per stream: several flushes on the way, and a remainder queued
    for _ in range(n):
        stream(t)
    s = scrape(t)
    assert s[("inference_objective_request_total", TOTAL)] == n
    assert s[("inference_objective_request_duration_seconds_count", PAIR)] == n
    assert s[("inference_objective_running_requests", (("model_name", "m"),))] == 0


def test_reused_decision_ids_keep_the_running_gauge_right() -> None:
    # each decision is dropped before the next is made, so CPython hands out the same id again; the
    # queued facts of consecutive streams must not be confused
    t = Telemetry(Datastore(), registry=CollectorRegistry())
    ids = set()
    for _ in range(50):
        d = stream(t)
        ids.add(id(d))
        del d
    still_open = [stream(t, close=False) for _ in range(3)]
    assert scrape(t)[("inference_objective_running_requests", (("model_name", "m"),))] == 3
    assert len(ids) < 50  # ids were in fact reused
    for d in still_open:
        t.stream_closed(d)
    assert scrape(t)[("inference_objective_running_requests", (("model_name", "m"),))] == 0


def test_scrapes_from_another_thread_while_streams_run_lose_nothing() -> None:
    t = Telemetry(Datastore(), registry=CollectorRegistry())
    n = 20_000
    done = threading.Event()
    scrapes = 0

    def scraper() -> None:
        nonlocal scrapes
        while not done.is_set():
            generate_latest(t.registry)
            scrapes += 1

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for _ in range(n):
            stream(t)
    finally:
        done.set()
        thread.join(timeout=30)
    assert scrapes > 0
    s = scrape(t)
    assert s[("inference_objective_request_total", TOTAL)] == n
    assert s[("inference_objective_request_sizes_count", PAIR)] == n
    assert s[("inference_objective_output_tokens_sum", PAIR)] == 3 * n
    assert s[("inference_objective_running_requests", (("model_name", "m"),))] == 0
