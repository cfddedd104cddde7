"""The fake server's load model: batching, queueing, KV blocks, preemption, LoRA slots, prefix cache.

All times here are the model's own (seconds passed in by the test), so these are exact statements about the
model, not wall-clock timing.
"""

from __future__ import annotations

import math
import random

import pytest

from picker.testing.fake_load import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    ContinuousBatchingModel,
    LoadHandle,
    LoadParams,
    LoadRejectedError,
    LoadRequest,
)


def drain(model: ContinuousBatchingModel, *, check: bool = False, max_events: int = 100_000) -> int:
    """Step the model through every event until it is idle; returns the number of events."""
    events = 0
    while (nxt := model.next_event_time()) is not None:
        model.step(nxt)
        if check:
            check_blocks(model)
        events += 1
        assert events < max_events, "model never went idle"
    return events


def end_of_step(model: ContinuousBatchingModel) -> float:
    nxt = model.next_event_time()
    assert nxt is not None
    return nxt


def check_blocks(model: ContinuousBatchingModel) -> None:
    """Used blocks equal what the running sequences hold, and never exceed the cache."""
    snap = model.snapshot()
    held = sum(s.blocks for s in model._running)
    assert snap.used_blocks == held
    assert 0 <= snap.used_blocks <= snap.num_blocks
    assert 0.0 <= snap.kv_usage <= 1.0


def first(h: LoadHandle) -> float:
    assert h.first_token_at is not None
    return h.first_token_at


def end(h: LoadHandle) -> float:
    assert h.finished_at is not None
    return h.finished_at


def admit(model: ContinuousBatchingModel, n: int, now: float = 0.0, **kw: object) -> list[LoadHandle]:
    fields = {"prompt_tokens": 32, "output_tokens": 8} | kw
    return [model.admit(LoadRequest(**fields), now) for _ in range(n)]  # type: ignore[arg-type]


def test_requests_beyond_max_num_seqs_wait_in_the_queue() -> None:
    model = ContinuousBatchingModel(LoadParams(max_num_seqs=2, jitter=0.0))
    handles = admit(model, 5)
    model.step(0.0)
    snap = model.snapshot()
    assert (snap.running, snap.waiting) == (2, 3)
    drain(model)
    snap = model.snapshot()
    assert (snap.running, snap.waiting) == (0, 0)
    firsts = [first(h) for h in handles]
    # the two admitted at once come out first; the queued ones only after a slot frees
    assert max(firsts[:2]) < min(firsts[2:])


def test_kv_blocks_follow_prompt_plus_generated_tokens() -> None:
    p = LoadParams(num_blocks=1000, block_size=16, jitter=0.0)
    model = ContinuousBatchingModel(p)
    handles = admit(model, 3, prompt_tokens=40, output_tokens=30)
    model.step(0.0)
    while model.next_event_time() is not None:
        running = [h for h in handles if not h.done]
        expected = sum(math.ceil((40 + h.output_tokens + 1) / 16) for h in running)
        snap = model.snapshot()
        assert snap.used_blocks == expected
        assert snap.kv_usage == expected / 1000
        if snap.prefilling == 0:  # resident tokens count once their prefill is done
            assert snap.used_tokens == sum(40 + h.output_tokens for h in running)
        model.step(end_of_step(model))
    assert model.snapshot().used_blocks == 0


def test_a_full_kv_cache_keeps_requests_waiting_even_with_free_slots() -> None:
    model = ContinuousBatchingModel(LoadParams(num_blocks=10, block_size=16, max_num_seqs=16, jitter=0.0))
    admit(model, 3, prompt_tokens=60, output_tokens=4)  # each needs ceil(61 / 16) = 4 blocks at admission
    model.step(0.0)
    snap = model.snapshot()
    assert (snap.running, snap.waiting, snap.used_blocks) == (2, 1, 8)
    drain(model, check=True)
    assert model.snapshot().finished_length == 3


def test_decode_growth_past_the_cache_preempts_the_newest_sequence() -> None:
    p = LoadParams(num_blocks=6, block_size=4, max_num_seqs=4, max_batched_tokens=64, jitter=0.0)
    model = ContinuousBatchingModel(p)
    handles = admit(model, 2, prompt_tokens=7, output_tokens=9)  # 2 blocks each at first, 4 each at the end
    drain(model, check=True)
    snap = model.snapshot()
    assert snap.preemptions_total >= 1
    assert [h.output_tokens for h in handles] == [9, 9]
    assert snap.generation_tokens_total == 18
    assert snap.prompt_tokens_total == 14  # a recomputed prompt is not counted twice
    assert snap.used_blocks == 0


