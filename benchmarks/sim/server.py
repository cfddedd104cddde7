"""One simulated vLLM server: continuous batching, chunked prefill, paged KV blocks, prefix cache, LoRA slots.

The model follows the vLLM V1 scheduler closely enough for routing to matter the way it does on real pods:

* **Steps.** The engine runs one step at a time. A step first serves every running request (one token per
  decoding request; the next chunk of a partially prefilled prompt), then admits waiting requests FCFS while
  the token budget (``max_num_batched_tokens``), the sequence limit (``max_num_seqs``) and free KV blocks
  allow. Its duration comes from :meth:`ServerProfile.step_time`. The prefill step that finishes a prompt
  emits the first token (that is the TTFT instant); every later step emits one token per decoding request.
* **KV blocks.** A request holds ``ceil(tokens / block_size)`` blocks; prompt blocks are allocated on
  admission, a new block whenever decoding crosses a block boundary. If a step cannot get the blocks its
  decodes need, the most recently admitted running request is preempted (vLLM's recompute mode): its blocks
  are freed and it goes back to the *front* of the queue; on re-admission it prefills prompt + the tokens it
  had generated, then continues.
* **Prefix cache.** When the trace carries prefix units (Mooncake ``hash_ids``), every unit a request computes
  stays resident after the request finishes, as free-but-cached blocks evicted LRU when space is needed
  (vLLM keeps freed hashed blocks in its free queue the same way). A new request skips prefill for the leading
  units it finds resident. Units in use by a running request are pinned. As in vLLM, cached-but-free blocks
  count as *free* in the reported KV usage.
* **Responses cached.** When the trace says what a response shares (``Workload.response_units``: a
  conversation's next prompt repeats this one and its answer), the whole units of prompt + generated tokens
  stay cached when the request finishes, the response's before the prompt's in eviction order. That is what
  the engines do: vLLM V1 hashes every full block a request computes, generated ones included
  (``vllm/v1/core/kv_cache_manager.py``, ``allocate_slots`` caches up to ``request.num_tokens`` = prompt +
  output tokens at each step) and frees a finished request's blocks tail first "so that the tail blocks are
  evicted first" (``free``); SGLang's radix cache inserts ``origin_input_ids + output_ids`` on finish
  (``RadixCache.cache_finished_req``). Here they become resident at the finish (vLLM: as each block fills),
  which is the same for a conversation whose next round waits for the answer.
* **LoRA.** ``max_lora`` GPU slots. A request whose adapter is not in a slot can be admitted only if a slot is
  free or holds an adapter no running request uses (evicted LRU); loading costs ``lora_load_s`` added to that
  step. A request that cannot get a slot is skipped and later requests may go first (vLLM V1 does this).

Everything per step is O(1) in the batch size: decoding requests are tracked by aggregate counters (count,
summed context, a 16-bucket histogram of block-boundary phases, a heap of finishing steps), so a step costs a
few microseconds of Python no matter how many sequences it batches. That is what makes a 20k-request,
16-server run take about a second.

Simplifications (documented, not hidden): a prompt's blocks are allocated whole on admission (V1 allocates per
chunk); a unit becomes hittable as soon as its owner is admitted (V1 only after the block is computed); the
attention cost of a prefill chunk is linear in its context; waiting-queue order is arrival order with
preempted requests first.

Why one module of this size: one engine step updates the batch counters, the KV blocks, the prefix cache and
the LoRA slots together; their invariants (blocks held = blocks allocated, pinned units never evicted) only
hold across all four, so they live in one place.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from benchmarks.sim.profiles import ServerProfile
from benchmarks.sim.traces import Workload

_NAN = float("nan")
_BASE = -1  # adapter index of the base model
#: kinds of :attr:`RequestTable.events` (first token sorts before the finish of the same instant)
FIRST_TOKEN = 0
FINISHED = 1


class RequestTable:
    """Per-request inputs, outcomes and in-flight scratch state, as plain lists (scalar access is hot).

    Shared by all servers of one simulation; each request is on exactly one server at a time.
    """

    def __init__(self, workload: Workload) -> None:
        n = len(workload)
        self.n = n
        self.arrival: list[float] = workload.arrival_s.tolist()
        self.prompt: list[int] = workload.prompt_tokens.tolist()
        self.output: list[int] = workload.output_tokens.tolist()
        self.adapter: list[int] = workload.adapter.tolist()
        self.units = workload.units
        self.unit_tokens = workload.unit_tokens
        self.response_units = workload.response_units
        # outcomes
        self.first_token: list[float] = [_NAN] * n
        self.finish: list[float] = [_NAN] * n
        self.server: list[int] = [-1] * n
        self.cached: list[int] = [-1] * n  # prompt tokens served from the prefix cache, first admission
        self.preemptions: list[int] = [0] * n
        self.gen: list[int] = [0] * n  # tokens generated so far
        # scratch while running
        self.kv_len: list[int] = [0] * n  # tokens in KV once prefill is done (prompt + gen at admission)
        self.pf_rem: list[int] = [0] * n  # prefill tokens still to compute
        self.unit_blocks: list[int] = [0] * n  # blocks of the request that live in shared prefix units
        self.pinned: list[tuple[int, ...]] = [()] * n  # cache keys pinned by the request
        self.s_join: list[int] = [0] * n  # step index of the request's first decode step
        self.epoch: list[int] = [0] * n  # invalidates heap entries of preempted requests
        self.key: list[float] = [0.0] * n  # waiting-queue order (arrival; preempted: negative)
        self.wait_est: list[int] = [0] * n  # prefill tokens booked in SimServer.waiting_uncached
        # what a proxy in front of the servers can observe, as a heap of (time, kind, request): kind
        # FIRST_TOKEN when the first token leaves the engine (a streaming response's first body byte),
        # kind FINISHED when the response ends. A server pushes an event when it computes the step that
        # produces it, which may be before the event's time; the fleet pops events as simulated time
        # passes them, so its picker never learns anything early.
        self.events: list[tuple[float, int, int]] = []
        # requests in the order their responses ended (the fleet releases the requests waiting for them)
        self.done: list[int] = []


class PrefixCache:
    """Resident prefix units of one server: refcounts, block sizes, and an LRU of unpinned units."""

    __slots__ = ("blocks", "evictable", "lru", "ref")

    def __init__(self) -> None:
        self.ref: dict[int, int] = {}
        self.blocks: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.evictable = 0  # blocks held by unpinned (free-but-cached) units


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a vLLM ``/metrics`` page would show right now (the fields the picker's extractor reads)."""

    waiting: int
    running: int
    kv_usage: float
    lora_running: tuple[int, ...]
    lora_waiting: tuple[int, ...]


