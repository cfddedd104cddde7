"""What every router is sent: the run's shape, the trace slice at the fleet's capacity, the request bodies,
and what the client records per request."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.sim.metrics import Slo
from benchmarks.sim.traces import Workload, named_trace

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PATH = "/v1/completions"
CHARS_PER_TOKEN = 4  # the fake server counts prompt tokens as ceil(chars / 4) (picker.testing.fake_openai)


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """One benchmark run's shape (every router gets the same)."""

    servers: int = 4
    load: float = 0.9
    #: wall seconds per model second of the fake servers
    time_scale: float = 1.0
    #: wall seconds of arrivals per router
    duration_s: float = 60.0
    #: wall seconds after the last arrival before unfinished requests count as timeouts
    drain_s: float = 30.0
    #: output lengths are capped at this (tokens): every token is one SSE event relayed in Python
    max_output_tokens: int = 256
    trace: str = "azure-conv"
    #: first request of the trace slice
    offset: int = 0
    seed: int = 0
    slo: Slo = field(default_factory=Slo)


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """One request of the replay: when to send it (wall seconds after the start) and what."""

    index: int
    at_s: float
    prompt_tokens: int
    output_tokens: int
    body: bytes = field(repr=False)


@dataclass(slots=True)
class Record:
    """One request as the client saw it (wall seconds relative to the replay start; NaN = never)."""

    index: int
    sent_s: float
    first_byte_s: float = math.nan
    end_s: float = math.nan
    status: int = 0
    tokens: int = 0
    expected_tokens: int = 0
    pick_s: float = math.nan
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.tokens == self.expected_tokens


def load_params() -> Any:
    """The fleet's engine: the fake server's default load model (a mid-sized model on one GPU, scaled down
    so a handful of concurrent requests saturate a server; numbers in ``picker/testing/fake_load.py``).
    One definition for the fleet process and the capacity estimate, so "load" means the same in both."""
    from picker.testing.fake_load import LoadParams

    return LoadParams()


def trace_slice(cfg: LiveConfig, params: Any, count: int) -> Workload:
    """``count`` consecutive requests of the trace from ``cfg.offset``, clipped to what the engine accepts."""
    w = named_trace(cfg.trace, seed=cfg.seed)
    start = min(cfg.offset, max(0, len(w) - count))
    w = w.head(start + count)
    w = Workload(
        name=w.name,
        arrival_s=w.arrival_s[start:] - w.arrival_s[start],
        prompt_tokens=w.prompt_tokens[start:],
        output_tokens=np.minimum(w.output_tokens[start:], cfg.max_output_tokens),
        units=w.units[start:],
        unit_tokens=w.unit_tokens,
        adapter=w.adapter[start:],
        adapter_names=w.adapter_names,
    )
    # prompt + output must fit max_model_len and the KV cache (the fake answers 400 otherwise)
    limit = min(params.max_model_len, params.num_blocks * params.block_size) - 1
    return w.clipped(limit)


def capacity_rps(params: Any, w: Workload, *, sample: int = 600, seed: int = 0) -> float:
    """Requests per model second one fake server completes on this mix when never starved.

    Same definition as ``benchmarks.sim.fleet.server_capacity_rps``: ``sample`` requests queued at t = 0 on
    one engine (prefix cache off), completion rate between the 10 % and 90 % marks. Computed on the load
    model itself (pure, no I/O), so "load 0.9" means 90 % of what the fake servers can do.
    """
    from dataclasses import replace

    from picker.testing.fake_load import ContinuousBatchingModel, LoadRequest

    rng = np.random.default_rng(seed)
    n = min(sample, len(w))
    idx = np.sort(rng.choice(len(w), size=n, replace=False))
    model = ContinuousBatchingModel(replace(params, enable_prefix_caching=False, jitter=0.0), seed=seed)
    handles = [model.admit(LoadRequest(int(w.prompt_tokens[i]), int(w.output_tokens[i])), 0.0) for i in idx]
    while (t := model.next_event_time()) is not None:
        model.step(t)
    done = np.sort(np.asarray([h.finished_at for h in handles], dtype=np.float64))
    lo, hi = int(0.1 * (n - 1)), int(0.9 * (n - 1))
    return (hi - lo) / float(done[hi] - done[lo])


def _unit_text(unit: int) -> str:
    """Deterministic filler text for one shared prefix unit (equal ids → equal text → cache hits)."""
    rng = np.random.default_rng([unit, 7])
    return "".join(chr(c) for c in rng.integers(97, 123, size=512 * CHARS_PER_TOKEN))


def prompt_text(w: Workload, k: int) -> str:
    """A prompt of ``w.prompt_tokens[k]`` tokens for the fake server (4 characters each).

    Requests with prefix units (Mooncake ``hash_ids``) share text exactly where they share units, so the
    peers' prefix trees and the fake servers' prefix caches see the trace's sharing; requests without start
    with their own index, so nothing is shared by accident.
    """
    chars = int(w.prompt_tokens[k]) * CHARS_PER_TOKEN
    text = "".join(_unit_text(u) for u in w.units[k]) if w.units[k] else f"request {k}: "
    if len(text) < chars:
        text += "lorem ipsum dolor sit amet " * (chars // 27 + 1)
    return text[:chars]


def build_requests(w: Workload, rate_wall: float) -> list[LiveRequest]:
    """The replay: the trace's own arrival pattern scaled to ``rate_wall`` requests per wall second."""
    scaled = w.with_rate(rate_wall)
    out = []
    for k in range(len(w)):
        body = {
            "model": MODEL,
            "prompt": prompt_text(w, k),
            "max_tokens": int(w.output_tokens[k]),
            "stream": True,
        }
        out.append(
            LiveRequest(
                index=k,
                at_s=float(scaled.arrival_s[k]),
                prompt_tokens=int(w.prompt_tokens[k]),
                output_tokens=int(w.output_tokens[k]),
                body=json.dumps(body).encode(),
            )
        )
    return out
