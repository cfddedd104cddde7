"""The reference's prefix-cache benchmark shapes (inference-perf ``shared_prefix`` data) as workloads.

``gie-epp.md`` §6 lists four shapes of the reference project's prefix-cache benchmark, all inference-perf's
``shared_prefix`` generator (system-prompt groups x questions):

| shape | groups x prompts | system | question | output | multi-turn |
|---|---|---|---|---|---|
| ``short-q-many-sys`` | 150 x 5 | 6,000 | 1,200 | 1,000 | no |
| ``long-q-many-sys`` | 150 x 5 | 1,000 | 6,200 | 1,000 | no |
| ``short-q-few-sys-chat`` | 6 x 1,000 | 1,000 | mean 30 | 1,000 | yes |
| ``long-q-few-sys-chat`` | 6 x 1,000 | 1,000 | 3,000 ± 900 | 1,000 | yes |

(tokens). The summary names the output length once (1,000, with ``ignore_eos``); we use it for all four.

How inference-perf builds the requests (``inference_perf/datagen/shared_prefix_datagen.py`` and
``apis/user_session.py``), and what we keep:

* one random system prompt per group and one random question per prompt; question lengths drawn per group
  from a normal distribution (mean, std) clipped to at least one token;
* single-turn: every prompt is ``system + question``; the list of groups x prompts is shuffled and request
  ``i`` sends prompt ``i mod len(list)`` — a run longer than the list repeats whole prompts;
* multi-turn ("multi-chat"): one user session per (group, prompt), sessions shuffled; request ``i`` is round
  ``i // users`` of session ``i mod users``; a session's context starts as its group's system prompt and
  after each round becomes ``prompt + " " + response`` (``UserSessionCompletionAPIData.process_response``),
  so round ``r`` sends ``context + question`` and shares the previous round's prompt *and answer* as a
  prefix;
* a round waits for the previous one: ``LocalUserSession.get_context`` blocks round ``r + 1`` until
  ``update_context`` (called when round ``r``'s response has been read) releases it, and the client's
  clock starts only after that wait (``openAIModelServerClientSession.process_request``: ``start =
  time.perf_counter()`` after ``await data.to_payload(...)``, TTFT = first token - ``start``). So here
  request ``i >= users`` waits for request ``i - users`` (``Workload.after``) and its latency counts from
  when it is sent. Rounds are ``users / rate`` seconds apart on the schedule (18 s at 338 req/s) while an
  answer of 1,000 tokens takes about a minute at those rates: most later rounds are sent when the answer
  arrives, not when scheduled, and the router sees them in that order (a rotation counts dispatches, so
  it loses the "6,000 sessions are a multiple of 16 servers" coincidence wherever the rounds wait);
* the answer is cached where it was generated: vLLM caches every full block a request computes, generated
  ones included, and SGLang's radix cache inserts prompt + output on finish (:mod:`benchmarks.sim.server`),
  so at the server that answered round ``r`` the whole of round ``r + 1``'s context (system prompt,
  earlier questions and answers) is warm, elsewhere only the system prompt (``Workload.response_units``).

``workload(wait_for_answers=False, cache_answers=False)`` gives this module's earlier replay (rounds at
their scheduled times, prompts cached only), to compare.

How long a run is. The reference's shipped prefix-cache benchmark values (GIE ``benchmarking/prefix-cache-
aware/{high,low}-cache-values.yaml``, run by its GKE prefix-cache workflow) are stages of 30 s at 100 to
800 req/s (``worker_max_concurrency`` 1000): 3,000-24,000 requests a stage, 9,000-27,000 for the high-cache
file's three stages, and the sessions' contexts carry over from stage to stage (one session object per
user for the whole run). With 6,000 sessions that is 0.5-4 rounds a session per stage. The multi-turn shapes
here send **12,000 requests: every session two rounds**, so every session's second round finds (or misses)
its first answer, which is what the shape measures, at 1.5x the replay cost of the earlier 8,000 (where
only a third of the sessions had a second round). A third round (18,000 requests) keeps 6,000 sessions'
growing contexts in flight for three answers in a row: on short-q few-sys, seed 0, round-robin then meets
the objective for 0.35-0.59 of the requests at 100-3,000 req/s and our default for 0.43-0.56 at 300-3,000
(all of them at 30 req/s, where the sessions seldom overlap), so the run measures the fleet's KV cache
rather than the routing (``benchmarks/RESULTS.md``, "Prefix-cache affinity").

Arrivals: the benchmark's load is Poisson stages; here a Poisson process (the trace is time-scaled to each
measured rate anyway), seeded like the rest.

Prefix units (what the simulated servers cache, see :mod:`benchmarks.sim.server`) are 64-token runs, four
vLLM blocks: a run entirely inside a group's system prompt has that group's id, a run that reaches into a
question is private to that prompt (as vLLM's block hashes are: a block is shared only if every token up to
its end is), and a repeated prompt repeats its units. Text comes from :mod:`benchmarks.sim.text`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.sim.text import CHARS_PER_TOKEN
from benchmarks.sim.traces import Workload

#: tokens per prefix unit of these workloads (four 16-token vLLM blocks; 256 characters of text)
UNIT_TOKENS = 64


@dataclass(frozen=True, slots=True)
class SharedPrefixShape:
    """inference-perf ``shared_prefix`` parameters (tokens)."""

    name: str
    groups: int
    prompts_per_group: int
    system_tokens: int
    question_mean: float
    question_std: float
    output_tokens: int
    multi_turn: bool
    #: requests a full run sends (see ``workload``); chosen so every run has the shape's character
    requests: int


SHAPES: dict[str, SharedPrefixShape] = {
    s.name: s
    for s in (
        SharedPrefixShape("short-q-many-sys", 150, 5, 6000, 1200, 0, 1000, multi_turn=False, requests=3000),
        SharedPrefixShape("long-q-many-sys", 150, 5, 1000, 6200, 0, 1000, multi_turn=False, requests=3000),
        SharedPrefixShape(
            "short-q-few-sys-chat", 6, 1000, 1000, 30, 0, 1000, multi_turn=True, requests=12000
        ),
        SharedPrefixShape(
            "long-q-few-sys-chat", 6, 1000, 1000, 3000, 900, 1000, multi_turn=True, requests=12000
        ),
    )
}


class _Ids:
    """Fresh unit ids (one counter per workload; ids are only compared for equality)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> tuple[int, ...]:
        out = tuple(range(self.next, self.next + n))
        self.next += n
        return out


