"""The load model behind the fake model server: a small, explicit continuous-batching engine.

Why it exists: an endpoint picker is only worth something if sending work to a busy server costs latency. The
fake server therefore needs a server whose speed depends on its load, in the same way a vLLM-like engine's
does, so that routing quality shows up in end-to-end latency (in the demo and in live benchmarks) and so that
the ``/metrics`` gauges the picker reads (running, waiting, KV usage, LoRA adapters) move for real reasons.

The interface is :class:`LoadModel`. It is pure: no asyncio, no wall clock, no I/O. Time is *model time* in
seconds, passed in by the caller; the server maps wall time to model time with its ``time_scale``. That keeps
the model deterministic and testable, and lets a richer model (the fleet simulator's) be plugged in behind the
same five methods.

:class:`ContinuousBatchingModel` is the default implementation. It works in engine *steps*, like vLLM's
scheduler:

* A step plans a batch at its start time ``t``. Every running sequence either decodes one token (cost one unit
  of the token budget) or continues its prefill by a chunk (chunked prefill). Then waiting requests are
  admitted in arrival order while there is budget (``max_batched_tokens``), a free sequence slot
  (``max_num_seqs``), enough free KV blocks for the request's tokens so far plus one, and a LoRA slot. A
  request whose adapter would exceed ``max_lora`` distinct adapters in the batch is skipped (deferred, like
  vLLM) and later requests may pass it; a request that lacks KV blocks stops admission (capacity).
* The step lasts (model seconds)::

      d = step_base_s
          + decode_s_per_seq    x  number of decoding sequences in the step
          + prefill_s_per_token x  prompt tokens prefilled in the step
          + kv_s_per_token      x  tokens resident in the KV cache of the planned sequences
          + lora_load_s         x  adapters loaded cold in the step
      d = d x (1 + jitter x u),  u uniform in [-1, 1] from the seeded generator

  so time per output token grows with the batch size and the resident context, and time to first token grows
  with queueing, with the prefill work of the request and with everyone else's prefill in the same steps.
* At the step's end each decoding sequence has one more token; a prefilling sequence whose prefill completed
  emits its first token. A sequence that reaches its output length finishes and frees its blocks.
* KV: a sequence holds ``ceil((prompt + generated + 1) / block_size)`` blocks of ``num_blocks``. When a
  decoding sequence needs a block and none is free, the most recently admitted running sequence is preempted:
  its blocks are freed and it goes back to the front of the queue to recompute its prompt and output so far.
* Prefix cache (optional): the request carries chained hashes of its prompt's full blocks; hits in an LRU of
  ``num_blocks`` block hashes skip prefill for those blocks (at least one token is always computed).
* LoRA: ``max_lora`` adapters are resident (LRU); admitting a request for a non-resident adapter costs
  ``lora_load_s`` in that step.

Not modelled (kept simple on purpose): speculative decoding, priorities, CPU swap, multi-step scheduling, the
prefix cache's sharing of KV blocks between running sequences.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"

_WAITING = 0
_RUNNING = 1
_DONE = 2


class LoadRejectedError(ValueError):
    """The request can never run on this engine (too long for the context or the KV cache, LoRA disabled).

    The server answers 400 with this message, as vLLM does for a context-length overflow.
    """


#: the LoadParams fields that are durations (seconds)
_DURATIONS = ("step_base_s", "decode_s_per_seq", "prefill_s_per_token", "kv_s_per_token", "lora_load_s")


@dataclass(frozen=True, slots=True)
class LoadParams:
    """Engine parameters, in model seconds and tokens.

    The defaults describe a mid-sized model on one GPU, scaled down (16 sequences, 32 Ki KV tokens) so that a
    handful of concurrent requests already saturate one fake server: that is what makes routing visible in a
    demo that sends a few hundred requests.
    """

    #: sequences in the running batch at once (vLLM ``--max-num-seqs``)
    max_num_seqs: int = 16
    #: tokens processed per step, decode tokens plus prefill chunks (vLLM ``--max-num-batched-tokens``)
    max_batched_tokens: int = 2048
    #: KV cache size in blocks (vLLM ``num_gpu_blocks``)
    num_blocks: int = 2048
    #: tokens per KV block
    block_size: int = 16
    #: prompt + output longer than this is rejected (vLLM ``--max-model-len``)
    max_model_len: int = 8192
    #: fixed cost of one engine step, s
    step_base_s: float = 0.010
    #: added per decoding sequence in the step, s
    decode_s_per_seq: float = 0.001
    #: added per prompt token prefilled in the step, s
    prefill_s_per_token: float = 0.0001
    #: added per token resident in the KV cache of the step's sequences, s (attention reads)
    kv_s_per_token: float = 2e-7
    #: distinct LoRA adapters in one batch and resident on the GPU (vLLM ``--max-loras``); 0 disables LoRA
    max_lora: int = 1
    #: cost of loading an adapter that is not resident, s
    lora_load_s: float = 0.05
    #: reuse prompt blocks seen before (vLLM automatic prefix caching)
    enable_prefix_caching: bool = True
    #: relative random spread of each step's duration, 0 = none
    jitter: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_batched_tokens", "num_blocks", "block_size", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoadParams.{name} must be >= 1")
        if self.max_batched_tokens < self.max_num_seqs:
            # every running sequence must be able to decode in every step, or the batch could stall
            raise ValueError("LoadParams.max_batched_tokens must be >= max_num_seqs")
        if self.max_lora < 0:
            raise ValueError("LoadParams.max_lora must be >= 0")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("LoadParams.jitter must be in [0, 1)")
        for name in _DURATIONS:
            if getattr(self, name) < 0:
                raise ValueError(f"LoadParams.{name} must be >= 0")

    def slower(self, factor: float) -> LoadParams:
        """The same engine on hardware ``factor`` times slower (every duration multiplied): a weaker pod."""
        if factor <= 0:
            raise ValueError("factor must be > 0")
        scaled = {name: getattr(self, name) * factor for name in _DURATIONS}
        return replace(self, **scaled)


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What the engine needs to know about one request (never the text)."""

    prompt_tokens: int
    #: tokens to generate; the request finishes with ``finish_reason`` once they are out
    output_tokens: int
    finish_reason: str = FINISH_LENGTH
    #: LoRA adapter name, None for the base model
    lora: str | None = None
    #: chained hashes of the prompt's full KV blocks, for the prefix cache (empty = no reuse)
    prefix_hashes: tuple[int, ...] = ()


