"""``--pool``: every pool's registry on one ``/metrics`` (``picker.telemetry.pools.PoolLabelled``), each
series under its pool's label, the reference's own pool labels kept, the build info once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint, PoolInfo
from picker.telemetry import PoolLabelled, Telemetry
from picker.telemetry.exposition import render


def pool_telemetry(name: str, endpoints: int) -> Telemetry:
    ds = Datastore()
    ds.set_pool(PoolInfo(name=name, namespace="inference", target_ports=(8000,)))
    ds.replace_endpoints([Endpoint(f"{name}-{i}", "127.0.0.1", 8000 + i) for i in range(endpoints)])
    return Telemetry(ds, registry=CollectorRegistry(), pool_name=name, build_ref="v1", commit="abc")


def page(*pools: tuple[str, Telemetry]) -> dict[str, list[tuple[dict[str, str], float]]]:
    process = CollectorRegistry()
    process.register(PoolLabelled([(name, t.registry) for name, t in pools]))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(render(process).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_each_pools_series_carry_its_pool_label() -> None:
    alpha, beta = pool_telemetry("alpha", 2), pool_telemetry("beta", 3)
    alpha.config_reload_total.labels("rejected").inc()
    alpha.failover("ejected")
    beta.failover("ejected")
    beta.failover("stale")
    got = page(("alpha", alpha), ("beta", beta))

    rejected = {s[0]["pool"]: s[1] for s in got["picker_config_reload_total"] if s[0]["result"] == "rejected"}
    assert rejected == {"alpha": 1.0, "beta": 0.0}
    # the reference's pool label (name=) is kept and the pool label added; each pool counts its own pods
    ready = got["inference_pool_ready_pods"]
    assert sorted((labels["name"], labels["pool"]) for labels, _ in ready) == [
        ("alpha", "alpha"),
        ("beta", "beta"),
    ]
    # a family that already names the pool (ai_failover_total{pool}) is not given a second one
    failovers = {(labels["pool"], labels["reason"]): v for labels, v in got["ai_failover_total"]}
    assert failovers == {("alpha", "ejected"): 1.0, ("beta", "ejected"): 1.0, ("beta", "stale"): 1.0}
    # the build is the process's: once, without a pool label
    assert got["inference_extension_info"] == [({"commit": "abc", "build_ref": "v1"}, 1.0)]
    # every other series of either pool has the label
    unlabelled = {
        name
        for name, rows in got.items()
        if name != "inference_extension_info" and any("pool" not in r[0] for r in rows)
    }
    assert unlabelled == set()


def test_no_series_is_lost_or_doubled_by_the_merge() -> None:
    """The merged page has each pool's samples exactly once: per pool, what its own registry renders."""
    alpha, beta = pool_telemetry("alpha", 1), pool_telemetry("beta", 2)
    merged = page(("alpha", alpha), ("beta", beta))
    for name, t in (("alpha", alpha), ("beta", beta)):
        own = page((name, t))  # one pool through the same collector: its series, labelled
        for sample, rows in own.items():
            if sample == "inference_extension_info":
                continue
            assert [r for r in merged[sample] if r[0]["pool"] == name] == rows, sample
