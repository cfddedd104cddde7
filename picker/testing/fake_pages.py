"""``/metrics`` pages for the fake model server: real pages with live values in the families the EPP reads.

Why real pages: the EPP's extractors must face what engines really print (vLLM's ``_created`` gauges and
Go-style exponents, TGI's Rust exporter with integer values and blank lines, Triton's label-keyed gauges,
hundreds of families nobody reads). So each engine's page is a captured page (``pages/``, provenance in
``pages/SOURCES.md``); the fake only substitutes values into a few families and serves every other line as is.

Why precompiled: the EPP scrapes every pod every 50 ms, and a benchmark runs 256 fakes in one process. A page
is compiled once per server into a list of static byte strings with *slots* (positions whose bytes come from
the live :class:`~picker.testing.fake_load.LoadSnapshot`); rendering is filling the slots and one ``join``,
and is cached per snapshot version, so an idle server re-serves the same bytes.

``name[]`` filtering: vLLM and SGLang serve metrics through ``prometheus_client``, which, given one or more
``name[]=<sample name>`` query parameters, returns only the samples with those names (and the HELP/TYPE lines
of their families). :meth:`MetricsPage.render` does the same for those engines; TGI and Triton ignore the
parameter and return the whole page, as the real servers do.
"""

from __future__ import annotations

import gzip
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

from picker.testing.fake_load import LoadSnapshot

#: value of a slot, read from a snapshot
ValueFn = Callable[[LoadSnapshot], float]

_LORA = "lora"  # slot key of the dynamic ``vllm:lora_requests_info`` block

#: how many label combinations of ``vllm:lora_requests_info`` stay on the page. vLLM never removes one (each
#: keeps the time it was last current as its value, which is why the EPP reads the series with the largest
#: value); we keep the last few so the page stays bounded.
LORA_HISTORY = 8


def _hit_rate(s: LoadSnapshot) -> float:
    return s.prefix_hits_total / s.prefix_queries_total if s.prefix_queries_total else 0.0


#: the live quantities a page can show; slot rules name them
VALUES: Mapping[str, ValueFn] = MappingProxyType(
    {
        "running": lambda s: float(s.running),
        "waiting": lambda s: float(s.waiting),
        "waiting_capacity": lambda s: float(s.waiting - s.waiting_lora_deferred),
        "waiting_deferred": lambda s: float(s.waiting_lora_deferred),
        "prefilling": lambda s: float(s.prefilling),
        "decoding": lambda s: float(s.running - s.prefilling),
        "kv_usage": lambda s: s.kv_usage,
        "used_blocks": lambda s: float(s.used_blocks),
        "free_blocks": lambda s: float(s.num_blocks - s.used_blocks),
        "num_blocks": lambda s: float(s.num_blocks),
        "block_size": lambda s: float(s.block_size),
        "used_tokens": lambda s: float(s.used_tokens),
        "reserved_tokens": lambda s: float(s.reserved_tokens),
        "step_prefill_tokens": lambda s: float(s.step_prefill_tokens),
        "max_num_seqs": lambda s: float(s.max_num_seqs),
        "requests_total": lambda s: float(s.requests_total),
        "prompt_tokens_total": lambda s: float(s.prompt_tokens_total),
        "generation_tokens_total": lambda s: float(s.generation_tokens_total),
        "finished_stop": lambda s: float(s.finished_stop),
        "finished_length": lambda s: float(s.finished_length),
        "finished_abort": lambda s: float(s.finished_abort),
        "finished_total": lambda s: float(s.finished_total),
        "preemptions_total": lambda s: float(s.preemptions_total),
        "prefix_queries_total": lambda s: float(s.prefix_queries_total),
        "prefix_hits_total": lambda s: float(s.prefix_hits_total),
        "prefix_hit_rate": _hit_rate,
        "steps_total": lambda s: float(s.steps_total),
    }
)


