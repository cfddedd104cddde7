"""Header-only mode at config load: the flag and the document's ``request.modelHeader``, the built-in
profile without its body-derived scorer, and every body- or response-derived feature rejected with its
reason (also on reload, where the last good config is kept)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from picker.config import default_config, load_config_text
from picker.errors import ConfigError
from picker.settings import Settings
from picker.state.config_store import ConfigStore
from picker.wiring import stream_config_rule

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
OURS = "apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
HEADER = "x-ai-eg-model"


def profile(*types: str, extra: str = "") -> str:
    """A one-profile document with these scorers; ``extra``: more ``plugins`` entries (not in the profile)."""
    plugins = "".join(f"- {{type: {t}}}\n" for t in (*types, "max-score-picker")) + extra
    refs = ", ".join(f"{{pluginRef: {t}}}" for t in (*types, "max-score-picker"))
    return f"{EPP}plugins:\n{plugins}schedulingProfiles: [{{name: default, plugins: [{refs}]}}]\n"


def test_off_by_default() -> None:
    assert default_config().model_header == ""
    assert load_config_text(profile("queue-scorer")).model_header == ""
    cfg = load_config_text(profile("prefix-cache-scorer"))  # no restriction without the mode
    assert cfg.model_header == ""


def test_the_flag_or_the_document_turns_it_on_and_the_document_wins() -> None:
    assert load_config_text(profile("queue-scorer"), model_header=HEADER).model_header == HEADER
    doc = f"{profile('queue-scorer')}---\n{OURS}request: {{modelHeader: X-Model}}\n"
    assert load_config_text(doc).model_header == "x-model"  # lower-cased, as the proxy sends names
    assert load_config_text(doc, model_header=HEADER).model_header == "x-model"
    off = f"{profile('prefix-cache-scorer')}---\n{OURS}request: {{modelHeader: ''}}\n"
    assert load_config_text(off, model_header=HEADER).model_header == ""


def test_the_built_in_profile_loses_its_body_derived_scorer() -> None:
    normal = default_config().to_dict()["effective"]["scheduler"]
    header_only = default_config(model_header=HEADER)
    assert header_only.model_header == HEADER
    assert not header_only.outlier_detection.enabled  # no response, no outcome
    weights = {p.plugin_ref: p.weight for p in header_only.endpoint_picker.scheduling_profiles[0].plugins}
    assert "prefill-queue-scorer" not in weights
    assert weights["queue-scorer"] == 3.0  # its weight moved to the request-count load scorer
    assert "prefill-queue-scorer" in str(normal)
    # a PickerConfig document alone (no reference document) gets the same profile
    alone = load_config_text(f"{OURS}request: {{modelHeader: {HEADER}}}\n")
    assert alone.endpoint_picker == header_only.endpoint_picker


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (profile("prefix-cache-scorer"), "prefix-cache-scorer): it scores the prompt's cached prefix"),
        (profile("prefill-queue-scorer"), "prefill-queue-scorer): it counts prompt tokens until the first"),
        (profile("latency-scorer"), "latency-scorer): it scores latency observed on responses"),
        (
            profile("queue-scorer", extra="- {type: destination-endpoint-served-verifier}\n"),
            "it echoes the served endpoint of the response",
        ),
        (
            profile("queue-scorer", extra="- {type: outlier-detector}\n"),
            "outlier-detector with enabled: true: passive health reads each response's status",
        ),
        (
            (
                f"{profile('queue-scorer')}---\n{OURS}modelRewrites:\n"
                "- {name: r, rules: [{targets: [{modelRewrite: m2}]}]}\n"
            ),
            "modelRewrites: a rewrite changes the model in the request body",
        ),
        (f"{profile('queue-scorer')}---\n{OURS}responseProcessing: Always\n", "responseProcessing: Always"),
        (
            f"{profile('queue-scorer')}---\n{OURS}tenants: {{header: x-user}}\n",
            "tenants: budgets are reserved from the request body",
        ),
        (
            (
                f"{profile('queue-scorer')}---\n{OURS}externalEndpoints:\n"
                "- {name: api, address: '10.96.0.1:80', price: {inputPer1M: 1, outputPer1M: 2}}\n"
            ),
            "externalEndpoints: their token limits are reserved from the request body",
        ),
    ],
)
def test_what_needs_the_body_or_the_response_is_rejected_with_its_reason(text: str, reason: str) -> None:
    load_config_text(text)  # fine without the mode
    with pytest.raises(ConfigError) as info:
        load_config_text(text, model_header=HEADER)
    assert "header-only mode (model header x-ai-eg-model) cannot serve this configuration" in str(info.value)
    assert reason in str(info.value)


def test_request_attribute_reporter_is_rejected_in_both_modes() -> None:
    """Not supported at all (it would report nothing); in header-only mode the reason says why the mode
    could not serve it either."""
    text = profile("queue-scorer", extra="- {type: request-attribute-reporter}\n")
    with pytest.raises(ConfigError, match="not supported by this EPP"):
        load_config_text(text)
    with pytest.raises(ConfigError, match="it reports usage read from responses"):
        load_config_text(text, model_header=HEADER)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(profile("prefix-cache-scorer", "latency-scorer"), model_header=HEADER)
    assert "prefix-cache-scorer" in str(info.value)
    assert "latency-scorer" in str(info.value)


def test_what_works_on_headers_is_accepted() -> None:
    text = (
        profile(
            "queue-scorer",
            "kv-cache-utilization-scorer",
            "lora-affinity-scorer",
            "token-load-scorer",
            extra="- {type: outlier-detector, parameters: {enabled: false}}\n",
        )
        + "featureGates: [flowControl]\n"
        + f"---\n{OURS}responseProcessing: WhenNeeded\nrequest: {{promptTokensHeader: X-Tokens}}\n"
    )
    cfg = load_config_text(text, model_header=HEADER)
    assert cfg.prompt_tokens_header == "x-tokens"
    assert "flowControl" in cfg.feature_gates


def test_a_reload_that_breaks_the_mode_is_rejected_and_the_last_good_one_kept() -> None:
    good = profile("queue-scorer")
    store = ConfigStore(
        load_config_text(good, model_header=HEADER), source="test", text=good, model_header=HEADER
    )
    assert stream_config_rule(store)()[2] is True
    result = store.apply_text(profile("prefix-cache-scorer"), source="test")
    assert result.result == "rejected"
    assert "prefix-cache-scorer" in result.message
    assert store.active.model_header == HEADER
    applied = store.apply_text(profile("kv-cache-utilization-scorer"), source="test")
    assert applied.result == "applied"
    assert store.active.model_header == HEADER


@pytest.mark.parametrize("name", ["x model", "x:model", "", "é", "x" * 129])
def test_a_header_name_that_can_never_match_is_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        load_config_text(f"{OURS}request: {{modelHeader: {name!r}, promptTokensHeader: {name!r}}}\n")
    if name:
        with pytest.raises(ValidationError):
            Settings(static_endpoints="127.0.0.1:8000", model_header=name)


def test_the_flag() -> None:
    from picker.cli import build_parser, settings_from_args

    ns = build_parser().parse_args(
        ["serve", "--static-endpoints", "127.0.0.1:8000", "--model-header", "X-AI-EG-Model"]
    )
    assert settings_from_args(ns, {}).model_header == HEADER
    ns = build_parser().parse_args(["serve", "--static-endpoints", "127.0.0.1:8000"])
    assert settings_from_args(ns, {}).model_header == ""
