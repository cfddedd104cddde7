"""The Helm chart (charts/picker), rendered by Helm's own engine.

There is no helm binary here: the `helm-python-sdk` wheel bundles Helm's Go library (libhelm_c, Helm v4) and
renders charts offline exactly as `helm template` does. Every rendered object is validated: built-in kinds
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), our custom resources against the CRDs in
manifests/crds, and the gateway vendors' kinds (DestinationRule, HealthCheckPolicy, GCPBackendPolicy,
PodMonitoring, ServiceMonitor, HTTPRoute) by the shape checks below, as no schema for them exists offline.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "picker"
Doc = dict[str, Any]

K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
POOL_LABELS = {"app": "vllm-llama3-8b-instruct"}
BASE_VALUES: Doc = {"inferencePool": {"modelServers": {"matchLabels": POOL_LABELS}}}

#: What each provider adds to the pool and the EPP, as (apiVersion, kind).
PROVIDER_KINDS = {
    "none": set(),
    "istio": {("networking.istio.io/v1", "DestinationRule")},
    "gke": {("networking.gke.io/v1", "HealthCheckPolicy"), ("networking.gke.io/v1", "GCPBackendPolicy")},
}
CORE_KINDS = {
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
}


def _merge(base: Doc, extra: Doc) -> Doc:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)  # as Helm does with a null override: the default goes away
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def render(chart: Any) -> Callable[..., list[Doc]]:
    def _render(values: Doc | None = None, *, name: str = "llama", namespace: str = "inference") -> list[Doc]:
        out = chart.render(_merge(BASE_VALUES, values or {}), name=name, namespace=namespace, is_install=True)
        docs: list[Doc] = []
        for path, text in sorted(out.items()):
            if path.endswith(".txt"):
                continue
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        return docs

    return _render


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _container(docs: list[Doc]) -> Doc:
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _flags(container: Doc) -> dict[str, str | None]:
    assert container["args"][0] == "serve"
    out: dict[str, str | None] = {}
    for arg in container["args"][1:]:
        name, eq, value = arg.partition("=")
        assert name not in out, f"{name} twice"
        out[name] = value if eq else None
    return out


# ---------------------------------------------------------------------------------------- foreign kinds


def _check_destination_rule(doc: Doc, docs: list[Doc]) -> None:
    service = _one(docs, "Service")
    meta = service["metadata"]
    assert doc["spec"]["host"] == f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
    # The EPP serves TLS with a self-signed certificate: TLS on, verification off.
    assert doc["spec"]["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    assert set(doc["spec"]) <= {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"}


def _check_pool_policy(doc: Doc, docs: list[Doc]) -> None:
    pool = _one(docs, "InferencePool", doc["spec"]["targetRef"]["name"])
    assert doc["spec"]["targetRef"] == {
        "group": pool["apiVersion"].split("/")[0],
        "kind": "InferencePool",
        "name": pool["metadata"]["name"],
    }
    default = doc["spec"]["default"]
    if doc["kind"] == "HealthCheckPolicy":
        check = default["config"]
        assert check["type"] == "HTTP"
        ports = {p["number"] for p in pool["spec"]["targetPorts"]}
        assert check["httpHealthCheck"]["port"] in ports
        assert check["httpHealthCheck"]["requestPath"].startswith("/")
    else:
        assert isinstance(default["timeoutSec"], int)
        assert default["timeoutSec"] >= 60


def _check_scrape(doc: Doc, docs: list[Doc]) -> None:
    deployment = _one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = doc["spec"]["endpoints"]
    ports = {p["name"] for p in _container(docs)["ports"]}
    if doc["kind"] == "ServiceMonitor":
        service_ports = {p["name"] for p in _one(docs, "Service")["spec"]["ports"]}
        assert endpoint["port"] in service_ports & ports
    else:
        assert endpoint["port"] in ports
    assert endpoint["path"] == "/metrics"


def _check_httproute(doc: Doc, docs: list[Doc]) -> None:
    (rule,) = doc["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    pool = _one(docs, "InferencePool", backend["name"])
    assert backend == {
        "group": pool["apiVersion"].split("/")[0],
        "kind": "InferencePool",
        "name": pool["metadata"]["name"],
    }
    assert doc["spec"]["parentRefs"][0]["kind"] == "Gateway"


FOREIGN: dict[tuple[str, str], Callable[[Doc, list[Doc]], None]] = {
    ("networking.istio.io/v1", "DestinationRule"): _check_destination_rule,
    ("networking.gke.io/v1", "HealthCheckPolicy"): _check_pool_policy,
    ("networking.gke.io/v1", "GCPBackendPolicy"): _check_pool_policy,
    ("monitoring.googleapis.com/v1", "PodMonitoring"): _check_scrape,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _check_scrape,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _check_httproute,
}


def _validate_all(docs: list[Doc], crd_validator: Any) -> None:
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") or doc["kind"].startswith("Cluster"), f"{where}: no namespace"
        key = (doc["apiVersion"], doc["kind"])
        if crd_validator.handles(doc):
            assert crd_validator.problems(doc) == [], where
        elif key in FOREIGN:
            FOREIGN[key](doc, docs)
        else:
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{where} against {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    pytest.fail(f"{where}: not a built-in kind, one of our CRDs, nor shape-checked here")


# ----------------------------------------------------------------------------- one test per provider

FULL = {
    "inferenceExtension": {"monitoring": {"prometheus": {"enabled": True}}},
    "experimentalHttpRoute": {"enabled": True},
    "inferenceObjectives": [{"name": "critical", "priority": 10}, {"name": "batch", "priority": -1}],
}


def _check_provider(render: Callable[..., list[Doc]], crd_validator: Any, provider: str, extra: Doc) -> None:
    docs = render(_merge(FULL, {"provider": {"name": provider}, **extra}))
    _validate_all(docs, crd_validator)
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert kinds >= CORE_KINDS
    others = set().union(*PROVIDER_KINDS.values()) - PROVIDER_KINDS[provider]
    assert kinds >= PROVIDER_KINDS[provider]
    assert not kinds & others, kinds & others
    pool = _one(docs, "InferencePool")
    service = _one(docs, "Service")
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}
    assert ref["failureMode"] == "FailOpen"
    assert pool["spec"]["selector"]["matchLabels"] == POOL_LABELS
    assert _flags(_container(docs))["--pool-name"] == pool["metadata"]["name"]


def test_provider_none(render: Callable[..., list[Doc]], crd_validator: Any) -> None:
    _check_provider(render, crd_validator, "none", {})


def test_provider_istio(render: Callable[..., list[Doc]], crd_validator: Any) -> None:
    policy = {"connectionPool": {"http": {"maxRequestsPerConnection": 256000}}}
    _check_provider(
        render,
        crd_validator,
        "istio",
        {"provider": {"name": "istio", "istio": {"destinationRule": {"trafficPolicy": policy}}}},
    )
    rule = _one(render({"provider": {"name": "istio"}}), "DestinationRule")
    assert set(rule["spec"]["trafficPolicy"]) == {"tls"}
    custom = render({"provider": {"name": "istio", "istio": {"destinationRule": {"trafficPolicy": policy}}}})
    assert (
        _one(custom, "DestinationRule")["spec"]["trafficPolicy"]["connectionPool"] == policy["connectionPool"]
    )


def test_provider_gke(render: Callable[..., list[Doc]], crd_validator: Any) -> None:
    _check_provider(
        render, crd_validator, "gke", {"inferenceExtension": {"monitoring": {"gke": {"enabled": True}}}}
    )
    docs = render(
        {"provider": {"name": "gke"}, "inferenceExtension": {"monitoring": {"gke": {"enabled": True}}}}
    )
    _one(docs, "PodMonitoring")
    route = render({"provider": {"name": "gke"}, "experimentalHttpRoute": {"enabled": True}})
    # GKE takes the backend timeout from the GCPBackendPolicy; HTTPRoute timeouts are not supported there.
    assert "timeouts" not in _one(route, "HTTPRoute")["spec"]["rules"][0]


def _secret_reader(docs: list[Doc], kind: str) -> Doc:
    (found,) = [
        d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith("-metrics-secret-reader")
    ]
    return found


def test_gke_managed_prometheus_scrapes_with_the_reader_token(render: Callable[..., list[Doc]]) -> None:
    """/metrics needs a token by default (--metrics-endpoint-auth): GKE's PodMonitoring sends the reader
    ServiceAccount's, and managed collection's collector may read that one Secret (gmp-system, or
    gke-gmp-system on Autopilot); with the auth off, neither."""
    values = {"provider": {"name": "gke"}, "inferenceExtension": {"monitoring": {"gke": {"enabled": True}}}}
    docs = render(values)
    (endpoint,) = _one(docs, "PodMonitoring")["spec"]["endpoints"]
    secret = endpoint["authorization"]["credentials"]["secret"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert secret["key"] == "token"
    token = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == secret["name"])
    assert token["type"] == "kubernetes.io/service-account-token"
    reader = token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == reader for d in docs)
    binding = next(
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"].endswith("metrics-reader")
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": reader, "namespace": token["metadata"]["namespace"]}
    ]
    role = _secret_reader(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [secret["name"]],
            "verbs": ["get", "list", "watch"],
        }
    ]
    (subject,) = _secret_reader(docs, "RoleBinding")["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": "collector", "namespace": "gmp-system"}
    autopilot = render({**values, "provider": {"name": "gke", "gke": {"autopilot": True}}})
    (subject,) = _secret_reader(autopilot, "RoleBinding")["subjects"]
    assert subject["namespace"] == "gke-gmp-system"
    off = {
        "inferenceExtension": {
            "monitoring": {"gke": {"enabled": True}, "prometheus": {"auth": {"enabled": False}}}
        }
    }
    open_docs = render({**values, **off})
    assert "authorization" not in _one(open_docs, "PodMonitoring")["spec"]["endpoints"][0]
    assert not [d for d in open_docs if d["metadata"]["name"].endswith("metrics-secret-reader")]


def test_foreign_shape_checks_catch_mistakes(render: Callable[..., list[Doc]]) -> None:
    docs = render({"provider": {"name": "istio"}})
    rule = copy.deepcopy(_one(docs, "DestinationRule"))
    rule["spec"]["trafficPolicy"]["tls"]["insecureSkipVerify"] = False
    with pytest.raises(AssertionError):
        _check_destination_rule(rule, docs)
    rule = copy.deepcopy(_one(docs, "DestinationRule"))
    rule["spec"]["host"] = "picker.default.svc.cluster.local"
    with pytest.raises(AssertionError):
        _check_destination_rule(rule, docs)


# ---------------------------------------------------------------------------------------- the EPP


def test_deployment_args_parse_with_the_cli(render: Callable[..., list[Doc]]) -> None:
    from picker import cli

    container = _container(
        render({"inferenceExtension": {"flags": {"v": 3, "refresh-metrics-interval": "100ms"}}})
    )
    args = [a.replace("$(NAMESPACE)", "inference") for a in container["args"]]
    settings = cli.settings_from_args(cli.build_parser().parse_args(args), {})
    assert settings.pool_name == "llama"
    assert settings.pool_namespace == "inference"
    assert settings.pool_group == "inference.networking.k8s.io"
    assert settings.config_file == "/config/config.yaml"
    assert settings.verbosity == 3
    assert settings.refresh_metrics_interval == pytest.approx(0.1)
    assert settings.ha_enable_leader_election is False
    assert (settings.admin_bind, settings.admin_port) == ("127.0.0.1", 9091)  # not exposed
    assert settings.metrics_auth is True  # upstream's default
    env = {e["name"] for e in container["env"]}
    assert {"NAMESPACE", "POD_NAME"} <= env


def test_pod_is_restricted_and_read_only(
    render: Callable[..., list[Doc]], pss_restricted: Callable[[Doc], list[str]]
) -> None:
    pod = _one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pss_restricted(pod) == []
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert pod["terminationGracePeriodSeconds"] == 130


def test_replicas_turn_on_leader_election(render: Callable[..., list[Doc]], crd_validator: Any) -> None:
    single = render()
    assert "--ha-enable-leader-election" not in _flags(_container(single))
    assert not [d for d in single if d["kind"] == "Role" and "leases" in str(d["rules"])]
    docs = render({"inferenceExtension": {"replicas": 3}})
    _validate_all(docs, crd_validator)
    deployment = _one(docs, "Deployment")
    container = _container(docs)
    assert "--ha-enable-leader-election" in _flags(container)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert (
        container["livenessProbe"]["grpc"]["service"],
        container["readinessProbe"]["grpc"]["service"],
    ) == (
        "liveness",
        "readiness",
    )
    lease_role = _one(docs, "Role", "llama-epp-leader-election")
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]


def test_base_role_is_least_privilege(render: Callable[..., list[Doc]]) -> None:
    role = _one(render(), "Role", "llama-epp")
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    read = ("list", "watch")  # every watch is a list then a watch: no get
    assert granted == {
        *(("", "pods", v) for v in read),
        *(("inference.networking.k8s.io", "inferencepools", v) for v in read),
        *(
            ("inference.networking.x-k8s.io", r, v)
            for r in ("inferenceobjectives", "inferencemodelrewrites")
            for v in read
        ),
    }
    binding = _one(render(), "RoleBinding", "llama-epp")
    (subject,) = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == ("llama-epp", "inference")


def test_scaler_rbac_only_when_enabled(render: Callable[..., list[Doc]], crd_validator: Any) -> None:
    assert not [d for d in render() if d["metadata"]["name"].endswith("-scaler")]
    docs = render({"scaler": {"enabled": True}})
    _validate_all(docs, crd_validator)
    role = _one(docs, "Role", "llama-epp-scaler")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"deployments/scale", "statefulsets/scale", "horizontalpodautoscalers"} <= resources
    assert all("*" not in v for rule in role["rules"] for v in rule["verbs"])


def test_redis_url_from_value_or_secret(render: Callable[..., list[Doc]]) -> None:
    assert "PICKER_REDIS_URL" not in {e["name"] for e in _container(render())["env"]}
    env = {
        e["name"]: e
        for e in _container(render({"tenants": {"redis": {"url": "redis://redis:6379/0"}}}))["env"]
    }
    assert env["PICKER_REDIS_URL"]["value"] == "redis://redis:6379/0"
    env = {e["name"]: e for e in _container(render({"tenants": {"redis": {"existingSecret": "r"}}}))["env"]}
    assert env["PICKER_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "r", "key": "url"}


def test_tracing_sets_the_standard_otel_variables(render: Callable[..., list[Doc]]) -> None:
    container = _container(render({"inferenceExtension": {"tracing": {"enabled": True}}}))
    assert _flags(container)["--tracing"] == "true"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert _flags(_container(render()))["--tracing"] == "false"


def test_model_header_turns_on_header_only_mode_with_a_document_the_mode_accepts(
    render: Callable[..., list[Doc]], crd_validator: Any
) -> None:
    from picker import cli
    from picker.config import load_config_text
    from picker.errors import ConfigError

    assert "--model-header" not in _flags(_container(render()))
    docs = render({"inferenceExtension": {"modelHeader": "x-ai-eg-model"}})
    _validate_all(docs, crd_validator)
    container = _container(docs)
    assert _flags(container)["--model-header"] == "x-ai-eg-model"
    args = [a.replace("$(NAMESPACE)", "inference") for a in container["args"]]
    settings = cli.settings_from_args(cli.build_parser().parse_args(args), {})
    assert settings.model_header == "x-ai-eg-model"
    # the default document has prefill-queue-scorer, which the mode rejects at load: the chart mounts the
    # header-only one under the same key, and the EPP loads it in that mode
    mounted = _one(docs, "ConfigMap")["data"]["config.yaml"]
    default = _one(render(), "ConfigMap")["data"]["config.yaml"]
    with pytest.raises(ConfigError, match="prefill-queue-scorer"):
        load_config_text(default, model_header="x-ai-eg-model")
    config = load_config_text(mounted, model_header="x-ai-eg-model")
    _plugins, (profile,), _detector = config.plugin_specs()
    weights = dict(profile.plugins)
    assert "prefill-queue-scorer" not in weights
    assert weights["queue-scorer"] == 3
    # a custom document is mounted as written (the operator's choice, checked by the EPP at load)
    custom = render(
        {
            "inferenceExtension": {
                "modelHeader": "x-ai-eg-model",
                "pluginsConfigFile": "custom.yaml",
                "pluginsCustomConfig": {"custom.yaml": mounted},
            }
        }
    )
    assert _flags(_container(custom))["--config-file"] == "/config/custom.yaml"


def test_image_defaults_to_the_app_version_and_takes_a_digest(
    chart: Any, render: Callable[..., list[Doc]]
) -> None:
    assert _container(render())["image"] == f"registry.example.com/picker:{chart.metadata['appVersion']}"
    digest = "sha256:" + "a" * 64
    image = _container(render({"inferenceExtension": {"image": {"digest": digest}}}))["image"]
    assert image == f"registry.example.com/picker@{digest}"


# ---------------------------------------------------------------------------------------- the pool


def test_v1alpha2_pool_validates_against_its_crd(
    render: Callable[..., list[Doc]], crd_validator: Any
) -> None:
    docs = render(
        {
            "inferencePool": {"apiVersion": "inference.networking.x-k8s.io/v1alpha2"},
            "inferenceObjectives": [{"name": "x"}],
        }
    )
    _validate_all(docs, crd_validator)
    pool = _one(docs, "InferencePool")
    assert pool["spec"]["selector"] == POOL_LABELS
    assert _flags(_container(docs))["--pool-group"] == "inference.networking.x-k8s.io"
    assert _one(docs, "InferenceObjective")["spec"]["poolRef"]["group"] == "inference.networking.x-k8s.io"


def test_several_target_ports(render: Callable[..., list[Doc]], crd_validator: Any) -> None:
    docs = render({"inferencePool": {"targetPorts": [{"number": 8000}, {"number": 8001}]}})
    _validate_all(docs, crd_validator)
    assert _one(docs, "InferencePool")["spec"]["targetPorts"] == [{"number": 8000}, {"number": 8001}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inferencePool": {"modelServers": {"matchLabels": None}}}, "matchLabels is required"),
        ({"provider": {"name": "nginx"}}, "provider.name must be one of"),
        ({"inferencePool": {"apiVersion": "inference.networking.k8s.io/v2"}}, "inferencePool.apiVersion"),
        ({"inferencePool": {"targetPorts": []}}, "at least one port"),
        ({"inferenceExtension": {"failureMode": "Open"}}, "failureMode"),
        ({"inferenceExtension": {"flags": {"pool-name": "other"}}}, "set by the chart"),
        ({"inferenceExtension": {"flags": {"model-header": "x-model"}}}, "set by the chart"),
        ({"inferenceExtension": {"flags": {"tracing": True}}}, "set by the chart"),
        ({"inferenceExtension": {"pluginsConfigFile": "missing.yaml"}}, "pluginsConfigFile"),
    ],
)
def test_bad_values_are_refused_with_a_reason(chart: Any, values: Doc, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(_merge(BASE_VALUES, values), name="llama", namespace="inference")


# ---------------------------------------------------------------------------------------- scoring document


def test_default_scoring_document_is_the_kustomize_one(render: Callable[..., list[Doc]]) -> None:
    configmap = _one(render(), "ConfigMap")
    base = (REPO / "manifests" / "base" / "config.yaml").read_text(encoding="utf-8")
    assert configmap["data"]["config.yaml"] == base
    container = _container(render())
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/config")
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"


def test_custom_scoring_document_is_mounted_and_loads(render: Callable[..., list[Doc]]) -> None:
    from picker.config import load_config_text

    custom = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: queue-scorer\n- type: max-score-picker\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: queue-scorer\n"
        "  - pluginRef: max-score-picker\n"
    )
    docs = render(
        {
            "inferenceExtension": {
                "pluginsConfigFile": "custom.yaml",
                "pluginsCustomConfig": {"custom.yaml": custom},
            }
        }
    )
    configmap = _one(docs, "ConfigMap")
    assert configmap["data"]["custom.yaml"] == custom
    assert _flags(_container(docs))["--config-file"] == "/config/custom.yaml"
    load_config_text(configmap["data"]["custom.yaml"])
    load_config_text(configmap["data"]["config.yaml"])


def test_helm_lint_is_clean() -> None:
    report = helm.lint(str(CHART), BASE_VALUES, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == [], problems


def test_upstream_value_keys_are_accepted(chart: Any) -> None:
    """The keys of the upstream inferencepool chart's values.yaml that apply to picker exist with the same
    meaning, so an upstream values file carries over."""
    values = chart.values
    for path in (
        "inferenceExtension.replicas",
        "inferenceExtension.image.pullPolicy",
        "inferenceExtension.extProcPort",
        "inferenceExtension.failureMode",
        "inferenceExtension.env",
        "inferenceExtension.flags",
        "inferenceExtension.pluginsConfigFile",
        "inferenceExtension.pluginsCustomConfig",
        "inferenceExtension.extraContainerPorts",
        "inferenceExtension.extraServicePorts",
        "inferenceExtension.affinity",
        "inferenceExtension.tolerations",
        "inferenceExtension.resources",
        "inferenceExtension.monitoring.interval",
        "inferenceExtension.monitoring.prometheus.enabled",
        "inferenceExtension.monitoring.prometheus.auth.enabled",
        "inferenceExtension.monitoring.prometheus.auth.secretName",
        "inferenceExtension.monitoring.gke.enabled",
        "inferenceExtension.modelHeader",
        "inferenceExtension.tracing.enabled",
        "inferenceExtension.tracing.otelExporterEndpoint",
        "inferenceExtension.tracing.sampling.sampler",
        "inferenceExtension.tracing.sampling.samplerArg",
        "inferencePool.apiVersion",
        "inferencePool.targetPorts",
        "inferencePool.modelServerType",
        "inferencePool.modelServerProtocol",
        "inferencePool.modelServers.matchLabels",
        "provider.name",
        "provider.istio.destinationRule.host",
        "provider.istio.destinationRule.trafficPolicy",
        "experimentalHttpRoute.enabled",
        "experimentalHttpRoute.inferenceGatewayName",
        "experimentalHttpRoute.requestTimeout",
        "inferenceObjectives",
    ):
        node: Any = values
        for part in path.split("."):
            assert isinstance(node, dict), f"values.yaml: {path} is not under a mapping"
            assert part in node, f"values.yaml lacks {path}"
            node = node[part]


def test_metrics_auth_rbac_and_scrape_credentials(
    render: Callable[..., list[Doc]], crd_validator: Any
) -> None:
    """On by default as upstream: the EPP may create both reviews (cluster-scoped), a reader ClusterRole
    allows get /metrics, and the ServiceMonitor scrapes with the reader account's token Secret."""
    docs = render({"inferenceExtension": {"monitoring": {"prometheus": {"enabled": True}}}})
    _validate_all(docs, crd_validator)
    assert _flags(_container(docs))["--metrics-endpoint-auth"] == "true"
    reviews = _one(docs, "ClusterRole", "inference-llama-epp-metrics-auth")
    assert reviews["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    (subject,) = _one(docs, "ClusterRoleBinding", "inference-llama-epp-metrics-auth")["subjects"]
    assert (subject["name"], subject["namespace"]) == ("llama-epp", "inference")
    reader = _one(docs, "ClusterRole", "inference-llama-epp-metrics-reader")
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    secret = _one(docs, "Secret")
    assert secret["type"] == "kubernetes.io/service-account-token"
    account = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    binding = _one(docs, "ClusterRoleBinding", "inference-llama-epp-metrics-reader")
    assert binding["subjects"][0]["name"] == account
    (endpoint,) = _one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": secret["metadata"]["name"], "key": "token"}

    off = render(
        {"inferenceExtension": {"monitoring": {"prometheus": {"enabled": True, "auth": {"enabled": False}}}}}
    )
    assert _flags(_container(off))["--metrics-endpoint-auth"] == "false"
    assert not [d for d in off if d["kind"].startswith("Cluster") or d["kind"] == "Secret"]
    (endpoint,) = _one(off, "ServiceMonitor")["spec"]["endpoints"]
    assert "authorization" not in endpoint


# ---------------------------------------------------------------------------------------- several pools

QWEN_LABELS = {"app": "vllm-qwen3-32b"}
EXTRA_POOLS: Doc = {
    "extraPools": [
        {"name": "qwen3-32b", "extProcPort": 9004, "modelServers": {"matchLabels": QWEN_LABELS},
         "pluginsConfigFile": "qwen.yaml"},
        {"name": "mistral", "extProcPort": 9005, "modelServers": {"matchLabels": {"app": "vllm-mistral"}},
         "targetPorts": [{"number": 8001}]},
    ],
    "inferenceExtension": {
        "pluginsCustomConfig": {
            "qwen.yaml": "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        }
    },
}  # fmt: skip


@pytest.mark.parametrize("provider", ["none", "istio"])
def test_extra_pools_share_one_epp_on_a_port_each(
    render: Callable[..., list[Doc]], crd_validator: Any, provider: str
) -> None:
    from picker import cli

    docs = render({**EXTRA_POOLS, "provider": {"name": provider}})
    _validate_all(docs, crd_validator)
    pools = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "InferencePool"}
    assert set(pools) == {"llama", "qwen3-32b", "mistral"}
    service = _one(docs, "Service")
    by_port = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    container = _container(docs)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {}
    for name, spec in pools.items():
        ref = spec["endpointPickerRef"]
        assert ref["name"] == service["metadata"]["name"], name
        ports[name] = ref["port"]["number"]
        # the Service forwards the pool's port to the container port of the same number
        assert container_ports[by_port[ports[name]]] == ports[name], name
    assert ports == {"llama": 9002, "qwen3-32b": 9004, "mistral": 9005}
    assert pools["qwen3-32b"]["selector"]["matchLabels"] == QWEN_LABELS
    assert pools["mistral"]["targetPorts"] == [{"number": 8001}]
    assert pools["qwen3-32b"]["targetPorts"] == pools["llama"]["targetPorts"]
    # the EPP's flags, read by its own CLI: one --pool per pool, each with its port and document
    args = [a.replace("$(NAMESPACE)", "inference") for a in container["args"]]
    settings = cli.settings_from_args(cli.build_parser().parse_args(args), {})
    assert [(p.pool_name, p.grpc_port, p.config_file) for p in settings.pool_settings()] == [
        ("llama", 9002, "/config/config.yaml"),
        ("qwen3-32b", 9004, "/config/qwen.yaml"),
        ("mistral", 9005, "/config/config.yaml"),
    ]
    assert {p.pool_namespace for p in settings.pool_settings()} == {"inference"}


ROUTED_POOLS: Doc = _merge(
    EXTRA_POOLS,
    {
        "experimentalHttpRoute": {"enabled": True, "headerMatches": {"x-gateway-model-name": "llama"}},
        "extraPools": [
            {**pool, "headerMatches": {"x-gateway-model-name": model}}
            for pool, model in zip(EXTRA_POOLS["extraPools"], ("Qwen/Qwen3-32B", "mistral"), strict=True)
        ],
    },
)


@pytest.mark.parametrize("provider", ["none", "istio", "gke"])
def test_every_pool_gets_its_httproute_with_its_own_matches(
    render: Callable[..., list[Doc]], crd_validator: Any, provider: str
) -> None:
    docs = render({**ROUTED_POOLS, "provider": {"name": provider}})
    _validate_all(docs, crd_validator)  # each route's backend is one of the rendered pools
    routes = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "HTTPRoute"}
    assert set(routes) == {d["metadata"]["name"] for d in docs if d["kind"] == "InferencePool"}
    headers = {}
    for name, spec in routes.items():
        (rule,) = spec["rules"]
        assert rule["backendRefs"][0]["name"] == name
        ((match,),) = [rule["matches"]]
        headers[name] = {h["name"]: h["value"] for h in match["headers"]}
        assert spec["parentRefs"][0]["name"] == "inference-gateway"
        # GKE takes the backend timeout from the GCPBackendPolicy of each pool
        assert ("timeouts" in rule) == (provider != "gke"), name
    assert headers == {
        "llama": {"x-gateway-model-name": "llama"},
        "qwen3-32b": {"x-gateway-model-name": "Qwen/Qwen3-32B"},
        "mistral": {"x-gateway-model-name": "mistral"},
    }


