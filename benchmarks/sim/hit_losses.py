"""Where a policy's prefix hits are lost: each pick audited against the simulated servers' true caches.

    python -m benchmarks.sim.hit_losses --rate 19.89                     # our default, Mooncake, full length
    python -m benchmarks.sim.hit_losses --policy oracle --rate 20.40 --requests 2000 --seed 1 --json

One replay of the workload at ``--rate`` (a policy's capacity, from ``capacity_sweep``'s report). At every
pick, before the policy chooses, the audit reads what no picker can: every server's true resident prefix of
the prompt (``SimServer.resident_prefix_tokens``, units waiting requests there are bringing in included,
as the oracle reads it), its true pending prefill, and the index's belief (``PickRequest.prefix``, the
saving the scorers weigh: ``PrefixMatch.saving``). ``best`` is the largest true resident prefix on any
server, ``chosen`` the chosen server's; ``best - chosen`` tokens are lost at the pick, and each request's
loss is put in one class (shares of all prompt tokens, so the classes add up to ``best`` - ``hit``):

* ``load``: the index ranked a server holding the best prefix above the chosen one (more saving), and
  the load terms sent the request elsewhere. Split by whether that holder could have served it in time
  (``load_holder_in_time``: its true pending prefill plus the uncached rest within half the request's
  TTFT objective, the oracle's test) or not (``load_holder_late``: sending it away was right).
* ``index_stale``: the index believed the chosen server held at least as much as the best holder, and
  the chosen server's true resident prefix was shorter than the index's belief for it (the server had
  evicted blocks the index still lists: the index outlived the cache).
* ``index_forgot``: the index believed the best holder held less than it truly did, within the hashed
  window (the index's LRU dropped entries the server kept, or never recorded them).
* ``past_window``: both looked the same to the index (the whole hashed window matched on both) and the
  holders differed only beyond it (``maxPrefixBlocksToMatch`` x ``blockSizeTokens`` tokens).
* ``no_index``: the policy has no prefix index of ours (round-robin, SGLang's own tree, the oracle): its
  every token lost at the pick (for the oracle, given up to meet the objective elsewhere).
* ``after_pick``: the chosen server's true prefix at the pick minus what the request found at admission
  (the cache changed while it queued).

Also ``phantom``: tokens the index credited the chosen server beyond what it truly held, over all picks,
whatever the class (how much the index's belief outruns the caches).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.sim.fleet import FleetConfig, SimContext, simulate
from benchmarks.sim.metrics import LONG_PROMPT_SLO, Slo
from benchmarks.sim.oracle import TTFT_HEADROOM
from benchmarks.sim.policies import Policy, make_policy
from benchmarks.sim.prefix import prefix_config_of
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.traces import Workload, named_trace
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest

CLASSES = (
    "load_holder_in_time",
    "load_holder_late",
    "index_stale",
    "index_forgot",
    "past_window",
    "no_index",
    "after_pick",
)


class Audit:
    """Wraps a policy (same picks) and records, per request, the true and believed state at its pick."""

    def __init__(self, policy: Policy, slo: Slo) -> None:
        self.name = policy.name
        self.policy = policy
        # the simulator's prefix index follows the wrapped scheduler's prefix scorer
        self.scheduler = getattr(policy, "scheduler", None)
        self._slo = slo
        self._servers: tuple[Any, ...] = ()
        self._rate = 1.0
        self.rows: dict[int, tuple[Any, ...]] = {}
        self.indexed = prefix_config_of(policy) is not None

    def bind(self, ctx: SimContext) -> None:
        self._servers = ctx.servers
        bind = getattr(self.policy, "bind", None)
        if bind is not None:
            bind(ctx)
        p = ctx.servers[0].profile
        chunk = p.max_num_batched_tokens
        self._rate = chunk / p.step_time(chunk, chunk)

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:
        r = int(req.request_id)
        true = np.array([s.resident_prefix_tokens(r, queued=True) for s in self._servers], dtype=np.float64)
        pending = np.array([s.pending_prefill_tokens() for s in self._servers], dtype=np.float64)
        match = req.prefix
        if match is None or match.matched is None:
            believed = np.zeros(len(true))
            window_full = np.zeros(len(true), dtype=np.bool_)
        else:
            believed = match.saving(
                np.asarray(match.matched, dtype=np.float64), float(req.prompt_tokens_estimate)
            )
            window_full = np.asarray(match.matched) >= match.total
        i = self.policy.pick(m, req, now, rng)
        self.rows[r] = (i, true, pending, believed, window_full)
        return i

    def losses(self, prompt: Sequence[int], cached: Sequence[int], window_tokens: int) -> dict[str, float]:
        """The classes of the module docstring, as shares of all prompt tokens."""
        out = dict.fromkeys((*CLASSES, "phantom", "best", "hit"), 0.0)
        for r, (i, true, pending, believed, window_full) in self.rows.items():
            hit = max(int(cached[r]), 0)
            out["hit"] += hit
            best = float(true.max())
            out["best"] += best
            out["after_pick"] += max(true[i] - hit, 0.0)
            out["phantom"] += max(min(believed[i], prompt[r]) - true[i], 0.0)
            lost = best - true[i]
            if lost <= 0:
                continue
            if not self.indexed:
                out["no_index"] += lost
                continue
            holders = np.flatnonzero(true == best)
            b = int(holders[np.argmax(believed[holders])])
            if believed[b] > believed[i]:
                goal = max(self._slo.ttft_s, self._slo.ttft_per_token_s * prompt[r])
                late = (pending[b] + prompt[r] - best) / self._rate > TTFT_HEADROOM * goal
                out["load_holder_late" if late else "load_holder_in_time"] += lost
            elif window_full[b] and window_full[i] and min(best, true[i]) >= window_tokens:
                out["past_window"] += lost
            elif believed[i] > true[i]:
                out["index_stale"] += lost
            else:
                out["index_forgot"] += lost
        total = float(sum(prompt))
        return {k: v / total for k, v in out.items()}


def audit(
    trace: str, policy: str, rate: float, *, requests: int, seed: int, slo: Slo = LONG_PROMPT_SLO
) -> dict[str, Any]:
    """Replay ``trace`` (its first ``requests``) at ``rate`` through ``policy`` audited; the loss classes."""
    w = named_trace(trace, seed=seed)
    w = w.head(requests) if len(w) > requests else w
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=16, seed=seed)
    pol = make_policy(policy, lora=bool(w.adapter_names), seed=seed, slo=slo)
    out = audit_run(w.with_rate(rate), pol, cfg, slo)
    return {"trace": trace, "policy": policy, "rate_rps": rate, "requests": len(w), "seed": seed, **out}


def audit_run(w: Workload, policy: Policy, cfg: FleetConfig, slo: Slo) -> dict[str, float]:
    """One replay of ``w`` (arrivals as given) through ``policy``, audited: the loss classes."""
    a = Audit(policy, slo)
    res = simulate(w, a, cfg)
    config = prefix_config_of(policy)
    window = config.max_blocks * config.block_size_tokens if config is not None else 0
    return a.losses(res.prompt_tokens.tolist(), res.cached_tokens.tolist(), window)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sim.hit_losses", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--trace", default="mooncake-conv")
    p.add_argument("--policy", default="default")
    p.add_argument("--rate", type=float, required=True, help="req/s (the policy's capacity, say)")
    p.add_argument("--requests", type=int, default=6000, help="the trace's first N (6000: Mooncake in full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict-slo", action="store_true", help="TTFT <= 1 s (default: the long-prompt SLO)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    slo = Slo() if args.strict_slo else LONG_PROMPT_SLO
    out = audit(args.trace, args.policy, args.rate, requests=args.requests, seed=args.seed, slo=slo)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    head = f"{out['policy']} on {out['trace']} ({out['requests']} requests, seed {out['seed']})"
    print(f"{head} at {out['rate_rps']} req/s")
    print("  share of all prompt tokens:")
    for k in ("best", "hit", *CLASSES, "phantom"):
        print(f"    {k:<22} {out[k]:7.2%}")


if __name__ == "__main__":
    main()