def _units_for(
    shared: tuple[int, ...],
    shared_tokens: int,
    total_tokens: int,
    ids: _Ids,
    heads: dict[int, tuple[int, int]] | None = None,
) -> tuple[int, ...]:
    """Units of a prompt whose first ``shared_tokens`` tokens are the content behind ``shared`` (whole units
    only count as shared) and whose remaining tokens are new. With ``heads``, a first new unit that goes on
    from a partial shared unit records that its text starts with that unit's (``Workload.unit_heads``)."""
    keep = min(len(shared), shared_tokens // UNIT_TOKENS)
    n_total = -(-total_tokens // UNIT_TOKENS)
    new = ids.take(max(0, n_total - keep))
    part = shared_tokens - keep * UNIT_TOKENS
    if heads is not None and new and keep < len(shared) and part > 0:
        heads[new[0]] = (shared[keep], part * CHARS_PER_TOKEN)
    return shared[:keep] + new


def workload(
    shape: SharedPrefixShape | str,
    *,
    seed: int = 0,
    requests: int | None = None,
    wait_for_answers: bool = True,
    cache_answers: bool = True,
) -> Workload:
    """``requests`` requests (default: the shape's) of this shape, Poisson arrivals at 1 req/s.

    Multi-turn shapes only: ``wait_for_answers`` sends a session's round only once its previous round's
    answer is back (``Workload.after``), ``cache_answers`` lets the server that answered keep the answer
    cached (``Workload.response_units``); both as inference-perf and vLLM do (module docstring). Turned
    off, the rounds go at their scheduled times and only prompts are cached (this module before 2026-12).
    """
    s = SHAPES[shape] if isinstance(shape, str) else shape
    n = s.requests if requests is None else requests
    rng = np.random.default_rng([seed, 17])
    ids = _Ids()
    per_group_system = [ids.take(-(-s.system_tokens // UNIT_TOKENS)) for _ in range(s.groups)]
    q_len = np.maximum(
        1, np.rint(rng.normal(s.question_mean, s.question_std, size=(s.groups, s.prompts_per_group)))
    ).astype(np.int64)
    order = rng.permutation(s.groups * s.prompts_per_group)
    prompt_tokens = np.zeros(n, dtype=np.int64)
    units: list[tuple[int, ...]] = []
    answers: list[tuple[int, ...]] = []
    heads: dict[int, tuple[int, int]] = {}
    if s.multi_turn:
        # session k (after the shuffle) = (group, prompt); its context grows round by round
        ctx_units = [per_group_system[int(k) // s.prompts_per_group] for k in order]
        ctx_tokens = [s.system_tokens] * len(order)
        for i in range(n):
            k = i % len(order)
            g, p = divmod(int(order[k]), s.prompts_per_group)
            total = ctx_tokens[k] + int(q_len[g, p])
            u = _units_for(ctx_units[k], ctx_tokens[k], total, ids, heads)
            prompt_tokens[i] = total
            units.append(u)
            # the next round's context: this prompt + the response (its own units beyond this prompt)
            ctx_tokens[k] = total + s.output_tokens
            ctx_units[k] = _units_for(u, total, ctx_tokens[k], ids, heads)
            answers.append(ctx_units[k])
    else:
        prompts: list[tuple[tuple[int, ...], int]] = []
        for k in order:
            g, p = divmod(int(k), s.prompts_per_group)
            total = s.system_tokens + int(q_len[g, p])
            prompts.append((_units_for(per_group_system[g], s.system_tokens, total, ids), total))
        for i in range(n):
            u, total = prompts[i % len(prompts)]
            units.append(u)
            prompt_tokens[i] = total
    gaps = rng.exponential(1.0, size=n)
    arrival = np.cumsum(gaps) - gaps[0]
    users = len(order)
    waits = s.multi_turn and wait_for_answers and n > users
    return Workload(
        name=s.name,
        arrival_s=arrival,
        prompt_tokens=prompt_tokens,
        output_tokens=np.full(n, s.output_tokens, dtype=np.int64),
        units=tuple(units),
        unit_tokens=UNIT_TOKENS,
        adapter=np.full(n, -1, dtype=np.int64),
        after=np.where(np.arange(n) >= users, np.arange(n) - users, -1).astype(np.int64) if waits else None,
        response_units=tuple(answers) if s.multi_turn and cache_answers else (),
        unit_heads=heads,
    )
