"""Metric-extraction benchmark: our extractor against prometheus_client's text parser on real pages.

    python -m benchmarks.bench_extract --json          # ~15 s of CPU: 11 runs per figure
    python -m benchmarks.bench_extract --quick --json  # a few seconds: 5 short runs per figure

For every page in ``tests/data/metrics`` (provenance: ``tests/data/SOURCES.md``) and the engine the page
is detected as (vLLM for pages of no known engine), it times, per call:

- ``extract_us``: :meth:`picker.scrape.Extractor.extract` on the page bytes, as the scraper calls it;
- ``prometheus_client_us``: the baseline — decode, ``text_string_to_metric_families`` fully consumed,
  then the same fields picked from the parsed samples with the same rules;
- ``extract_filtered_us``: the extractor on the page reduced to the wanted families, which is what a
  prometheus_client-based server (vLLM, SGLang) sends when the scraper asks with ``?name[]=...``;
- ``detect_us``: :func:`picker.scrape.detect_engine`.

Each figure is CPU time per call (this process's, so a busy neighbour on the machine barely moves it):
the median over runs of the mean within a run, GC off during a run as ``timeit`` does, the methods
taking turns run by run. ``speedup`` is the median over runs of the per-run ratio. ``agree`` confirms
both methods return the same fields. The target is a speedup of at least 30x on the real vLLM pages.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.harness import cpu_model
from picker.scrape import BUILTIN_ENGINES, DEFAULT_ENGINE, EngineSpec, Extractor, detect_engine
from picker.state.metrics import EndpointMetrics
from picker.testing.extract_oracle import comparable, oracle

PAGES_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "metrics"
TARGET_SPEEDUP = 30.0


def baseline(page: bytes, spec: EngineSpec) -> EndpointMetrics:
    """Decode, full parse with prometheus_client, then the README's selection rules on the parsed samples
    (the extraction tests' oracle)."""
    return oracle(page.decode("utf-8", "replace"), spec)


def _family(line: bytes) -> bytes:
    """The family a sample line, or a ``# HELP`` / ``# TYPE`` line, belongs to."""
    words = line.split()
    if line.startswith(b"#"):
        return words[2] if len(words) > 2 else b""
    return line.split(b"{", 1)[0].split(b" ", 1)[0]


def only_wanted(page: bytes, wanted: tuple[str, ...]) -> bytes:
    """The page as a prometheus_client server sends it for ``?name[]=<wanted>``."""
    names = {w.encode() for w in wanted}
    return b"\n".join(line for line in page.splitlines() if _family(line) in names) + b"\n"


def time_calls(fns: dict[str, Callable[[], object]], runs: int, seconds: float) -> dict[str, list[float]]:
    """Per function, the mean CPU µs per call of each of ``runs`` runs of about ``seconds`` each.

    CPU time of this process (not wall time), and the functions take turns run by run: a busy
    neighbour on a shared 2-core machine then barely moves the figures, and a speedup computed from
    the same run compares like with like.
    """
    clock = time.process_time
    loops = {}
    for key, fn in fns.items():
        fn()  # warm up (regex compilation, memos)
        start = clock()
        n = 0
        while clock() - start < seconds / 10:
            fn()
            n += 1
        loops[key] = max(1, n * 10)
    samples: dict[str, list[float]] = {key: [] for key in fns}
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(runs):
            for key, fn in fns.items():
                n = loops[key]
                gc.disable()
                t0 = clock()
                for _ in range(n):
                    fn()
                samples[key].append((clock() - t0) / n * 1e6)
                gc.enable()
                gc.collect()
    finally:
        if not gc_was_enabled:
            gc.disable()
    return samples


def run(quick: bool, command: str) -> dict[str, Any]:
    wall0 = time.perf_counter()
    runs, seconds = (5, 0.02) if quick else (11, 0.04)
    pages = {p.name: p.read_bytes() for p in sorted(PAGES_DIR.glob("*.txt"))}
    doc: dict[str, Any] = {
        "benchmark": "extract",
        "command": command,
        "quick": quick,
        "method": (
            f"CPU time per call: median over {runs} interleaved runs of ~{seconds}s each (GC off); "
            "speedup = median over runs of prometheus_client / extract"
        ),
        "pages": {},
        "extract_us": {},
        "prometheus_client_us": {},
        "speedup": {},
        "extract_filtered_us": {},
        "detect_us": {},
        "agree": {},
    }
    for name, page in pages.items():
        detected = detect_engine(page)
        engine = detected or DEFAULT_ENGINE
        spec = BUILTIN_ENGINES[engine]
        x = Extractor(spec)
        filtered = only_wanted(page, x.wanted_families())
        t = time_calls(
            {
                "ours": lambda x=x, page=page: x.extract(page),
                "base": lambda page=page, spec=spec: baseline(page, spec),
                "filtered": lambda x=x, f=filtered: x.extract(f),
                "detect": lambda page=page: detect_engine(page),
            },
            runs,
            seconds,
        )
        doc["pages"][name] = {
            "bytes": len(page),
            "filtered_bytes": len(filtered),
            "engine": engine,
            "detected": detected,
        }
        doc["extract_us"][name] = round(statistics.median(t["ours"]), 2)
        doc["prometheus_client_us"][name] = round(statistics.median(t["base"]), 1)
        doc["speedup"][name] = round(
            statistics.median(b / o for b, o in zip(t["base"], t["ours"], strict=True)), 1
        )
        doc["extract_filtered_us"][name] = round(statistics.median(t["filtered"]), 2)
        doc["detect_us"][name] = round(statistics.median(t["detect"]), 2)
        doc["agree"][name] = comparable(x.extract(page)) == comparable(baseline(page, spec))
    vllm = [n for n, info in doc["pages"].items() if info["detected"] == "vllm"]
    doc["vllm_pages"] = vllm
    doc["vllm_min_speedup"] = min(doc["speedup"][n] for n in vllm)
    doc["target_speedup"] = TARGET_SPEEDUP
    doc["target_met"] = doc["vllm_min_speedup"] >= TARGET_SPEEDUP
    doc["machine"] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "prometheus_client": version("prometheus-client"),
    }
    doc["wall_s"] = round(time.perf_counter() - wall0, 1)
    return doc


def _summary(doc: dict[str, Any]) -> str:
    lines = [f"{'page':44} {'engine':20} {'extract µs':>11} {'prom_client µs':>15} {'speedup':>8}"]
    for name, info in doc["pages"].items():
        lines.append(
            f"{name:44} {info['engine']:20} {doc['extract_us'][name]:>11} "
            f"{doc['prometheus_client_us'][name]:>15} {doc['speedup'][name]:>7}x"
        )
    lines.append(
        f"vLLM pages: min speedup {doc['vllm_min_speedup']}x (target {TARGET_SPEEDUP}x, "
        f"{'met' if doc['target_met'] else 'NOT met'})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_extract", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5 short runs per figure (a few seconds in all)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = p.parse_args(argv)
    command = "python -m benchmarks.bench_extract " + shlex.join(sys.argv[1:] if argv is None else argv)
    doc = run(args.quick, command)
    print(json.dumps(doc, indent=2) if args.json else _summary(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
