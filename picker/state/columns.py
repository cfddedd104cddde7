"""The snapshot's layout, shared by the datastore and a ``--workers`` worker's view: the float columns
kept per endpoint, the LoRA columns, and the :class:`~scoring.matrix.EndpointMatrix` built from them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np

from scoring.matrix import ENGINE_NAMES, NEVER, EndpointMatrix

__all__ = ["FLOAT_COLUMNS", "LoraColumns", "blank_columns", "lora_columns", "snapshot_matrix"]

#: the float scoring columns kept per endpoint (shared memory mirrors them, in this order)
FLOAT_COLUMNS: Final = (
    "waiting",
    "running",
    "kv_usage",
    "gpu_util",
    "scraped_at",
    # 1.0: never scraped successfully and a scrape attempt failed (scoring/matrix.py, the spill decision)
    "scrape_failed",
    "max_lora",
    "block_size",
    "num_blocks",
    # observed latency averages and passive health (picker/state/latency.py, picker/state/health.py)
    "ttft_per_1k",
    "tpot",
    "ntpot",
    "health",
    # currency units per million input / output tokens (picker/state/prices.py)
    "price_in",
    "price_out",
)

#: ``(vocabulary, active, waiting, count, model vocabulary, served)``: see :func:`lora_columns`
LoraColumns = tuple[Mapping[str, int], np.ndarray, np.ndarray, np.ndarray, Mapping[str, int], np.ndarray]


def lora_columns(
    per_endpoint: Sequence[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]],
) -> LoraColumns:
    """The matrix's model columns from ``(active, waiting, served)`` names per endpoint, in row order: the
    adapter vocabulary, the read-only boolean ``active`` / ``waiting`` matrices, ``count``, and the served
    model vocabulary with its boolean table (:class:`~scoring.matrix.EndpointMatrix`)."""
    vocab: dict[str, int] = {}
    models: dict[str, int] = {}
    for active_names, waiting_names, served_names in per_endpoint:
        for a in (*active_names, *waiting_names):
            vocab.setdefault(a, len(vocab))
        for s in served_names:
            models.setdefault(s, len(models))
    n = len(per_endpoint)
    active = np.zeros((n, len(vocab)), dtype=np.bool_)
    waiting = np.zeros((n, len(vocab)), dtype=np.bool_)
    served = np.zeros((n, len(models)), dtype=np.bool_)
    count = np.zeros(n)
    for i, (active_names, waiting_names, served_names) in enumerate(per_endpoint):
        for a in active_names:
            active[i, vocab[a]] = True
        for a in waiting_names:
            waiting[i, vocab[a]] = True
        for s in served_names:
            served[i, models[s]] = True
        count[i] = len(active_names) + len(waiting_names)
    for arr in (active, waiting, count, served):
        arr.flags.writeable = False
    return MappingProxyType(vocab), active, waiting, count, MappingProxyType(models), served


_NO_SIGNALS: Mapping[str, np.ndarray] = MappingProxyType({})
#: each float column's row in ``cols`` (looked up once here, not per snapshot)
_ROW: Final = {name: k for k, name in enumerate(FLOAT_COLUMNS)}
#: a float column's value before anything was written for the endpoint; the others start NaN (unknown)
_BLANK: Final = {"scraped_at": NEVER, "health": 0.0, "scrape_failed": 0.0}


def blank_columns(n: int) -> np.ndarray:
    """The float columns (rows in :data:`FLOAT_COLUMNS` order) of ``n`` endpoints nothing was written for
    yet: never scraped, not known to fail, healthy, every other value unknown."""
    cols = np.full((len(FLOAT_COLUMNS), n), math.nan)
    for name, value in _BLANK.items():
        cols[_ROW[name]] = value
    return cols


def snapshot_matrix(
    *,
    names: tuple[str, ...],
    addresses: tuple[str, ...],
    ips: tuple[str, ...],
    cols: np.ndarray,
    load: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    lora: LoraColumns,
    engine: np.ndarray,
    address_index: dict[str, int],
    signals: Mapping[str, np.ndarray] | None = None,
) -> EndpointMatrix:
    """An :class:`EndpointMatrix` from read-only float rows in :data:`FLOAT_COLUMNS` order (``cols``; more
    rows after them are ignored), the live load columns ``(dispatched, inflight, prefill_tokens,
    inflight_tokens)`` (:class:`picker.state.accounting.LoadColumns`), the LoRA columns of
    :func:`lora_columns`, engine codes and the address index."""
    vocab, active, waiting, count, model_vocab, served = lora
    dispatched, inflight, prefill, tokens = load
    return EndpointMatrix(
        names=names,
        addresses=addresses,
        ips=ips,
        waiting=cols[_ROW["waiting"]],
        running=cols[_ROW["running"]],
        kv_usage=cols[_ROW["kv_usage"]],
        gpu_util=cols[_ROW["gpu_util"]],
        scraped_at=cols[_ROW["scraped_at"]],
        scrape_failed=cols[_ROW["scrape_failed"]],
        dispatched=dispatched,
        inflight=inflight,
        prefill_tokens=prefill,
        inflight_tokens=tokens,
        lora_vocab=vocab,
        lora_active=active,
        lora_waiting=waiting,
        lora_count=count,
        model_vocab=model_vocab,
        served_models=served,
        max_lora=cols[_ROW["max_lora"]],
        block_size=cols[_ROW["block_size"]],
        num_blocks=cols[_ROW["num_blocks"]],
        price_in=cols[_ROW["price_in"]],
        price_out=cols[_ROW["price_out"]],
        engine=engine,
        engine_names=ENGINE_NAMES,
        ttft_per_1k=cols[_ROW["ttft_per_1k"]],
        tpot=cols[_ROW["tpot"]],
        ntpot=cols[_ROW["ntpot"]],
        health=cols[_ROW["health"]],
        signals=signals or _NO_SIGNALS,
        _address_index=address_index,
    )
