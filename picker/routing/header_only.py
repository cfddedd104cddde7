"""Header-only mode: what a request's headers say in place of its body (``picker.config.header_only``).

The model comes from the configured header (Envoy AI Gateway's ``x-ai-eg-model``, or any header a route
filter sets), the prompt-size estimate from a second header, both set by the gateway. Bad values are a
400 naming the header and the problem, never echoing the value (it reaches the client and the logs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from picker.errors import BadRequest
from picker.routing.types import Dispatch, RequestInfo
from picker.state.accounting import NullLease

__all__ = [
    "HDR_OBJECTIVE",
    "MAX_MODEL_HEADER",
    "MAX_TOKEN_ESTIMATE",
    "body_less_dispatch",
    "header_request_info",
]

HDR_OBJECTIVE = "x-gateway-inference-objective"

#: longest model name accepted from a header (Hugging Face ids and Kubernetes names are far shorter)
MAX_MODEL_HEADER: Final = 256
#: largest prompt-token estimate accepted from a header (more than any context window)
MAX_TOKEN_ESTIMATE: Final = 100_000_000


def header_request_info(headers: Mapping[str, str], model_header: str, tokens_header: str) -> RequestInfo:
    """The request as its headers describe it: the model, and ``prompt_chars`` = 4 x the token estimate
    (4 characters per token is the estimate everywhere else, so the load charge is the estimate itself;
    0 without the header). Raises BadRequest for a missing or invalid model or a malformed estimate."""
    model = headers.get(model_header, "")
    if not model:
        raise BadRequest(f"model not found in header {model_header}")
    if len(model) > MAX_MODEL_HEADER:
        raise BadRequest(f"model name longer than {MAX_MODEL_HEADER} characters in header {model_header}")
    if not model.isprintable() or " " in model or "\ufffd" in model:
        raise BadRequest(
            f"model name with spaces, control characters or bytes that are not UTF-8 in header {model_header}"
        )
    value = headers.get(tokens_header)
    tokens = 0
    if value is not None:
        # a malformed estimate means a misconfigured gateway: counting 0 silently would hide it
        if not value.isascii() or not value.isdigit() or len(value) > 12:
            raise BadRequest(
                f"header {tokens_header} must be a non-negative integer (a prompt-token estimate)"
            )
        tokens = min(int(value), MAX_TOKEN_ESTIMATE)
    return RequestInfo(api="", model=model, prompt_chars=tokens * 4)


def body_less_dispatch(address: str) -> Dispatch:
    """A request without a body, sent to ``address`` (the reference picks it at random; no scheduling,
    nothing counted)."""
    return Dispatch(
        endpoints=(address,),
        body=b"",
        lease=NullLease(),
        restore=None,
        incoming_model="",
        target_model="",
        priority=0,
    )