def test_lora_limit_defers_a_second_adapter_and_lets_the_first_pass() -> None:
    model = ContinuousBatchingModel(LoadParams(max_lora=1, lora_load_s=0.0, jitter=0.0))
    a1 = model.admit(LoadRequest(32, 8, lora="a"), 0.0)
    b = model.admit(LoadRequest(32, 8, lora="b"), 0.0)
    a2 = model.admit(LoadRequest(32, 8, lora="a"), 0.0)
    model.step(0.0)
    snap = model.snapshot()
    assert snap.running == 2
    assert snap.waiting == 1
    assert snap.waiting_lora_deferred == 1
    assert snap.running_adapters == ("a",)
    assert snap.waiting_adapters == ("b",)
    drain(model)
    assert first(b) > max(end(a1), end(a2))


def test_a_cold_adapter_costs_its_load_penalty_once() -> None:
    p = LoadParams(max_lora=1, lora_load_s=1.5, jitter=0.0)

    def ttft(adapter: str | None, warm: bool) -> float:
        model = ContinuousBatchingModel(p)
        t = 0.0
        if warm:
            model.admit(LoadRequest(32, 1, lora=adapter), 0.0)
            drain(model)
            t = 100.0
        h = model.admit(LoadRequest(32, 4, lora=adapter), t)
        drain(model)
        assert h.first_token_at is not None
        return h.first_token_at - t

    base = ttft(None, warm=False)
    assert ttft("x", warm=False) == pytest.approx(base + 1.5)
    assert ttft("x", warm=True) == pytest.approx(base)


def test_time_to_first_token_grows_with_the_queue() -> None:
    model = ContinuousBatchingModel(LoadParams(max_num_seqs=4, jitter=0.0))
    handles = admit(model, 40, prompt_tokens=256, output_tokens=32)
    drain(model)
    ttfts = [first(h) for h in handles]
    assert ttfts[-1] > 5 * ttfts[0]
    assert ttfts == sorted(ttfts)


def test_time_per_output_token_grows_with_the_batch() -> None:
    def tpot(batch: int) -> float:
        model = ContinuousBatchingModel(LoadParams(max_num_seqs=64, jitter=0.0))
        handles = admit(model, batch, prompt_tokens=16, output_tokens=50)
        drain(model)
        h = handles[0]
        return (end(h) - first(h)) / (h.output_tokens - 1)

    alone, crowded = tpot(1), tpot(32)
    p = LoadParams()
    assert crowded > alone
    assert crowded - alone == pytest.approx(31 * p.decode_s_per_seq, rel=0.5)


def test_a_long_prompt_is_prefilled_in_chunks() -> None:
    p = LoadParams(max_batched_tokens=1000, max_model_len=10_000, jitter=0.0)
    model = ContinuousBatchingModel(p)
    h = model.admit(LoadRequest(2500, 2), 0.0)
    drain(model)
    assert model.snapshot().steps_total == 3 + 1  # three prefill chunks, then one decode step
    assert h.first_token_at == pytest.approx(
        3 * p.step_base_s + 2500 * p.prefill_s_per_token + p.kv_s_per_token * (1000 + 2000 + 2500), rel=1e-9
    )


def test_the_prefix_cache_skips_prefill_for_a_repeated_prompt() -> None:
    model = ContinuousBatchingModel(LoadParams(jitter=0.0))
    hashes = tuple(range(1, 64))  # 63 full blocks
    initial = model.admit(LoadRequest(1024, 4, prefix_hashes=hashes), 0.0)
    drain(model)
    second = model.admit(LoadRequest(1024, 4, prefix_hashes=hashes), 100.0)
    drain(model)
    snap = model.snapshot()
    assert snap.prefix_queries_total == 2048
    assert snap.prefix_hits_total == 63 * 16
    assert first(second) - 100.0 < first(initial)


def test_prefix_caching_can_be_switched_off() -> None:
    model = ContinuousBatchingModel(LoadParams(enable_prefix_caching=False, jitter=0.0))
    for t in (0.0, 100.0):
        model.admit(LoadRequest(1024, 4, prefix_hashes=(1, 2, 3)), t)
        drain(model)
    assert model.snapshot().prefix_hits_total == 0


def test_abort_frees_the_slot_and_counts_once() -> None:
    model = ContinuousBatchingModel(LoadParams(max_num_seqs=1, jitter=0.0))
    running, queued = admit(model, 2, output_tokens=100)
    model.step(0.0)
    assert model.snapshot().used_blocks > 0
    model.abort(queued, 0.001)
    model.abort(running, 0.001)
    model.abort(running, 0.002)  # a second abort is a no-op
    snap = model.snapshot()
    assert (snap.running, snap.waiting, snap.used_blocks, snap.finished_abort) == (0, 0, 0, 2)
    assert running.done
    assert running.finish_reason == FINISH_ABORT
    drain(model)
    assert running.output_tokens == 0


