"""Run the performance benchmarks several times and rewrite their summary in ``benchmarks/RESULTS.md``.

    python -m benchmarks.run_all --quick --write benchmarks/RESULTS.md     # what `make bench` runs
    python -m benchmarks.run_all --repeat 5 --write benchmarks/RESULTS.md  # full runs (about an hour)
    python -m benchmarks.run_all --quick --only bench_extproc,bench_scrape
    python -m benchmarks.run_all --long --write benchmarks/RESULTS.md      # one full ext_proc run (~40 min)

Each benchmark runs ``--repeat`` times as its own process (``python -m benchmarks.<name> --json``, plus
``--quick``); every figure in the summary is the median over those runs, and the raw documents are kept
in ``benchmarks/results/perf-<name>.json``. ``bench_quality --quick`` (routing quality, a deterministic
simulation) runs once when present and is only reported as run; its numbers belong to its own section.

Only the block between ``<!-- perf:begin -->`` and ``<!-- perf:end -->`` of the output file is rewritten,
so sections that other benchmarks own (routing quality, live runs) are kept as they are. ``--long`` runs
``bench_extproc`` once in full (three runs per phase, a real 1,000,000-stream RSS soak) and rewrites its
own block, ``<!-- perf-long:begin -->`` ... ``<!-- perf-long:end -->``, instead.

Why one module: most of its length is two tables, the targets and the figures shown per benchmark, which
are read together with the few functions that run the benchmarks and render them; split, a reader would
hold the same three pieces from two files.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, machine_info

BEGIN = "<!-- perf:begin -->"
END = "<!-- perf:end -->"
LONG_BEGIN = "<!-- perf-long:begin -->"
LONG_END = "<!-- perf-long:end -->"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PERF = ("bench_pick", "bench_prefix", "bench_extract", "bench_scrape", "bench_extproc")


@dataclass(frozen=True)
class Target:
    """One target of issue 6: where its number is in a benchmark's document and how it is judged."""

    benchmark: str
    label: str
    #: path into the JSON document
    path: tuple[str, ...]
    #: "<=", ">=" or "<"
    op: str
    limit: float
    unit: str
    note: str = ""

    def met(self, value: float) -> bool:
        if math.isnan(value):  # not measured
            return False
        return {"<=": value <= self.limit, ">=": value >= self.limit, "<": value < self.limit}[self.op]


TARGETS = (
    Target("bench_pick", "pick p50, 1,000 endpoints", ("pick_p50_us", "1000"), "<=", 30.0, "µs"),
    Target(
        "bench_pick", "speedup over the Python loop, 1,000 endpoints", ("speedup", "1000"), ">=", 20.0, "x"
    ),
    Target("bench_pick", "pick p50, 10,000 endpoints", ("pick_p50_us", "10000"), "<=", 300.0, "µs"),
    Target("bench_pick", "batch of 64 over 1,000 endpoints", ("batch64_1000_us",), "<=", 1000.0, "µs"),
    *(
        Target("bench_prefix", f"prefix scoring adds, 200 KB, 1,000 endpoints: {w}", path, "<=", 150.0, "µs")
        for w in ("conversation", "shared_prefix", "fresh")
        for path in [("workloads", w, "added_us")]
    ),
    Target(
        "bench_extract",
        "extraction speedup over prometheus_client (slowest vLLM page)",
        ("vllm_min_speedup",),
        ">=",
        30.0,
        "x",
    ),
    Target("bench_scrape", "scraping 256 endpoints at 50 ms: CPU", ("cpu_cores",), "<=", 1.0, "cores"),
    Target(
        "bench_scrape",
        "scraping 256 endpoints at 50 ms: p50 refresh interval",
        ("refresh_p50_ms",),
        "<=",
        55.0,
        "ms",
        "cadence kept within 10 %",
    ),
    Target(
        "bench_extproc",
        "ext_proc CPU per full stream / null-handler floor",
        ("cpu_ratio",),
        "<=",
        1.25,
        "x",
        "side by side at 200 streams/s each; the worse of: scrape loop running with its idle CPU "
        "subtracted, and scrape loop idle",
    ),
    Target(
        "bench_extproc",
        "200 KB bodies add over 1 KB (ours minus the floor's own increase)",
        ("body200k_added_cpu_us",),
        "<=",
        500.0,
        "µs",
    ),
    Target(
        "bench_extproc", "p99 EPP-side latency at half the max rate", ("p99_ms_at_half_max",), "<=", 5.0, "ms"
    ),
    Target(
        "bench_extproc",
        "RSS growth over 1,000,000 streams",
        ("rss_growth_mb",),
        "<",
        20.0,
        "MB",
        "--quick: a few thousand streams extrapolated, indicative only; the full run below soaks 1,000,000",
    ),
    Target(
        "bench_extproc",
        "header-only mode: CPU per routed request",
        ("header_only_cpu_us_per_request",),
        "<=",
        450.0,
        "µs",
        "one message per request, side by side with the null handler at 400/s each; the worse of scrape "
        "loop running (idle CPU subtracted) and idle; the one-message floor is below",
    ),
    Target(
        "bench_extproc",
        "header-only mode: CPU per request / one-message floor",
        ("header_only_cpu_ratio",),
        "<=",
        1.25,
        "x",
    ),
    Target(
        "bench_extproc",
        "header-only mode: p99 EPP answer time at half its max rate",
        ("header_only_p99_ms_at_half_max",),
        "<=",
        2.0,
        "ms",
    ),
    Target(
        "bench_extproc",
        "--workers 2 max streams/s over one worker's",
        ("workers2_speedup",),
        ">=",
        1.7,
        "x",
        "h2load, a C load generator, on the same 2 cores; the Python generator's figure and the 2-core "
        "ceiling are below",
    ),
)

