"""The canonical prompt the prefix index hashes (``picker.routing.prompt``)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.routing.prompt import UNBOUNDED, hash_input, prompt_source
from picker.routing.types import API_CHAT, API_COMPLETIONS, API_CONVERSATIONS, API_EMBEDDINGS, API_RESPONSES

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("api", "doc", "expected"),
    [
        (API_COMPLETIONS, {"prompt": "hello"}, "hello"),
        (API_COMPLETIONS, {"prompt": ["a", "b", "c"]}, "a b c"),
        (
            API_CHAT,
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
            "system\ns\nuser\nu\n",
        ),
        (
            API_CHAT,
            {"tools": [TOOL], "messages": [{"role": "user", "content": "u"}]},
            '{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}\nuser\nu\n',
        ),
        (
            API_CHAT,
            {
                "messages": [
                    {"role": "user", "name": "ann", "content": [{"type": "text", "text": "look"}]},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "42"},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
                ]
            },
            'user\nann\nlook\nassistant\n\n[{"id":"c1"}]\ntool\n42\nc1\nuser\ndata:x\n',
        ),
        (API_RESPONSES, {"instructions": "be brief", "input": "hi"}, "be brief\nhi"),
        (
            API_RESPONSES,
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]}]},
            "user\nq\n",
        ),
        (API_CONVERSATIONS, {"items": [{"type": "message", "role": "user", "content": "c"}]}, "user\nc\n"),
        (API_EMBEDDINGS, {"input": "e"}, "e"),
        (API_EMBEDDINGS, {"input": ["e", "f"]}, "e\nf"),
    ],
)
def test_canonical_prompt_per_api(api: str, doc: dict[str, Any], expected: str) -> None:
    assert prompt_source(api, doc, UNBOUNDED) == expected
    assert hash_input(api, doc, 4096) == expected.encode()


def test_tools_change_the_leading_bytes() -> None:
    messages = [{"role": "user", "content": "same question"}]
    with_tools = hash_input(API_CHAT, {"tools": [TOOL], "messages": messages}, 4096)
    other_tools = hash_input(API_CHAT, {"tools": [{**TOOL, "type": "other"}], "messages": messages}, 4096)
    assert with_tools[:16] != other_tools[:16]


def test_a_conversation_turn_extends_the_previous_turns_bytes() -> None:
    turn1 = [{"role": "system", "content": "sys " * 50}, {"role": "user", "content": "first question"}]
    turn2 = [*turn1, {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "next"}]
    a = hash_input(API_CHAT, {"messages": turn1}, 4096)
    b = hash_input(API_CHAT, {"messages": turn2}, 4096)
    assert b.startswith(a)


def test_token_ids_are_little_endian_words_sixteen_per_block() -> None:
    doc = {"prompt": list(range(40))}
    data = hash_input(API_COMPLETIONS, doc, 4096)
    assert data == struct.pack("<40I", *range(40))
    assert len(hash_input(API_COMPLETIONS, doc, 64)) == 64  # one block: 16 tokens
    assert hash_input(API_COMPLETIONS, {"prompt": [[1, 2], [3]]}, 4096) == b""
    assert hash_input(API_EMBEDDINGS, {"input": [7, 8]}, 4096) == struct.pack("<2I", 7, 8)


def test_work_is_bounded_by_the_window() -> None:
    doc = {"messages": [{"role": "user", "content": "x" * 1_000_000}] * 50}
    source = prompt_source(API_CHAT, doc, 1000)
    assert isinstance(source, str)
    assert 1000 <= len(source) < 1100
    assert len(hash_input(API_CHAT, doc, 1000)) == 1000


def test_multibyte_text_is_cut_at_the_byte_window() -> None:
    data = hash_input(API_COMPLETIONS, {"prompt": "日本語" * 100}, 10)
    assert len(data) == 10
    assert data == ("日本語" * 100).encode()[:10]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
fields = st.sampled_from(["messages", "prompt", "input", "items", "tools", "instructions", "content", "role"])


@settings(max_examples=200, deadline=None)
@given(
    api=st.sampled_from([API_CHAT, API_COMPLETIONS, API_RESPONSES, API_CONVERSATIONS, API_EMBEDDINGS]),
    doc=st.dictionaries(fields, json_values, max_size=5),
    window=st.integers(1, 200),
)
def test_never_raises_and_respects_the_window(api: str, doc: dict[str, Any], window: int) -> None:
    assert len(hash_input(api, doc, window)) <= window
