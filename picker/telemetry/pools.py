"""Several pools in one process (``--pool``): each pool's metrics under a ``pool`` label on one ``/metrics``.

Each pool registers its families on its own registry (the same families, names and label sets as a
one-pool process), so two pools never share a metric object and a pool's collectors read only its own
datastore. :class:`PoolLabelled` is the one collector the process registry holds for them: at scrape time
it collects every pool's registry and yields each family once, its samples from every pool with
``pool="<name>"`` added. Families that already name the pool keep their own label as the reference spells
it (``inference_pool_*{name}``, the flow-control families' ``inference_pool``, ``ai_failover_total{pool}``)
and get ``pool`` too, so one selector (``{pool="a"}``) finds every series of a pool. Process-wide families
(the build info) are taken once, from the first pool, without the label.

With one pool nothing is relabelled (no ``pool`` label is added): the exposition stays the reference's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

#: families that describe the process, not a pool: exported once, unlabelled
PROCESS_FAMILIES = frozenset({"inference_extension_info"})
#: the label every per-pool series gets
POOL_LABEL = "pool"


class PoolLabelled(Collector):
    """The families of every pool's registry, merged by name, each sample labelled with its pool."""

    def __init__(self, pools: Sequence[tuple[str, CollectorRegistry]]) -> None:
        self._pools = tuple(pools)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, (pool, registry) in enumerate(self._pools):
            for family in registry.collect():
                if family.name in PROCESS_FAMILIES:
                    if index == 0:
                        merged[family.name] = family
                    continue
                out = merged.get(family.name)
                if out is None:
                    out = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = out
                for s in family.samples:
                    labels = s.labels if POOL_LABEL in s.labels else {**s.labels, POOL_LABEL: pool}
                    out.samples.append(s._replace(labels=labels))
        yield from merged.values()
