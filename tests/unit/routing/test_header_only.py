"""Header-only mode: the request as its headers describe it (table-driven), errors that name the header
and never echo the value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from picker.errors import BadRequest
from picker.routing.header_only import MAX_TOKEN_ESTIMATE, header_request_info

M, T = "x-ai-eg-model", "x-picker-prompt-tokens"


@pytest.mark.parametrize(
    ("headers", "model", "prompt_chars"),
    [
        ({M: "meta-llama/Llama-3.1-8B-Instruct"}, "meta-llama/Llama-3.1-8B-Instruct", 0),
        ({M: "m", T: "500"}, "m", 2000),
        ({M: "m", T: "0"}, "m", 0),
        ({M: "lora:adapter@v2", T: "999999999999"}, "lora:adapter@v2", MAX_TOKEN_ESTIMATE * 4),
    ],
)
def test_model_and_estimate(headers: dict[str, str], model: str, prompt_chars: int) -> None:
    info = header_request_info(headers, M, T)
    assert (info.model, info.prompt_chars) == (model, prompt_chars)
    assert not info.stream  # unknown without the body: no prefill charge


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "model not found in header x-ai-eg-model"),
        ({M: ""}, "model not found in header x-ai-eg-model"),
        ({M: "a b"}, "spaces, control characters"),
        ({M: "a\tb"}, "spaces, control characters"),
        ({M: "bad\ufffd"}, "not UTF-8"),
        ({M: "m" * 257}, "longer than 256 characters"),
        ({M: "m", T: "-1"}, "header x-picker-prompt-tokens must be a non-negative integer"),
        ({M: "m", T: "1.5"}, "must be a non-negative integer"),
        ({M: "m", T: "١٢"}, "must be a non-negative integer"),  # non-ASCII digits
        ({M: "m", T: "1" * 13}, "must be a non-negative integer"),
    ],
)
def test_bad_headers_are_a_400(headers: dict[str, str], error: str) -> None:
    with pytest.raises(BadRequest) as info:
        header_request_info(headers, M, T)
    assert error in info.value.message
    assert info.value.http_status == 400


@given(st.text(max_size=300), st.text(max_size=20))
def test_junk_never_raises_anything_but_a_400_and_is_never_echoed(model: str, tokens: str) -> None:
    message = ""
    try:
        header_request_info({M: model, T: tokens}, M, T)
    except BadRequest as exc:
        message = exc.message
    if message:  # one of the fixed messages, whatever the value
        assert message.endswith(f"in header {M}") or message.startswith(f"header {T} must be")
        assert message.count(M) + message.count(T) == 1
