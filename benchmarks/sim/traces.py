"""Request traces: load real ones, derive the LoRA one, and rescale arrivals to a target load.

A :class:`Workload` is columnar (numpy arrays, one row per request) so a 20k-request trace costs nothing to
copy, slice or rescale, and every policy in a comparison replays exactly the same arrivals.

Formats (see ``benchmarks/data/SOURCES.md`` for provenance):

* Azure LLM inference trace 2023 (CSV): ``TIMESTAMP,ContextTokens,GeneratedTokens``; wall-clock timestamps
  with 7 fractional digits. No prefix information, so requests share no cache blocks.
* Mooncake FAST'25 (JSONL): ``{"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}``;
  ``hash_ids`` are 512-token prefix blocks, equal ids = a shareable KV prefix. They become the request's
  prefix *units* for the simulated prefix cache.
* GIE multi-LoRA benchmark values (YAML): not a trace but a load description — Poisson stages and a skewed
  ``lora_traffic_split`` over 15 adapters. :func:`lora_workload` turns it into requests: Poisson arrivals
  shaped like the stages, an adapter drawn per request with the file's split, and lengths resampled from the
  Azure conversation trace clipped to the file's ``input_distribution.max`` / ``output_distribution.max``
  (the billsum data it names is not available offline).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "traces"
AZURE_CONV = DATA_DIR / "azure-llm-2023-conv.csv"
MOONCAKE_CONV = DATA_DIR / "mooncake-fast25-conversation_trace.jsonl"
GIE_MULTILORA = DATA_DIR / "gie-multilora-benchmark-values.yaml"

#: Tokens per Mooncake ``hash_ids`` block (the trace's documented granularity).
MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    """Requests in arrival order.

    ``units[i]`` is the tuple of prefix-unit ids of request ``i`` (empty when the trace has none);
    ``adapter[i]`` indexes ``adapter_names`` (-1 = the base model).

    Two optional columns make a closed-loop conversation (:mod:`benchmarks.sim.shared_prefix`'s multi-turn
    shapes; every other workload leaves them empty and replays exactly as before):

    * ``after[i]`` is the request whose response request ``i`` waits for (-1: none): it is sent at
      ``max(arrival_s[i], finish of after[i])``, and its latency is measured from then (the client sends the
      next round of a session only once the previous one has come back). ``after[i] < i`` always.
    * ``response_units[i]`` are the prefix units of request ``i``'s prompt *and* response (a whole
      conversation context: ``units[i]``'s whole units, then the response's): the serving engine keeps
      those blocks cached when the request finishes. Empty: the trace does not say what the response shares.

    ``unit_heads`` maps a unit to ``(earlier unit, characters)`` where a unit's text begins with the first
    characters of another's (:func:`benchmarks.sim.text.prompt_text`): a prompt whose text goes on from an
    earlier prompt's last, partial unit (a conversation's next round) shares those bytes with it, as the
    client sends them. Empty: units' texts are unrelated.
    """

    name: str
    arrival_s: F64
    prompt_tokens: I64
    output_tokens: I64
    units: tuple[tuple[int, ...], ...]
    unit_tokens: int
    adapter: I64
    adapter_names: tuple[str, ...] = ()
    after: I64 | None = None
    response_units: tuple[tuple[int, ...], ...] = ()
    unit_heads: Mapping[int, tuple[int, int]] = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def has_prefixes(self) -> bool:
        return any(self.units)

    @property
    def duration_s(self) -> float:
        """Span from the first to the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate (requests per second) over the trace's span."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("inf")

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (a contiguous slice keeps the trace's burst structure)."""
        return self._take(slice(0, n))

    def part(self, start: int, stop: int) -> Workload:
        """Requests ``start`` to ``stop - 1``, arrivals re-based to start at 0."""
        w = self._take(slice(start, stop))
        if not len(w):
            raise ValueError(f"{self.name}: requests {start}..{stop} are empty")
        return replace(w, arrival_s=w.arrival_s - w.arrival_s[0])

    def _take(self, idx: slice) -> Workload:
        after = self.after
        if after is not None:  # re-index; a request whose predecessor is cut off waits for nothing
            start = idx.start or 0
            after = after[idx]
            after = np.where(after >= start, after - start, -1)
        return replace(
            self,
            arrival_s=self.arrival_s[idx],
            prompt_tokens=self.prompt_tokens[idx],
            output_tokens=self.output_tokens[idx],
            units=self.units[idx],
            adapter=self.adapter[idx],
            after=after,
            response_units=self.response_units[idx],
        )

    def with_rate(self, rate: float) -> Workload:
        """Same requests with inter-arrival gaps scaled uniformly so the mean rate is ``rate`` req/s.

        Uniform scaling keeps the trace's burstiness (its coefficient of variation) while moving its load,
        which is what "the same trace at 90 % load" should mean.
        """
        if rate <= 0:
            raise ValueError("rate must be positive")
        start = self.arrival_s[0] if len(self) else 0.0
        factor = self.mean_rate / rate if np.isfinite(self.mean_rate) else 1.0
        return replace(self, arrival_s=(self.arrival_s - start) * factor)

    def clipped(self, max_model_len: int) -> Workload:
        """Clip prompts so prompt + output fits ``max_model_len`` (vLLM rejects longer requests outright)."""
        out = np.minimum(self.output_tokens, max_model_len // 2)
        prompt = np.minimum(self.prompt_tokens, max_model_len - out)
        return replace(self, prompt_tokens=prompt, output_tokens=out)


# ------------------------------------------------------------------------------------------------ loaders
def _parse_azure_time(stamp: str) -> float:
    # Python's %f takes at most 6 fractional digits; the trace has 7 (100 ns) — keep microseconds.
    date, _, frac = stamp.strip().partition(".")
    dt = datetime.strptime(date, "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 - naive by design: only differences matter
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


def load_azure_csv(path: Path | str, *, name: str = "azure-conv") -> Workload:
    """Azure 2023 trace CSV → :class:`Workload` (arrivals relative to the first request)."""
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    with Path(path).open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
        if header[:3] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise ValueError(f"{path}: not an Azure LLM trace CSV (header {header})")
        for line in fh:
            if not line.strip():
                continue
            stamp, ctx, gen = line.rstrip("\n").split(",")[:3]
            times.append(_parse_azure_time(stamp))
            prompt.append(max(1, int(ctx)))
            output.append(max(1, int(gen)))
    return _finish(name, times, prompt, output, units=None, unit_tokens=0)


def load_mooncake_jsonl(path: Path | str, *, name: str = "mooncake-conv") -> Workload:
    """Mooncake trace JSONL → :class:`Workload` with ``hash_ids`` as 512-token prefix units."""
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    units: list[tuple[int, ...]] = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            times.append(float(rec["timestamp"]) / 1000.0)
            prompt.append(max(1, int(rec["input_length"])))
            output.append(max(1, int(rec["output_length"])))
            units.append(tuple(int(h) for h in rec.get("hash_ids", ())))
    return _finish(name, times, prompt, output, units=units, unit_tokens=MOONCAKE_BLOCK_TOKENS)


def detect_format(path: Path | str) -> str:
    """``"azure"`` or ``"mooncake"`` from the file's first line (its header), else ``ValueError``."""
    with Path(path).open(encoding="utf-8") as fh:
        first = fh.readline().lstrip()
    if first.startswith("TIMESTAMP,"):
        return "azure"
    if first.startswith("{") and '"input_length"' in first:
        return "mooncake"
    raise ValueError(f"{path}: neither an Azure trace CSV nor a Mooncake JSONL (first line {first[:60]!r})")


def load_trace_file(path: Path | str) -> Workload:
    """Any Azure-CSV or Mooncake-JSONL file, format detected from its header."""
    fmt = detect_format(path)
    stem = Path(path).stem
    return load_azure_csv(path, name=stem) if fmt == "azure" else load_mooncake_jsonl(path, name=stem)


def _finish(
    name: str,
    times: list[float],
    prompt: list[int],
    output: list[int],
    *,
    units: list[tuple[int, ...]] | None,
    unit_tokens: int,
) -> Workload:
    if not times:
        raise ValueError(f"{name}: empty trace")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order[0]]
    unit_list = tuple(units[i] for i in order) if units is not None else tuple(() for _ in order)
    return Workload(
        name=name,
        arrival_s=t,
        prompt_tokens=np.asarray(prompt, dtype=np.int64)[order],
        output_tokens=np.asarray(output, dtype=np.int64)[order],
        units=unit_list,
        unit_tokens=unit_tokens,
        adapter=np.full(len(t), -1, dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------------ LoRA
@dataclass(frozen=True, slots=True)
class LoraSpec:
    """What the multi-LoRA values file says: Poisson stages, adapter split, length caps."""

    stages: tuple[tuple[float, float], ...]  # (rate req/s, duration s)
    adapters: tuple[str, ...]
    split: tuple[float, ...]
    max_input: int
    max_output: int


def load_lora_spec(path: Path | str = GIE_MULTILORA) -> LoraSpec:
    """Parse the GIE multi-LoRA Helm values file (``config.load`` and ``config.data``)."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    cfg = doc["config"]
    stages = tuple((float(s["rate"]), float(s["duration"])) for s in cfg["load"]["stages"])
    split = cfg["load"]["lora_traffic_split"]
    data = cfg.get("data", {})
    return LoraSpec(
        stages=stages,
        adapters=tuple(str(s["name"]) for s in split),
        split=tuple(float(s["split"]) for s in split),
        max_input=int(data.get("input_distribution", {}).get("max", 2048)),
        max_output=int(data.get("output_distribution", {}).get("max", 128)),
    )


def lora_workload(spec: LoraSpec, lengths: Workload, *, seed: int = 0, name: str = "lora") -> Workload:
    """Requests following the spec's Poisson stages and adapter skew, lengths resampled from ``lengths``."""
    rng = np.random.default_rng(seed)
    arrivals: list[F64] = []
    t0 = 0.0
    for rate, duration in spec.stages:
        n = rng.poisson(rate * duration)
        arrivals.append(np.sort(t0 + rng.uniform(0.0, duration, size=n)))
        t0 += duration
    t = np.concatenate(arrivals)
    n = len(t)
    p = np.asarray(spec.split, dtype=np.float64)
    adapter = rng.choice(len(spec.adapters), size=n, p=p / p.sum()).astype(np.int64)
    pick = rng.integers(0, len(lengths), size=n)
    return Workload(
        name=name,
        arrival_s=t - t[0],
        prompt_tokens=np.minimum(lengths.prompt_tokens[pick], spec.max_input),
        output_tokens=np.minimum(lengths.output_tokens[pick], spec.max_output),
        units=tuple(() for _ in range(n)),
        unit_tokens=0,
        adapter=adapter,
        adapter_names=spec.adapters,
    )


#: prefix of the names of the reference's ``shared_prefix`` benchmark shapes
#: (:mod:`benchmarks.sim.shared_prefix`)
SHARED_PREFIX = "shared-prefix-"
SHARED_PREFIX_SHAPES = ("short-q-many-sys", "long-q-many-sys", "short-q-few-sys-chat", "long-q-few-sys-chat")
#: every workload :func:`named_trace` knows
TRACE_NAMES = ("azure-conv", "mooncake-conv", "lora", *(SHARED_PREFIX + s for s in SHARED_PREFIX_SHAPES))


def named_trace(name: str, *, seed: int = 0) -> Workload:
    """A bundled workload: ``azure-conv``, ``mooncake-conv``, ``lora``, or ``shared-prefix-<shape>`` (the
    reference's four prefix-cache benchmark shapes, generated; ``seed`` draws them, as it draws ``lora``)."""
    if name == "azure-conv":
        return load_azure_csv(AZURE_CONV)
    if name == "mooncake-conv":
        return load_mooncake_jsonl(MOONCAKE_CONV)
    if name == "lora":
        return lora_workload(load_lora_spec(GIE_MULTILORA), load_azure_csv(AZURE_CONV), seed=seed)
    if name.startswith(SHARED_PREFIX) and name.removeprefix(SHARED_PREFIX) in SHARED_PREFIX_SHAPES:
        from benchmarks.sim.shared_prefix import workload

        return replace(workload(name.removeprefix(SHARED_PREFIX), seed=seed), name=name)
    raise ValueError(f"unknown trace {name!r}; known: {', '.join(TRACE_NAMES)}")
