"""From per-request outcomes to the figures a routing comparison is judged on.

Definitions (the same for simulated and live runs, so the live benchmark can reuse them):

* TTFT = first token time - arrival; TPOT = (finish - first token) / (output tokens - 1), over requests with
  more than one output token; E2E = finish - arrival.
* ``makespan_s`` = last finish - first arrival; ``output_tok_per_s`` = all output tokens / makespan.
* Goodput = requests that meet *both* SLOs (TTFT ≤ ``ttft_s`` and TPOT ≤ ``tpot_s``; a one-token answer only
  needs the TTFT SLO) per second of makespan. Defaults are interactive-chat thresholds: the first token within
  1 s, then at least 10 tokens/s (faster than people read).
* ``prefix_hit_rate`` = prompt tokens served from the prefix cache / all prompt tokens (first admission).
* Load imbalance = max / mean over servers of the work routed to them (prompt + output tokens of the requests
  each received); 1.0 is perfectly even. ``busy_imbalance`` is the same over engine busy time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks.sim.fleet import SimResult

#: Default SLO: first token within 1 s, then at least 10 tokens/s.
DEFAULT_TTFT_SLO_S = 1.0
DEFAULT_TPOT_SLO_S = 0.1


@dataclass(frozen=True, slots=True)
class Slo:
    """Per-request service-level objective for goodput.

    A request meets it when TTFT <= ``max(ttft_s, ttft_per_token_s x its prompt tokens)`` and TPOT <=
    ``tpot_s``. ``ttft_per_token_s`` is 0 by default (the fixed 1 s objective); a positive value lets long
    prompts take longer to their first token — needed where the fixed objective is out of reach even on an
    idle fleet (on Mooncake's trace 12.5 % of the prompts need more than 1 s of prefill on one idle H100;
    see ``benchmarks/RESULTS.md``, "Capacity at SLO").
    """

    ttft_s: float = DEFAULT_TTFT_SLO_S
    tpot_s: float = DEFAULT_TPOT_SLO_S
    ttft_per_token_s: float = 0.0

    def ttft_bound(self, prompt_tokens: NDArray[Any] | None) -> NDArray[np.float64] | float:
        """Each request's TTFT objective (seconds)."""
        if self.ttft_per_token_s <= 0 or prompt_tokens is None:
            return self.ttft_s
        return np.maximum(self.ttft_s, self.ttft_per_token_s * prompt_tokens.astype(np.float64))


#: The length-scaled objective proposed for long-prompt traces: the first token within 1 s or 0.1 ms per
#: prompt token (10,000 prompt tokens per second), whichever is longer; TPOT 0.1 s as before.
LONG_PROMPT_SLO = Slo(DEFAULT_TTFT_SLO_S, DEFAULT_TPOT_SLO_S, 1e-4)


