"""The rarely changing part of the ``--workers`` shared state, as one JSON document.

The supervisor encodes the endpoints (name, address, accounting slot, LoRA adapters, served models), the
pool, the health inputs, objectives, rewrites, the Prometheus signals (new values every ``refreshInterval``)
and the config document into a blob of the shared segment
(:meth:`picker.state.segment.SharedSegment.write_blob`); a worker decodes it into a :class:`StaticState`.
JSON rather than pickle: a worker never unpickles what another process wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import orjson

from picker.state.endpoints import PoolInfo
from picker.state.objectives import ModelRewrite, Objective, RewriteRule, RewriteTarget

__all__ = ["EndpointEntry", "HealthInputs", "StaticState", "decode_static", "encode_static"]

#: one endpoint of the shared state: (name, address, slot, lora_active, lora_waiting, served models)
EndpointEntry = tuple[str, str, int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class HealthInputs:
    """What a worker's gRPC health answers depend on (see picker.extproc.health.HealthState)."""

    synced: bool = False
    leader: bool = True
    protocol_ok: bool = True
    leader_election: bool = False


@dataclass(frozen=True, slots=True)
class StaticState:
    """The rarely changing part of the shared state, as decoded by a worker."""

    generation: int
    pool: PoolInfo | None
    health: HealthInputs
    #: rows of the matrix: (name, address, slot, lora_active, lora_waiting, served models)
    endpoints: tuple[EndpointEntry, ...]
    objectives: tuple[Objective, ...]
    rewrites: tuple[ModelRewrite, ...]
    #: the operator's Prometheus signals: key → endpoint name → value (``picker.state.signals``)
    signals: Mapping[str, Mapping[str, float]]
    config_text: str
    config_source: str
    config_digest: str


def encode_static(
    *,
    pool: PoolInfo | None,
    health: HealthInputs,
    endpoints: Iterable[EndpointEntry],
    objectives: Iterable[Objective],
    rewrites: Iterable[ModelRewrite],
    config_text: str,
    signals: Mapping[str, Mapping[str, float]] = MappingProxyType({}),
    config_source: str,
    config_digest: str,
) -> bytes:
    """The JSON blob a :class:`~picker.state.view.SharedView` decodes with :func:`decode_static`."""
    return orjson.dumps(
        {
            "pool": pool.to_doc() if pool is not None else None,
            "health": [health.synced, health.leader, health.protocol_ok, health.leader_election],
            "endpoints": [[n, a, s, list(la), list(lw), list(ms)] for n, a, s, la, lw, ms in endpoints],
            "objectives": [[o.name, o.priority] for o in objectives],
            "rewrites": [
                {
                    "name": r.name,
                    "created": r.created,
                    "rules": [
                        [list(rule.matches), [[t.model, t.weight] for t in rule.targets]] for rule in r.rules
                    ],
                }
                for r in rewrites
            ],
            "config": [config_text, config_source, config_digest],
            "signals": {k: dict(v) for k, v in signals.items()},
        }
    )


def decode_static(generation: int, data: bytes) -> StaticState:
    """The :class:`StaticState` of blob generation ``generation``."""
    doc = orjson.loads(data)
    p = doc["pool"]
    pool = (
        None
        if p is None
        else PoolInfo(
            name=p["name"],
            namespace=p["namespace"],
            selector=MappingProxyType(dict(p["selector"])),
            target_ports=tuple(p["target_ports"]),
            app_protocol=p["app_protocol"],
            group=p["group"],
        )
    )
    synced, leader, protocol_ok, leader_election = doc["health"]
    text, source, digest = doc["config"]
    return StaticState(
        generation=generation,
        pool=pool,
        health=HealthInputs(bool(synced), bool(leader), bool(protocol_ok), bool(leader_election)),
        endpoints=tuple(
            (n, a, int(s), tuple(la), tuple(lw), tuple(ms)) for n, a, s, la, lw, ms in doc["endpoints"]
        ),
        objectives=tuple(Objective(n, int(p)) for n, p in doc["objectives"]),
        rewrites=tuple(
            ModelRewrite(
                r["name"],
                tuple(
                    RewriteRule(tuple(m), tuple(RewriteTarget(model, int(w)) for model, w in targets))
                    for m, targets in r["rules"]
                ),
                created=float(r["created"]),
            )
            for r in doc["rewrites"]
        ),
        signals=MappingProxyType(
            {
                str(k): MappingProxyType({str(n): float(x) for n, x in v.items()})
                for k, v in doc["signals"].items()
            }
        ),
        config_text=text,
        config_source=source,
        config_digest=digest,
    )
