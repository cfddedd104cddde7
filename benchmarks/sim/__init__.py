"""A CPU-only fleet simulator for comparing endpoint-picking policies on real request traces.

Public surface (everything else is internal):

* :mod:`~benchmarks.sim.traces` — :class:`Workload` and the trace loaders;
* :mod:`~benchmarks.sim.profiles` — named, cited :class:`ServerProfile` s;
* :mod:`~benchmarks.sim.server` — :class:`SimServer`, one vLLM-like engine;
* :mod:`~benchmarks.sim.fleet` — :func:`simulate` (a pool + a policy, with the service's load accounting,
  ``scoring.matrix.LoadCharge``) and :func:`server_capacity_rps`;
* :mod:`~benchmarks.sim.policies` — baselines and the real ``scoring`` schedulers;
* :mod:`~benchmarks.sim.metrics` / :mod:`~benchmarks.sim.report` — figures, tables, plots;
* :mod:`~benchmarks.sim.tuning` — the multi-seed, multi-trace comparison behind the default profile
  (``python -m benchmarks.sim.tuning``);
* :mod:`~benchmarks.sim.reuse` / :mod:`~benchmarks.sim.hit_losses` — a trace's prefix-reuse ceilings (an
  infinite cache, the fleet's cache size, affinity alone) and where a policy's hits are lost against the
  servers' true caches, pick by pick (``python -m benchmarks.sim.reuse``, ``... hit_losses --rate R``).
"""

from benchmarks.sim.fleet import FleetConfig, SimResult, server_capacity_rps, simulate
from benchmarks.sim.metrics import Slo, summarize
from benchmarks.sim.policies import ALL_POLICIES, make_policy
from benchmarks.sim.profiles import LLAMA3_8B_H100, LLAMA3_70B_H100_TP4, PROFILES, ServerProfile, get_profile
from benchmarks.sim.server import RequestTable, SimServer
from benchmarks.sim.traces import Workload, load_trace_file, named_trace

__all__ = [
    "ALL_POLICIES",
    "LLAMA3_8B_H100",
    "LLAMA3_70B_H100_TP4",
    "PROFILES",
    "FleetConfig",
    "RequestTable",
    "ServerProfile",
    "SimResult",
    "SimServer",
    "Slo",
    "Workload",
    "get_profile",
    "load_trace_file",
    "make_policy",
    "named_trace",
    "server_capacity_rps",
    "simulate",
    "summarize",
]
