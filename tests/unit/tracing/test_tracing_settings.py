"""``TracingSettings.from_environment``: the standard OTEL_* variables, their precedence and defaults (the
reference EPP's), and the values refused with the variable named."""

from __future__ import annotations

import pytest

from picker.settings import TracingSettings


def test_defaults_are_the_reference_epps() -> None:
    settings = TracingSettings.from_environment({})
    assert settings == TracingSettings(
        service_name="picker",
        endpoint="http://localhost:4317",
        sampler="parentbased_traceidratio",
        ratio=0.1,
    )
    assert settings is not None
    assert settings.insecure


def test_the_traces_endpoint_wins_and_https_is_tls() -> None:
    settings = TracingSettings.from_environment(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4317",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.observability:4317",
            "OTEL_SERVICE_NAME": "epp-llama",
            "OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        }
    )
    assert settings is not None
    assert (settings.endpoint, settings.insecure) == ("https://collector.observability:4317", False)
    assert (settings.service_name, settings.sampler, settings.ratio) == (
        "epp-llama",
        "parentbased_traceidratio",
        0.01,
    )


def test_exporter_none_records_nothing_and_the_arg_of_a_ratio_free_sampler_is_not_read() -> None:
    assert TracingSettings.from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    settings = TracingSettings.from_environment(
        {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "not a number"}
    )
    assert settings is not None
    assert settings.sampler == "always_on"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_SAMPLER": "xray"}, "OTEL_TRACES_SAMPLER='xray'"),
        ({"OTEL_TRACES_SAMPLER_ARG": "nan"}, "OTEL_TRACES_SAMPLER_ARG='nan'"),
        ({"OTEL_TRACES_SAMPLER_ARG": "-0.5"}, "a ratio from 0 to 1"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "OTEL_TRACES_EXPORTER='console'"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "grpc only"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT="),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://:4317"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:99999"}, "out of range"),
    ],
)
def test_unsupported_values_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TracingSettings.from_environment(env)
