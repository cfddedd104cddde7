"""``picker tune``: scorer weights (and scorer parameters) tuned on your own trace, in the simulator.

    picker tune --trace my-trace.csv --out tuned.yaml [--config current.yaml] [--servers 16]

What it does, in order (every step a replay of the trace in the fleet simulator, :mod:`benchmarks.sim`,
which runs the real scoring code):

1. **Split** the trace (Azure CSV or Mooncake JSONL) into two halves in time: *tuning* (the first) and
   *held-out* (the second), at most ``--requests`` requests in all.
2. **Baseline**: capacity at SLO of the current configuration (``--config``, default our built-in profile)
   on the tuning half (:func:`benchmarks.sim.capacity.find_capacity`).
3. **Search** (``--trials`` candidates, seeded): each candidate is scored by the share of requests meeting
   the SLO at two probe rates above the baseline's capacity (x 1.1 and x 1.25) — a configuration that keeps
   more requests on time there has more capacity. First random candidates around the current weights
   (each weight x e^U, U uniform in ±ln 4, or off), then one-at-a-time refinement of the best (x 0.5,
   x 2, off). Knobs: the weight of every scorer in the profile, ``prefix-cache-scorer`` when the trace
   shares prefixes, and the numeric parameters listed in :data:`TUNABLE_PARAMETERS`.
4. **Verify**: the best few candidates by probe score get a full capacity search on the tuning half; the
   best capacity wins, and only if it beats the baseline (otherwise the current configuration is kept).
5. **Held-out check**: capacity of the current and the tuned configuration on the held-out half — the gain
   to expect on traffic the search never saw.
6. **Write** the current document with the new weights and parameters, validated by the service's own
   loader (``picker.config.load_config_text``), and print before/after.

Deterministic for a seed: the same trace, flags and seed give the same configuration on any machine (with
``--time-limit`` the search may stop earlier on a slower machine; the output says so). Time is bounded by
``--trials`` and ``--requests``: about ``2 x trials + 40`` replays of half the requests each.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from benchmarks.sim.capacity import TARGET_ATTAINMENT, CapacityResult, evaluator, find_capacity
from benchmarks.sim.fleet import FleetConfig, server_capacity_rps
from benchmarks.sim.metrics import Slo
from benchmarks.sim.policies import Policy, policy_from_config_text
from benchmarks.sim.profiles import get_profile
from benchmarks.sim.traces import Workload, load_trace_file
from benchmarks.sim.tune_space import (
    Setting,
    apply_setting,
    default_document,
    dump,
    knobs,
    neighbours,
    param_default,
    random_candidates,
    read_setting,
    validate,
)

#: probe rates, as multiples of the baseline's capacity
PROBES = (1.1, 1.25)
#: a tuning half shorter than this at its capacity rate gets a warning (requests last seconds to minutes)
MIN_SPAN_S = 120.0
#: candidates that get a full capacity search
VERIFY = 3
#: replays a capacity search is planned at (a bracket of two or three, then five bisections from x 1.5 to
#: within 2 %); one that runs longer grows the progress bar's total as it goes
SEARCH_REPLAYS = 8


# ------------------------------------------------------------------------------------------------ running
class Progress:
    """A one-line progress bar on a terminal stream (stdlib only: the service has no tqdm).

    The number of replays is not known in advance (a capacity search stops when its bracket is within
    2 %, and one that finds no capacity runs to its limit), so the total is a plan that the stages correct
    as they go: :meth:`plan` adds the replays a stage expects, :meth:`unplan` removes those it will not
    run, and a stage that runs longer than planned grows the total with every extra replay. The bar
    therefore never claims more done than there is, and ends at exactly the replays that ran.
    """

    def __init__(self, stream: TextIO, *, enabled: bool = True) -> None:
        self.total = 0
        self.done = 0
        self.stream = stream
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.note = ""

    def plan(self, n: int) -> None:
        """``n`` more replays are expected."""
        self.total += max(0, n)

    def unplan(self, n: int) -> None:
        """``n`` planned replays will not run (never below what is done)."""
        self.total = max(self.done, self.total - max(0, n))

    def step(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        self.total = max(self.total, self.done)
        if note is not None:
            self.note = note
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        total = max(1, self.total)
        eta = elapsed / self.done * (total - self.done) if self.done else 0.0
        bar = "#" * (30 * self.done // total)
        self.stream.write(
            f"\rtune [{bar:<30}] {self.done}/{self.total} replays, {_mmss(elapsed)} elapsed, "
            f"~{_mmss(eta)} left  {self.note[:60]:<60}"
        )
        self.stream.flush()

    def close(self) -> None:
        self.total = self.done  # whatever was planned and did not run
        self._draw()
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _mmss(s: float) -> str:
    return f"{int(s) // 60}m{int(s) % 60:02d}s"


@dataclass
class Tuner:
    """Runs the search on one trace (see the module docstring)."""

    tune_half: Workload
    held_out: Workload
    cfg: FleetConfig
    slo: Slo
    progress: Progress
    evaluations: int = 0
    cache: dict[tuple[str, float, str], float] = field(default_factory=dict)

    def _policy(self, docs: Sequence[Mapping[str, Any]]) -> Callable[[], Policy]:
        text = dump(docs)
        return lambda: policy_from_config_text(text, "candidate")

    def capacity(
        self, docs: Sequence[Mapping[str, Any]], w: Workload, start: float, label: str
    ) -> CapacityResult:
        """Capacity of ``docs`` on ``w`` (a search planned at :data:`SEARCH_REPLAYS` by the caller, whose
        plan this corrects when the search ran fewer)."""
        before = self.evaluations

        def on_eval(e: Any) -> None:
            self.evaluations += 1
            if self.evaluations - before > SEARCH_REPLAYS:
                self.progress.plan(1)
            self.progress.step(note=f"{label}: {e.rate_rps:.2f} req/s, {e.attainment:.0%} met")

        ev = evaluator(w, self._policy(docs), self.cfg, self.slo)
        result = find_capacity(ev, start, name=label, on_eval=on_eval)
        self.progress.unplan(SEARCH_REPLAYS - (self.evaluations - before))
        return result

    def verify(
        self,
        best: Sequence[Setting],
        base_docs: Sequence[Mapping[str, Any]],
        base: Setting,
        base_cap: CapacityResult,
        start: float,
    ) -> tuple[Setting, CapacityResult]:
        """The full capacity search of the ``best`` candidates on the tuning half (the current one is known
        already): the best capacity, if it beats the current configuration's."""
        out = (base, base_cap)
        others = [s for s in best if s != base]
        self.progress.unplan(SEARCH_REPLAYS * (VERIFY - len(others)))
        for s in others:
            res = self.capacity(apply_setting(base_docs, s), self.tune_half, start, "candidate")
            if res.capacity_rps > out[1].capacity_rps:
                out = (s, res)
        return out

    def probe(self, docs: Sequence[Mapping[str, Any]], rates: Sequence[float]) -> float:
        """Sum of SLO attainment at the probe rates on the tuning half (higher is better)."""
        ev = evaluator(self.tune_half, self._policy(docs), self.cfg, self.slo)
        total = 0.0
        for r in rates:
            e = ev(r)
            self.evaluations += 1
            total += e.attainment
            self.progress.step(note=f"probe {r:.2f} req/s: {e.attainment:.0%} met")
        return total


