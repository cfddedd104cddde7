"""Token counts before the usage is known: the prompt at admission, the output of a response without usage.

**Input, heuristic** (the default): ``ceil(prompt_chars / r[model])`` where ``prompt_chars`` is what the
body parser counted (message contents, prompt strings; never the text itself) and ``r`` is the model's
characters per token. ``r`` starts from the configuration (``estimation.charsPerToken``, per model or
4.0, English text on BPE vocabularies) and, with ``estimation.learn`` (default), follows what responses
report: after each response with usage, ``r <- r + 0.1 * (chars / prompt_tokens - r)`` (an exponential
average over about the last ten responses of that model). The ratio absorbs the chat template's tokens,
which the character count does not see. At most :data:`MAX_MODELS` models are learned, each named in at
most :data:`MAX_MODEL_NAME` characters (the name comes from the request body: a learned ratio must not
keep a client's 1 MiB model string alive); others use the start value.

**Input, tokenizer** (``estimation.tokenizers``): the model's Hugging Face ``tokenizer.json`` is loaded
from a local path with the ``tokenizers`` package (an optional dependency: ``pip install
picker[tokenizers]``; never downloaded) and the prompt's canonical text (as the prefix hasher sees it,
produced by the director with :func:`picker.routing.openai.parse_request`) is encoded: exact for
completions, the messages' tokens without the template's for chat. Costs a second parse and an encode
(tens to hundreds of µs per request).

**Output without usage**: a stream that reported no usage is estimated from its events (one streamed
chunk carries one token in OpenAI-style servers; the ``[DONE]`` marker is not counted); a JSON body
without usage from the characters of its generated text divided by ``r``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import orjson

from picker.errors import ConfigError

__all__ = [
    "MAX_MODELS",
    "MAX_MODEL_NAME",
    "TokenEstimator",
    "Tokenizer",
    "count_events",
    "load_tokenizer",
    "text_chars",
]

MAX_MODELS: Final = 256
#: the longest model name whose ratio is learned (the bound of a metric label value, picker.labels)
MAX_MODEL_NAME: Final = 256
_ALPHA: Final = 0.1
_MIN_RATIO: Final = 0.5
_MAX_RATIO: Final = 32.0


class Tokenizer(Protocol):
    """What :func:`load_tokenizer` returns (a ``tokenizers.Tokenizer``)."""

    def encode(
        self, sequence: Any, pair: Any = ..., is_pretokenized: bool = ..., add_special_tokens: bool = ...
    ) -> Any: ...


def load_tokenizer(path: str) -> Tokenizer:
    """Load a ``tokenizer.json`` from a local file. Raises ConfigError (the package is missing, the file
    cannot be read or is not a tokenizer)."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError as exc:
        raise ConfigError(
            "tenants.estimation.tokenizers needs the 'tokenizers' package (pip install picker[tokenizers])"
        ) from exc
    try:
        tokenizer: Tokenizer = HFTokenizer.from_file(path)
    except Exception as exc:
        raise ConfigError(f"tenants.estimation.tokenizers: cannot load {path}: {exc}") from exc
    return tokenizer


class TokenEstimator:
    """Per-model characters-per-token ratios (learned) and optional tokenizers. One per process."""

    __slots__ = ("_default", "_learn", "_ratios", "_starts", "_tokenizers")

    def __init__(
        self,
        *,
        chars_per_token: float = 4.0,
        models: Mapping[str, float] | None = None,
        tokenizers: Mapping[str, Tokenizer] | None = None,
        learn: bool = True,
    ) -> None:
        self._default = chars_per_token
        self._starts = dict(models or {})
        self._ratios: dict[str, float] = dict(self._starts)
        self._tokenizers = dict(tokenizers or {})
        self._learn = learn

    def reconfigure(
        self,
        *,
        chars_per_token: float,
        models: Mapping[str, float],
        tokenizers: Mapping[str, Tokenizer],
        learn: bool,
    ) -> None:
        """A reloaded config: new starting ratios and tokenizers; ratios learned so far are kept unless the
        config now sets that model's ratio."""
        changed = {m for m, r in models.items() if self._starts.get(m) != r}
        self._default = chars_per_token
        self._starts = dict(models)
        for model in changed:
            self._ratios[model] = models[model]
        self._tokenizers = dict(tokenizers)
        self._learn = learn

    def ratio(self, model: str) -> float:
        """Characters per token of ``model`` as currently believed."""
        return self._ratios.get(model, self._default)

    def input_tokens(self, model: str, prompt_chars: int, text: Callable[[], str] | None = None) -> int:
        """Estimated prompt tokens of a request of ``prompt_chars`` characters; ``text`` produces the
        prompt's canonical text, asked for only when the model has a tokenizer."""
        if text is not None:
            tokenizer = self._tokenizers.get(model)
            if tokenizer is not None:
                prompt = text()
                if prompt:
                    return len(tokenizer.encode(prompt, add_special_tokens=True).ids)
        if prompt_chars <= 0:
            return 0
        return math.ceil(prompt_chars / self.ratio(model))

    def observe(self, model: str, prompt_chars: int, prompt_tokens: int) -> None:
        """Learn from a response's usage: its prompt was ``prompt_chars`` characters, ``prompt_tokens``
        tokens. Models with a tokenizer, and models beyond :data:`MAX_MODELS`, are not learned."""
        if not self._learn or prompt_chars <= 0 or prompt_tokens <= 0 or model in self._tokenizers:
            return
        ratios = self._ratios
        current = ratios.get(model)
        if current is None:
            if len(ratios) >= MAX_MODELS or len(model) > MAX_MODEL_NAME:
                return
            current = self._default
        sample = min(_MAX_RATIO, max(_MIN_RATIO, prompt_chars / prompt_tokens))
        ratios[model] = current + _ALPHA * (sample - current)

    def output_from_chars(self, model: str, chars: int) -> int:
        """Tokens of ``chars`` characters of generated text."""
        return math.ceil(chars / self.ratio(model)) if chars > 0 else 0


_DATA = b"data:"
_DONE = b"[DONE]"


def count_events(chunk: bytes) -> int:
    """SSE events in one chunk (``data:`` lines, less ``[DONE]``): one token each, as OpenAI-style servers
    stream; the envelope events (a chat stream's role-only first chunk, its finish chunk) make it an
    overestimate by one or two."""
    n = chunk.count(_DATA)
    if n and _DONE in chunk:
        n -= 1
    return n


def text_chars(body: bytes) -> int:
    """Characters of the generated text in a JSON response (chat ``message.content``, completions
    ``text``, Responses ``output[].content[].text``); 0 when the body is not such a document."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(doc, dict):
        return 0
    total = 0
    for choice in doc.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if isinstance(text, str):
            total += len(text)
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            total += len(message["content"])
    for item in doc.get("output") or ():
        if isinstance(item, dict):
            for part in item.get("content") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total