def _pct(x: NDArray[np.float64], q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def _imbalance(per_server: NDArray[Any]) -> float:
    mean = float(np.mean(per_server))
    return float(np.max(per_server)) / mean if mean > 0 else float("nan")


def _tpot(first: NDArray[np.float64], end: NDArray[np.float64], tokens: NDArray[Any]) -> NDArray[np.float64]:
    """Seconds per output token after the first, per request; 0 for one-token answers."""
    multi = tokens > 1
    tpot = np.zeros(len(tokens))
    tpot[multi] = (end - first)[multi] / (tokens[multi] - 1)
    return tpot


def _slo_met(
    ttft: NDArray[np.float64], tpot: NDArray[np.float64], slo: Slo, prompt: NDArray[Any] | None = None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Per request: TTFT within the SLO, TPOT within the SLO (a one-token answer's TPOT of 0 always is)."""
    return ttft <= slo.ttft_bound(prompt), tpot <= slo.tpot_s


def latency_stats(
    sent: NDArray[np.float64],
    first: NDArray[np.float64],
    end: NDArray[np.float64],
    tokens: NDArray[Any],
    *,
    slo: Slo,
    makespan: float,
    prompt_tokens: NDArray[Any] | None = None,
) -> tuple[dict[str, float], NDArray[np.bool_]]:
    """The latency and throughput keys of a report row from completed requests (send, first token and
    end times in seconds, output tokens each), and which of them met the SLO. TPOT is (end - first) /
    (tokens - 1) over requests of more than one token; a one-token request meets any TPOT SLO. Shared by
    the simulator and the live benchmark so that both report the same definitions. ``prompt_tokens`` is
    needed only by a length-scaled TTFT objective (``Slo.ttft_per_token_s``)."""
    ttft = first - sent
    e2e = end - sent
    tpot = _tpot(first, end, tokens)
    ttft_ok, tpot_ok = _slo_met(ttft, tpot, slo, prompt_tokens)
    good = ttft_ok & tpot_ok
    tpot = tpot[tokens > 1]
    stats = {
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p90_s": _pct(ttft, 90),
        "ttft_p99_s": _pct(ttft, 99),
        "ttft_mean_s": float(np.mean(ttft)) if len(ttft) else float("nan"),
        "tpot_p50_s": _pct(tpot, 50),
        "tpot_p90_s": _pct(tpot, 90),
        "tpot_p99_s": _pct(tpot, 99),
        "e2e_p50_s": _pct(e2e, 50),
        "e2e_p99_s": _pct(e2e, 99),
        "output_tok_per_s": float(tokens.sum()) / makespan if makespan > 0 else float("nan"),
        "goodput_rps": float(good.sum()) / makespan if makespan > 0 else float("nan"),
    }
    return stats, good


def summarize(res: SimResult, slo: Slo = Slo()) -> dict[str, float | int]:
    """The report row of one run. Keys ending in ``_s`` are seconds."""
    done = ~np.isnan(res.finish)
    makespan = float(np.max(res.finish[done]) - np.min(res.arrival)) if done.any() else float("nan")
    stats, good = latency_stats(
        res.arrival[done],
        res.first_token[done],
        res.finish[done],
        res.output_tokens[done],
        slo=slo,
        makespan=makespan,
        prompt_tokens=res.prompt_tokens[done],
    )
    n_servers = len(res.server_busy_s)
    routed_work = np.bincount(
        res.server, weights=(res.prompt_tokens + res.output_tokens).astype(np.float64), minlength=n_servers
    )
    prompt_total = float(res.prompt_tokens.sum())
    return {
        "requests": len(res.arrival),
        "completed": int(done.sum()),
        **stats,
        "slo_attainment": float(good.mean()) if len(good) else float("nan"),
        "prefix_hit_rate": float(np.maximum(res.cached_tokens, 0).sum()) / prompt_total
        if prompt_total
        else 0.0,
        "load_imbalance": _imbalance(routed_work),
        "busy_imbalance": _imbalance(res.server_busy_s),
        "preemptions": int(res.preemptions.sum()),
        "lora_loads": int(res.server_lora_loads.sum()),
        "makespan_s": makespan,
        "sim_wall_s": res.wall_s,
        "pick_mean_us": res.picks_s / max(1, len(res.arrival)) * 1e6,
    }


def slo_misses(res: SimResult, slo: Slo = Slo(), *, window_s: float = 10.0) -> dict[str, Any]:
    """Which completed requests miss the SLO, and when they arrived.

    Why: goodput alone cannot tell a placement problem (misses spread over the run, on the servers a router
    overloads) from a capacity problem (misses packed into the minutes when the offered load exceeds what
    any placement can serve). Returns the shares of completed requests missing only the TTFT SLO, only the
    TPOT SLO, or both, and for each ``window_s``-second window of arrival times the number of requests that
    arrived in it and the share of them that missed.
    """
    done = ~np.isnan(res.finish)
    arrival, first, end = res.arrival[done], res.first_token[done], res.finish[done]
    ttft_ok, tpot_ok = _slo_met(
        first - arrival, _tpot(first, end, res.output_tokens[done]), slo, res.prompt_tokens[done]
    )
    late, slow = ~ttft_ok, ~tpot_ok
    missed = late | slow
    n = max(1, len(arrival))
    start = float(np.min(res.arrival)) if len(res.arrival) else 0.0
    bins = ((arrival - start) // window_s).astype(np.int64)
    count = np.bincount(bins, minlength=1)
    miss = np.bincount(bins, weights=missed.astype(np.float64), minlength=len(count))
    return {
        "ttft_only": float((late & ~slow).sum()) / n,
        "tpot_only": float((slow & ~late).sum()) / n,
        "both": float((late & slow).sum()) / n,
        "window_s": window_s,
        "by_arrival": [
            {"from_s": round(k * window_s, 3), "requests": int(c), "missed": round(float(m) / c, 4)}
            for k, (c, m) in enumerate(zip(count, miss, strict=True))
            if c
        ],
    }


def slo_dict(slo: Slo) -> dict[str, float]:
    return asdict(slo)