def test_without_routes_extra_pools_need_no_matches(render: Callable[..., list[Doc]]) -> None:
    docs = render(EXTRA_POOLS)
    assert not [d for d in docs if d["kind"] == "HTTPRoute"]


@pytest.mark.parametrize(
    ("matches", "message"),
    [
        ((None, {"x-gateway-model-name": "m"}), r"extraPools\[0\].headerMatches is required"),
        (
            ({"x-gateway-model-name": "m"}, {"x-gateway-model-name": "m"}),
            r"extraPools\[1\].headerMatches are those",
        ),
        (
            ({"x-gateway-model-name": "llama"}, {"x-gateway-model-name": "m"}),
            r"extraPools\[0\].headerMatches are those",
        ),
    ],
)
def test_routes_that_would_shadow_each_other_are_refused(
    chart: Any, matches: tuple[Doc | None, Doc], message: str
) -> None:
    pools = [
        {**pool, **({"headerMatches": m} if m is not None else {})}
        for pool, m in zip(EXTRA_POOLS["extraPools"], matches, strict=True)
    ]
    values = _merge(
        BASE_VALUES,
        {
            **EXTRA_POOLS,
            "extraPools": pools,
            "experimentalHttpRoute": {"enabled": True, "headerMatches": {"x-gateway-model-name": "llama"}},
        },
    )
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name="llama", namespace="inference")


