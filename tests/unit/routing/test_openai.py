"""The OpenAI body parser: API detection, validation messages, derived fields, model rewrites."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.errors import BadRequest
from picker.routing.openai import (
    ModelRestorer,
    api_for_path,
    parse_passthrough,
    parse_request,
    prompt_text,
    reverse_rewrite,
    rewrite_model,
)
from picker.routing.types import (
    API_CHAT,
    API_COMPLETIONS,
    API_CONVERSATIONS,
    API_EMBEDDINGS,
    API_RESPONSES,
)

DATA = Path(__file__).parents[2] / "data" / "openai"


def _body(**doc: object) -> bytes:
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/completions", API_COMPLETIONS),
        ("/v1/chat/completions", API_CHAT),
        ("/v1/chat/completions?stream=1", API_CHAT),
        ("/v1/chat/completions/", API_CHAT),
        ("/openai/v1/responses", API_RESPONSES),
        ("/v1/conversations", API_CONVERSATIONS),
        ("/v1/embeddings#x", API_EMBEDDINGS),
        ("/v1/models", API_COMPLETIONS),
        ("", API_COMPLETIONS),
        ("/v1/completions?next=/v1/embeddings", API_COMPLETIONS),
    ],
)
def test_api_is_chosen_by_path_suffix(path: str, api: str) -> None:
    assert api_for_path(path) == api


def test_completions_request_fields_are_derived() -> None:
    info = parse_request(
        "/v1/completions",
        _body(
            model="m",
            prompt="hello",
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=7,
        ),
    )
    assert info.api == API_COMPLETIONS
    assert info.model == "m"
    assert info.stream is True
    assert info.include_usage is True
    assert info.max_tokens == 7
    assert info.prompt_chars == 5


def test_real_request_bodies_parse() -> None:
    chat = parse_request(
        "/v1/chat/completions", (DATA / "openai-chat-stream-include-usage.request.json").read_bytes()
    )
    assert (chat.model, chat.stream, chat.include_usage, chat.max_tokens) == ("gpt-5-nano", True, True, 100)
    assert chat.prompt_chars == len("Hello, I'm a developer!")
    comp = parse_request(
        "/v1/completions", (DATA / "openai-completions-stream-include-usage.request.json").read_bytes()
    )
    assert (comp.model, comp.stream, comp.include_usage, comp.max_tokens) == ("babbage-002", True, True, 25)


def test_chat_counts_text_parts_and_accepts_tool_round_trip() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {}}],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}, {"id": "2"}]},
        {"role": "tool", "tool_call_id": "1", "content": "r1"},
        {"role": "tool", "tool_call_id": "2", "content": "r2"},
        {"role": "assistant", "content": "done"},
        {"role": "ipython", "content": "custom roles pass"},
    ]
    info = parse_request("/v1/chat/completions", _body(model="m", messages=messages, max_completion_tokens=3))
    assert info.prompt_chars == 3 + 4 + 2 + 2 + 4 + len("custom roles pass")
    assert info.max_tokens == 3


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/completions", b"no healthy upstream", "error unmarshaling request bodyMap: "),
        (
            "/v1/completions",
            b"[1,2]",
            "error unmarshaling request bodyMap: request body must be a JSON object",
        ),
        ("/v1/completions", b'{"model":"m","prompt":"\xff\xfe"}', "request body is not valid UTF-8"),
        ("/v1/completions", b"", "error unmarshaling request bodyMap: "),
        ("/v1/completions", b'{"prompt":"hello world"}', "model not found in request body"),
        ("/v1/completions", b'{"model":7,"prompt":"x"}', "model not found in request body"),
        ("/v1/completions", b'{"model":"m"}', "invalid completions request: must have prompt field"),
        (
            "/v1/completions",
            b'{"model":"m","prompt":""}',
            "invalid completions request: must have prompt field",
        ),
        ("/v1/completions", b'{"model":"m","prompt":[]}', "invalid completions request: prompt must be"),
        ("/v1/completions", b'{"model":"m","prompt":["a",1]}', "prompt array must hold only strings"),
        ("/v1/completions", b'{"model":"m","prompt":[1,"a"]}', "prompt token array must hold only integers"),
        (
            "/v1/completions",
            b'{"model":"m","prompt":[[1],[]]}',
            "prompt token arrays must hold only integers",
        ),
        ("/v1/completions", b'{"model":"m","prompt":{"a":1}}', "invalid completions request: prompt must be"),
        (
            "/v1/chat/completions",
            b'{"model":"m"}',
            "invalid chat completions request: must have valid messages",
        ),
        ("/v1/chat/completions", b'{"model":"m","messages":[]}', "must have valid messages field"),
        ("/v1/chat/completions", b'{"model":"m","messages":"hi"}', "must have valid messages field"),
        ("/v1/chat/completions", b'{"model":"m","messages":[1]}', "messages[0] must be an object"),
        (
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"content":"x"}]}',
            "messages[0] must have a string role",
        ),
        (
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"user","content":5}]}',
            "messages[0].content must be a string",
        ),
        ("/v1/responses", b'{"model":"m"}', "invalid responses request: must have input field"),
        ("/v1/responses", b'{"model":"m","input":3}', "invalid responses request: must have input field"),
        ("/v1/conversations", b'{"model":"m","items":[]}', "invalid conversations request: must have items"),
        ("/v1/embeddings", b'{"model":"m","input":""}', "invalid embeddings request: must have input field"),
        ("/v1/embeddings", b'{"model":"m","input":[{}]}', "invalid embeddings request: input must be"),
        (
            "/v1/completions",
            b'{"model":"m","prompt":"x","stream":"yes"}',
            "invalid request: stream must be a boolean",
        ),
        (
            "/v1/completions",
            b'{"model":"m","prompt":"x","stream_options":[]}',
            "stream_options must be an object",
        ),
        (
            "/v1/completions",
            b'{"model":"m","prompt":"x","stream_options":{"include_usage":1}}',
            "stream_options.include_usage must be a boolean",
        ),
        (
            "/v1/completions",
            b'{"model":"m","prompt":"x","max_tokens":-1}',
            "max_tokens must be a non-negative",
        ),
        (
            "/v1/completions",
            b'{"model":"m","prompt":"x","max_tokens":true}',
            "max_tokens must be a non-negative",
        ),
        (
            "/v1/completions",
            b'{"model":"m","prompt":"x","max_tokens":1.5}',
            "max_tokens must be a non-negative",
        ),
        ("/v1/completions", b'{"model":"m","prompt":"x","cache_salt":1}', "cache_salt must be a string"),
    ],
)
def test_invalid_bodies_are_rejected_with_clear_messages(path: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(path, body)
    assert message in info.value.message
    assert info.value.wire_body().startswith("inference error: BadRequest - ")


@pytest.mark.parametrize(
    ("messages", "index", "fragment"),
    [
        (
            [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}],
            0,
            '"assistant" before any',
        ),
        ([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}], 1, 'role "tool" but does not'),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "no calls"},
                {"role": "tool", "content": "r"},
            ],
            2,
            "answer an assistant message with tool_calls",
        ),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"id": "1"}]},
                {"role": "tool", "content": "r"},
                {"role": "user", "content": "y"},
                {"role": "tool", "content": "late"},
            ],
            4,
            'role "tool"',
        ),
        ([{"role": "user", "content": "x"}, {"role": "function", "content": "r"}], 1, 'role "function"'),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": {"id": "1"}}],
            1,
            "tool_calls must be an array",
        ),
    ],
)
def test_impossible_message_orders_are_rejected(messages: list[object], index: int, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request("/v1/chat/completions", _body(model="m", messages=messages))
    assert f"messages[{index}]" in info.value.message
    assert fragment in info.value.message


def test_legacy_function_call_allows_a_function_answer() -> None:
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "r"},
    ]
    assert parse_request("/v1/chat/completions", _body(model="m", messages=messages)).model == "m"


@pytest.mark.parametrize(
    ("path", "doc", "chars"),
    [
        ("/v1/completions", {"prompt": ["ab", "cde"]}, 5),
        ("/v1/completions", {"prompt": [1, 2, 3]}, 12),
        ("/v1/completions", {"prompt": [[1, 2], [3]]}, 12),
        ("/v1/responses", {"input": "abc"}, 3),
        (
            "/v1/responses",
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "ab"}]}]},
            2,
        ),
        ("/v1/conversations", {"items": [{"type": "message", "content": "abcd"}]}, 4),
        ("/v1/embeddings", {"input": "abc"}, 3),
        ("/v1/embeddings", {"input": ["a", "bc"]}, 3),
        ("/v1/embeddings", {"input": [5, 6]}, 8),
        ("/v1/embeddings", {"input": [[5], [6, 7]]}, 12),
    ],
)
def test_accepted_shapes_and_prompt_size(path: str, doc: dict[str, object], chars: int) -> None:
    info = parse_request(path, _body(model="m", **doc))
    assert info.prompt_chars == chars


def test_null_optional_fields_are_absent_and_empty_model_is_allowed() -> None:
    info = parse_request(
        "/v1/completions",
        _body(model="", prompt="x", stream=None, stream_options=None, max_tokens=None, max_output_tokens=9),
    )
    assert (info.model, info.stream, info.include_usage, info.max_tokens) == ("", False, False, 9)


def test_prefix_input_is_the_bounded_canonical_prompt_and_the_salt() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "u"}]},
    ]
    body = _body(model="m", messages=messages, cache_salt="salt")
    info = parse_request("/v1/chat/completions", body, prefix_window=4096)
    assert info.prefix_input == b"system\ns\nuser\nu\n"
    assert info.cache_salt == "salt"
    assert parse_request("/v1/chat/completions", body, prefix_window=7).prefix_input == b"system\n"
    # off by default: nothing is extracted
    assert parse_request("/v1/chat/completions", body).prefix_input == b""


def test_prompt_text_is_the_whole_canonical_prompt() -> None:
    long = "x" * 50_000
    body = _body(model="m", messages=[{"role": "user", "content": long}])
    assert prompt_text("/v1/chat/completions", body) == f"user\n{long}\n"
    assert prompt_text("/v1/completions", _body(model="m", prompt=[1, 2])) == ""
    assert prompt_text("/v1/completions", b"not json") == ""


def test_passthrough_parser_accepts_anything() -> None:
    info = parse_passthrough("/v1/chat/completions", b"passthrough-parser")
    assert (info.api, info.model, info.prompt_chars) == (API_CHAT, None, 18)


def test_rewrite_model_keeps_everything_else() -> None:
    body = '{"model": "a", "prompt": "héllo <&>", "n": 12345678901234, "x": [1.5, null]}'.encode()
    out = rewrite_model(body, "target-model")
    assert out == '{"model":"target-model","prompt":"héllo <&>","n":12345678901234,"x":[1.5,null]}'.encode()
    assert json.loads(out)["model"] == "target-model"
    with pytest.raises(BadRequest):
        rewrite_model(b"not json", "x")


def test_reverse_rewrite_compact_then_spaced() -> None:
    compact = b'{"id":"1","model":"target","choices":[]}'
    assert reverse_rewrite(compact, "target", "client") == b'{"id":"1","model":"client","choices":[]}'
    spaced = b'{"model": "target", "x": 1}'
    assert reverse_rewrite(spaced, "target", "client") == b'{"model": "client", "x": 1}'
    # compact wins: the spaced form is only tried when the compact one is absent
    both = b'{"model":"target"} {"model": "target"}'
    assert reverse_rewrite(both, "target", "c") == b'{"model":"c"} {"model": "target"}'
    assert reverse_rewrite(compact, "other", "client") == compact
    assert reverse_rewrite(compact, "target", "target") is compact
    # a longer name that merely starts with the target is left alone
    assert reverse_rewrite(b'{"model":"target-2"}', "target", "c") == b'{"model":"target-2"}'


def test_model_restorer_handles_escaped_non_ascii_names() -> None:
    restorer = ModelRestorer("módel", "client")
    assert restorer.active
    assert restorer('{"model":"módel"}'.encode()) == b'{"model":"client"}'
    assert restorer(b'{"model":"m\\u00f3del"}') == b'{"model":"client"}'
    assert not ModelRestorer("same", "same").active


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_raises_anything_but_bad_request_on_junk(body: bytes) -> None:
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/embeddings"):
        with contextlib.suppress(BadRequest):
            parse_request(path, body)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["model", "prompt", "messages", "input", "items", "stream", "stream_options", "max_tokens"]
        ),
        _json_values,
    )
)
def test_parser_never_raises_anything_but_bad_request_on_odd_documents(doc: dict[str, object]) -> None:
    body = orjson.dumps(doc)
    for path in (
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/conversations",
        "/v1/embeddings",
    ):
        with contextlib.suppress(BadRequest):
            parse_request(path, body)
