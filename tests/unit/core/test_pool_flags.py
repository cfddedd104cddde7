"""``--pool NAME=PORT[,...]`` (several InferencePools in one ``picker serve``): what it turns into, and every
combination that cannot mean what it says refused with its reason (the parser ``picker serve`` runs,
in-process)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from picker.cli import build_parser, describe_settings_errors, settings_from_args
from picker.settings import PoolSpec, Settings


def settings(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]), environ={})


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one-line error of a command line that must not start (argparse's usage error, or the
    settings' validation error as ``picker.cli.main`` reports it)."""
    try:
        settings(*argv)
    except SystemExit as exc:
        code = exc.code
        return f"exit {code}: {capsys.readouterr().err}"
    except ValidationError as exc:
        return describe_settings_errors(exc)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{argv} was accepted")


def test_each_pool_gets_its_name_port_and_document() -> None:
    s = settings(
        "--pool=alpha=9100,config-configmap=alpha-epp",
        "--pool=beta=9101,config-file=/etc/beta.yaml",
        "--pool", "gamma=9102",
        "--config-file=/etc/default.yaml",
        "--pool-namespace=inference",
        "--refresh-metrics-interval=100ms",
    )  # fmt: skip
    alpha, beta, gamma = s.pool_settings()
    assert [(p.pool_name, p.grpc_port) for p in (alpha, beta, gamma)] == [
        ("alpha", 9100),
        ("beta", 9101),
        ("gamma", 9102),
    ]
    # a pool naming a document takes only its own; one naming none takes the process's
    assert (alpha.config_configmap, alpha.config_file) == ("alpha-epp", "")
    assert (beta.config_file, beta.config_configmap) == ("/etc/beta.yaml", "")
    assert (gamma.config_file, gamma.config_configmap) == ("/etc/default.yaml", "")
    # everything else is the process's, for every pool
    assert {(p.pool_namespace, p.refresh_metrics_interval, p.pools) for p in (alpha, beta, gamma)} == {
        ("inference", 0.1, ())
    }
    assert s.kubernetes_mode
    assert s.metrics_auth


def test_without_pool_the_process_is_its_one_pool() -> None:
    s = settings("--pool-name=qwen")
    assert s.pool_settings() == (s,)
    assert s.grpc_port == 9002


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alpha", "is not NAME=PORT"),
        ("alpha=grpc", "is not NAME=PORT"),
        ("alpha=¹", "is not NAME=PORT"),
        ("alpha=70000", "less than or equal to 65535"),
        ("alpha=0", "greater than or equal to 1"),
        ("Alpha=9100", "is not a Kubernetes object name"),
        ("alpha=9100,colour=red", "'colour' is not KEY=VALUE"),
        ("alpha=9100,config-file=", "'config-file' is not KEY=VALUE"),
        ("alpha=9100,config-file=a,config-file=b", "config-file given twice"),
    ],
)
def test_a_bad_pool_value_is_refused_with_its_reason(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    assert message in refusal(capsys, f"--pool={value}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pool=a=9100", "--pool=a=9101"], "pool 'a' is named twice"),
        (["--pool=a=9100", "--pool=b=9100"], "port 9100 is given to two pools"),
        (["--pool=a=9100", "--pool-name=b"], "leave out --pool-name"),
        (["--pool=a=9100", "--static-endpoints=127.0.0.2:8000"], "leave out --pool-name"),
        (["--pool=a=9100", "--grpc-port=9100"], "with --pool each pool's ext_proc port is in its --pool"),
        (["--pool=a=9090"], "port 9090 is also --metrics-port"),
    ],
)
def test_a_bad_combination_is_refused_with_its_reason(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in refusal(capsys, *argv)


def test_workers_with_one_pool_is_the_one_pool_process() -> None:
    s = settings("--pool=a=9100,config-file=/etc/a.yaml", "--workers=2")
    (one,) = s.pool_settings()
    assert (one.pool_name, one.grpc_port, one.config_file, one.workers) == ("a", 9100, "/etc/a.yaml", 2)


def test_workers_with_several_pools_serve_every_pool_in_each_worker() -> None:
    s = settings("--pool=a=9100", "--pool=b=9101,config-file=/etc/b.yaml", "--workers=2")
    a, b = s.pool_settings()
    assert (a.pool_name, a.grpc_port, a.workers) == ("a", 9100, 2)
    assert (b.pool_name, b.grpc_port, b.config_file, b.workers) == ("b", 9101, "/etc/b.yaml", 2)


def test_pool_spec_parse_round_trip() -> None:
    spec = PoolSpec.parse("beta=9101,config-configmap=beta-epp,config-configmap-key=epp.yaml")
    assert spec == PoolSpec(
        name="beta", port=9101, config_configmap="beta-epp", config_configmap_key="epp.yaml"
    )
    assert Settings(pools=(spec,)).for_pool(spec).config_configmap_key == "epp.yaml"
