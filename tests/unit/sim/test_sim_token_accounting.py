"""The simulator keeps the accounting columns exactly as the service's rules say (``LoadCharge``)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.sim.fleet import FleetConfig, prompt_estimates, simulate, streaming_flags
from benchmarks.sim.policies import RoundRobin
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.traces import Workload
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest


def workload(n: int, rate: float, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload(
        name="mixed",
        arrival_s=np.cumsum(rng.exponential(1.0 / rate, n)),
        prompt_tokens=rng.integers(50, 12_000, n),
        output_tokens=rng.integers(2, 300, n),
        units=tuple(() for _ in range(n)),
        unit_tokens=0,
        adapter=np.full(n, -1, dtype=np.int64),
    )


class Recorder:
    """Round-robin, remembering the four accounting columns and the request at every pick."""

    name = "recorder"

    def __init__(self) -> None:
        self.rr = RoundRobin()
        self.seen: list[tuple[float, int, np.ndarray]] = []

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:
        cols = np.stack([m.dispatched, m.inflight, m.prefill_tokens, m.inflight_tokens])
        self.seen.append((now, req.prompt_tokens_estimate, cols.copy()))
        return self.rr.pick(m, req, now, rng)


@pytest.mark.parametrize(
    ("streaming_fraction", "rule"), [(1.0, "none"), (0.5, "none"), (0.0, "none"), (0.5, "until-end")]
)
def test_token_columns_equal_what_a_proxy_could_know_at_every_pick(
    streaming_fraction: float, rule: str
) -> None:
    w = workload(400, rate=60.0, seed=1)
    cfg = FleetConfig(
        LLAMA3_8B_H100,
        n_servers=3,
        seed=2,
        prompt_estimate_sigma=0.3,
        streaming_fraction=streaming_fraction,
        nonstreaming_prefill=rule,
    )
    rec = Recorder()
    res = simulate(w, rec, cfg)
    est = prompt_estimates(w, cfg).astype(np.float64)
    streams = streaming_flags(w, cfg)
    # a stream's prefill charge ends at its first token; a non-streaming request charges none (the
    # what-if rule: charges it until the response ends)
    until_end = rule == "until-end"
    prefill_est = np.where(streams | until_end, est, 0.0)
    release = np.where(streams, res.first_token, res.finish)
    assert len(rec.seen) == len(w)
    overlapping = 0
    for k, (now, estimate, cols) in enumerate(rec.seen):
        assert estimate == est[k]
        earlier = np.arange(k)
        server = res.server[earlier]
        open_ = res.finish[earlier] > now
        pending = release[earlier] > now
        inflight = np.bincount(server[open_], minlength=3)
        prefill = np.bincount(server[pending], weights=prefill_est[earlier][pending], minlength=3)
        inflight_tokens = np.bincount(server[open_], weights=est[earlier][open_], minlength=3)
        assert cols[1].tolist() == inflight.astype(float).tolist(), k
        assert cols[2].tolist() == prefill.tolist(), k
        assert cols[3].tolist() == inflight_tokens.tolist(), k
        assert (cols >= 0).all()
        overlapping += int(prefill.sum() > 0)
    if streaming_fraction > 0:
        assert overlapping > 100, "the workload keeps prefills pending at many picks"
    else:
        assert overlapping == 0, "non-streaming requests charge no prefill tokens"


def test_prompt_estimates_are_seeded_and_noise_free_at_sigma_zero() -> None:
    w = workload(1000, rate=10.0, seed=3)
    exact = prompt_estimates(w, FleetConfig(LLAMA3_8B_H100, prompt_estimate_sigma=0.0))
    assert exact.tolist() == w.prompt_tokens.tolist()
    a = prompt_estimates(w, FleetConfig(LLAMA3_8B_H100, seed=5))
    b = prompt_estimates(w, FleetConfig(LLAMA3_8B_H100, seed=5))
    assert a.tolist() == b.tolist(), "every policy of a comparison sees the same estimates"
    ratio = np.log(a / w.prompt_tokens)
    assert abs(float(np.std(ratio)) - 0.25) < 0.03
    assert abs(float(np.mean(ratio))) < 0.03


def test_streaming_fraction_selects_that_share_of_requests() -> None:
    w = workload(4000, rate=10.0, seed=4)
    assert streaming_flags(w, FleetConfig(LLAMA3_8B_H100)).all()
    half = streaming_flags(w, FleetConfig(LLAMA3_8B_H100, streaming_fraction=0.5))
    assert 0.45 < float(half.mean()) < 0.55
