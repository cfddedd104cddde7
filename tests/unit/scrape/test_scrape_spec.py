"""Metric spec strings: the reference's ``name{label=value}`` syntax and its error cases."""

from __future__ import annotations

import pytest

from picker.metricspec import MetricSpec, parse_spec


@pytest.mark.parametrize(
    ("text", "name", "labels"),
    [
        ("vllm:num_requests_waiting", "vllm:num_requests_waiting", ()),
        ("  sglang:token_usage \t", "sglang:token_usage", ()),
        ("m{}", "m", ()),
        ("m{request_type=waiting}", "m", (("request_type", "waiting"),)),
        ('m{request_type="waiting"}', "m", (("request_type", "waiting"),)),
        ("m{request_type='waiting'}", "m", (("request_type", "waiting"),)),
        ('m { b = 2 , a = "1" , }', "m", (("a", "1"), ("b", "2"))),
        ('m{a="x\\"y,}{z\\\\"}', "m", (("a", 'x"y,}{z\\'),)),
        ('m{a="line\\nbreak"}', "m", (("a", "line\nbreak"),)),
        ('m{a=""}', "m", (("a", ""),)),
        ('{__name__="vllm:x", a="1"}', "vllm:x", (("a", "1"),)),
        ('vllm:x{__name__="vllm:x"}', "vllm:x", ()),
        ("m{a=1,a=1}", "m", (("a", "1"),)),
        (
            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}",
            "nv_trt_llm_kv_cache_block_metrics",
            (("kv_cache_block_type", "tokens_per"),),
        ),
    ],
)
def test_parse_valid(text: str, name: str, labels: tuple[tuple[str, str], ...]) -> None:
    spec = parse_spec(text)
    assert spec == MetricSpec(name, labels)


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_means_disabled(text: str) -> None:
    assert parse_spec(text) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("m{a!=b}", "'!=' on label 'a' is not supported"),
        ("m{a=~b.*}", "'=~'"),
        ("m{a!~b}", "'!~'"),
        ("m{a=b", "expected ',' or '}'"),
        ("m{a=b}}", "trailing text"),
        ("m a", "trailing text"),
        ("m}", "trailing text"),
        ("m{=b}", "label name"),
        ("m{a}", "expected '=' after label 'a'"),
        ("m{a=}", "a value for label 'a'"),
        ('m{a="b}', "closing quote"),
        ("m{a=1,a=2}", "given twice"),
        ("9m", "metric name"),
        ("{a=1}", "missing or invalid metric name"),
        ('x{__name__="y"}', "contradicts"),
        ("m{1a=b}", "label name"),
        ("m{a=b c}", "expected ',' or '}'"),
    ],
)
def test_parse_errors_name_the_spec(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="invalid metric spec") as info:
        parse_spec(text)
    assert why in str(info.value)
    assert repr(text) in str(info.value)


def test_non_string_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_spec(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    ["m", 'm{a="1"}', 'm{a="x\\"y",b="\\\\",c="\\n",d="}{,="}', "vllm:x{z=\"\",a='q'}"],
)
def test_str_round_trips(text: str) -> None:
    spec = parse_spec(text)
    assert spec is not None
    assert parse_spec(str(spec)) == spec


def test_metric_spec_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        MetricSpec("has space")
    with pytest.raises(ValueError, match="invalid label matcher"):
        MetricSpec("m", (("bad-label", "x"),))
