"""Engine auto-detection for pods that carry no engine label.

Each supported engine names its families with a distinctive prefix, so the first such prefix found at
the start of a sample line (or in a ``# TYPE`` / ``# HELP`` comment) decides. The scraper runs this
once per pod, not per scrape, when the pod has no ``inference.networking.k8s.io/engine-type`` label —
instead of assuming vLLM and then reading nothing from an SGLang or TGI page.
"""

from __future__ import annotations

import re

__all__ = ["ENGINE_PREFIXES", "detect_engine"]

#: (engine, family-name prefix). The prefixes are disjoint: none starts another.
ENGINE_PREFIXES: tuple[tuple[str, bytes], ...] = (
    ("vllm", b"vllm:"),
    ("sglang", b"sglang:"),
    ("trtllm-serve", b"trtllm_"),
    ("triton-tensorrt-llm", b"nv_trt_llm_"),
    ("tgi", b"tgi_"),
)
_BY_PREFIX = {prefix: engine for engine, prefix in ENGINE_PREFIXES}
_ALTERNATION = b"|".join(re.escape(p) for _, p in ENGINE_PREFIXES)
# Starts with a literal newline so the regex engine hops from line to line; stops at the first hit.
_LINE = re.compile(rb"\n[ \t]*+(?:#[ \t]*+(?:TYPE|HELP)[ \t]++)?(" + _ALTERNATION + rb")")
_FIRST_LINE = re.compile(rb"[ \t]*+(?:#[ \t]*+(?:TYPE|HELP)[ \t]++)?(" + _ALTERNATION + rb")")


def detect_engine(page: bytes | bytearray | memoryview | str) -> str | None:
    """The engine whose family prefix appears first in the page, or None (not an engine we know).

    A page mixing engines (a sidecar re-exporting another server's metrics, say) goes to whichever
    shows up first. Triton without the TensorRT-LLM backend (only ``nv_inference_*``) and non-engine
    exporters (DCGM, node) yield None: nothing on them to route by. Never raises on page content.
    """
    if not isinstance(page, bytes):
        page = page.encode("utf-8", "surrogatepass") if isinstance(page, str) else bytes(page)
    m = _FIRST_LINE.match(page) or _LINE.search(page)
    return _BY_PREFIX[m.group(1)] if m is not None else None