def test_every_request_finishes_once_and_tokens_add_up() -> None:
    rng = random.Random(7)
    p = LoadParams(num_blocks=300, max_num_seqs=8, max_lora=2, max_batched_tokens=512, jitter=0.1)
    model = ContinuousBatchingModel(p, seed=3)
    handles: list[LoadHandle] = []
    t = 0.0
    for _ in range(200):
        t += rng.expovariate(40.0)
        while (nxt := model.next_event_time()) is not None and nxt <= t:
            model.step(nxt)
            check_blocks(model)
        req = LoadRequest(
            rng.randint(1, 900),
            rng.randint(1, 120),
            rng.choice([FINISH_STOP, FINISH_LENGTH]),
            lora=rng.choice([None, "a", "b", "c"]),
        )
        handles.append(model.admit(req, t))
    drain(model, check=True)
    snap = model.snapshot()
    assert all(h.done for h in handles)
    assert [h.output_tokens for h in handles] == [h.request.output_tokens for h in handles]
    assert snap.generation_tokens_total == sum(h.request.output_tokens for h in handles)
    assert snap.prompt_tokens_total == sum(h.request.prompt_tokens for h in handles)
    assert snap.finished_stop == sum(h.request.finish_reason == FINISH_STOP for h in handles)
    assert snap.finished_total == snap.requests_total == 200
    assert all(first(h) <= end(h) for h in handles)


def _trace(seed: int) -> list[tuple[float | None, float | None]]:
    model = ContinuousBatchingModel(LoadParams(max_num_seqs=3, jitter=0.3), seed=seed)
    handles = [model.admit(LoadRequest(50 + 10 * i, 5 + i), 0.01 * i) for i in range(12)]
    drain(model)
    return [(h.first_token_at, h.finished_at) for h in handles]


def test_same_seed_same_timeline_other_seed_other_timeline() -> None:
    assert _trace(1) == _trace(1)
    assert _trace(1) != _trace(2)


def test_idle_model_has_no_next_event() -> None:
    model = ContinuousBatchingModel()
    assert model.next_event_time() is None
    assert model.step(5.0) == []
    h = model.admit(LoadRequest(8, 1), 5.0)
    assert model.next_event_time() == 5.0
    drain(model)
    assert h.done
    assert model.next_event_time() is None


def test_snapshot_is_reused_until_something_changes() -> None:
    model = ContinuousBatchingModel()
    first = model.snapshot()
    assert model.snapshot() is first
    model.admit(LoadRequest(8, 1), 0.0)
    assert model.snapshot() is not first
    assert model.snapshot().version > first.version


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (LoadRequest(8000, 500), "maximum context length is 8192"),
        (LoadRequest(10, 10, lora="x"), "LoRA is not enabled"),
        (LoadRequest(0, 10), "at least one token"),
        (LoadRequest(10, 10, finish_reason="abort"), "finish_reason"),
    ],
)
def test_impossible_requests_are_rejected(request_: LoadRequest, message: str) -> None:
    model = ContinuousBatchingModel(LoadParams(max_lora=0))
    with pytest.raises(LoadRejectedError, match=message):
        model.admit(request_, 0.0)
    assert model.snapshot().requests_total == 0


def test_a_request_larger_than_the_kv_cache_is_rejected() -> None:
    model = ContinuousBatchingModel(LoadParams(num_blocks=4, block_size=16))
    with pytest.raises(LoadRejectedError, match="KV cache"):
        model.admit(LoadRequest(60, 10), 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_num_seqs": 0},
        {"max_num_seqs": 32, "max_batched_tokens": 16},
        {"max_lora": -1},
        {"jitter": 1.0},
        {"step_base_s": -0.1},
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="LoadParams"):
        LoadParams(**kwargs)  # type: ignore[arg-type]


def test_slower_scales_every_duration() -> None:
    p = LoadParams()
    slow = p.slower(3.0)
    assert slow.step_base_s == pytest.approx(3 * p.step_base_s)
    assert slow.prefill_s_per_token == pytest.approx(3 * p.prefill_s_per_token)
    assert slow.lora_load_s == pytest.approx(3 * p.lora_load_s)
    assert slow.decode_s_per_seq == pytest.approx(3 * p.decode_s_per_seq)
    assert slow.kv_s_per_token == pytest.approx(3 * p.kv_s_per_token)
    assert slow.max_num_seqs == p.max_num_seqs