@dataclass(frozen=True, slots=True)
class SlotRule:
    """Sample lines named ``sample`` whose labels include ``labels`` get the live value ``value``."""

    sample: str
    value: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LabelRule:
    """At bind time, set label ``label`` of sample ``sample`` to a configuration value (``block_size``,
    ``num_blocks`` or ``kv_tokens``), e.g. ``vllm:cache_config_info``'s KV geometry."""

    sample: str
    label: str
    value: str


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How one engine's page is turned into a live page."""

    name: str
    #: file under ``pages/``
    page: str
    #: ``owned_by`` in ``/v1/models``
    owned_by: str
    #: served through prometheus_client: honours ``name[]`` and gzips on ``Accept-Encoding: gzip``
    prometheus_client: bool
    slots: tuple[SlotRule, ...]
    labels: tuple[LabelRule, ...] = ()
    #: ``model_name`` label value in the capture, replaced by the server's base model
    template_model: str | None = None
    #: LoRA family (vLLM): its label order, and the family it goes before when the capture has none
    lora_labels: tuple[str, str, str] | None = None
    lora_before: str | None = None
    #: line inserts applied to the capture before compiling: (existing line, line added after it)
    extra_lines: tuple[tuple[str, str], ...] = ()


_V1_MODEL = "deepseek-v4-flash-vision-exp-ablit-dual"
_V1_SERIES = f'{{engine="0",model_name="{_V1_MODEL}"}}'
_V0_MODEL = "Qwen/Qwen2.5-Coder-1.5B-Instruct"

_VLLM_COMMON = (
    SlotRule("vllm:num_requests_running", "running"),
    SlotRule("vllm:num_requests_waiting", "waiting"),
    SlotRule("vllm:num_preemptions_total", "preemptions_total"),
    SlotRule("vllm:prompt_tokens_total", "prompt_tokens_total"),
    SlotRule("vllm:generation_tokens_total", "generation_tokens_total"),
    SlotRule("vllm:request_success_total", "finished_stop", (("finished_reason", "stop"),)),
    SlotRule("vllm:request_success_total", "finished_length", (("finished_reason", "length"),)),
)
_VLLM_CACHE_LABELS = (
    LabelRule("vllm:cache_config_info", "block_size", "block_size"),
    LabelRule("vllm:cache_config_info", "num_gpu_blocks", "num_blocks"),
)