#: further figures shown per benchmark (path, label, unit)
DETAILS: dict[str, tuple[tuple[tuple[str, ...], str, str], ...]] = {
    "bench_pick": (
        (("pick_p50_us", "16"), "pick p50, 16 endpoints (small-pool path: Python floats)", "µs"),
        (("pick_numpy_path_p50_us", "16"), "pick p50, 16 endpoints, numpy path", "µs"),
        (("pick_p50_us", "100"), "pick p50, 100 endpoints", "µs"),
        (("pick_new_snapshot_p50_us", "1000"), "pick p50 on a new snapshot, 1,000 endpoints", "µs"),
    ),
    "bench_prefix": tuple(
        (("workloads", w, k), f"{w}: request CPU {k.split('_')[0]} the prefix scorer", "µs")
        for w in ("conversation", "shared_prefix", "fresh")
        for k in ("with_us", "without_us")
    ),
    "bench_scrape": (
        (("refresh_p99_ms",), "p99 refresh interval (lean client)", "ms"),
        (("fetchers", "aiohttp", "cpu_cores"), "aiohttp client: CPU", "cores"),
        (("fetchers", "aiohttp", "refresh_p50_ms"), "aiohttp client: p50 refresh interval", "ms"),
        (("fetchers", "lean", "fleet_cores"), "fake fleet process CPU (not the scraper)", "cores"),
    ),
    "bench_extproc": (
        (("cpu_us_per_stream",), "CPU per stream, ours (scrape loop's idle CPU subtracted)", "µs"),
        (("cpu_us_per_stream_request_path",), "CPU per stream, ours with the scrape loop idle", "µs"),
        (("cpu_ratio_with_scraping",), "ratio to the floor, scrape loop running", "x"),
        (("cpu_ratio_request_path",), "ratio to the floor, scrape loop idle", "x"),
        (("floor_cpu_us_per_stream",), "CPU per stream, null handler", "µs"),
        (("max_streams_per_s",), "max streams/s, one worker", "/s"),
        (("floor_max_streams_per_s",), "max streams/s, null handler", "/s"),
        (("p50_ms_at_half_max",), "p50 EPP-side latency at half max", "ms"),
        (("latency_ms", "ours", "100/s"), "ours p50/p99 at 100/s", "ms"),
        (("latency_ms", "ours", "300/s"), "ours p50/p99 at 300/s", "ms"),
        (("latency_ms", "floor", "half_max"), "null handler p50/p99 at half max", "ms"),
        (("body200k_added_cpu_us_raw",), "200 KB bodies, raw increase (ours)", "µs"),
        (("body200k_floor_added_cpu_us",), "200 KB bodies, the floor's own increase", "µs"),
        (("skip_response_saving_pct",), "mode_override (responses skipped): CPU saved per stream", "%"),
        (("skip_response_saving_us",), "mode_override: CPU saved per stream", "µs"),
        (("skip_response_max_streams_per_s",), "mode_override: max streams/s", "/s"),
        (("one_message_floor_cpu_us",), "CPU per request, null handler answering one message", "µs"),
        (("full_stream_floor_cpu_us",), "CPU per stream, null handler, full stream (same run)", "µs"),
        (("header_only_max_requests_per_s",), "header-only mode: max requests/s (Python load)", "/s"),
        (("one_message_floor_max_per_s",), "one-message null handler: max requests/s (Python load)", "/s"),
        (("header_only_max_per_s_h2load",), "header-only mode: max requests/s, h2load", "/s"),
        (("header_only_cpu_us_at_max_h2load",), "header-only mode: CPU per request at its max, h2load", "µs"),
        (
            ("one_message_floor_cpu_us_at_max_h2load",),
            "one-message floor: CPU per request at max, h2load",
            "µs",
        ),
        (("header_only_p50_ms_at_half_max",), "header-only mode: p50 answer time at half max", "ms"),
        (("one_message_floor_p99_ms_at_half_max",), "one-message null handler: p99 at half max", "ms"),
        (("max_streams_per_s_h2load",), "max streams/s, one worker, h2load", "/s"),
        (("floor_max_streams_per_s_h2load",), "max streams/s, null handler, h2load", "/s"),
        (("workers2_max_streams_per_s_h2load",), "--workers 2: max streams/s, h2load", "/s"),
        (("h2load", "ours", "server_cores"), "one worker's CPU at its maximum (h2load)", "cores"),
        (("h2load", "ours_w2", "server_cores"), "two workers' CPU at their maximum (h2load)", "cores"),
        (
            ("workers2_ceiling",),
            "--workers 2 ceiling on this machine: (cores - h2load's CPU) / one worker's CPU",
            "x",
        ),
        (("workers2_speedup_python_load",), "--workers 2 speedup under the Python load generators", "x"),
        (("workers2_max_streams_per_s",), "--workers 2: max streams/s (Python load)", "/s"),
        (("workers2_cpu_scaling",), "--workers 2: 2 x CPU/stream(1) / CPU/stream(2)", "x"),
        (("rss", "growth_measured_mb"), "RSS growth measured", "MB"),
        (("rss", "streams"), "streams in the RSS soak", ""),
    ),
}