def tune(
    workload: Workload,
    base_docs: Sequence[Mapping[str, Any]],
    *,
    servers: int,
    profile: str,
    seed: int,
    trials: int,
    slo: Slo,
    stream: TextIO,
    progress: bool = True,
    time_limit_s: float = 0.0,
) -> dict[str, Any]:
    """The whole procedure; returns the report (the tuned documents under ``"documents"``)."""
    if len(workload) < 200:
        raise ValueError(f"the trace has {len(workload)} requests; tuning needs at least 200")
    half = len(workload) // 2
    a, b = workload.part(0, half), workload.part(half, len(workload))
    prof = get_profile(profile)
    cfg = FleetConfig(prof, n_servers=servers, seed=seed)
    base = read_setting(base_docs)
    ks = knobs(base, base_docs, prefix=workload.has_prefixes)
    defaults = {(k.plugin, k.param): param_default(base_docs, k) for k in ks if k.param}
    n_random = max(1, trials // 2)
    bar = Progress(stream, enabled=progress)
    # the plan: the current configuration's search, the probes of it and of every candidate, the searches
    # of the best few, and the two held-out searches (each stage corrects it; see Progress)
    bar.plan(SEARCH_REPLAYS + len(PROBES) * (trials + 1) + SEARCH_REPLAYS * VERIFY + 2 * SEARCH_REPLAYS)
    tuner = Tuner(a, b, cfg, slo, bar)
    t0 = time.perf_counter()
    nominal = server_capacity_rps(a, prof, seed=seed) * servers
    base_cap = tuner.capacity(base_docs, a, 0.6 * nominal, "current")
    start = base_cap.capacity_rps if base_cap.found else 0.3 * nominal
    span_s = len(a) / start  # how long the tuning half lasts at the rate it is tuned around
    rates = [start * f for f in PROBES]
    scored: list[tuple[float, int, Setting]] = [(tuner.probe(base_docs, rates), 0, base)]
    rng = np.random.default_rng([seed, 13])
    stopped_early = False
    pool = random_candidates(base, ks, n_random, rng, defaults)
    tried = {base}
    order = 1
    while len(tried) < trials + 1:
        if time_limit_s and time.perf_counter() - t0 > time_limit_s:
            stopped_early = True
            break
        if not pool:
            best = max(scored, key=lambda x: (x[0], -x[1]))[2]
            pool = [s for s in neighbours(best, ks, defaults) if s not in tried]
            if not pool:
                break
        s = pool.pop(0)
        if s in tried:
            continue
        tried.add(s)
        scored.append((tuner.probe(apply_setting(base_docs, s), rates), order, s))
        order += 1
    bar.unplan(len(PROBES) * (trials + 1 - len(tried)))  # candidates the search did not get to
    ranked = sorted(scored, key=lambda x: (-x[0], x[1]))
    best_setting, best_cap = tuner.verify(
        [s for _, _, s in ranked[:VERIFY]], base_docs, base, base_cap, start
    )
    tuned_docs = apply_setting(base_docs, best_setting)
    validate(dump(tuned_docs))
    nominal_b = server_capacity_rps(b, prof, seed=seed) * servers
    base_b = tuner.capacity(base_docs, b, 0.6 * nominal_b, "current, held-out")
    start_b = base_b.capacity_rps if base_b.found else 0.3 * nominal_b
    if best_setting == base:
        bar.unplan(SEARCH_REPLAYS)
        tuned_b = base_b
    else:
        tuned_b = tuner.capacity(tuned_docs, b, start_b, "tuned, held-out")
    bar.close()
    return {
        "requests": len(workload),
        "halves": [len(a), len(b)],
        "servers": servers,
        "profile": profile,
        "seed": seed,
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "ttft_per_token_s": slo.ttft_per_token_s},
        "target_attainment": TARGET_ATTAINMENT,
        "candidates": len(tried),
        "replays": tuner.evaluations,
        "stopped_early": stopped_early,
        "span_s": span_s,
        "current": {
            "setting": base.describe(),
            "tune_rps": base_cap.capacity_rps,
            "held_out_rps": base_b.capacity_rps,
        },
        "tuned": {
            "setting": best_setting.describe(),
            "tune_rps": best_cap.capacity_rps,
            "held_out_rps": tuned_b.capacity_rps,
        },
        "changed": best_setting != base,
        "documents": tuned_docs,
        "wall_s": time.perf_counter() - t0,
    }


