"""Where a multi-turn shape's later turns go, and what that costs: the per-request check behind a capacity.

    python -m benchmarks.sim.session_turns --rates 338,388               # short-q few-sys chat, seed 0
    python -m benchmarks.sim.session_turns --seed 1 --rates 350 --policies round-robin,default --json

For each policy and rate, one replay of a multi-turn ``shared_prefix`` shape (full length by default) and,
per request, what the capacity figure hides:

* **later turns on their session's server**: the share of turns ``r >= 1`` routed to the server that served
  the session's previous turn (the only server holding that turn's prompt beyond the group's system prompt);
* **SLO misses by turn**: TTFT and TPOT misses among first turns and among later turns;
* **spread**: requests per server and later turns per server (min-max);
* the SLO attainment and the prefix hit rate (as :func:`benchmarks.sim.metrics.summarize` gives them).

``rotation-shifted`` is a diagnostic baseline, not a peer's policy: round-robin that moves one server on at
the start of every round of sessions, so no later turn lands on its session's server by arithmetic. On the
``short-q-few-sys-chat`` shape with 16 servers plain round-robin sends every later turn back to its
session's server when the rounds go out in request order, because the shape's 6,000 sessions are a
multiple of 16 (request ``i`` is round ``i // 6000`` of session ``i mod 6000`` and is the ``i``-th
dispatch, to server ``i mod 16``); ``rotation-shifted`` measures rotation without that coincidence; so does
``--servers 17`` (``benchmarks/RESULTS.md``, "Prefix-cache affinity", the short-q few-sys paragraph). A
round that waits for its session's previous answer (the shapes' default, :mod:`benchmarks.sim.shared_prefix`)
is sent when that answer ends, out of request order, and rotation then loses the coincidence.
``--open-rounds`` sends every round at its scheduled time and ``--prompts-only`` caches prompts but not
answers: the replay of this module's first version, to compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.sim.fleet import FleetConfig, SimResult, simulate
from benchmarks.sim.metrics import Slo, summarize
from benchmarks.sim.policies import Policy, make_policy
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.shared_prefix import SHAPES, SharedPrefixShape, workload
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest

#: the diagnostic baseline's name (module docstring)
SHIFTED = "rotation-shifted"


class ShiftedRotation:
    """Round-robin by request index that moves one server on after every ``period`` requests (a round)."""

    def __init__(self, period: int) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, not {period!r}")
        self.name = SHIFTED
        self._period = period

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:  # noqa: ARG002 - Policy signature
        k = int(req.request_id)
        return (k + k // self._period) % len(m)


def sessions(shape: SharedPrefixShape) -> int:
    """Users of a multi-turn shape: request ``i`` is round ``i // sessions`` of session ``i mod sessions``
    (:func:`benchmarks.sim.shared_prefix.workload`)."""
    if not shape.multi_turn:
        raise ValueError(f"{shape.name} is single-turn: it has no later turns")
    return shape.groups * shape.prompts_per_group


@dataclass(frozen=True, slots=True)
class TurnReport:
    """One replay's per-request figures (module docstring)."""

    policy: str
    rate_rps: float
    slo_attainment: float
    prefix_hit_rate: float
    later_turns: int
    later_on_session_server: float
    ttft_miss_first_turns: float
    ttft_miss_later_turns: float
    tpot_miss_first_turns: float
    tpot_miss_later_turns: float
    requests_per_server: tuple[int, int]
    later_turns_per_server: tuple[int, int]


def _share(mask: np.ndarray[Any, Any]) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


def turn_report(res: SimResult, users: int, rate: float, slo: Slo, n_servers: int) -> TurnReport:
    """The figures of one replay (``users`` sessions, :func:`sessions`)."""
    n = len(res.arrival)
    later = np.arange(n) >= users
    prev_server = np.full(n, -1)
    prev_server[later] = res.server[np.flatnonzero(later) - users]
    ttft = res.first_token - res.arrival
    tpot = np.zeros(n)
    multi = res.output_tokens > 1
    tpot[multi] = (res.finish - res.first_token)[multi] / (res.output_tokens[multi] - 1)
    ttft_miss = ttft > slo.ttft_bound(res.prompt_tokens)
    tpot_miss = tpot > slo.tpot_s
    per_server = np.bincount(res.server, minlength=n_servers)
    later_per_server = np.bincount(res.server[later], minlength=n_servers)
    row = summarize(res, slo)
    return TurnReport(
        policy=res.policy,
        rate_rps=rate,
        slo_attainment=float(row["slo_attainment"]),
        prefix_hit_rate=float(row["prefix_hit_rate"]),
        later_turns=int(later.sum()),
        later_on_session_server=_share(res.server[later] == prev_server[later]),
        ttft_miss_first_turns=_share(ttft_miss[~later]),
        ttft_miss_later_turns=_share(ttft_miss[later]),
        tpot_miss_first_turns=_share(tpot_miss[~later]),
        tpot_miss_later_turns=_share(tpot_miss[later]),
        requests_per_server=(int(per_server.min()), int(per_server.max())),
        later_turns_per_server=(int(later_per_server.min()), int(later_per_server.max())),
    )


