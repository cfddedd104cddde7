"""Routing policies under test: baselines, peers' policies, an oracle, and the real scoring library.

A policy sees exactly what the service's picker sees: the :class:`scoring.matrix.EndpointMatrix` (scraped
gauges up to one scrape interval old, plus our own ``dispatched`` / ``inflight`` accounting) and a
:class:`scoring.types.PickRequest`. It returns one endpoint row. The scoring policies call
``scoring.Scheduler.schedule`` — the same object the service runs, not a copy.

Two policies see more, through an optional ``bind(ctx)`` the simulator calls before the first pick
(:class:`benchmarks.sim.fleet.SimContext`): SGLang's ``cache_aware``
(:mod:`benchmarks.sim.cache_aware`) needs the request text, as the real router reads the body; the
oracle (:mod:`benchmarks.sim.oracle`) reads the servers' true state, which nothing real can.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest

if TYPE_CHECKING:
    from benchmarks.sim.metrics import Slo

#: Names every comparison includes, in report order.
BASELINES = ("round-robin", "random", "least-in-flight")
PEERS = ("sglang-cache-aware",)
SCORING = ("reference-default", "default")
#: our default profile plus ``prefix-cache-scorer`` at weight 3 (``configs/default-prefix.yaml``): what
#: ``make demo`` and ``bench_live``'s ``epp-prefix`` serve
PREFIX_PROFILES = ("default-prefix",)
ORACLE = ("oracle",)
ALL_POLICIES = BASELINES + SCORING
#: the capacity-at-SLO comparison (issue 13 §3), in report order. ``default-prefix`` is left out: it is the
#: built-in default now (``default``), and searching the same profile twice cost a seventh of a sweep
#: (name it in ``--policies`` to measure it anyway)
CAPACITY_POLICIES = ("round-robin", "least-in-flight", *PEERS, *SCORING, *ORACLE)
KNOWN_POLICIES = BASELINES + PEERS + SCORING + PREFIX_PROFILES + ORACLE

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class Policy(Protocol):
    """Chooses one endpoint row for a request."""

    name: str

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int: ...


class RoundRobin:
    """Kubernetes-Service-like rotation: ignores every signal."""

    def __init__(self) -> None:
        self.name = "round-robin"
        self._next = 0

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:  # noqa: ARG002 - Policy signature
        i = self._next % len(m)
        self._next = i + 1
        return i


class RandomPick:
    """Uniform random endpoint (what a kube-proxy in iptables mode does per connection)."""

    def __init__(self) -> None:
        self.name = "random"

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:  # noqa: ARG002 - Policy signature
        return int(rng.integers(len(m)))


class LeastInFlight:
    """Fewest open streams through us (Envoy's least-request without sampling); ties broken at random."""

    def __init__(self) -> None:
        self.name = "least-in-flight"

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:  # noqa: ARG002 - Policy signature
        load = m.inflight
        best = np.flatnonzero(load == load.min())
        return int(best[0] if len(best) == 1 else best[rng.integers(len(best))])


class ScoringPolicy:
    """A ``scoring`` scheduler (filters → weighted scorers → picker), called exactly as the service does."""

    def __init__(self, name: str, scheduler: Any) -> None:
        self.name = name
        self.scheduler = scheduler

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:
        return int(self.scheduler.schedule(m, req, now=now, rng=rng).indices[0])


def policy_from_config_text(text: str, name: str) -> ScoringPolicy:
    """A scoring policy from an EndpointPickerConfig text, through the service's own loader."""
    from picker.config import load_config_text

    return ScoringPolicy(name, load_config_text(text).build_scheduler())


def _scheduler_from_config(path: Path) -> Any:
    """Build a scheduler from an EndpointPickerConfig YAML with the service's own loader."""
    try:
        from picker.config import load_config_file
    except ImportError as exc:  # the service's config module has not landed yet
        raise RuntimeError(f"cannot load {path}: picker.config.load_config_file is not available") from exc
    return load_config_file(path).build_scheduler()


def make_policy(name: str, *, lora: bool = False, seed: int = 0, slo: Slo | None = None) -> Policy:
    """A policy by name, or from an EndpointPickerConfig file when ``name`` is a path.

    ``reference-default`` is the reference EPP's default profile (queue 2, kv-cache 2, prefix 3); on LoRA
    traffic it adds ``lora-affinity-scorer`` with weight 1 (the reference's LoRA guide does the same),
    loaded from ``configs/reference-default-lora.yaml``. ``default`` is our default profile,
    ``default-prefix`` the same plus ``prefix-cache-scorer`` at weight 3 (``configs/default-prefix.yaml``).
    ``sglang-cache-aware`` is SGLang router's ``cache_aware`` with its defaults (``seed`` fixes the order
    in which its tree lists workers), ``oracle`` the true-state ceiling (it aims at ``slo``).
    """
    simple = {"round-robin": RoundRobin, "random": RandomPick, "least-in-flight": LeastInFlight}
    if name in simple:
        return simple[name]()
    if name == "sglang-cache-aware":
        from benchmarks.sim.cache_aware import SglangCacheAware

        return SglangCacheAware(seed=seed)
    if name == "oracle":
        from benchmarks.sim.oracle import Oracle

        return Oracle(slo)
    if name in SCORING:
        try:
            import scoring
        except ImportError as exc:
            raise RuntimeError("the scoring package is not importable") from exc
        missing = [f for f in ("reference_default_scheduler", "default_scheduler") if not hasattr(scoring, f)]
        if missing:
            raise RuntimeError(f"scoring does not provide {', '.join(missing)} yet")
        if name == "reference-default":
            if lora:
                return ScoringPolicy(name, _scheduler_from_config(CONFIG_DIR / "reference-default-lora.yaml"))
            return ScoringPolicy(name, scoring.reference_default_scheduler())
        return ScoringPolicy(name, scoring.default_scheduler())
    if name in PREFIX_PROFILES:
        return ScoringPolicy(name, _scheduler_from_config(CONFIG_DIR / f"{name}.yaml"))
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        return ScoringPolicy(path.stem, _scheduler_from_config(path))
    raise ValueError(f"unknown policy {name!r}: use one of {', '.join(KNOWN_POLICIES)} or a config YAML path")
