"""Runs of earlier capacity sweeps (``capacity_sweep --add-runs``): which of them a sweep may report
instead of simulating again, and how a (workload, seed)'s runs of several sweeps merge into one."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.sim.fleet import FleetConfig
from benchmarks.sim.metrics import slo_dict

if TYPE_CHECKING:
    from benchmarks.sim.capacity_sweep import Case

__all__ = ["BASELINE", "UNMODELLED_PUBLISH", "earlier_runs", "merge_run", "publish_rule"]

#: the policy every capacity search starts from (its capacity is each comparison's baseline)
BASELINE = "round-robin"


def publish_rule(cfg: FleetConfig) -> dict[str, Any]:
    """A run's ``publish`` record: when landed scrapes reached its picks (:mod:`benchmarks.sim.publish`)."""
    return {"interval_s": cfg.publish_interval_s, "scrape_rounds": cfg.scrape_rounds}


def merge_run(into: dict[str, Any] | None, run: Mapping[str, Any]) -> dict[str, Any]:
    """One (workload, seed)'s run with the policies of ``run`` added to those of ``into`` (``run``'s
    figures win where both measured a policy; the wall times add up)."""
    if into is None:
        return {**run, **{k: dict(run.get(k, {})) for k in ("capacity", "evaluations", "policy_wall_s")}}
    out = dict(into)
    for key in ("capacity", "evaluations", "policy_wall_s"):
        out[key] = {**into.get(key, {}), **run.get(key, {})}
    out["wall_s"] = float(into.get("wall_s", 0.0)) + float(run.get("wall_s", 0.0))
    if "publish" in run:  # the newer run's publish rule (round-robin reads no gauge: alike under any)
        out["publish"] = run["publish"]
    return out


#: the publish rule of a run recorded before the simulator modelled it: every landed page reached the
#: picks at once
UNMODELLED_PUBLISH = {"interval_s": 0.0, "scrape_rounds": False}


def earlier_runs(
    path: Path,
    cases: Sequence[Case],
    seeds: Sequence[int],
    *,
    quick: bool,
    publish: Mapping[str, Any] | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """The runs of ``cases`` x ``seeds`` in an earlier sweep's JSON under the same SLO on as many requests
    as this sweep would, that searched round-robin (the start of every other search; a run without it is
    simulated again), and, when ``publish`` is given, under that publish rule (a run that records none
    predates the model: :data:`UNMODELLED_PUBLISH`), so one report never mixes runs whose picks saw the
    gauges at different ages. The policies a run lacks are simulated by ``capacity_sweep.main``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        workloads = doc["workloads"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--add-runs {path}: not a capacity sweep's JSON ({exc})") from None
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for c in cases:
        w = workloads.get(c.label)
        if not isinstance(w, dict) or w.get("slo") != slo_dict(c.slo):
            continue
        n = c.quick_requests if quick else c.requests
        for seed in seeds:
            run = w.get("runs", {}).get(str(seed))
            if not isinstance(run, dict) or run.get("requests") != n:
                continue
            if BASELINE not in run.get("capacity", {}):
                continue
            if publish is not None and run.get("publish", UNMODELLED_PUBLISH) != dict(publish):
                continue
            out.setdefault(c.label, {})[seed] = run
    return out