def run(
    shape: SharedPrefixShape,
    policies: list[str],
    rates: list[float],
    *,
    seed: int = 0,
    requests: int | None = None,
    n_servers: int = 16,
    slo: Slo | None = None,
    wait_for_answers: bool = True,
    cache_answers: bool = True,
) -> list[TurnReport]:
    """One replay per policy and rate (the capacity sweep's fleet: ``llama3-8b-h100``, seeded like it)."""
    objective = slo or Slo()
    w = workload(
        shape, seed=seed, requests=requests, wait_for_answers=wait_for_answers, cache_answers=cache_answers
    )
    users = sessions(shape)
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=n_servers, seed=seed)

    def make(name: str) -> Policy:
        if name == SHIFTED:
            return ShiftedRotation(users)
        return make_policy(name, seed=seed, slo=objective)

    return [
        turn_report(simulate(w.with_rate(rate), make(p), cfg), users, rate, objective, n_servers)
        for p in policies
        for rate in rates
    ]


def _table(reports: list[TurnReport]) -> str:
    head = (
        "| policy | rate (req/s) | SLO met | hits | later turns on their session's server | TTFT missed "
        "(first / later turns) | TPOT missed (first / later) | requests per server | later turns per server |"
    )
    rows = [
        f"| {r.policy} | {r.rate_rps:g} | {r.slo_attainment:.3f} | {r.prefix_hit_rate:.3f} | "
        f"{r.later_on_session_server:.3f} | "
        f"{r.ttft_miss_first_turns:.3f} / {r.ttft_miss_later_turns:.3f} | "
        f"{r.tpot_miss_first_turns:.3f} / {r.tpot_miss_later_turns:.3f} | "
        f"{r.requests_per_server[0]}-{r.requests_per_server[1]} | "
        f"{r.later_turns_per_server[0]}-{r.later_turns_per_server[1]} |"
        for r in reports
    ]
    return "\n".join([head, "|" + "---|" * 9, *rows])


def main(argv: list[str] | None = None) -> int:
    multi = [name for name, s in SHAPES.items() if s.multi_turn]
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.sim.session_turns", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--shape", default="short-q-few-sys-chat", choices=multi)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rates", default="338,388", help="comma-separated req/s")
    ap.add_argument(
        "--policies",
        default=f"round-robin,{SHIFTED},least-in-flight,reference-default,default",
        help=f"comma-separated: policy names, config YAML paths, or {SHIFTED}",
    )
    ap.add_argument("--requests", type=int, default=None, help="default: the shape's full length")
    ap.add_argument("--servers", type=int, default=16, help="fleet size (16 in the capacity sweep)")
    ap.add_argument("--open-rounds", action="store_true", help="send rounds at their scheduled times")
    ap.add_argument("--prompts-only", action="store_true", help="servers cache prompts, not answers")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        rates = [float(x) for x in args.rates.split(",") if x]
    except ValueError:
        ap.error(f"--rates: not a list of numbers: {args.rates!r}")
    if not rates or min(rates) <= 0:
        ap.error("--rates: give at least one positive rate")
    if args.servers <= 0:
        ap.error("--servers: give a positive number of servers")
    reports = run(
        SHAPES[args.shape],
        [p for p in args.policies.split(",") if p],
        rates,
        seed=args.seed,
        requests=args.requests,
        n_servers=args.servers,
        wait_for_answers=not args.open_rounds,
        cache_answers=not args.prompts_only,
    )
    if args.json:
        json.dump([asdict(r) for r in reports], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(_table(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