ENGINES: Mapping[str, EngineSpec] = MappingProxyType(
    {
        "vllm": EngineSpec(
            name="vllm",
            page="vllm-v1-lmswitch-spec-decode.txt",
            owned_by="vllm",
            prometheus_client=True,
            template_model=_V1_MODEL,
            slots=(
                *_VLLM_COMMON,
                SlotRule(
                    "vllm:num_requests_waiting_by_reason", "waiting_capacity", (("reason", "capacity"),)
                ),
                SlotRule(
                    "vllm:num_requests_waiting_by_reason", "waiting_deferred", (("reason", "deferred"),)
                ),
                SlotRule("vllm:kv_cache_usage_perc", "kv_usage"),
                SlotRule("vllm:request_success_total", "finished_abort", (("finished_reason", "abort"),)),
                SlotRule("vllm:prefix_cache_queries_total", "prefix_queries_total"),
                SlotRule("vllm:prefix_cache_hits_total", "prefix_hits_total"),
                SlotRule("vllm:prompt_tokens_cached_total", "prefix_hits_total"),
            ),
            labels=(
                *_VLLM_CACHE_LABELS,
                LabelRule("vllm:cache_config_info", "kv_cache_size_tokens", "kv_tokens"),
            ),
            lora_labels=("max_lora", "waiting_lora_adapters", "running_lora_adapters"),
            lora_before="vllm:cache_config_info",
        ),
        "vllm-v0": EngineSpec(
            name="vllm-v0",
            page="vllm-v0-aibrix-runtime-doc.txt",
            owned_by="vllm",
            prometheus_client=True,
            template_model=_V0_MODEL,
            slots=(*_VLLM_COMMON, SlotRule("vllm:gpu_cache_usage_perc", "kv_usage")),
            labels=_VLLM_CACHE_LABELS,
            lora_labels=("max_lora", "running_lora_adapters", "waiting_lora_adapters"),
            # the capture only has the "stop" series; a live v0 server also shows "length" once it has one
            extra_lines=(
                (
                    f'vllm:request_success_total{{finished_reason="stop",model_name="{_V0_MODEL}"}} 4.0',
                    f'vllm:request_success_total{{finished_reason="length",model_name="{_V0_MODEL}"}} 0.0',
                ),
            ),
        ),
        "sglang": EngineSpec(
            name="sglang",
            page="sglang-docs-production-metrics.txt",
            owned_by="sglang",
            prometheus_client=True,
            template_model="meta-llama/Llama-3.1-8B-Instruct",
            slots=(
                SlotRule("sglang:num_running_reqs", "running"),
                SlotRule("sglang:num_queue_reqs", "waiting"),
                SlotRule("sglang:token_usage", "kv_usage"),
                SlotRule("sglang:num_used_tokens", "used_tokens"),
                SlotRule("sglang:cache_hit_rate", "prefix_hit_rate"),
                SlotRule("sglang:prompt_tokens_total", "prompt_tokens_total"),
                SlotRule("sglang:generation_tokens_total", "generation_tokens_total"),
            ),
        ),
        "tgi": EngineSpec(
            name="tgi",
            page="tgi-datadog-fixture.txt",
            owned_by="huggingface",
            prometheus_client=False,
            slots=(
                SlotRule("tgi_queue_size", "waiting"),
                SlotRule("tgi_batch_current_size", "running"),
                SlotRule("tgi_batch_current_max_tokens", "reserved_tokens"),
                SlotRule("tgi_request_count", "requests_total"),
                SlotRule("tgi_request_success", "finished_total"),
            ),
        ),
        "trtllm": EngineSpec(
            name="trtllm",
            page="triton-trtllm-inflight-batcher-readme.txt",
            owned_by="tensorrt_llm",
            prometheus_client=False,
            slots=tuple(
                SlotRule(family, value, ((key, label),))
                for family, key, pairs in (
                    (
                        "nv_trt_llm_request_metrics",
                        "request_type",
                        (
                            ("waiting", "waiting"),
                            ("context", "prefilling"),
                            ("scheduled", "running"),
                            ("max", "max_num_seqs"),
                            ("active", "running"),
                        ),
                    ),
                    (
                        "nv_trt_llm_kv_cache_block_metrics",
                        "kv_cache_block_type",
                        (
                            ("fraction", "kv_usage"),
                            ("tokens_per", "block_size"),
                            ("used", "used_blocks"),
                            ("free", "free_blocks"),
                            ("max", "num_blocks"),
                        ),
                    ),
                    (
                        "nv_trt_llm_inflight_batcher_metrics",
                        "inflight_batcher_specific_metric",
                        (
                            ("generation_requests", "decoding"),
                            ("total_context_tokens", "step_prefill_tokens"),
                        ),
                    ),
                    ("nv_trt_llm_general_metrics", "general_type", (("iteration_counter", "steps_total"),)),
                )
                for label, value in pairs
            ),
        ),
    }
)

#: other names accepted for an engine (the EPP's engine-type label values)
ALIASES: Mapping[str, str] = MappingProxyType(
    {"triton-tensorrt-llm": "trtllm", "trtllm-serve": "trtllm", "vllm-v1": "vllm"}
)


def engine_spec(engine: str) -> EngineSpec:
    """The spec for an engine name or alias; ValueError listing the choices otherwise."""
    spec = ENGINES.get(ALIASES.get(engine, engine))
    if spec is None:
        raise ValueError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    return spec


# ------------------------------------------------------------------------------------------ value formats
def format_go_float(v: float) -> str:
    """A float as prometheus_client prints it: Python's shortest repr, but switched to an exponent once the
    integer part has more than six digits (Go's habit, which the Python client imitates), e.g.
    ``3.675428e+06``. (Older client releases wrote ``e+010`` for ten-digit values, as the captured vLLM page
    shows; current ones write ``e+10``.)
    """
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    s = repr(v)
    if v > 0 and "e" not in s:
        dot = s.find(".")
        if dot > 6:
            digits = (s[:dot] + s[dot + 1 :]).rstrip("0")
            mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
            return f"{mantissa}e+{dot - 1:02d}"
    return s


def format_integral(v: float) -> str:
    """A float as the Rust and C++ exporters (TGI, Triton) print it: integral values without a fraction."""
    if math.isfinite(v) and v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return format_go_float(v)


