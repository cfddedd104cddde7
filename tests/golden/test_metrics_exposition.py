"""Golden file of our ``/metrics`` exposition after a fixed set of requests through the real service.

HELP and TYPE lines are compared verbatim; every sample line is reduced to its series name and label set
(values depend on timing). Regenerate with ``PICKER_UPDATE_GOLDEN=1`` (see README.md in this folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from picker.testing.envoy import HttpRequest, UpstreamResponse
from tests.integration.service.conftest import Pod, StartService, completion, req_llm

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).with_name("metrics_exposition.txt")
SAMPLE = re.compile(r"^(?P<series>[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?) (?P<value>\S+)(?: \S+)?$")
#: labels whose values come from the build environment, not from the service's behaviour
BUILD_LABELS = re.compile(r'\b(commit|build_ref)="[^"]*"')


def normalize(exposition: str) -> str:
    out = []
    for line in exposition.splitlines():
        if line.startswith("#"):
            out.append(line)
            continue
        m = SAMPLE.match(line)
        assert m is not None, f"not an exposition line: {line!r}"
        out.append(BUILD_LABELS.sub(r'\1="<build>"', m["series"]) + " <value>")
    return "\n".join(out) + "\n"


def test_normalize_keeps_names_and_labels_and_drops_values() -> None:
    text = (
        "# HELP a_total [ALPHA] x\n# TYPE a_total counter\n"
        'a_total{model_name="m",priority="0"} 3.0\n'
        'a_created{model_name="m",priority="0"} 1.7e+09\n'
        'info{build_ref="v1",commit="abc"} 1.0\n'
        "g 0.5\n"
    )
    assert normalize(text) == (
        "# HELP a_total [ALPHA] x\n# TYPE a_total counter\n"
        'a_total{model_name="m",priority="0"} <value>\n'
        'a_created{model_name="m",priority="0"} <value>\n'
        'info{build_ref="<build>",commit="<build>"} <value>\n'
        "g <value>\n"
    )


async def test_metrics_exposition_matches_the_golden_file(start_service: StartService) -> None:
    svc = await start_service()
    await svc.set_metrics(Pod(3, 0.2), Pod(0, 0.1), Pod(10, 0.2))
    usage = (
        b'{"object":"text_completion","model":"my-model-12345","choices":[{"text":"ok"}],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,'
        b'"prompt_tokens_details":{"cached_tokens":2}}}'
    )
    routed = await svc.exchange(
        req_llm("golden", "my-model", "my-model-12345"), UpstreamResponse(chunks=[usage])
    )
    assert routed.response_body == usage.replace(b'"my-model-12345"', b'"my-model"')
    rewritten = await svc.exchange(req_llm("golden", "model-to-be-rewritten", "model-to-be-rewritten"))
    assert rewritten.destination is not None
    bad = await svc.exchange(HttpRequest(body=b"not json"))
    assert bad.immediate is not None
    failed = await svc.exchange(HttpRequest(body=completion(model="m")), UpstreamResponse(status=503))
    assert failed.response_set_headers is not None
    await svc.set_metrics(Pod(3, 0.2), Pod(0, 0.1), Pod(10, 0.2))  # fresh, so every per-pod series shows

    actual = normalize(await svc.metrics())
    if os.environ.get("PICKER_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(actual, encoding="utf-8")
    assert actual == GOLDEN.read_text(encoding="utf-8")