class LoadHandle(Protocol):
    """A request inside a :class:`LoadModel`; read-only for everyone but the model."""

    @property
    def request(self) -> LoadRequest: ...

    @property
    def output_tokens(self) -> int:
        """Tokens generated so far."""
        ...

    @property
    def done(self) -> bool: ...

    @property
    def finish_reason(self) -> str | None: ...

    @property
    def first_token_at(self) -> float | None:
        """Model time at which the first token came out."""
        ...

    @property
    def finished_at(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """The engine's state as a ``/metrics`` page reports it. ``version`` changes whenever anything changes."""

    version: int = 0
    #: sequences in the running batch (prefilling or decoding)
    running: int = 0
    #: requests queued
    waiting: int = 0
    #: of ``waiting``, requests skipped in the last step because of the LoRA limit
    waiting_lora_deferred: int = 0
    #: running sequences still in prefill
    prefilling: int = 0
    used_blocks: int = 0
    num_blocks: int = 1
    block_size: int = 16
    #: tokens resident in the KV cache of running sequences
    used_tokens: int = 0
    #: Σ (prompt + output budget) over the running batch (TGI's "batch current max tokens")
    reserved_tokens: int = 0
    #: prompt tokens prefilled in the step in progress
    step_prefill_tokens: int = 0
    max_num_seqs: int = 1
    max_lora: int = 0
    max_model_len: int = 8192
    #: adapters of running / waiting requests, in order of first appearance
    running_adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    requests_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    finished_stop: int = 0
    finished_length: int = 0
    finished_abort: int = 0
    preemptions_total: int = 0
    #: prefix cache lookups and hits, in tokens
    prefix_queries_total: int = 0
    prefix_hits_total: int = 0
    steps_total: int = 0

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, 0..1 (vLLM ``kv_cache_usage_perc``)."""
        return self.used_blocks / self.num_blocks

    @property
    def finished_total(self) -> int:
        return self.finished_stop + self.finished_length


class LoadModel(Protocol):
    """What the fake server needs from a load model. All times are model seconds, non-decreasing.

    The server calls :meth:`admit` when a request arrives, then :meth:`step` at :meth:`next_event_time` (and
    right after each admission when the engine was idle); :meth:`step` returns the handles that made
    progress (new tokens or finished), whose waiters the server then wakes. :meth:`abort` is called when the
    client goes away. :meth:`snapshot` feeds ``/metrics``.
    """

    def admit(self, request: LoadRequest, now: float) -> LoadHandle:
        """Queue a request; raises :class:`LoadRejectedError` if it can never run."""
        ...

    def abort(self, handle: LoadHandle, now: float) -> None: ...

    def step(self, now: float) -> Sequence[LoadHandle]:
        """Advance the engine to ``now``."""
        ...

    def next_event_time(self) -> float | None:
        """When :meth:`step` next has something to do; None when idle."""
        ...

    def snapshot(self) -> LoadSnapshot: ...


class _Seq:
    """One request in :class:`ContinuousBatchingModel` (implements :class:`LoadHandle`)."""

    __slots__ = (
        "_finish_reason",
        "_finished_at",
        "_first_token_at",
        "_generated",
        "arrival",
        "blocks",
        "prefill_remaining",
        "prompt_counted",
        "req",
        "state",
    )

    def __init__(self, req: LoadRequest, arrival: float) -> None:
        self.req = req
        self.arrival = arrival
        self.state = _WAITING
        self.blocks = 0
        self.prefill_remaining = req.prompt_tokens
        self.prompt_counted = False
        self._generated = 0
        self._first_token_at: float | None = None
        self._finished_at: float | None = None
        self._finish_reason: str | None = None

    @property
    def request(self) -> LoadRequest:
        return self.req

    @property
    def output_tokens(self) -> int:
        return self._generated

    @property
    def done(self) -> bool:
        return self.state == _DONE

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason

    @property
    def first_token_at(self) -> float | None:
        return self._first_token_at

    @property
    def finished_at(self) -> float | None:
        return self._finished_at

    def kv_tokens(self) -> int:
        return self.req.prompt_tokens + self._generated - self.prefill_remaining

    def __repr__(self) -> str:
        req = self.req
        return (
            f"<seq prompt={req.prompt_tokens} out={self._generated}/{req.output_tokens} state={self.state}>"
        )


class _StepPlan:
    """What one step will do, and the totals its duration is computed from."""

    __slots__ = ("budget", "cold_loras", "decodes", "items", "kv_tokens", "prefill")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        #: (sequence, prefill chunk); chunk 0 = a decode
        self.items: list[tuple[_Seq, int]] = []
        self.decodes = 0
        self.prefill = 0
        self.kv_tokens = 0
        self.cold_loras = 0

    def add_prefill(self, seq: _Seq, chunk: int) -> None:
        if chunk > 0:
            self.budget -= chunk
            self.prefill += chunk
            self.items.append((seq, chunk))
            self.kv_tokens += seq.kv_tokens() + chunk

    def add_decode(self, seq: _Seq) -> None:
        self.budget -= 1
        self.decodes += 1
        self.items.append((seq, 0))
        self.kv_tokens += seq.kv_tokens()


class ContinuousBatchingModel:
    """The default :class:`LoadModel`: see the module docstring for the rules and the step-time formula."""

    def __init__(self, params: LoadParams | None = None, *, seed: int = 0) -> None:
        self.params = params if params is not None else LoadParams()
        self._rng = random.Random(seed)  # noqa: S311 - simulated jitter, not security
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._free_blocks = self.params.num_blocks
        self._plan: list[tuple[_Seq, int]] = []
        self._step_end: float | None = None
        self._step_prefill = 0
        self._clock = 0.0  # when the engine last became free
        self._resident_loras: OrderedDict[str, None] = OrderedDict()
        self._prefix: OrderedDict[int, None] = OrderedDict()
        self._deferred = 0
        self._version = 0
        self._snap: LoadSnapshot | None = None
        self._counts = dict.fromkeys(
            ("requests", "prompt", "generation", "stop", "length", "abort", "preempt", "pq", "ph", "steps"), 0
        )

    # ------------------------------------------------------------------------------------- LoadModel API
    def admit(self, request: LoadRequest, now: float) -> LoadHandle:
        p = self.params
        if request.prompt_tokens < 1 or request.output_tokens < 1:
            raise LoadRejectedError("prompt and output must be at least one token each")
        total = request.prompt_tokens + request.output_tokens
        if total > p.max_model_len:
            raise LoadRejectedError(
                f"This model's maximum context length is {p.max_model_len} tokens. However, you requested "
                f"{total} tokens ({request.prompt_tokens} in the messages, {request.output_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        if math.ceil(total / p.block_size) > p.num_blocks:
            raise LoadRejectedError(
                f"The request needs {total} tokens of KV cache but the engine holds only "
                f"{p.num_blocks * p.block_size}."
            )
        if request.finish_reason not in (FINISH_STOP, FINISH_LENGTH):
            raise LoadRejectedError(f"finish_reason must be {FINISH_STOP!r} or {FINISH_LENGTH!r}")
        if request.lora is not None and p.max_lora == 0:
            raise LoadRejectedError("LoRA is not enabled on this engine (max_lora = 0).")
        seq = _Seq(request, now)
        self._waiting.append(seq)
        self._counts["requests"] += 1
        self._version += 1
        return seq

    def abort(self, handle: LoadHandle, now: float) -> None:
        seq = handle
        if not isinstance(seq, _Seq) or seq.state == _DONE:
            return
        if seq.state == _WAITING:
            self._waiting.remove(seq)
        else:
            self._running.remove(seq)
            self._free(seq)
        self._finish(seq, FINISH_ABORT, now)

    def step(self, now: float) -> list[LoadHandle]:
        progressed: list[LoadHandle] = []
        while True:
            if self._step_end is not None:
                if self._step_end > now:
                    break
                self._complete_step(progressed)
            start = self._next_start()
            if start is None or start > now or not self._start_step(start):
                break
        return progressed

    def next_event_time(self) -> float | None:
        if self._step_end is not None:
            return self._step_end
        return self._next_start()

    def snapshot(self) -> LoadSnapshot:
        snap = self._snap
        if snap is None or snap.version != self._version:
            snap = self._snap = self._build_snapshot()
        return snap

    # ------------------------------------------------------------------------------------- internals
    def _next_start(self) -> float | None:
        if self._running:
            return self._clock
        if self._waiting:
            return max(self._clock, self._waiting[0].arrival)
        return None

    def _blocks_needed(self, seq: _Seq) -> int:
        return -(-(seq.req.prompt_tokens + seq.output_tokens + 1) // self.params.block_size)

    def _free(self, seq: _Seq) -> None:
        self._free_blocks += seq.blocks
        seq.blocks = 0

    def _finish(self, seq: _Seq, reason: str, at: float) -> None:
        seq.state = _DONE
        seq._finish_reason = reason
        seq._finished_at = at
        self._counts[reason] += 1
        self._version += 1

    def _preempt(self, seq: _Seq) -> None:
        """Free a running sequence's blocks and queue it first, to recompute prompt + output so far."""
        self._running.remove(seq)
        self._free(seq)
        seq.state = _WAITING
        seq.prefill_remaining = seq.req.prompt_tokens + seq.output_tokens
        self._waiting.appendleft(seq)
        self._counts["preempt"] += 1

    def _grow(self, seq: _Seq) -> bool:
        """Give a decoding sequence the blocks its next token needs, preempting from the tail; False if the
        sequence itself was preempted."""
        while seq.blocks < self._blocks_needed(seq):
            if self._free_blocks > 0:
                self._free_blocks -= 1
                seq.blocks += 1
                continue
            victim = self._running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _prefix_lookup(self, seq: _Seq) -> int:
        """Prompt tokens already in the prefix cache (whole blocks; at least one token is left to compute)."""
        hits = 0
        for h in seq.req.prefix_hashes:
            if h not in self._prefix:
                break
            self._prefix.move_to_end(h)
            hits += 1
        cached = min(hits * self.params.block_size, seq.req.prompt_tokens - 1)
        self._counts["pq"] += seq.req.prompt_tokens
        self._counts["ph"] += cached
        return cached

    def _prefix_insert(self, seq: _Seq) -> None:
        cache = self._prefix
        for h in seq.req.prefix_hashes:
            cache[h] = None
            cache.move_to_end(h)
        while len(cache) > self.params.num_blocks:
            cache.popitem(last=False)

    def _load_lora(self, name: str, in_use: set[str]) -> bool:
        """Make an adapter resident; True if that was a cold load."""
        resident = self._resident_loras
        if name in resident:
            resident.move_to_end(name)
            return False
        if len(resident) >= self.params.max_lora:
            for old in resident:
                if old not in in_use:
                    del resident[old]
                    break
        resident[name] = None
        return True

    def _start_step(self, t: float) -> bool:
        """Plan the batch of a step starting at ``t`` and set its end time; False if nothing can run."""
        p = self.params
        plan = _StepPlan(budget=p.max_batched_tokens)
        self._plan_running(plan)
        self._admit_waiting(plan, t)
        if not plan.items:
            return False
        d = (
            p.step_base_s
            + p.decode_s_per_seq * plan.decodes
            + p.prefill_s_per_token * plan.prefill
            + p.kv_s_per_token * plan.kv_tokens
            + p.lora_load_s * plan.cold_loras
        )
        if p.jitter:
            d *= 1.0 + p.jitter * (2.0 * self._rng.random() - 1.0)
        self._plan = plan.items
        self._step_end = t + d
        self._step_prefill = plan.prefill
        self._counts["steps"] += 1
        self._version += 1
        return True

    def _plan_running(self, plan: _StepPlan) -> None:
        """Running sequences first: continue each prefill by a chunk, or decode one token."""
        running = self._running
        i = 0
        while i < len(running):
            seq = running[i]
            if seq.prefill_remaining > 0:
                plan.add_prefill(seq, min(seq.prefill_remaining, plan.budget))
            elif plan.budget > 0:
                if not self._grow(seq):
                    continue  # seq was the tail and is queued again; running[i] is the next one, if any
                plan.add_decode(seq)
            i += 1

    def _admit_waiting(self, plan: _StepPlan, t: float) -> None:
        """Then waiting requests, in arrival order, while budget, a sequence slot and KV blocks last; a
        request whose adapter would exceed ``max_lora`` is skipped (deferred) and later ones may pass it."""
        p = self.params
        running = self._running
        in_use = {s.req.lora for s in running if s.req.lora is not None}
        skipped: list[_Seq] = []
        waiting = self._waiting
        while waiting and plan.budget > 0 and len(running) < p.max_num_seqs:
            seq = waiting[0]
            if seq.arrival > t:
                break
            lora = seq.req.lora
            if lora is not None and lora not in in_use and len(in_use) >= p.max_lora:
                skipped.append(waiting.popleft())
                continue
            need = self._blocks_needed(seq)
            if need > self._free_blocks:
                break
            waiting.popleft()
            self._free_blocks -= need
            seq.blocks = need
            if not seq.prompt_counted and p.enable_prefix_caching and seq.req.prefix_hashes:
                seq.prefill_remaining -= self._prefix_lookup(seq)
            if lora is not None:
                plan.cold_loras += self._load_lora(lora, in_use)
                in_use.add(lora)
            seq.state = _RUNNING
            running.append(seq)
            plan.add_prefill(seq, min(seq.prefill_remaining, plan.budget))
        waiting.extendleft(reversed(skipped))
        self._deferred = len(skipped)

    def _complete_step(self, progressed: list[LoadHandle]) -> None:
        end = self._step_end
        assert end is not None
        self._clock = end
        self._step_end = None
        self._step_prefill = 0
        counts = self._counts
        for seq, chunk in self._plan:
            if seq.state != _RUNNING:
                continue  # aborted or preempted during the step
            if chunk:
                seq.prefill_remaining -= chunk
                if seq.prefill_remaining > 0:
                    continue
                if not seq.prompt_counted:
                    seq.prompt_counted = True
                    counts["prompt"] += seq.req.prompt_tokens
                    if self.params.enable_prefix_caching and seq.req.prefix_hashes:
                        self._prefix_insert(seq)
            seq._generated += 1
            counts["generation"] += 1
            if seq._first_token_at is None:
                seq._first_token_at = end
            if seq._generated >= seq.req.output_tokens:
                self._running.remove(seq)
                self._free(seq)
                self._finish(seq, seq.req.finish_reason, end)
            progressed.append(seq)
        self._plan = []
        self._version += 1

    def _build_snapshot(self) -> LoadSnapshot:
        p = self.params
        running = self._running
        run_ad: dict[str, None] = {}
        for s in running:
            if s.req.lora is not None:
                run_ad[s.req.lora] = None
        wait_ad: dict[str, None] = {}
        for s in self._waiting:
            if s.req.lora is not None:
                wait_ad[s.req.lora] = None
        c = self._counts
        return LoadSnapshot(
            version=self._version,
            running=len(running),
            waiting=len(self._waiting),
            waiting_lora_deferred=min(self._deferred, len(self._waiting)),
            prefilling=sum(1 for s in running if s.prefill_remaining > 0),
            used_blocks=p.num_blocks - self._free_blocks,
            num_blocks=p.num_blocks,
            block_size=p.block_size,
            used_tokens=sum(s.kv_tokens() for s in running),
            reserved_tokens=sum(s.req.prompt_tokens + s.req.output_tokens for s in running),
            step_prefill_tokens=self._step_prefill,
            max_num_seqs=p.max_num_seqs,
            max_lora=p.max_lora,
            max_model_len=p.max_model_len,
            running_adapters=tuple(run_ad),
            waiting_adapters=tuple(wait_ad),
            requests_total=c["requests"],
            prompt_tokens_total=c["prompt"],
            generation_tokens_total=c["generation"],
            finished_stop=c["stop"],
            finished_length=c["length"],
            finished_abort=c["abort"],
            preemptions_total=c["preempt"],
            prefix_queries_total=c["pq"],
            prefix_hits_total=c["ph"],
            steps_total=c["steps"],
        )