def escape_label(value: str) -> str:
    """Escape a label value for the text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ------------------------------------------------------------------------------------------ parsing
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


#: a sample line up to its value: name, optional {labels} (quoted values may hold any character), blanks
_SAMPLE = re.compile(r'([^\s{]+)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?[ \t]+')


def _split_sample(line: str) -> tuple[str, str, int]:
    """(sample name, label text, index where the value starts) of a sample line."""
    m = _SAMPLE.match(line)
    if m is None:
        raise ValueError(f"not a sample line: {line[:80]!r}")
    return m.group(1), m.group(2) or "", m.end()


def _labels(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _LABEL.finditer(text)}


@dataclass(slots=True)
class _Family:
    name: str
    header: list[str] = field(default_factory=list)
    #: (sample name or None for blank/comment lines, line without newline)
    lines: list[tuple[str | None, str]] = field(default_factory=list)


class PageTemplate:
    """An engine's captured page, parsed into families once; :meth:`bind` makes a server's live page.

    Parsing is the costly part (the vLLM v1 page has 711 lines), so a fleet parses each engine's page once and
    binds it per server.
    """

    def __init__(self, spec: EngineSpec, families: list[_Family]) -> None:
        self.spec = spec
        self._families = families

    @classmethod
    def load(cls, engine: str) -> PageTemplate:
        """Read and parse the capture for ``engine`` (package data)."""
        spec = engine_spec(engine)
        text = (
            resources.files("picker.testing")
            .joinpath("pages")
            .joinpath(spec.page)
            .read_text(encoding="utf-8")
        )
        return cls.parse(spec, text)

    @classmethod
    def parse(cls, spec: EngineSpec, text: str) -> PageTemplate:
        """Parse page text (Prometheus text format) into families, after the spec's line inserts."""
        for existing, added in spec.extra_lines:
            if existing not in text:
                raise ValueError(f"{spec.page}: line to extend not found: {existing!r}")
            text = text.replace(existing + "\n", f"{existing}\n{added}\n", 1)
        families: list[_Family] = []
        current: _Family | None = None
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                name = line.split(" ", 3)[2]
                if current is None or current.name != name or current.lines:
                    current = _Family(name)
                    families.append(current)
                current.header.append(line)
            elif not line or line.startswith("#"):
                if current is None:
                    current = _Family("")
                    families.append(current)
                current.lines.append((None, line))
            else:
                sample = _split_sample(line)[0]
                if current is None:
                    current = _Family(sample)
                    families.append(current)
                current.lines.append((sample, line))
        return cls(spec, families)

    def bind(self, *, model: str, block_size: int, num_blocks: int, lora: bool) -> MetricsPage:
        """The live page of one server: ``model`` is its base model (the ``model_name`` label), the KV
        geometry goes into the cache-config labels, ``lora`` says whether LoRA is enabled (vLLM v1 only prints
        its LoRA family then)."""
        spec = self.spec
        old_model = f'model_name="{spec.template_model}"' if spec.template_model else None
        new_model = f'model_name="{escape_label(model)}"'
        config = {"block_size": block_size, "num_blocks": num_blocks, "kv_tokens": block_size * num_blocks}
        fmt = format_go_float if spec.prometheus_client else format_integral
        families: list[_BoundFamily] = []
        has_lora_family = any(f.name == "vllm:lora_requests_info" for f in self._families)
        ruled = {r.sample for r in spec.slots} | {r.sample for r in spec.labels}
        for fam in self._families:
            if (
                spec.lora_labels is not None
                and lora
                and not has_lora_family
                and spec.lora_before == fam.name
                and fam.header
            ):
                families.append(_lora_family())
            samples: list[_Piece] = []
            for sample, text in fam.lines:
                if sample is None:
                    samples.append(_Piece(None, (text + "\n").encode()))
                elif sample == "vllm:lora_requests_info" and spec.lora_labels is not None:
                    # the capture's lines make way for the live block (once per family)
                    if not any(p.slot == _LORA for p in samples):
                        samples.append(_Piece(sample, b"", _LORA))
                else:
                    if old_model is not None:
                        text = text.replace(old_model, new_model)  # noqa: PLW2901 - the bound line
                    if sample in ruled:
                        samples.append(_bind_sample(spec, _apply_label_rules(spec, sample, text, config)))
                    else:
                        samples.append(_Piece(sample, (text + "\n").encode()))
            header = "".join(h + "\n" for h in fam.header).encode()
            families.append(_BoundFamily(fam.name, header, tuple(samples)))
        return MetricsPage(spec, tuple(families), fmt, lora=lora)


