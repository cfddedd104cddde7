"""Usage extraction from JSON and SSE responses, on real captured bodies and on awkward splits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.extproc import usage as usage_module
from picker.extproc.usage import SSE_TAIL_BYTES, SSEUsageScanner, Usage, usage_from_json, usage_from_mapping

DATA = Path(__file__).parents[2] / "data" / "openai"


def test_vllm_chat_completion_response() -> None:
    body = (DATA / "vllm-chat-completion-response.json").read_bytes()
    assert usage_from_json(body) == Usage(prompt_tokens=3606, completion_tokens=40, total_tokens=3646)


def test_vllm_completions_response_pretty_printed() -> None:
    body = (DATA / "vllm-completions-response.json").read_bytes()
    assert usage_from_json(body) == Usage(prompt_tokens=7, completion_tokens=24, total_tokens=31)


@pytest.mark.parametrize(
    "name",
    [
        "vllm-error-400-context-length.json",
        "openai-error-404-model-not-found.json",
        "openai-error-400-invalid-param.json",
    ],
)
def test_error_bodies_have_no_usage(name: str) -> None:
    assert usage_from_json((DATA / name).read_bytes()) is None


def _scan(chunks: list[bytes]) -> Usage | None:
    scanner = SSEUsageScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.finish()


def test_openai_chat_stream_with_include_usage() -> None:
    body = (DATA / "openai-chat-stream-include-usage.sse").read_bytes()
    assert _scan([body]) == Usage(prompt_tokens=12, completion_tokens=100, total_tokens=112, cached_tokens=0)


def test_openai_completions_stream_split_at_every_position_of_the_usage_line() -> None:
    body = (DATA / "openai-completions-stream-include-usage.sse").read_bytes()
    expected = Usage(prompt_tokens=31, completion_tokens=25, total_tokens=56)
    start = body.rfind(b'"usage":{')
    # every split point in and around the usage event: the reference misses all of these
    for cut in range(start - 40, min(len(body), start + 80)):
        assert _scan([body[:cut], body[cut:]]) == expected, cut


def test_stream_split_into_single_bytes() -> None:
    body = (DATA / "openai-chat-stream-include-usage.sse").read_bytes()
    assert _scan([body[i : i + 1] for i in range(len(body))]) == Usage(12, 100, 112, 0)


def test_last_usage_wins_for_continuous_usage_stats() -> None:
    events = [
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert _scan(events) == Usage(5, 2, 7, 0)


def test_responses_api_stream_completed_event_and_cached_tokens() -> None:
    created = {"type": "response.created", "response": {"id": "r", "usage": None}}
    completed = {
        "type": "response.completed",
        "response": {
            "id": "r",
            "usage": {
                "input_tokens": 30,
                "output_tokens": 4,
                "total_tokens": 34,
                "input_tokens_details": {"cached_tokens": 16},
            },
        },
    }
    chunks = [
        b"event: response.created\ndata: " + orjson.dumps(created) + b"\n\n",
        b"event: response.completed\ndata: " + orjson.dumps(completed),  # no trailing newline
    ]
    assert _scan(chunks) == Usage(30, 4, 34, 16)


def test_final_line_without_newline_and_crlf_lines() -> None:
    line = b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}'
    assert _scan([line]) == Usage(2, 3, 5, 0)
    assert _scan([line + b"\r\n\r\n"]) == Usage(2, 3, 5, 0)


def test_sse_junk_and_escaped_usage_text_are_ignored() -> None:
    chunks = [
        b"data: {not json\n",
        b'data: {"choices":[{"delta":{"content":"\\"usage\\":{\\"prompt_tokens\\":9}"}}]}\n',
        b"data: [DONE]\n",
        b": comment\n",
        b'data: ["usage":{]\n',
    ]
    assert _scan(chunks) is None


def test_overlong_line_is_dropped_not_accumulated() -> None:
    scanner = SSEUsageScanner()
    for _ in range(40):
        scanner.feed(b"x" * 64 * 1024)  # 2.5 MiB with no newline
    scanner.feed(b'\ndata: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n')
    assert scanner.finish() == Usage(1, 1, 2, 0)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, Usage(3, 4, 7, 0)),
        ({"input_tokens": 3, "output_tokens": 4}, Usage(3, 4, 7, 0)),
        ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}, Usage(3, 0, 3, 2)),
        ({"prompt_tokens": 3, "prompt_token_details": {"cached_tokens": 1}}, Usage(3, 0, 3, 1)),
        ({"prompt_tokens": 3, "prompt_tokens_details": None}, Usage(3, 0, 3, 0)),
        ({"prompt_tokens": "3", "completion_tokens": True, "total_tokens": -1}, Usage(0, 0, 0, 0)),
    ],
)
def test_usage_field_variants(usage: dict[str, object], expected: Usage) -> None:
    assert usage_from_mapping(usage) == expected


def test_json_usage_is_the_last_top_level_key_not_text() -> None:
    body = orjson.dumps(
        {
            "choices": [{"message": {"content": 'he wrote "usage": {"prompt_tokens": 99}'}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )
    assert usage_from_json(body) == Usage(1, 2, 3, 0)
    assert usage_from_json(b'{"usage": null}') is None
    assert usage_from_json(b'{"usage" : {"prompt_tokens": 4}}') == Usage(4, 0, 4, 0)
    assert usage_from_json(b'{"usage": {"prompt_tokens": 4') is None
    assert usage_from_json(b"") is None


def test_large_embeddings_response_usage_at_the_end() -> None:
    body = orjson.dumps(
        {
            "object": "list",
            "data": [{"embedding": [0.125] * 50_000, "index": 0}],
            "model": "e",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )
    assert usage_from_json(body) == Usage(8, 0, 8, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_scanner_never_raises_on_junk(chunks: list[bytes]) -> None:
    _scan(chunks)
    usage_from_json(b"".join(chunks))


def test_scanner_keeps_only_a_bounded_tail() -> None:
    early = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    filler = b'data: {"choices":[{"delta":{"content":"' + b"z" * 1000 + b'"}}],"usage":null}\n\n'
    chunks = [early] + [filler] * (SSE_TAIL_BYTES // len(filler) + 2)
    # the early usage scrolled out of the kept tail: streams report usage at their end
    assert _scan(chunks) is None
    many = [filler] * 5000 + [early]
    assert _scan(many) == Usage(1, 1, 2, 0)


_DETAILS = b'"prompt_tokens_details": {"cached_tokens": 2}'


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens": 3, "completion_tokens": 4, ' + _DETAILS + b"}",
        b'{"prompt_tokens": 3, "completion_tokens": 4, "note": "}{", ' + _DETAILS + b"}",
        b'{"prompt_tokens": 3, "note": "{{", "completion_tokens": 4, ' + _DETAILS + b"}",
        b'{"prompt_tokens": 3, "completion_tokens": 4, ' + _DETAILS + b', "x": NaN}',
    ],
)
def test_usage_objects_with_nesting_and_braces_in_strings(usage: bytes) -> None:
    # the brace count is fooled by the strings (and orjson by NaN): the standard decoder reads those
    expected = Usage(3, 4, 7, 2)
    assert usage_from_json(b'{"id": "x", "usage": ' + usage + b"}") == expected
    assert _scan([b'data: {"choices": [], "usage": ' + usage + b"}\n\ndata: [DONE]\n\n"]) == expected


@pytest.mark.parametrize(
    "chunks",
    [
        [(DATA / "openai-chat-stream-include-usage.sse").read_bytes()],
        [b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n', b"data: [DONE]\n\n"],
        [b'data: {"choices":[],"usage":null}\n\n', b"data: [DONE]\n\n"],
        [b"data: {not json\n"],
    ],
    ids=["openai", "split", "null-only", "junk"],
)
def test_deferred_usage_reads_what_the_eager_scan_reads(chunks: list[bytes]) -> None:
    eager, deferred = SSEUsageScanner(), SSEUsageScanner()
    for chunk in chunks:
        eager.feed(chunk)
        deferred.feed(chunk)
    expected = eager.finish()
    report = deferred.finish_deferred()
    assert report is not None
    zero = Usage()
    got = (report.prompt_tokens, report.completion_tokens, report.total_tokens, report.cached_tokens)
    want = expected or zero
    assert got == (want.prompt_tokens, want.completion_tokens, want.total_tokens, want.cached_tokens)
    assert report.resolve() == expected  # scanned once; asking again gives the same
    assert SSEUsageScanner().finish_deferred() is None  # nothing fed: nothing to report


# ------------------------------------------------------------------------------------------ hostile bodies
class _CountingPattern:
    """Wraps the scanner's structure regex and counts the characters it hands out (a work measure)."""

    def __init__(self, pattern: Any) -> None:
        self._pattern = pattern
        self.seen = 0

    def finditer(self, data: bytes, start: int, end: int) -> Iterator[Any]:
        for m in self._pattern.finditer(data, start, end):
            self.seen += 1
            yield m


