"""The RBAC in manifests/ is enough, and only what is needed: every request a fully-featured EPP (leader
election, the scoring ConfigMap through the API, an Event for a rejected document, metrics auth) sends to
the API-server emulator is granted by the Roles and ClusterRoles of the kustomize builds that turn those
features on, and every verb those Roles grant is used. The emulator records each request; the rules come
from the real ``kubectl kustomize`` output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import config_map
from picker.testing.poll import eventually
from tests.integration.kube_e2e.conftest import (
    NS,
    SCRAPER_TOKEN,
    FakePods,
    StartEpp,
    create_pool,
    wait_serving,
)
from tests.unit.manifests.conftest import kustomize_build

pytestmark = pytest.mark.integration

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"
#: the builds whose components together turn on everything this test exercises
BUILDS = ("examples/ha", "examples/configmap-watch", "examples/secure")
CM = "picker-config"  # the name the base's configMapGenerator gives the scoring document
BAD_DOCUMENT = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins: 7\n"

Grant = tuple[str, str, str | None]  # (resource, verb, resourceName or None for any)


def _granted() -> set[Grant]:
    """Every (resource, verb, resourceName) the EPP's ServiceAccount gets in the builds above."""
    out: set[Grant] = set()
    for name in BUILDS:
        build = kustomize_build(MANIFESTS / name)
        bound = {
            d["roleRef"]["name"]
            for d in build.resources
            if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}
            and any(s["kind"] == "ServiceAccount" and s["name"] == "picker" for s in d["subjects"])
        }
        for role in build.resources:
            if role["kind"] not in {"Role", "ClusterRole"} or role["metadata"]["name"] not in bound:
                continue
            for rule in role["rules"]:
                names: list[str | None] = list(rule.get("resourceNames", [])) or [None]
                for resource in rule.get("resources", []):
                    out.update((resource, verb, n) for verb in rule["verbs"] for n in names)
    return out


def _allowed(granted: set[Grant], plural: str, verb: str, name: str | None, query: dict[str, str]) -> bool:
    if (plural, verb, None) in granted:
        return True
    # RBAC matches resourceNames for get/update by the URL's name, and for list/watch by a
    # metadata.name field selector.
    target = name or query.get("fieldSelector", "").removeprefix("metadata.name=") or None
    return target is not None and (plural, verb, target) in granted


async def test_every_request_is_granted_and_every_grant_is_used(
    start_epp: StartEpp, emulator: KubeApiEmulator, fake_pods: FakePods
) -> None:
    granted = _granted()
    pod = await fake_pods.add("pod-a")
    create_pool(emulator, fake_pods)
    emulator.create(pod.manifest())
    emulator.create(config_map(CM, NS, data={"config.yaml": BAD_DOCUMENT}))
    epp = await start_epp(
        config_configmap=CM,
        ha_enable_leader_election=True,
        # fast Lease timings, so that a renewal (update) happens within the test
        leader_lease_duration=3.0,
        leader_renew_deadline=2.0,
        leader_retry_period=0.2,
        metrics_endpoint_auth=True,
    )
    await wait_serving(epp)
    await eventually(lambda: emulator.count("update", "leases"), what="a Lease renewal")
    await eventually(lambda: emulator.count("create", "events"), what="an Event for the rejected document")
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{epp.ports.metrics}/metrics",
            headers={"Authorization": f"Bearer {SCRAPER_TOKEN}"},
        ) as resp,
    ):
        assert resp.status == 200

    sent: set[tuple[str, str, str | None, tuple[tuple[str, str], ...]]] = {
        (
            r.plural if r.subresource is None else f"{r.plural}/{r.subresource}",
            r.verb,
            r.name,
            tuple(r.query.items()),
        )
        for r in emulator.requests
    }
    denied = [s for s in sent if not _allowed(granted, s[0], s[1], s[2], dict(s[3]))]
    assert denied == [], f"requests the manifests' RBAC would refuse: {denied}"

    used = {(plural, verb) for plural, verb, _name, _query in sent}
    unused: list[Any] = sorted(
        (resource, verb)
        for resource, verb, _n in granted
        if (resource, verb) not in used and resource != "inferencepools"  # one API group is used per EPP
    )
    assert unused == [], f"granted but never used: {unused}"