class PageLibrary:
    """Parsed captures by engine, loaded on first use. A fleet shares one, so each page is parsed once."""

    def __init__(self) -> None:
        self._templates: dict[str, PageTemplate] = {}

    def get(self, engine: str) -> PageTemplate:
        name = engine_spec(engine).name
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = PageTemplate.load(name)
        return template


def _lora_family() -> _BoundFamily:
    header = b"# HELP vllm:lora_requests_info Running stats on lora requests.\n"
    header += b"# TYPE vllm:lora_requests_info gauge\n"
    return _BoundFamily("vllm:lora_requests_info", header, (_Piece("vllm:lora_requests_info", b"", _LORA),))


def _bind_sample(spec: EngineSpec, line: str) -> _Piece:
    """A sample line as a static piece, or as a slot if a rule of the spec matches it."""
    name, label_text, value_at = _split_sample(line)
    rule = _match(spec.slots, name, _labels(label_text) if label_text else {})
    if rule is None:
        return _Piece(name, (line + "\n").encode())
    value_end = line.find(" ", value_at)
    tail = line[value_end:] if value_end != -1 else ""  # a timestamp, if any
    return _Piece(name, line[:value_at].encode(), rule.value, (tail + "\n").encode(), VALUES[rule.value])


def _apply_label_rules(spec: EngineSpec, name: str, line: str, config: Mapping[str, int]) -> str:
    for rule in spec.labels:
        if rule.sample == name:
            line = re.sub(
                rf'(?<=[{{,]){re.escape(rule.label)}="(?:[^"\\]|\\.)*"',
                f'{rule.label}="{config[rule.value]}"',
                line,
                count=1,
            )
    return line


def _match(rules: Iterable[SlotRule], name: str, labels: Mapping[str, str]) -> SlotRule | None:
    for rule in rules:
        if rule.sample == name and all(labels.get(k) == v for k, v in rule.labels):
            return rule
    return None


@dataclass(frozen=True, slots=True)
class _Piece:
    """One sample line: static (``head`` is the whole line) or a slot (``head`` + value + ``tail``)."""

    sample: str | None
    head: bytes
    slot: str | None = None
    tail: bytes = b""
    value: ValueFn | None = None


