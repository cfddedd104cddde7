"""``--workers``: the supervisor's /metrics shows the request metrics of all workers, summed, in the same
exposition as a single process, and keeps what a replaced worker counted."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from picker.extproc.usage import Usage
from picker.routing.types import Dispatch
from picker.state.accounting import NullLease
from picker.state.datastore import Datastore
from picker.telemetry import MergedRequestMetrics, Telemetry, export_families


def decision(model: str = "m", scheduled_s: float | None = None) -> Dispatch:
    return Dispatch(
        endpoints=("10.0.0.1:8000",),
        incoming_model=model,
        target_model=model,
        priority=0,
        body=b"",
        lease=NullLease(),
        restore=None,
        scheduled_s=scheduled_s,
    )


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def worker_telemetry() -> Telemetry:
    return Telemetry(Datastore(), registry=CollectorRegistry())


def supervisor() -> tuple[Telemetry, MergedRequestMetrics]:
    sup = Telemetry(Datastore(), registry=CollectorRegistry(), request_registry=CollectorRegistry())
    merged = MergedRequestMetrics(sup.request_metrics())
    sup.merge_workers(merged)
    return sup, merged


def test_families_are_exported_before_any_worker_reports_and_match_one_process() -> None:
    sup, _ = supervisor()
    single = Telemetry(Datastore(), registry=CollectorRegistry())

    def help_and_type(registry: CollectorRegistry) -> set[str]:
        return {line for line in generate_latest(registry).decode().splitlines() if line.startswith("#")}

    assert help_and_type(sup.registry) == help_and_type(single.registry)


def test_workers_are_summed_and_created_is_the_earliest() -> None:
    sup, merged = supervisor()
    a, b = worker_telemetry(), worker_telemetry()
    for t, n in ((a, 3), (b, 2)):
        for i in range(n):
            d = decision(scheduled_s=0.0003 if i == 0 else None)  # one scheduled per worker
            t.routed(d, 1000)
            t.response_complete(d, latency_s=0.2, response_bytes=10, usage=None, status_ok=True)
            t.stream_closed(d)
    held = decision()
    b.routed(held, 10)  # still running on worker b
    merged.update(0, export_families(a.request_metrics()))
    merged.update(1, export_families(b.request_metrics()))
    key = (("model_name", "m"), ("priority", "0"), ("target_model_name", "m"))
    assert samples(sup.registry, "inference_objective_request_total") == {key: 6.0}
    created = samples(sup.registry, "inference_objective_request_created")[key]
    worker_created = [samples(t.registry, "inference_objective_request_created")[key] for t in (a, b)]
    assert created == min(worker_created)
    pair = (("model_name", "m"), ("target_model_name", "m"))
    assert samples(sup.registry, "inference_objective_request_duration_seconds_count") == {pair: 5.0}
    bucket = samples(sup.registry, "inference_objective_request_duration_seconds_bucket")
    assert bucket[(("le", "0.2"), *pair)] == 5.0
    assert bucket[(("le", "0.1"), *pair)] == 0.0
    assert samples(sup.registry, "inference_objective_running_requests") == {(("model_name", "m"),): 1.0}
    assert samples(sup.registry, "inference_extension_scheduler_e2e_duration_seconds_count") == {(): 2.0}


def test_a_retired_worker_keeps_its_counts_but_not_its_gauges() -> None:
    sup, merged = supervisor()
    w = worker_telemetry()
    d = decision()
    w.routed(d, 100)  # one stream open when the worker dies
    merged.update(0, export_families(w.request_metrics()))
    merged.retire(0)
    merged.retire(0)  # twice is harmless
    assert samples(sup.registry, "inference_objective_request_total")
    assert sum(samples(sup.registry, "inference_objective_request_total").values()) == 1.0
    assert samples(sup.registry, "inference_objective_running_requests") == {}
    replacement = worker_telemetry()
    replacement.routed(decision(), 100)
    merged.update(0, export_families(replacement.request_metrics()))
    assert sum(samples(sup.registry, "inference_objective_request_total").values()) == 2.0
    assert samples(sup.registry, "inference_objective_running_requests") == {(("model_name", "m"),): 1.0}


def test_a_newer_snapshot_replaces_the_previous_one() -> None:
    sup, merged = supervisor()
    w = worker_telemetry()
    w.routed(decision(), 100)
    merged.update(0, export_families(w.request_metrics()))
    w.routed(decision(), 100)
    merged.update(0, export_families(w.request_metrics()))
    assert sum(samples(sup.registry, "inference_objective_request_total").values()) == 2.0


def test_tokens_served_sums_prompt_and_completion_tokens_in_one_process_and_over_workers() -> None:
    """The scaler's token meter: the ``_sum`` of both token histograms, the series its Prometheus query
    reads; under ``--workers`` the supervisor's figure is the workers' (live and retired), it routes none."""
    single = worker_telemetry()
    assert single.tokens_served() == 0.0
    for prompt, completion in ((7, 3), (100, 0), (0, 0)):  # zero means "not reported": not observed
        d = decision()
        single.routed(d, 10)
        single.response_complete(
            d,
            latency_s=0.2,
            response_bytes=10,
            usage=Usage(prompt, completion, prompt + completion, 0),
            status_ok=True,
        )
    assert single.tokens_served() == 110.0  # read without a scrape: the queued facts are applied first
    assert (
        sum(
            samples(single.registry, f"inference_objective_{k}_tokens_sum")[
                (("model_name", "m"), ("target_model_name", "m"))
            ]
            for k in ("input", "output")
        )
        == 110.0
    )
    sup, merged = supervisor()
    other = worker_telemetry()
    d = decision()
    other.routed(d, 10)
    other.response_complete(d, latency_s=0.2, response_bytes=10, usage=Usage(5, 5, 10, 0), status_ok=True)
    merged.update(0, export_families(single.request_metrics()))
    merged.update(1, export_families(other.request_metrics()))
    assert sup.tokens_served() == 120.0
    merged.retire(1)  # a replaced worker's tokens stay counted
    assert sup.tokens_served() == 120.0