HOSTILE_TAILS = {
    "repeated-open": b'data: {"x":1}\n\n' + b'"usage":{{' * 6_500,
    "repeated-open-then-closed": b'"usage":{{' * 3_000 + b"}" * 32_000,
    "repeated-open-spaced": b'"usage" : { "a" : {' * 3_500,
    "open-strings": b'"usage":{"' * 6_500,
    "brackets": b'"usage":{"a":[' * 4_500,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tail", HOSTILE_TAILS.values(), ids=HOSTILE_TAILS.keys())
def test_a_hostile_tail_costs_work_linear_in_its_size(tail: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingPattern(usage_module._STRUCTURE)
    monkeypatch.setattr(usage_module, "_STRUCTURE", counter)
    assert len(tail) > 60_000
    assert _scan([tail]) is None
    assert usage_from_json(tail) is None
    # a bounded number of bounded object scans, whatever the number of repetitions
    assert counter.seen <= 2 * usage_module._MAX_CANDIDATES * usage_module._MAX_USAGE_OBJECT


DEEP = 100_000


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"x","usage":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
        b'{"id":"x","usage":{"prompt_tokens":1,"x":' + b"[" * DEEP + b"]" * DEEP + b"}}",
        b'{"id":"x","usage":{"prompt_tokens":1,"x":' + b"[" * DEEP,
    ],
    ids=["objects", "arrays", "unclosed"],
)
def test_a_deeply_nested_usage_object_is_no_usage_never_an_error(body: bytes) -> None:
    assert usage_from_json(body) is None
    assert _scan([b"data: " + body + b"\n\ndata: [DONE]\n\n"]) is None
    scanner = SSEUsageScanner()
    scanner.feed(b"data: " + body[-SSE_TAIL_BYTES:] + b"\n\n")
    deferred = scanner.finish_deferred()
    assert deferred is not None
    assert (deferred.prompt_tokens, deferred.completion_tokens) == (0, 0)


def test_a_usage_object_over_the_object_bound_is_not_read() -> None:
    padding = b'"pad":"' + b"x" * usage_module._MAX_USAGE_OBJECT + b'",'
    body = b'{"usage":{' + padding + b'"prompt_tokens":3,"completion_tokens":4}}'
    assert usage_from_json(body) is None
    assert usage_from_json(b'{"usage":{"pad":"x","prompt_tokens":3,"completion_tokens":4}}') == Usage(3, 4, 7)
