"""How much prefix reuse a trace itself offers: the hit-rate ceilings no routing policy can pass.

    python -m benchmarks.sim.reuse                              # mooncake-conv at the quick and full lengths
    python -m benchmarks.sim.reuse --workloads mooncake-conv --lengths 2000,4000,6000 --json

Every figure is prompt tokens found in a prefix cache / all prompt tokens, with the simulator's own unit
keys and hit rule (``SimServer._unit_keys``, the leading resident units; clipped to the profile's context
limit as replayed), the requests in arrival order and nothing about time, load or queues:

* ``infinite``: one cache that never evicts (a leading unit hits if any earlier request had it). No
  routing, no cache size, can do better: the trace's reuse.
* ``fleet_lru``: one LRU cache of all servers' KV blocks together (16 x 27,600 blocks), as if every prefix
  lived on exactly one server and cached blocks had the whole pool (no running request's blocks, no
  copies): the ceiling once cache size counts.
* ``server_lru``: one server's cache (27,600 blocks) serving the whole trace alone, the other bound:
  what the cache size allows a single holder of everything.
* ``affinity_lru``: 16 per-server LRU caches of 27,600 blocks; each request goes to the server holding
  the longest leading part of it (ties: the fewest prompt tokens given so far), or, when no server holds
  more than its first unit, to the server given the fewest prompt tokens so far; load ignored:
  what pure affinity gets with the real cache size, copies of the common units on several servers
  included. (Every Mooncake prompt starts with the same unit, so a conversation key such as the first
  unit would send the whole trace to one server.)

Compare them with a policy's hit rate at its capacity (``capacity_sweep``'s report): the gap between
``infinite`` and ``fleet_lru`` is what eviction costs any router; the gap between ``fleet_lru`` and the
policies is what placement under load costs.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from benchmarks.sim.profiles import LLAMA3_8B_H100, ServerProfile
from benchmarks.sim.traces import Workload, named_trace

#: (label, requests) at the capacity sweep's quick and full lengths (``capacity_sweep.CASES``)
LENGTHS = {"mooncake-conv": (2000, 6000)}


def unit_keys(w: Workload, r: int, bs: int) -> list[tuple[int, int, int]]:
    """(key, blocks, tokens) of the units covering request ``r``'s prompt, keyed as ``SimServer._admit`` keys
    its prefix cache (kept inline there: it runs once per admitted request in the sweep's hot loop)."""
    ut = w.unit_tokens
    prompt = int(w.prompt_tokens[r])
    out = []
    for i, u in enumerate(w.units[r]):
        first = i * ut
        if first >= prompt:
            break
        tokens = min(ut, prompt - first)
        blocks = -(-tokens // bs)
        out.append(((u << 6) | blocks, blocks, tokens))
    return out


class _Lru:
    """An LRU of unit keys bounded in blocks (``SimServer``'s prefix cache once nothing is pinned)."""

    def __init__(self, capacity_blocks: float) -> None:
        self.cap = capacity_blocks
        self.used = 0
        self.keys: OrderedDict[int, int] = OrderedDict()

    def leading(self, keys: list[tuple[int, int, int]]) -> int:
        """Tokens of the leading resident units."""
        hit = 0
        for key, _, tokens in keys:
            if key not in self.keys:
                break
            hit += tokens
        return hit

    def serve(self, keys: list[tuple[int, int, int]]) -> int:
        """Tokens of the leading resident units; then every unit of the request becomes most recent."""
        hit = self.leading(keys)
        for key, blocks, _ in keys:
            if key in self.keys:
                self.keys.move_to_end(key)
            else:
                self.keys[key] = blocks
                self.used += blocks
        while self.used > self.cap and self.keys:
            _, b = self.keys.popitem(last=False)
            self.used -= b
        return hit


def reuse(w: Workload, profile: ServerProfile = LLAMA3_8B_H100, n_servers: int = 16) -> dict[str, float]:
    """The four hit rates of the module docstring for workload ``w`` (replayed as the simulator clips it)."""
    w = w.clipped(profile.context_limit)
    bs = profile.block_size
    seen: set[int] = set()
    fleet = _Lru(n_servers * profile.num_blocks)
    one = _Lru(profile.num_blocks)
    servers = [_Lru(profile.num_blocks) for _ in range(n_servers)]
    given = [0] * n_servers
    hits = {"infinite": 0, "fleet_lru": 0, "server_lru": 0, "affinity_lru": 0}
    total = int(w.prompt_tokens.sum())
    for r in range(len(w)):
        keys = unit_keys(w, r, bs)
        if not keys:
            continue
        inf = 0
        for key, _, tokens in keys:
            if key not in seen:
                break
            inf += tokens
        seen.update(k for k, _, _ in keys)
        hits["infinite"] += inf
        hits["fleet_lru"] += fleet.serve(keys)
        hits["server_lru"] += one.serve(keys)
        lead = [s.leading(keys) for s in servers]
        if max(lead) > w.unit_tokens:  # a conversation's history, not only the trace's common first unit
            best = max(range(n_servers), key=lambda i: (lead[i], -given[i]))
        else:
            best = min(range(n_servers), key=given.__getitem__)
        given[best] += int(w.prompt_tokens[r])
        hits["affinity_lru"] += servers[best].serve(keys)
    return {k: v / total for k, v in hits.items()} | {"requests": len(w), "prompt_tokens": total}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sim.reuse", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="mooncake-conv", help="comma-separated trace names")
    p.add_argument("--lengths", default=None, help="comma-separated request counts (default: quick, full)")
    p.add_argument("--seed", type=int, default=0, help="draws the generated workloads")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out: dict[str, Any] = {}
    for name in args.workloads.split(","):
        full = named_trace(name, seed=args.seed)
        lengths = (
            [int(n) for n in args.lengths.split(",")] if args.lengths else LENGTHS.get(name, (len(full),))
        )
        out[name] = {str(n): reuse(full.head(n)) for n in lengths}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for name, rows in out.items():
        print(f"{name}: prefix hit rate (share of prompt tokens) per trace length")
        print(f"  {'requests':>8} {'infinite':>9} {'fleet LRU':>9} {'1 server':>9} {'affinity':>9}")
        for n, r in rows.items():
            cells = " ".join(f"{r[k]:9.1%}" for k in ("infinite", "fleet_lru", "server_lru", "affinity_lru"))
            print(f"  {n:>8} {cells}")


if __name__ == "__main__":
    main()
