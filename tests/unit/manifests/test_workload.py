"""The EPP Deployment and Service in every build: Pod security, probes, flags, mounts, ports."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from picker.cli import build_parser, settings_from_args
from picker.settings import TracingSettings

Doc = dict[str, Any]

EPP_BUILDS = (
    "base",
    "examples",
    "examples/ha",
    "examples/secure",
    "examples/configmap-watch",
    "examples/tracing",
)

#: Flags `picker serve` accepts: the reference EPP's (gie-epp.md section 3.11) plus picker's own.
#: Kept here until the test can ask the CLI; test_args_parse_with_the_cli cross-checks with picker.cli.
REFERENCE_FLAGS = frozenset(
    {
        "--grpc-port",
        "--grpc-health-port",
        "--metrics-port",
        "--pool-name",
        "--pool-namespace",
        "--pool-group",
        "--endpoint-selector",
        "--endpoint-target-ports",
        "--disable-endpoint-subset-filter",
        "--ha-enable-leader-election",
        "--refresh-metrics-interval",
        "--refresh-prometheus-metrics-interval",
        "--metrics-staleness-threshold",
        "--model-server-metrics-scheme",
        "--model-server-metrics-path",
        "--model-server-metrics-port",
        "--model-server-metrics-https-insecure-skip-verify",
        "--total-queued-requests-metric",
        "--total-running-requests-metric",
        "--kv-cache-usage-percentage-metric",
        "--lora-info-metric",
        "--cache-info-metric",
        "--config-file",
        "--config-text",
        "--secure-serving",
        "--cert-path",
        "--enable-cert-reload",
        "--health-checking",
        "--metrics-endpoint-auth",
        "--enable-pprof",
        "--tracing",
        "-v",
        "--v",
        "--zap-encoder",
        "--zap-log-level",
        "--zap-devel",
        "--zap-stacktrace-level",
        "--zap-time-encoding",
    }
)
PICKER_FLAGS = frozenset(
    {"--static-endpoints", "--config-configmap", "--kubeconfig", "--prometheus-url", "--workers"}
)
ACCEPTED_FLAGS = REFERENCE_FLAGS | PICKER_FLAGS
LEADER_ELECTION = "--ha-enable-leader-election"


def _epp(builds: dict[str, Any], name: str) -> Doc:
    return builds[name].get("Deployment", "picker")


def _pod(deployment: Doc) -> Doc:
    return deployment["spec"]["template"]["spec"]


def _container(deployment: Doc) -> Doc:
    (container,) = _pod(deployment)["containers"]
    return container


def _flags(container: Doc) -> dict[str, str | None]:
    args = container["args"]
    out: dict[str, str | None] = {}
    for arg in args[1:]:
        assert arg.startswith("-"), f"positional argument {arg!r}: use --flag=value"
        name, eq, value = arg.partition("=")
        assert name not in out, f"{name} given twice"
        out[name] = value if eq else None
    return out


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_pod_meets_the_restricted_pod_security_standard(
    builds: dict[str, Any], build: str, pss_restricted: Callable[[Doc], list[str]]
) -> None:
    assert pss_restricted(_pod(_epp(builds, build))) == []


@pytest.mark.parametrize(
    "mutation",
    [
        lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p: p["containers"][0]["securityContext"].update(runAsUser=0),
        lambda p: p["containers"][0]["securityContext"].update(
            capabilities={"add": ["NET_ADMIN"], "drop": ["ALL"]}
        ),
        lambda p: p["containers"][0]["securityContext"].update(capabilities={}),
        lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        lambda p: [
            p["containers"][0]["securityContext"].pop("runAsNonRoot"),
            p["securityContext"].pop("runAsNonRoot"),
        ],
        lambda p: p.update(hostNetwork=True),
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda p: p["containers"][0]["ports"][0].update(hostPort=9002),
        lambda p: p["securityContext"].update(sysctls=[{"name": "net.core.somaxconn", "value": "1024"}]),
    ],
    ids=[
        "privileged",
        "escalation",
        "root",
        "add-cap",
        "no-drop",
        "unconfined",
        "may-be-root",
        "host-network",
        "host-path",
        "host-port",
        "unsafe-sysctl",
    ],
)
def test_pss_check_rejects_violations(
    builds: dict[str, Any], mutation: Callable[[Doc], Any], pss_restricted: Callable[[Doc], list[str]]
) -> None:
    pod = copy.deepcopy(_pod(_epp(builds, "base")))
    mutation(pod)
    assert pss_restricted(pod) != []


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_non_root_read_only_and_graceful(builds: dict[str, Any], build: str) -> None:
    deployment = _epp(builds, build)
    pod, container = _pod(deployment), _container(deployment)
    assert pod["terminationGracePeriodSeconds"] == 130
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["runAsGroup"] == 65532
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1, "/tmp must be mounted"
    assert "emptyDir" in volumes[tmp[0]["name"]], "/tmp must be a writable emptyDir"
    assert pod["serviceAccountName"] == "picker"


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_image_is_pinned(builds: dict[str, Any], build: str) -> None:
    image = _container(_epp(builds, build))["image"]
    name, _, tag = image.rpartition(":")
    assert "/" in name, f"{image}: name the registry"
    assert tag not in ("", "latest"), f"{image}: pin a version"


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_args_use_only_accepted_flags(builds: dict[str, Any], build: str) -> None:
    container = _container(_epp(builds, build))
    assert container["args"][0] == "serve"
    flags = _flags(container)
    assert set(flags) <= ACCEPTED_FLAGS, set(flags) - ACCEPTED_FLAGS
    assert flags["--pool-name"]
    assert flags["--pool-namespace"] == "$(NAMESPACE)"
    if build == "examples/configmap-watch":  # the document through the API instead of the mounted file
        assert flags["--config-configmap"] == "picker-config"
    else:
        assert flags["--config-file"] == "/config/config.yaml"
    assert (flags.get("--grpc-port"), flags.get("--grpc-health-port"), flags.get("--metrics-port")) == (
        "9002",
        "9003",
        "9090",
    )


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_env_comes_from_the_downward_api_and_covers_arg_references(
    builds: dict[str, Any], build: str
) -> None:
    container = _container(_epp(builds, build))
    env = {e["name"]: e for e in container["env"]}
    assert env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Kubernetes leaves $(VAR) literally in args when VAR is not defined in env.
    refs = {m for arg in container["args"] for m in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg)}
    assert refs <= set(env), refs - set(env)


@pytest.mark.parametrize("build", [b for b in EPP_BUILDS if b != "examples/configmap-watch"])
def test_config_file_is_a_key_of_the_mounted_configmap(builds: dict[str, Any], build: str) -> None:
    deployment = _epp(builds, build)
    container = _container(deployment)
    path = _flags(container)["--config-file"]
    assert path
    volumes = {v["name"]: v for v in _pod(deployment)["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount.get("readOnly") is True
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    source = volumes[mount["name"]]["configMap"]
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    configmap = builds[build].get("ConfigMap", source["name"])
    assert key in configmap["data"]


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_args_parse_with_the_cli(builds: dict[str, Any], build: str) -> None:
    args = [a.replace("$(NAMESPACE)", "inference") for a in _container(_epp(builds, build))["args"]]
    settings = settings_from_args(build_parser().parse_args(args), {})
    flags = _flags(_container(_epp(builds, build)))
    assert settings.pool_name == flags["--pool-name"]
    assert settings.pool_namespace == "inference"
    assert settings.ha_enable_leader_election is (LEADER_ELECTION in flags)
    # the admin API (/config, /debug/*) stays on the Pod's loopback in every build
    assert (settings.admin_bind, settings.admin_port) == ("127.0.0.1", 9091)
    assert settings.metrics_auth is (build == "examples/secure")


def test_the_tracing_component_turns_tracing_on_with_the_reference_charts_variables(
    builds: dict[str, Any],
) -> None:
    container = _container(_epp(builds, "examples/tracing"))
    args = [a.replace("$(NAMESPACE)", "inference") for a in container["args"]]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    settings = settings_from_args(build_parser().parse_args(args), env)
    assert settings.tracing == TracingSettings(
        service_name="picker",
        endpoint="http://localhost:4317",
        sampler="parentbased_traceidratio",
        ratio=0.1,
    )
    assert settings_from_args(build_parser().parse_args(args[:-1]), env).tracing is None  # the base's
    assert "--tracing" not in _flags(_container(_epp(builds, "examples")))


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_grpc_probes_match_leader_election(builds: dict[str, Any], build: str) -> None:
    deployment = _epp(builds, build)
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    live, ready = container["livenessProbe"]["grpc"], container["readinessProbe"]["grpc"]
    assert live["port"] == ready["port"] == ports["grpc-health"] == 9003
    if LEADER_ELECTION in _flags(container):
        # liveness must not depend on leadership; readiness is the leader only.
        assert (live["service"], ready["service"]) == ("liveness", "readiness")
        # A rolling update deadlocks when only the leader can become ready.
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert deployment["spec"]["replicas"] >= 2
    else:
        assert live["service"] == ready["service"] not in ("", "liveness", "readiness")
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert deployment["spec"]["replicas"] == 1


def test_ha_build_is_the_base_with_leader_election(builds: dict[str, Any]) -> None:
    assert LEADER_ELECTION not in _flags(_container(_epp(builds, "examples")))
    assert LEADER_ELECTION in _flags(_container(_epp(builds, "examples/ha")))


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_service_exposes_ext_proc_and_metrics(builds: dict[str, Any], build: str) -> None:
    deployment = _epp(builds, build)
    service = builds[build].get("Service", "picker")
    container_ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"grpc-ext-proc", "http-metrics"}, "the health port is for the kubelet only"
    assert ports["grpc-ext-proc"]["port"] == 9002
    assert ports["grpc-ext-proc"]["appProtocol"] in {"kubernetes.io/h2c", "grpc"}
    assert ports["http-metrics"]["port"] == 9090
    for port in ports.values():
        target = port["targetPort"]
        assert (container_ports[target] if isinstance(target, str) else target) == port["port"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