def test_extra_pools_get_their_gke_policies(render: Callable[..., list[Doc]]) -> None:
    docs = render({**EXTRA_POOLS, "provider": {"name": "gke"}})
    for kind in ("HealthCheckPolicy", "GCPBackendPolicy"):
        targets = {d["spec"]["targetRef"]["name"] for d in docs if d["kind"] == kind}
        assert targets == {"llama", "qwen3-32b", "mistral"}, kind
    checks = {d["metadata"]["name"]: d["spec"]["default"]["config"]["httpHealthCheck"]["port"]
              for d in docs if d["kind"] == "HealthCheckPolicy"}  # fmt: skip
    assert checks == {"llama": 8000, "qwen3-32b": 8000, "mistral": 8001}


def test_without_extra_pools_the_flags_are_the_one_pool_flags(render: Callable[..., list[Doc]]) -> None:
    flags = _flags(_container(render()))
    assert "--pool" not in flags
    assert (flags["--pool-name"], flags["--grpc-port"]) == ("llama", "9002")


def _extra(**pool: Any) -> list[Doc]:
    return [{"modelServers": {"matchLabels": QWEN_LABELS}, **pool}]


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        (_extra(extProcPort=9004), "must be a Kubernetes object name"),
        (_extra(name="Qwen", extProcPort=9004), "must be a Kubernetes object name"),
        (_extra(name="llama", extProcPort=9004), "the release's pool"),
        (_extra(name="qwen"), "extProcPort is required"),
        (_extra(name="qwen", extProcPort=9002), "already taken"),
        (_extra(name="qwen", extProcPort=9090), "already taken"),
        ([{"name": "qwen", "extProcPort": 9004}], "matchLabels is required"),
        (_extra(name="qwen", extProcPort=9004, pluginsConfigFile="nope.yaml"), "pluginsConfigFile"),
        (_extra(name="a", extProcPort=9004) + _extra(name="a", extProcPort=9005), "another extra pool"),
    ],
)
def test_bad_extra_pools_are_refused_with_a_reason(chart: Any, pools: list[Doc], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(_merge(BASE_VALUES, {"extraPools": pools}), name="llama", namespace="inference")
