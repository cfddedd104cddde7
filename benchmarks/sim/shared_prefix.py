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
  after each round becomes ``prompt + response``, so round ``r`` sends ``context + question`` and shares
  the previous round's whole prompt as a prefix. (inference-perf also holds a round until the session's
  previous one returns; at the rates measured here a session's rounds are ``users / rate`` seconds apart,
  far longer than any response, so arrival order alone keeps that order.)

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
        SharedPrefixShape("short-q-few-sys-chat", 6, 1000, 1000, 30, 0, 1000, multi_turn=True, requests=8000),
        SharedPrefixShape(
            "long-q-few-sys-chat", 6, 1000, 1000, 3000, 900, 1000, multi_turn=True, requests=8000
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


def _units_for(shared: tuple[int, ...], shared_tokens: int, total_tokens: int, ids: _Ids) -> tuple[int, ...]:
    """Units of a prompt whose first ``shared_tokens`` tokens are the content behind ``shared`` (whole units
    only count as shared) and whose remaining tokens are new."""
    keep = min(len(shared), shared_tokens // UNIT_TOKENS)
    n_total = -(-total_tokens // UNIT_TOKENS)
    return shared[:keep] + ids.take(max(0, n_total - keep))


def workload(shape: SharedPrefixShape | str, *, seed: int = 0, requests: int | None = None) -> Workload:
    """``requests`` requests (default: the shape's) of this shape, Poisson arrivals at 1 req/s."""
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
    if s.multi_turn:
        # session k (after the shuffle) = (group, prompt); its context grows round by round
        ctx_units = [per_group_system[int(k) // s.prompts_per_group] for k in order]
        ctx_tokens = [s.system_tokens] * len(order)
        for i in range(n):
            k = i % len(order)
            g, p = divmod(int(order[k]), s.prompts_per_group)
            total = ctx_tokens[k] + int(q_len[g, p])
            u = _units_for(ctx_units[k], ctx_tokens[k], total, ids)
            prompt_tokens[i] = total
            units.append(u)
            # the next round's context: this prompt + the response (its own units beyond this prompt)
            ctx_units[k] = u
            ctx_tokens[k] = total + s.output_tokens
            ctx_units[k] = _units_for(u, total, ctx_tokens[k], ids)
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
    return Workload(
        name=s.name,
        arrival_s=arrival,
        prompt_tokens=prompt_tokens,
        output_tokens=np.full(n, s.output_tokens, dtype=np.int64),
        units=tuple(units),
        unit_tokens=UNIT_TOKENS,
        adapter=np.full(n, -1, dtype=np.int64),
    )