def _gain(before: float, after: float) -> str:
    if before <= 0:
        return "n/a"
    return f"{(after / before - 1) * 100:+.1f} %"


def report_text(r: Mapping[str, Any], out: Path) -> str:
    cur, new = r["current"], r["tuned"]
    gain_a = _gain(cur["tune_rps"], new["tune_rps"])
    gain_b = _gain(cur["held_out_rps"], new["held_out_rps"])
    lines = [
        (
            f"picker tune: {r['requests']} requests, {r['servers']} x {r['profile']}, seed {r['seed']}; "
            f"{r['candidates']} configurations, {r['replays']} replays, {r['wall_s']:.0f} s"
        ),
        "",
        "capacity at SLO (req/s, >= 90 % of requests within TTFT and TPOT objectives):",
        f"  {'':22}{'current':>10}{'tuned':>10}{'gain':>10}",
        f"  {'tuning half':22}{cur['tune_rps']:>10.2f}{new['tune_rps']:>10.2f}{gain_a:>10}",
        f"  {'held-out half':22}{cur['held_out_rps']:>10.2f}{new['held_out_rps']:>10.2f}{gain_b:>10}",
        "",
        f"current: {cur['setting']}",
        f"tuned:   {new['setting']}"
        + ("" if r["changed"] else "  (no candidate beat the current configuration)"),
    ]
    if cur["tune_rps"] <= 0 and new["tune_rps"] <= 0:
        lines.append(
            "warning: no configuration met the objective for 90 % of requests even at the lowest rate tried, "
            "so there was nothing to tune: the SLO is out of reach on this trace (prompts too long to "
            "prefill within --slo-ttft on an idle server?); loosen it, e.g. --slo-ttft-per-token to scale "
            "the TTFT objective with the prompt"
        )
    if r["span_s"] < MIN_SPAN_S:
        lines.append(
            f"warning: at that rate the tuning half lasts only {r['span_s']:.0f} s, so capacity measures how "
            "a burst is absorbed more than steady traffic: give more requests (--requests) or a longer trace"
        )
    if r["stopped_early"]:
        lines.append("note: --time-limit stopped the search early; the result may differ on a faster machine")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``picker tune`` with the arguments ``picker/cli.py`` parsed (its ``tune`` flags)."""
    import json

    try:
        get_profile(args.profile)
    except ValueError as exc:
        raise SystemExit(f"picker tune: {exc}") from None
    if args.servers < 1 or args.trials < 1 or args.requests < 200:
        raise SystemExit("picker tune: --servers and --trials must be positive, --requests at least 200")
    w = load_trace_file(args.trace)
    if len(w) > args.requests:
        w = w.head(args.requests)
    if args.config:
        text = args.config.read_text(encoding="utf-8")
        validate(text)
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    else:
        docs = default_document()
    slo = Slo(args.slo_ttft, args.slo_tpot, args.slo_ttft_per_token)
    r = tune(
        w,
        docs,
        servers=args.servers,
        profile=args.profile,
        seed=args.seed,
        trials=args.trials,
        slo=slo,
        stream=sys.stderr,
        progress=not args.no_progress,
        time_limit_s=args.time_limit,
    )
    text = dump(r["documents"])
    header = (
        f"# Tuned by `picker tune` on {args.trace.name} ({r['requests']} requests, {args.servers} x "
        f"{args.profile}, seed {args.seed}): capacity at SLO {r['current']['held_out_rps']:.2f} -> "
        f"{r['tuned']['held_out_rps']:.2f} req/s on the held-out half.\n"
    )
    args.out.write_text(header + text, encoding="utf-8")
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "documents"}, indent=2))
    else:
        print(report_text(r, args.out))
    return 0
