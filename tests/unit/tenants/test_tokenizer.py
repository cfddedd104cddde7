"""A real tokenizer.json (built here with the tokenizers package, saved, loaded by path) counts prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers
from prometheus_client import CollectorRegistry

from picker.config import default_config
from picker.errors import ConfigError
from picker.routing.openai import parse_request, prompt_text
from picker.state.config_store import ConfigStore
from picker.tenants.estimate import TokenEstimator, load_tokenizer
from picker.tenants.service import TenantService


def _save_word_tokenizer(path: Path) -> Path:
    vocab = {"[UNK]": 0, "user": 1, "hello": 2, "world": 3, "system": 4, "be": 5, "brief": 6}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    target = path / "tokenizer.json"
    tok.save(str(target))
    return target


def test_a_configured_tokenizer_counts_the_canonical_prompt(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(_save_word_tokenizer(tmp_path)))
    estimator = TokenEstimator(tokenizers={"m": tokenizer})
    body = (
        b'{"model":"m","messages":[{"role":"system","content":"be brief"},'
        b'{"role":"user","content":"hello world"}]}'
    )
    info = parse_request("/v1/chat/completions", body)

    def text() -> str:
        return prompt_text("/v1/chat/completions", body)

    # "system\nbe brief\nuser\nhello world\n" → 6 words
    assert estimator.input_tokens("m", info.prompt_chars, text) == 6
    # other models keep the heuristic
    assert estimator.input_tokens("other", info.prompt_chars, text) == -(-info.prompt_chars // 4)


def test_a_missing_or_broken_tokenizer_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "junk.json").write_text("{not a tokenizer")
    with pytest.raises(ConfigError, match="cannot load"):
        load_tokenizer(str(tmp_path / "junk.json"))


def _document(path: Path) -> str:
    return (
        "apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\ntenants:\n  estimation:\n"
        f"    tokenizers: [{{model: m, path: '{path}'}}]\n"
    )


def test_a_reload_naming_a_broken_tokenizer_is_rejected_whole(tmp_path: Path) -> None:
    """The tokenizer is loaded while the document is validated (a ConfigStore check), so a file that is not
    a tokenizer rejects the whole reload with the reason, the active document stays, and the tenant
    service never sees a half-applied section; a good file is then loaded once and used."""
    store = ConfigStore(default_config(), source="test")
    service = TenantService(CollectorRegistry())
    store.add_check(lambda cfg: service.prepare(cfg.settings.tenants))
    store.add_listener(lambda result, active: service.apply(active.config.settings.tenants))

    (tmp_path / "junk.json").write_text("{not a tokenizer")
    result = store.apply_text(_document(tmp_path / "junk.json"), source="file")
    assert (result.ok, result.result) == (False, "rejected")
    assert "cannot load" in result.message
    assert "junk.json" in result.message
    assert store.active.config.settings.tenants is None
    assert not service.active

    good = _save_word_tokenizer(tmp_path)
    assert store.apply_text(_document(good), source="file").result == "applied"
    assert service.active
    assert service.tenancy.estimator.input_tokens("m", 99, lambda: "hello world") == 2