@dataclass(frozen=True, slots=True)
class _BoundFamily:
    name: str
    header: bytes
    samples: tuple[_Piece, ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A page layout: static parts with the slot positions to fill."""

    parts: tuple[bytes, ...]
    #: (index in parts, value getter); getter None = the LoRA block
    slots: tuple[tuple[int, ValueFn | None], ...]


class MetricsPage:
    """One server's live ``/metrics`` page. Rendering is cached per snapshot version and filter.

    Not shared between servers: it keeps the LoRA family's label history and its render caches.
    """

    def __init__(
        self,
        spec: EngineSpec,
        families: tuple[_BoundFamily, ...],
        fmt: Callable[[float], str],
        *,
        lora: bool,
    ) -> None:
        self.spec = spec
        self._lora_enabled = lora
        self._families = families
        self._fmt = fmt
        self._full = self._plan(None)
        self._plans: dict[frozenset[str], _Plan] = {}
        self._cache: dict[tuple[frozenset[str] | None, bool], tuple[int, bytes]] = {}
        #: formatted values: most slots keep their value from one state to the next
        self._formatted: dict[float, bytes] = {}
        self._lora_history: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lora_version = -1
        self._lora_bytes = b""
        self._lora_key: tuple[str, str] | None = None
        self._lora_older = b""
        self._lora_current = b""

    @property
    def honours_name_filter(self) -> bool:
        return self.spec.prometheus_client

    @property
    def sample_names(self) -> frozenset[str]:
        """Every sample name on the full page (what ``name[]`` can select)."""
        return frozenset(p.sample for f in self._families for p in f.samples if p.sample is not None)

    def render(
        self,
        snap: LoadSnapshot,
        *,
        now: float,
        names: frozenset[str] | None = None,
        gzipped: bool = False,
    ) -> bytes:
        """The page for ``snap``. ``now`` (wall-clock seconds since the epoch) stamps the LoRA family when the
        engine's state changed; ``names`` restricts the page to those sample names (ignored by engines that do
        not honour ``name[]``); ``gzipped`` returns the gzip-compressed body."""
        if not self.spec.prometheus_client:
            names = None
        key = (names, gzipped)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == snap.version:
            return hit[1]
        if gzipped:
            body = gzip.compress(self.render(snap, now=now, names=names), compresslevel=6, mtime=0)
        else:
            plan = self._full if names is None else self._filtered(names)
            parts = list(plan.parts)
            formatted = self._formatted
            for index, value in plan.slots:
                if value is None:
                    parts[index] = self._lora(snap, now)
                    continue
                v = value(snap)
                text = formatted.get(v)
                if text is None:
                    if len(formatted) > 4096:
                        formatted.clear()
                    text = formatted[v] = self._fmt(v).encode()
                parts[index] = text
            body = b"".join(parts)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = (snap.version, body)
        return body

    def _filtered(self, names: frozenset[str]) -> _Plan:
        plan = self._plans.get(names)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[names] = self._plan(names)
        return plan

    def _plan(self, names: frozenset[str] | None) -> _Plan:
        parts: list[bytes] = []
        slots: list[tuple[int, ValueFn | None]] = []
        static: list[bytes] = []

        def flush() -> None:
            if static:
                parts.append(b"".join(static))
                static.clear()

        for fam in self._families:
            chosen = [p for p in fam.samples if names is None or p.sample in names]
            if names is not None and not any(p.sample is not None for p in chosen):
                continue
            static.append(fam.header)
            for piece in chosen:
                if piece.slot is None:
                    static.append(piece.head)
                    continue
                static.append(piece.head)
                flush()
                slots.append((len(parts), piece.value))
                parts.append(b"")
                static.append(piece.tail)
        flush()
        return _Plan(tuple(parts), tuple(slots))

    def _lora(self, snap: LoadSnapshot, now: float) -> bytes:
        """The ``vllm:lora_requests_info`` lines: one per label combination seen, each valued with the last
        time it was current (the current one: now, refreshed at every state change), as vLLM's gauge
        ``set_to_current_time`` leaves them. The EPP reads the series with the largest value."""
        if snap.version == self._lora_version:
            return self._lora_bytes
        self._lora_version = snap.version
        key = (",".join(snap.running_adapters), ",".join(snap.waiting_adapters))
        history = self._lora_history
        history[key] = now
        history.move_to_end(key)
        while len(history) > LORA_HISTORY:
            history.popitem(last=False)
        if key != self._lora_key:
            # the combination changed: the older lines stay fixed until it changes again
            self._lora_key = key
            max_lora = str(snap.max_lora if self._lora_enabled else 0)
            older = list(history.items())[:-1]
            self._lora_older = b"".join(
                self._lora_head(max_lora, combo) + format_go_float(stamp).encode() + b"\n"
                for combo, stamp in older
            )
            self._lora_current = self._lora_head(max_lora, key)
        self._lora_bytes = self._lora_older + self._lora_current + format_go_float(now).encode() + b"\n"
        return self._lora_bytes

    def _lora_head(self, max_lora: str, combo: tuple[str, str]) -> bytes:
        """A ``vllm:lora_requests_info`` line up to its value."""
        values = {
            "max_lora": max_lora,
            "running_lora_adapters": escape_label(combo[0]),
            "waiting_lora_adapters": escape_label(combo[1]),
        }
        order = self.spec.lora_labels or ("max_lora", "running_lora_adapters", "waiting_lora_adapters")
        return ("vllm:lora_requests_info{" + ",".join(f'{n}="{values[n]}"' for n in order) + "} ").encode()
