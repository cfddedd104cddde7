"""An oracle policy: routes on the simulated servers' true state, which no real router can see.

It is the ceiling the real policies are measured against, not a policy anyone could ship: it reads every
server's actual prefix-cache contents and actual queues at the instant of the pick, with no scrape delay,
no estimate of prompt sizes and no approximation of what the engine evicted.

For each server ``i``:

    resident_i = leading tokens of this prompt in i's prefix cache now   (SimServer.resident_prefix_tokens)
    work_i     = pending_i + prompt - resident_i                          (tokens to prefill before its
                                                                           first token; pending_i from
                                                                           SimServer.pending_prefill_tokens)
    ttft_i     = work_i / prefill_rate                                    (prefill_rate: full chunks of
                                                                           max_num_batched_tokens)
    step_i     = the profile's decode step with every request there plus this one, attending to all their
                 contexts plus this prompt (SimServer.context_tokens): its time per output token soon

Rule ("cache-first within the objective"): among the servers with ``ttft_i`` within half the request's
TTFT objective (``Slo.ttft_bound``), ``step_i`` within 90 % of the TPOT objective, and the KV blocks of
everything there plus this request's uncached ones within 90 % of the cache: the one holding the most of
the prompt, then the least work. If no server qualifies: the smallest of the larger of those two
latency ratios, among servers with KV room if any.
Keeping a prefix where it already is, as long as that still meets the objective, is what preserves
capacity (a copy on a second server costs its prefill and evicts something else); giving up on affinity
exactly when the objective would be missed is what an exact view allows. Ties go to a random server.

It plans no further than the pick in hand, so it is a strong reference, not a proof of optimality: a
policy can beat it on some trace, and the reports say so when one does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.sim.metrics import Slo
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest

#: share of the TTFT objective the expected prefill wait may use (the rest absorbs decode interference
#: and arrivals in the same instant)
TTFT_HEADROOM = 0.5
#: share of the TPOT objective the projected decode step may use (prefill chunks lengthen some steps)
TPOT_HEADROOM = 0.9
#: share of the KV cache the requests there (running and waiting) plus this one may fill: past it the
#: engine preempts as decodes grow
KV_HEADROOM = 0.9


class Oracle:
    """The oracle (module docstring). Needs the simulator context (``bind``)."""

    def __init__(self, slo: Slo | None = None) -> None:
        self.name = "oracle"
        self._slo = slo or Slo()
        self._servers: tuple[Any, ...] = ()
        self._prompt: list[int] = []
        self._rate = 1.0

    def bind(self, ctx: Any) -> None:
        self._servers = ctx.servers
        self._prompt = ctx.table.prompt
        p = ctx.servers[0].profile
        chunk = p.max_num_batched_tokens
        self._rate = chunk / p.step_time(chunk, chunk)

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:  # noqa: ARG002 - Policy signature
        if not self._servers:
            raise RuntimeError("Oracle.pick before bind: run it through benchmarks.sim.simulate")
        r = int(req.request_id)
        prompt = self._prompt[r]
        n = len(self._servers)
        work = np.empty(n)
        step = np.empty(n)
        resident = np.empty(n)
        fits = np.empty(n, dtype=np.bool_)
        for i, srv in enumerate(self._servers):
            resident[i] = srv.resident_prefix_tokens(r, queued=True)
            uncached = prompt - resident[i]
            work[i] = srv.pending_prefill_tokens() + uncached
            batch = len(srv.running) + srv.n_waiting + 1
            step[i] = srv.profile.step_time(batch, srv.context_tokens() + prompt)
            blocks = srv.used + -(-(srv.waiting_uncached + uncached) // srv.bs)
            fits[i] = blocks <= KV_HEADROOM * srv.num_blocks
        ttft_goal = max(self._slo.ttft_s, self._slo.ttft_per_token_s * prompt)
        ttft_late = work / self._rate / (TTFT_HEADROOM * ttft_goal)
        tpot_late = step / (TPOT_HEADROOM * self._slo.tpot_s)
        lateness = np.maximum(ttft_late, tpot_late)
        ok = fits & (lateness <= 1.0)
        if ok.any():
            cand = np.flatnonzero(ok)
            cand = cand[resident[cand] == resident[cand].max()]
            cand = cand[work[cand] == work[cand].min()]
        else:  # late everywhere: moving would not make it on time, and a copy elsewhere costs capacity
            cand = np.flatnonzero(fits) if fits.any() else np.arange(n)
            cand = cand[resident[cand] == resident[cand].max()]
            cand = cand[lateness[cand] == lateness[cand].min()]
        return int(cand[0] if len(cand) == 1 else cand[rng.integers(len(cand))])
