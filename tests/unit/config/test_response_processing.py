"""``responseProcessing`` and the rule that decides when a request's response phases may be skipped
(ext_proc ``mode_override``): never by default, and never when something needs the response."""

from __future__ import annotations

import textwrap

import pytest

from picker.config import load_config_text
from picker.errors import ConfigError
from picker.extproc.protocol import ResponseSkip
from picker.routing.openai import ModelRestorer
from picker.routing.types import Dispatch
from picker.state.accounting import NullLease
from picker.state.config_store import ConfigStore
from picker.wiring import skip_response_rule

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
OURS = "apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"


def document(
    plugins: str = "plugins: [{type: queue-scorer}]\n", processing: str | None = "WhenNeeded"
) -> str:
    text = EPP + textwrap.dedent(plugins)
    if processing is not None:
        text += f"---\n{OURS}responseProcessing: {processing}\n"
    return text


def decision(incoming: str, target: str) -> Dispatch:
    """A dispatch as the director makes it: a rewritten model comes with its name restorer."""
    return Dispatch(
        endpoints=("10.0.0.1:8000",),
        incoming_model=incoming,
        target_model=target,
        priority=0,
        body=b"",
        lease=NullLease(),
        restore=ModelRestorer(target, incoming) if target != incoming else None,
    )


def test_the_default_processes_every_response() -> None:
    cfg = load_config_text(document(processing=None))
    assert cfg.settings.response_processing == "Always"
    assert not cfg.may_skip_responses
    assert not skip_response_rule(ConfigStore(cfg, source="test"))(decision("m", "m"))


def test_when_needed_skips_only_requests_whose_model_was_not_rewritten() -> None:
    skip = skip_response_rule(ConfigStore(load_config_text(document()), source="test"))
    assert skip(decision("m", "m"))
    assert skip(decision("", ""))  # a header-only request
    assert not skip(decision("m", "m-v2"))  # the name must be put back into the response


def test_passive_health_keeps_the_response_headers() -> None:
    on = skip_response_rule(ConfigStore(load_config_text(document()), source="test"))
    assert on(decision("m", "m")) == ResponseSkip.BODY
    off_plugins = "plugins: [{type: queue-scorer}, {type: outlier-detector, parameters: {enabled: false}}]\n"
    off = skip_response_rule(ConfigStore(load_config_text(document(off_plugins)), source="test"))
    assert off(decision("m", "m")) == ResponseSkip.ALL


@pytest.mark.parametrize(
    "plugins",
    ["plugins: [{type: queue-scorer}, {type: destination-endpoint-served-verifier}]\n"],
    ids=["served-verifier"],
)
def test_features_that_read_the_response_keep_it(plugins: str) -> None:
    cfg = load_config_text(document(plugins))
    assert not cfg.may_skip_responses
    assert not skip_response_rule(ConfigStore(cfg, source="test"))(decision("m", "m"))


def test_a_reload_applies_to_the_next_request() -> None:
    store = ConfigStore(load_config_text(document(processing="Always")), source="test", text="x")
    skip = skip_response_rule(store)
    assert not skip(decision("m", "m"))
    assert store.apply_text(document(), source="test").result == "applied"
    assert skip(decision("m", "m"))


def test_unknown_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match="responseProcessing"):
        load_config_text(document(processing="Sometimes"))