def _get(doc: dict[str, Any], path: Sequence[str]) -> Any:
    cur: Any = doc
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return float("nan")
        cur = cur[key]
    return cur


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if numbers:
        return statistics.median(numbers)
    lists = [v for v in values if isinstance(v, list) and all(isinstance(x, int | float) for x in v)]
    if lists and len({len(v) for v in lists}) == 1:
        return [statistics.median(col) for col in zip(*lists, strict=True)]
    return float("nan")


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return " / ".join(_fmt(v) for v in value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _run_one(name: str, quick: bool, extra: Sequence[str] = ()) -> tuple[dict[str, Any] | None, str, float]:
    args = [sys.executable, "-m", f"benchmarks.{name}", "--json", *(["--quick"] if quick else []), *extra]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    command = shlex.join(["python", *args[1:]])
    if proc.returncode != 0:
        sys.stderr.write(f"{command} failed ({proc.returncode}):\n{proc.stderr[-2000:]}\n")
        return None, command, elapsed
    try:
        doc: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(f"{command} printed no JSON document\n")
        return None, command, elapsed
    return doc, command, elapsed


def run(names: Sequence[str], repeat: int, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine_info(), "quick": quick, "repeat": repeat, "benchmarks": {}}
    for name in names:
        docs: list[dict[str, Any]] = []
        command = ""
        elapsed: list[float] = []
        for i in range(repeat):
            progress(f"{name} run {i + 1}/{repeat}")
            doc, command, seconds = _run_one(name, quick)
            elapsed.append(seconds)
            if doc is not None:
                docs.append(doc)
        out["benchmarks"][name] = {"command": command, "runs": docs, "elapsed_s": elapsed}
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / f"perf-{name}.json").write_text(json.dumps(docs, indent=1) + "\n", encoding="utf-8")
    if (ROOT / "benchmarks" / "bench_quality.py").exists():
        progress("bench_quality --quick (once)")
        doc, command, seconds = _run_one("bench_quality", True, ("--no-write", "--no-progress"))
        out["quality"] = {"command": command, "ok": doc is not None, "elapsed_s": seconds}
    return out


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    quick = " --quick" if result["quick"] else ""
    n = result["repeat"]
    lines = [
        BEGIN,
        "## Performance (issue 6)",
        "",
        (
            f"Generated by `python -m benchmarks.run_all{quick} --repeat {n}`; every number is the median of "
            f"{n} runs of the command shown. Rewritten in place: edit the benchmarks, not this block."
        ),
        "",
        (
            f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['platform']}, Python {m['python']}, grpcio "
            f"{m['grpcio']}, protobuf {m['protobuf']}, uvloop {m['uvloop']}; load average at start "
            f"{m['load_average_1m_at_start']} (other work on the machine inflates CPU and latency figures)."
        ),
        "",
        "| target | measured | target | met |",
        "|---|---|---|---|",
    ]
    benches = result["benchmarks"]
    for t in TARGETS:
        runs = benches.get(t.benchmark, {}).get("runs", [])
        value = _median([_get(d, t.path) for d in runs])
        measured = isinstance(value, int | float) and not math.isnan(value)
        verdict = (
            ("met" if t.met(value) else "**not met**") if measured else "**not measured** (the run failed)"
        )
        note = f" ({t.note})" if t.note else ""
        lines.append(
            f"| {t.label}{note} | {_fmt(value)} {t.unit} | {t.op} {_fmt(t.limit)} {t.unit} | {verdict} |"
        )
    lines += ["", "Commands:", ""]
    for b in benches.values():
        lines.append(
            f"- `{b['command']}` ({len(b['runs'])} runs, about {_fmt(_median(b['elapsed_s']))} s each)"
        )
    quality = result.get("quality")
    if quality is not None:
        state = "ran" if quality["ok"] else "FAILED"
        lines.append(
            f"- `{quality['command']}` ({state}, {_fmt(quality['elapsed_s'])} s; see its own section)"
        )
    for name, details in DETAILS.items():
        runs = benches.get(name, {}).get("runs", [])
        if not runs:
            continue
        lines += ["", f"{name}:", ""]
        lines.extend(
            f"- {label}: {_fmt(_median([_get(d, path) for d in runs]))} {unit}".rstrip()
            for path, label, unit in details
        )
    lines += ["", "Raw documents: `benchmarks/results/perf-<benchmark>.json`.", END]
    return "\n".join(lines) + "\n"


