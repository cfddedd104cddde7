"""The simulated vLLM server on its own: conservation, preemption, prefix hits, LoRA slots, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.sim.profiles import LLAMA3_8B_H100, LLAMA3_70B_H100_TP4, ServerProfile
from benchmarks.sim.server import RequestTable, SimServer
from benchmarks.sim.traces import Workload


def make_workload(
    prompts: list[int],
    outputs: list[int],
    *,
    arrivals: list[float] | None = None,
    units: list[tuple[int, ...]] | None = None,
    unit_tokens: int = 0,
    adapters: list[int] | None = None,
    adapter_names: tuple[str, ...] = (),
) -> Workload:
    n = len(prompts)
    return Workload(
        name="t",
        arrival_s=np.asarray(arrivals if arrivals is not None else [0.0] * n, dtype=np.float64),
        prompt_tokens=np.asarray(prompts, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        units=tuple(units) if units is not None else tuple(() for _ in range(n)),
        unit_tokens=unit_tokens,
        adapter=np.asarray(adapters if adapters is not None else [-1] * n, dtype=np.int64),
        adapter_names=adapter_names,
    )


def run_one_server(
    w: Workload, profile: ServerProfile = LLAMA3_8B_H100, *, prefix_cache: bool = True
) -> tuple[RequestTable, SimServer]:
    table = RequestTable(w)
    srv = SimServer(0, profile, table, prefix_cache=prefix_cache)
    for r in range(len(w)):
        srv.advance(table.arrival[r])
        srv.enqueue(r, table.arrival[r])
    srv.advance(float("inf"))
    return table, srv


def random_workload(n: int, seed: int, *, span_s: float) -> Workload:
    rng = np.random.default_rng(seed)
    return make_workload(
        rng.integers(16, 3000, n).tolist(),
        rng.integers(1, 600, n).tolist(),
        arrivals=np.sort(rng.uniform(0, span_s, n)).tolist(),
    )


def assert_conserved(table: RequestTable, srv: SimServer, w: Workload) -> None:
    finish = np.asarray(table.finish)
    first = np.asarray(table.first_token)
    arrival = np.asarray(table.arrival)
    assert not np.isnan(finish).any(), "every request finishes"
    assert srv.completed == len(w), "…exactly once"
    assert (first >= arrival).all()
    assert (finish >= first).all()
    assert table.gen == table.output, "each request produced exactly its output tokens"
    # every output token came from either a prefill that sampled or a decode step
    assert srv.decode_tokens + srv.prefill_completions == int(w.output_tokens.sum())
    # nothing is left allocated
    assert srv.used == 0
    assert srv.n_decode == 0
    assert srv.sum_ctx == 0
    assert sum(srv.bucket) == 0
    assert not srv.running
    assert not srv.prefilling
    assert srv.n_waiting == 0


def test_conservation_without_pressure() -> None:
    w = random_workload(400, seed=1, span_s=200.0)
    table, srv = run_one_server(w)
    assert_conserved(table, srv, w)
    assert srv.preemptions == 0
    # no cache and no recompute: prefill work is exactly the prompts
    assert srv.prefill_tokens == int(w.prompt_tokens.sum())


def test_conservation_under_kv_pressure_with_preemption() -> None:
    # 400 blocks of 16 tokens: far less KV than the offered concurrency needs, so decodes must preempt
    tiny = LLAMA3_8B_H100.with_overrides(num_blocks=400)
    w = random_workload(150, seed=2, span_s=1.0)
    table, srv = run_one_server(w, tiny)
    assert srv.preemptions > 0
    assert sum(table.preemptions) == srv.preemptions
    assert_conserved(table, srv, w)
    # recompute redoes prefill work
    assert srv.prefill_tokens > int(w.prompt_tokens.sum())


def test_kv_usage_never_exceeds_the_pool() -> None:
    tiny = LLAMA3_8B_H100.with_overrides(num_blocks=300)
    w = random_workload(120, seed=3, span_s=2.0)
    table = RequestTable(w)
    srv = SimServer(0, tiny, table)
    peak = 0.0
    for r in range(len(w)):
        srv.advance(table.arrival[r])
        srv.enqueue(r, table.arrival[r])
        peak = max(peak, srv.snapshot().kv_usage)
    while srv.has_work():
        srv.advance(srv.busy_until)
        peak = max(peak, srv.snapshot().kv_usage)
    assert 0.5 < peak <= 1.0


def test_prefix_hits_skip_prefill() -> None:
    # two 4-unit prompts (512-token units) sharing the first three units, the second after the first ends
    shared = (7, 8, 9)
    w = make_workload(
        [2048, 2048],
        [4, 4],
        arrivals=[0.0, 5.0],
        units=[(*shared, 10), (*shared, 11)],
        unit_tokens=512,
    )
    table, srv = run_one_server(w)
    assert table.cached == [0, 3 * 512]
    assert srv.prefill_tokens == 2048 + 512
    ttft = np.asarray(table.first_token) - np.asarray(table.arrival)
    p = LLAMA3_8B_H100
    assert ttft[0] == pytest.approx(p.step_time(2048, 2048))
    assert ttft[1] == pytest.approx(p.step_time(512, 2048))
    assert ttft[1] < ttft[0]

    # the same trace without the prefix cache: no hits, full prefill both times
    table_off, srv_off = run_one_server(w, prefix_cache=False)
    assert table_off.cached == [0, 0]
    assert srv_off.prefill_tokens == 2 * 2048


def test_prefix_cache_evicts_least_recently_used_units() -> None:
    # a pool of 300 blocks holds 9 units of 32 blocks; request 1's unit must be gone after 10 others
    small = LLAMA3_8B_H100.with_overrides(num_blocks=300)
    prompts = [512] * 12
    units = [(1,), *((100 + i,) for i in range(10)), (1,)]
    w = make_workload(prompts, [2] * 12, arrivals=[float(i) for i in range(12)], units=units, unit_tokens=512)
    table, _ = run_one_server(w, small)
    assert table.cached[-1] == 0
    # while recently used units hit
    units_recent = [(1,), (2,), (1,)]
    w2 = make_workload([512] * 3, [2] * 3, arrivals=[0.0, 1.0, 2.0], units=units_recent, unit_tokens=512)
    table2, _ = run_one_server(w2, small)
    assert table2.cached[-1] == 511  # all but the last token, which vLLM always recomputes


def test_cold_lora_adapter_costs_its_load_penalty() -> None:
    p = LLAMA3_8B_H100.with_overrides(max_lora=1, lora_load_s=0.25)
    # same request shape four times: cold adapter 0, warm adapter 0, adapter 1 (evicts 0), base model
    w = make_workload(
        [100] * 4,
        [1] * 4,
        arrivals=[0.0, 10.0, 20.0, 30.0],
        adapters=[0, 0, 1, -1],
        adapter_names=("a0", "a1"),
    )
    table, srv = run_one_server(w, p)
    ttft = np.asarray(table.first_token) - np.asarray(table.arrival)
    warm = p.step_time(100, 100)
    assert ttft[1] == pytest.approx(warm)
    assert ttft[0] == pytest.approx(warm + 0.25)
    assert ttft[2] == pytest.approx(warm + 0.25)
    assert ttft[3] == pytest.approx(warm)
    assert srv.lora_loads == 2


def test_request_waits_for_a_lora_slot_while_others_go_first() -> None:
    p = LLAMA3_8B_H100.with_overrides(max_lora=1, lora_load_s=0.0)
    # adapter 0 runs a long request; adapter 1 must wait for it, a later adapter-0 request does not
    w = make_workload(
        [100, 100, 100],
        [400, 1, 1],
        arrivals=[0.0, 0.1, 0.2],
        adapters=[0, 1, 0],
        adapter_names=("a0", "a1"),
    )
    table, _ = run_one_server(w, p)
    first = table.first_token
    assert first[2] < first[1], "the request with a loaded adapter overtakes the one without a slot"
    assert first[1] >= table.finish[0], "adapter 1 gets the slot only when adapter 0 is idle"


@pytest.mark.parametrize("profile", [LLAMA3_8B_H100, LLAMA3_70B_H100_TP4], ids=lambda p: p.name)
def test_profile_reproduces_its_published_saturated_throughput(profile: ServerProfile) -> None:
    """Queue the validation workload (ShareGPT-sized requests) at once, as the published run did."""
    v = profile.validation
    p = profile.with_overrides(max_num_seqs=int(v["saturated_max_num_seqs"]))
    n = 2000
    prompt = int(v["sharegpt_mean_prompt_tokens"])
    output = int(v["sharegpt_mean_output_tokens"])
    table, _ = run_one_server(make_workload([prompt] * n, [output] * n), p)
    tok_per_s = n * output / max(table.finish)
    assert tok_per_s == pytest.approx(v["saturated_output_tok_per_s"], rel=0.2)
    tpot = (np.asarray(table.finish) - np.asarray(table.first_token)) / (output - 1)
    assert float(np.median(tpot)) == pytest.approx(v["saturated_median_tpot_s"], rel=0.4)
