"""Do index entries of several blocks (``blocksPerEntry``) cost routing quality? Two checks per workload.

    python -m benchmarks.sim.prefix_entries                        # s = 4, 8 against 1; seed 0, quick lengths
    python -m benchmarks.sim.prefix_entries --blocks-per-entry 8 --workloads mooncake-conv --json

1. **Resolution**: the leading blocks each request shares with any earlier request of its trace (one
   unbounded index holding every prompt), with entries of *s* blocks against one: the matchable prefix a
   coarser entry gives up where prompts diverge mid-segment. Seconds.
2. **Routing**: our default profile from YAML configs that differ only in ``blocksPerEntry``
   (``configs/default-bpe{s}.yaml``) replays the workload at our default's capacity (from the committed
   ``results/capacity-sweep-quick.json``, seed 0) and 10 % above it: SLO attainment, prefix hit rate and
   the share of requests sent to the same server as with one block per entry. Identical decisions mean
   an identical capacity; a run that still meets the SLO at the capacity rate has lost none at that seed.
   A minute or two per workload and value.

The full answer is the capacity sweep with bisection (``benchmarks.sim.capacity_sweep --policies
default,benchmarks/sim/configs/default-bpe1.yaml``); this is the cheap check that fits a loaded machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sim.fleet import FleetConfig, simulate
from benchmarks.sim.metrics import LONG_PROMPT_SLO, Slo, summarize
from benchmarks.sim.policies import CONFIG_DIR, make_policy
from benchmarks.sim.prefix import prompt_chains
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.traces import Workload, named_trace
from scoring.prefix import PrefixConfig

SWEEP = Path(__file__).resolve().parent.parent / "results" / "capacity-sweep-quick.json"
#: workload -> (quick requests, the sweep's label for it, SLO), as in ``capacity_sweep.CASES``
CASES: dict[str, tuple[int, str, Slo]] = {
    "mooncake-conv": (2000, "mooncake-conv (long-prompt SLO)", LONG_PROMPT_SLO),
    "shared-prefix-short-q-many-sys": (1500, "shared-prefix-short-q-many-sys", Slo()),
    "shared-prefix-long-q-many-sys": (1500, "shared-prefix-long-q-many-sys", Slo()),
    "shared-prefix-short-q-few-sys-chat": (2500, "shared-prefix-long-q-few-sys-chat", Slo()),
    "shared-prefix-long-q-few-sys-chat": (2500, "shared-prefix-long-q-few-sys-chat", Slo()),
}


def matchable_blocks(w: Workload, s: int) -> tuple[int, int]:
    """(leading blocks shared with an earlier request, blocks hashed) over the whole trace."""
    hashes, blocks = prompt_chains(w, ["m"] * len(w), PrefixConfig(blocks_per_entry=s))
    seen: set[int] = set()
    matched = 0
    for hs, b in zip(hashes, blocks, strict=True):
        k = 0
        for h in hs:
            if h not in seen:
                break
            k += 1
        matched += min(k * s, b)
        seen.update(hs)
    return matched, sum(blocks)


def default_capacity(label: str) -> float:
    """Our default's seed-0 capacity in the committed quick sweep (the short-question few-system-prompt
    chat shape has none there, being unbounded at seed 0: its long-question sibling's rate is used)."""
    runs = json.loads(SWEEP.read_text())["workloads"][label]["runs"]
    return float(runs["0"]["capacity"]["default"]["capacity_rps"])


def check(name: str, values: tuple[int, ...]) -> dict[str, Any]:
    n, label, slo = CASES[name]
    w = named_trace(name, seed=0)
    w = w.head(n) if len(w) > n else w
    base_matched, hashed = matchable_blocks(w, 1)
    out: dict[str, Any] = {"blocks_hashed": hashed, "matchable_blocks": {"1": base_matched}, "replays": {}}
    for s in values:
        out["matchable_blocks"][str(s)] = matchable_blocks(w, s)[0]
    rate = default_capacity(label)
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=16, seed=0)
    for factor in (1.0, 1.1):
        base_server = None
        rows = {}
        for s in (1, *values):
            policy = make_policy(str(CONFIG_DIR / f"default-bpe{s}.yaml"), seed=0, slo=slo)
            res = simulate(w.with_rate(rate * factor), policy, cfg)
            row = summarize(res, slo)
            if base_server is None:
                base_server = res.server
            rows[str(s)] = {
                "slo_attainment": round(float(row["slo_attainment"]), 4),
                "prefix_hit_rate": round(float(row["prefix_hit_rate"]), 4),
                "same_server_as_1": round(float(np.mean(res.server == base_server)), 4),
            }
        out["replays"][f"{rate * factor:.2f}"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sim.prefix_entries", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument(
        "--blocks-per-entry", default="4,8", help="values compared with 1 (configs/default-bpe<s>.yaml)"
    )
    p.add_argument("--workloads", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    values = tuple(int(x) for x in args.blocks_per_entry.split(",") if x.strip())
    missing = [s for s in values if not (CONFIG_DIR / f"default-bpe{s}.yaml").exists()]
    if missing:
        p.error(f"no configs/default-bpe<s>.yaml for s in {missing}")
    names = [x.strip() for x in args.workloads.split(",") if x.strip()]
    unknown = [x for x in names if x not in CASES]
    if unknown:
        p.error(f"unknown workloads {unknown}; known: {', '.join(CASES)}")
    doc = {}
    for name in names:
        doc[name] = r = check(name, values)
        if not args.json:
            base = r["matchable_blocks"]["1"]
            lost = ", ".join(
                f"s={s}: {100 * (base - r['matchable_blocks'][str(s)]) / max(base, 1):.2f} % fewer"
                for s in values
            )
            print(f"{name}: {base} of {r['blocks_hashed']} blocks matchable at s=1; {lost}", flush=True)
            for rate, rows in r["replays"].items():
                cells = "; ".join(
                    f"s={s} slo {x['slo_attainment']} hit {x['prefix_hit_rate']} same {x['same_server_as_1']}"
                    for s, x in rows.items()
                )
                print(f"  {rate} req/s: {cells}", flush=True)
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