def render_long(doc: dict[str, Any] | None, command: str, seconds: float) -> str:
    """The block of one full ``bench_extproc`` run (real 1,000,000-stream soak)."""
    lines = [LONG_BEGIN, "### ext_proc, full run", ""]
    if doc is None:
        lines += [f"`{command}` failed; see its output.", LONG_END]
        return "\n".join(lines) + "\n"
    m = doc["machine"]
    lines += [
        (
            f"`{command}`, one run of {_fmt(seconds / 60)} minutes ({doc['runs']} runs per phase inside), "
            f"load average at start {m['load_average_1m_at_start']}."
        ),
        "",
        "| target | measured | target | met |",
        "|---|---|---|---|",
    ]
    for t in TARGETS:
        if t.benchmark != "bench_extproc":
            continue
        value = _get(doc, t.path)
        met = t.met(value) if isinstance(value, int | float) else False
        verdict = "met" if met else "**not met**"
        lines.append(f"| {t.label} | {_fmt(value)} {t.unit} | {t.op} {_fmt(t.limit)} {t.unit} | {verdict} |")
    lines += [""]
    lines.extend(
        f"- {label}: {_fmt(_get(doc, path))} {unit}".rstrip()
        for path, label, unit in DETAILS["bench_extproc"]
    )
    rss = doc.get("rss", {})
    lines += [
        (
            f"- RSS before / after the soak: {_fmt(rss.get('before_mb', math.nan))} / "
            f"{_fmt(rss.get('after_mb', math.nan))} MB"
        ),
        LONG_END,
    ]
    return "\n".join(lines) + "\n"


def write_block(path: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the ``begin``...``end`` block of ``path`` (or append it), leaving the rest alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="the quick variant of every benchmark")
    p.add_argument("--repeat", type=int, default=3, help="runs per benchmark (default 3)")
    p.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    p.add_argument("--write", type=Path, default=None, help="rewrite the perf block of this Markdown file")
    p.add_argument("--json", action="store_true", help="print the collected documents as JSON")
    p.add_argument(
        "--long", action="store_true", help="one full bench_extproc run with a 1,000,000-stream soak"
    )
    args = p.parse_args(argv)
    if args.long:
        sys.stderr.write("[run_all] bench_extproc, full run with a 1,000,000-stream RSS soak\n")
        doc, command, seconds = _run_one("bench_extproc", False, ("--rss-streams", "1000000"))
        if doc is not None:
            RESULTS_DIR.mkdir(exist_ok=True)
            (RESULTS_DIR / "perf-bench_extproc-long.json").write_text(json.dumps(doc, indent=1) + "\n")
        block = render_long(doc, command, seconds)
        if args.write is not None:
            write_block(args.write, block, LONG_BEGIN, LONG_END)
        print(block)
        return 0 if doc is not None else 1
    names = [n for n in args.only.split(",") if n] or list(PERF)
    result = run(names, args.repeat, args.quick, lambda msg: sys.stderr.write(f"[run_all] {msg}\n"))
    block = render(result)
    if args.write is not None:
        write_block(args.write, block)
    print(json.dumps(result, indent=1) if args.json else block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