class SimServer:
    """A vLLM instance. Drive it with :meth:`enqueue` and :meth:`advance`; read it with :meth:`snapshot`."""

    def __init__(
        self,
        index: int,
        profile: ServerProfile,
        table: RequestTable,
        *,
        prefix_cache: bool = True,
        finished: NDArray[np.float64] | None = None,
    ) -> None:
        self.index = index
        self.profile = profile
        self.t = table
        self.bs = profile.block_size
        self.num_blocks = profile.num_blocks
        self.busy_until = 0.0
        self.step = 0
        self.queues: dict[int, deque[int]] = {}
        self.n_waiting = 0
        self.waiting_tokens = 0  # prompt (+ generated, after a preemption) tokens of the waiting requests
        self.waiting_uncached = 0  # the same less the prefix each had resident when it joined the queue
        self.running: dict[int, None] = {}  # admission order (LIFO preemption)
        self.prefilling: dict[int, None] = {}
        self.n_decode = 0
        self.sum_ctx = 0
        self.bucket = [0] * self.bs
        self.heap: list[tuple[int, int, int]] = []
        self.used = 0  # blocks held by running requests (private + pinned units)
        self.cache: PrefixCache | None = PrefixCache() if prefix_cache and table.unit_tokens else None
        self.queued: dict[int, int] = {}  # cache key -> waiting requests whose prompt has that unit
        self.lora_loaded: dict[int, None] = {}
        self.lora_running: dict[int, int] = {}
        self.preempt_seq = 0
        self.finished = finished if finished is not None else np.zeros(index + 1)
        # statistics
        self.steps = 0
        self.busy_time = 0.0
        self.preemptions = 0
        self.lora_loads = 0
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.prefill_completions = 0  # prefills that ended in a sampled token
        self.completed = 0

    # ---------------------------------------------------------------------------------------- driving
    def enqueue(self, r: int, now: float) -> None:
        """Request ``r`` arrives at ``now``."""
        t = self.t
        if -(-(t.prompt[r] + t.output[r]) // self.bs) > self.num_blocks:
            # vLLM refuses to start with a max_model_len its KV cache cannot hold; such a request could
            # never be admitted here and would stall the queue forever.
            raise ValueError(
                f"request {r} needs {t.prompt[r] + t.output[r]} tokens of KV, more than the server's "
                f"{self.num_blocks * self.bs}; clip the workload to ServerProfile.context_limit"
            )
        t.server[r] = self.index
        t.key[r] = t.arrival[r]
        a = t.adapter[r]
        q = self.queues.get(a)
        if q is None:
            q = self.queues[a] = deque()
        q.append(r)
        if not self.running and not self.n_waiting:
            self.busy_until = max(self.busy_until, now)
        self.n_waiting += 1
        self.waiting_tokens += t.prompt[r]
        self._queue_estimate(r, t.prompt[r])
        self._book_queued(r, 1)

    def advance(self, until: float) -> None:
        """Run every step that starts at or before ``until``."""
        while (self.running or self.n_waiting) and self.busy_until <= until:
            self._step(self.busy_until)

    def has_work(self) -> bool:
        return bool(self.running or self.n_waiting)

    def _leave_queue(self, r: int, kv_len: int) -> None:
        """Request ``r`` (``kv_len`` tokens to prefill before its hits) left the waiting queue: admitted."""
        self.n_waiting -= 1
        self.waiting_tokens -= kv_len
        self.waiting_uncached -= self.t.wait_est[r]
        self._book_queued(r, -1)

    def _queue_estimate(self, r: int, tokens: int) -> None:
        """Book the prefill work request ``r`` brings to the queue: ``tokens`` less what is resident now
        (its actual hit is decided at admission; this is the estimate ``pending_prefill_tokens`` sums)."""
        est = tokens - min(tokens - 1, self.resident_prefix_tokens(r))
        self.t.wait_est[r] = est
        self.waiting_uncached += est

    def pending_prefill_tokens(self) -> int:
        """Tokens still to prefill before a request arriving now could start: the waiting requests' prompts
        less the prefix each found resident when it queued, and what the prefilling ones have left."""
        pf_rem = self.t.pf_rem
        return self.waiting_uncached + sum(pf_rem[r] for r in self.prefilling)

    def context_tokens(self) -> int:
        """KV tokens every request here will attend to once admitted: the decoding requests' contexts, the
        prefilling ones' whole prompts and the waiting ones' (what a decode step will read soon)."""
        kv_len = self.t.kv_len
        return self.sum_ctx + sum(kv_len[r] for r in self.prefilling) + self.waiting_tokens

    def _unit_keys(self, r: int) -> list[int]:
        """Cache keys of the prefix units covering request ``r``'s prompt (as ``_admit`` computes them)."""
        t = self.t
        ut = t.unit_tokens
        prompt = t.prompt[r]
        bs = self.bs
        keys = []
        for i, u in enumerate(t.units[r]):
            first = i * ut
            if first >= prompt:
                break
            keys.append((u << 6) | -(-min(ut, prompt - first) // bs))
        return keys

    def _book_queued(self, r: int, delta: int) -> None:
        """Count (+1) or uncount (-1) request ``r``'s units as on their way into this server's cache."""
        if self.cache is None:
            return
        queued = self.queued
        for key in self._unit_keys(r):
            c = queued.get(key, 0) + delta
            if c:
                queued[key] = c
            else:
                del queued[key]

    def resident_prefix_tokens(self, r: int, *, queued: bool = False) -> int:
        """Leading prompt tokens of request ``r`` whose units are in this server's prefix cache right now
        (what admission would find if it happened now); with ``queued``, also units that requests waiting
        here will bring in when they are admitted (what it will find if it queues behind them)."""
        cache = self.cache
        if cache is None:
            return 0
        ref = cache.ref
        coming = self.queued if queued else {}
        t = self.t
        ut = t.unit_tokens
        prompt = t.prompt[r]
        hit = 0
        for i, key in enumerate(self._unit_keys(r)):
            if key not in ref and key not in coming:
                break
            hit += min(ut, prompt - i * ut)
        return hit

    def snapshot(self) -> Snapshot:
        """The current ``/metrics`` values (state as of the last scheduled step, as vLLM reports it)."""
        waiting_adapters = tuple(a for a, q in self.queues.items() if q and a != _BASE)
        running_adapters = tuple(a for a, c in self.lora_running.items() if c > 0)
        return Snapshot(
            waiting=self.n_waiting,
            running=len(self.running),
            kv_usage=self.used / self.num_blocks,
            lora_running=running_adapters,
            lora_waiting=waiting_adapters,
        )

    # ---------------------------------------------------------------------------------------- the step
    def _step(self, start: float) -> None:  # noqa: PLR0912, PLR0915 - the hot loop is inlined on purpose
        t = self.t
        p = self.profile
        bs = self.bs
        s = self.step
        # 1. blocks for this step's decodes; preempt the newest running request until they fit.
        if self.n_decode:
            phase = (-s) % bs
            need = self.bucket[phase]
            while need > self.num_blocks - self.used and self.running:
                victim = next(reversed(self.running))
                if victim not in self.prefilling and (t.kv_len[victim] - t.s_join[victim]) % bs == phase:
                    need -= 1
                self._preempt(victim, s)
            self.used += need
            self._evict()
        n_dec = self.n_decode
        tokens = n_dec
        ctx = self.sum_ctx
        budget = p.max_num_batched_tokens - n_dec
        chunks: list[tuple[int, int]] = []
        # 2. continue partial prefills, in admission order.
        for r in self.prefilling:
            if budget <= 0:
                break
            rem = t.pf_rem[r]
            c = min(budget, rem)
            chunks.append((r, c))
            budget -= c
            tokens += c
            ctx += t.kv_len[r] - rem + c
        # 3. admit waiting requests.
        loads = 0
        while budget > 0 and self.n_waiting and len(self.running) < p.max_num_seqs:
            r = self._next_admissible(start)
            if r < 0 or not self._admit(r):
                break
            if t.adapter[r] != _BASE and self._use_adapter(t.adapter[r]):
                loads += 1
            rem = t.pf_rem[r]
            c = min(budget, rem)
            chunks.append((r, c))
            budget -= c
            tokens += c
            ctx += t.kv_len[r] - rem + c
        if tokens == 0:
            raise RuntimeError(f"server {self.index}: a step with work pending scheduled nothing")
        dt = p.step_time(tokens, ctx, loads)
        end = start + dt
        self.busy_until = end
        self.busy_time += dt
        self.steps += 1
        self.lora_loads += loads
        self.step = s + 1
        # 4. effects of the step: decode tokens, finished requests, prefill progress.
        if n_dec:
            self.sum_ctx += n_dec
            self.decode_tokens += n_dec
            heap = self.heap
            while heap and heap[0][0] <= s:
                _, epoch, r = heapq.heappop(heap)
                if epoch == t.epoch[r]:
                    t.gen[r] = t.output[r]
                    self._leave_decode(r, s + 1)
                    self._finish(r, end, t.kv_len[r] + s + 1 - t.s_join[r])
        for r, c in chunks:
            self.prefill_tokens += c
            rem = t.pf_rem[r] - c
            t.pf_rem[r] = rem
            if rem:
                continue
            del self.prefilling[r]
            t.gen[r] += 1
            self.prefill_completions += 1
            if t.first_token[r] != t.first_token[r]:  # NaN: the first token of this request
                t.first_token[r] = end
                heapq.heappush(t.events, (end, FIRST_TOKEN, r))
            if t.gen[r] >= t.output[r]:
                self._finish(r, end, t.kv_len[r])
            else:
                self._join_decode(r, s + 1)

    # ---------------------------------------------------------------------------------------- admission
    def _next_admissible(self, start: float) -> int:
        """Oldest waiting request (arrived by ``start``) whose adapter can get a slot; -1 if none."""
        t = self.t
        best = -1
        best_key = float("inf")
        for a, q in self.queues.items():
            if not q:
                continue
            r = q[0]
            k = t.key[r]
            if k >= best_key or t.arrival[r] > start:
                continue
            if a != _BASE and not self._adapter_admissible(a):
                continue
            best, best_key = r, k
        return best

    def _adapter_admissible(self, a: int) -> bool:
        if a in self.lora_loaded or len(self.lora_loaded) < self.profile.max_lora:
            return True
        return any(self.lora_running.get(x, 0) == 0 for x in self.lora_loaded)

    def _use_adapter(self, a: int) -> bool:
        """Account a running request of adapter ``a``; True when the adapter had to be loaded."""
        self.lora_running[a] = self.lora_running.get(a, 0) + 1
        if a in self.lora_loaded:
            del self.lora_loaded[a]
            self.lora_loaded[a] = None  # most recently used
            return False
        if len(self.lora_loaded) >= self.profile.max_lora:
            victim = next(x for x in self.lora_loaded if self.lora_running.get(x, 0) == 0)
            del self.lora_loaded[victim]
        self.lora_loaded[a] = None
        return True

    def _admit(self, r: int) -> bool:
        """Allocate KV for request ``r`` (prefix hits first); False when it does not fit (FCFS blocks)."""
        t = self.t
        bs = self.bs
        kv_len = t.prompt[r] + t.gen[r]
        cache = self.cache
        hit_tokens = 0
        unit_blocks = 0
        need = 0
        keys: list[int] = []
        if cache is not None:
            ut = t.unit_tokens
            prompt = t.prompt[r]
            leading = True
            for i, u in enumerate(t.units[r]):
                first = i * ut
                if first >= prompt:
                    break
                tok = min(ut, prompt - first)
                b = -(-tok // bs)
                key = (
                    u << 6
                ) | b  # a unit id with its size: a shorter trailing unit is a different block run
                keys.append(key)
                unit_blocks += b
                ref = cache.ref.get(key)
                if ref is None:
                    leading = False
                    need += b
                else:
                    if ref == 0:
                        need += b
                    if leading:
                        hit_tokens += tok
            hit_tokens = min(hit_tokens, kv_len - 1)
        private = -(-kv_len // bs) - unit_blocks
        need += private
        if need > self.num_blocks - self.used:
            return False
        # commit
        self.queues[t.adapter[r]].popleft()
        self._leave_queue(r, kv_len)
        if cache is not None:
            for key in keys:
                ref = cache.ref.get(key)
                if ref is None:
                    cache.ref[key] = 1
                    cache.blocks[key] = key & 63
                elif ref == 0:
                    cache.ref[key] = 1
                    del cache.lru[key]
                    cache.evictable -= key & 63
                else:
                    cache.ref[key] = ref + 1
        self.used += need
        self._evict()
        t.pinned[r] = tuple(keys)
        t.unit_blocks[r] = unit_blocks
        t.kv_len[r] = kv_len
        t.pf_rem[r] = kv_len - hit_tokens
        if t.cached[r] < 0:
            t.cached[r] = hit_tokens
        self.running[r] = None
        self.prefilling[r] = None
        return True

    def _evict(self) -> None:
        """Drop least-recently-used unpinned units until cached + used blocks fit the pool."""
        cache = self.cache
        if cache is None:
            return
        room = self.num_blocks - self.used
        while cache.evictable > room:
            key, _ = cache.lru.popitem(last=False)
            del cache.ref[key]
            cache.evictable -= cache.blocks.pop(key)

    # ---------------------------------------------------------------------------------------- decode set
    def _join_decode(self, r: int, s_join: int) -> None:
        t = self.t
        t.s_join[r] = s_join
        self.bucket[(t.kv_len[r] - s_join) % self.bs] += 1
        self.n_decode += 1
        self.sum_ctx += t.kv_len[r]
        # decode steps s_join .. s_join + k - 1 produce the remaining k tokens
        heapq.heappush(self.heap, (s_join + t.output[r] - t.gen[r] - 1, t.epoch[r], r))

    def _leave_decode(self, r: int, s_now: int) -> None:
        t = self.t
        self.bucket[(t.kv_len[r] - t.s_join[r]) % self.bs] -= 1
        self.n_decode -= 1
        self.sum_ctx -= t.kv_len[r] + s_now - t.s_join[r]

    # ---------------------------------------------------------------------------------------- leaving
    def _release(self, r: int, kv_tokens: int) -> None:
        """Free the request's private blocks and unpin its prefix units."""
        t = self.t
        self.used -= -(-kv_tokens // self.bs) - t.unit_blocks[r]
        cache = self.cache
        if cache is not None:
            for key in t.pinned[r]:
                ref = cache.ref[key] - 1
                cache.ref[key] = ref
                if ref == 0:
                    b = key & 63
                    self.used -= b
                    cache.evictable += b
                    cache.lru[key] = None
        t.pinned[r] = ()
        del self.running[r]
        a = t.adapter[r]
        if a != _BASE:
            self.lora_running[a] -= 1

    def _finish(self, r: int, now: float, kv_tokens: int) -> None:
        self._release(r, kv_tokens)
        t = self.t
        if self.cache is not None and t.response_units:
            self._keep_response(r, kv_tokens)
        t.finish[r] = now
        heapq.heappush(t.events, (now, FINISHED, r))
        t.done.append(r)
        self.completed += 1
        self.finished[self.index] += 1

    def _keep_response(self, r: int, kv_tokens: int) -> None:
        """Request ``r`` finished with ``kv_tokens`` in KV: its response's whole units join the cache as
        free-but-cached blocks, older than its prompt's (module docstring: vLLM frees tail first)."""
        cache = self.cache
        assert cache is not None
        t = self.t
        ut = t.unit_tokens
        bs = self.bs
        lru = cache.lru
        whole = -(-ut // bs)
        new = []
        for i, u in enumerate(t.response_units[r]):
            if (i + 1) * ut > kv_tokens:
                break
            key = (u << 6) | whole
            if key not in cache.ref:
                new.append(key)
        if not new:
            return
        mine = [key for key in self._unit_keys(r) if cache.ref.get(key) == 0]
        for key in reversed(new):  # the tail first: evicted first
            cache.ref[key] = 0
            cache.blocks[key] = whole
            cache.evictable += whole
            lru[key] = None
        for key in mine:  # the prompt's units, just unpinned, stay the most recent
            lru.move_to_end(key)
        self._evict()

    def _preempt(self, r: int, s_now: int) -> None:
        """Recompute-mode preemption: free everything, back to the front of the queue."""
        t = self.t
        if r in self.prefilling:
            del self.prefilling[r]
            kv_tokens = t.kv_len[r]
        else:
            kv_tokens = t.kv_len[r] + s_now - t.s_join[r]
            # generated so far: those already in KV beyond the prompt, plus the newest (not yet in KV)
            t.gen[r] = t.kv_len[r] - t.prompt[r] + 1 + s_now - t.s_join[r]
            self._leave_decode(r, s_now)
            t.epoch[r] += 1
        self._release(r, kv_tokens)
        self.preempt_seq += 1
        t.key[r] = -float(self.preempt_seq)
        t.preemptions[r] += 1
        self.preemptions += 1
        self.queues[t.adapter[r]].appendleft(r)
        self.n_waiting += 1
        self.waiting_tokens += t.prompt[r] + t.gen[r]
        self._queue_estimate(r, t.prompt[r] + t.gen[r])
        self._book_queued(r, 1)
