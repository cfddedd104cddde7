"""The metric-extraction oracle: ``prometheus_client``'s complete parse of a page, then the documented
selection rules (``picker/scrape/README.md``) applied to the parsed samples.

It is the slow, independent reference :class:`picker.scrape.Extractor` is checked against (the extraction
tests) and the baseline it is timed against (``benchmarks/bench_extract.py``): one copy, so the two cannot
drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from picker.scrape import EngineSpec, MetricSpec
from picker.state.metrics import EndpointMetrics

__all__ = ["comparable", "oracle"]


def oracle(text: str, spec: EngineSpec) -> EndpointMetrics:
    """The documented rules applied to prometheus_client's complete parse of the page."""
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def matching(ms: MetricSpec) -> list[Any]:
        return [
            s for s in samples if s.name == ms.name and all(s.labels.get(k, "") == v for k, v in ms.labels)
        ]

    def stamp(s: Any) -> float:
        return -math.inf if s.timestamp is None else float(s.timestamp)

    def distinct(ss: list[Any]) -> list[Any]:
        best: dict[frozenset[tuple[str, str]], Any] = {}
        for s in ss:
            key = frozenset(s.labels.items())
            if key not in best or stamp(s) > stamp(best[key]):
                best[key] = s
        return list(best.values())

    def valid(vs: list[float]) -> bool:
        return bool(vs) and all(0 <= v < math.inf for v in vs)

    def first(specs: tuple[MetricSpec, ...], reduce: Callable[[list[float]], float]) -> float:
        for ms in specs:
            values = [s.value for s in distinct(matching(ms))]
            if valid(values):
                return reduce(values)
        return math.nan

    def newest(specs: tuple[MetricSpec, ...]) -> float:
        for ms in specs:
            ss = matching(ms)
            if ss:
                v = max(ss, key=stamp).value  # max() keeps the first of equal keys
                if 1 <= v < math.inf:
                    return float(v)
        return math.nan

    def whole(raw: str | None, minimum: float) -> float:
        try:
            v = float(raw) if raw else math.nan
        except ValueError:
            return math.nan
        return v if minimum <= v < math.inf and v.is_integer() else math.nan

    def names(raw: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.strip() for a in raw.split(",") if a.strip()))

    kv = first(spec.kv_usage, lambda vs: sum(min(v, 1.0) for v in vs) / len(vs))
    if math.isnan(kv) and spec.max_batch_total_tokens:
        kv = min(first(spec.kv_tokens, sum) / spec.max_batch_total_tokens, 1.0)
    lora: dict[str, Any] = {"lora_active": None, "lora_waiting": None, "max_lora": math.nan}
    for ms in spec.lora:
        finite = [s for s in matching(ms) if math.isfinite(s.value)]
        if finite:
            best = max(finite, key=lambda s: s.value)
            lora = {
                "lora_active": names(best.labels.get("running_lora_adapters", "")),
                "lora_waiting": names(best.labels.get("waiting_lora_adapters", "")),
                "max_lora": whole(best.labels.get("max_lora"), 0),
            }
            break
    block_size = num_blocks = math.nan
    for ms in spec.cache_info:
        ss = matching(ms)
        if ss:
            labels = max(ss, key=stamp).labels
            block_size = whole(labels.get(spec.cache_block_size_label), 1)
            num_blocks = whole(labels.get(spec.cache_num_blocks_label), 1)
            break
    if math.isnan(block_size):
        block_size = newest(spec.cache_block_size)
    if math.isnan(num_blocks):
        num_blocks = newest(spec.cache_num_blocks)
    served: dict[str, None] = {}
    for ms in (*spec.queued, *spec.running):
        for s in matching(ms):
            if s.labels.get("model_name") and len(served) < 16:
                served[s.labels["model_name"]] = None
    return EndpointMetrics(
        waiting=first(spec.queued, sum),
        running=first(spec.running, sum),
        kv_usage=kv,
        block_size=block_size,
        num_blocks=num_blocks,
        models=tuple(served) or None,
        **lora,
    )


def comparable(m: EndpointMetrics) -> dict[str, Any]:
    """Comparable form: NaN → None."""
    d = dataclasses.asdict(m)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
