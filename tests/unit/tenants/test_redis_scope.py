"""Whose budget a Redis key is: each pool's own when one process serves several pools (unless the documents
say to share), and each replica's holds and leases under an id no other replica can have."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from picker.config import load_config_text
from picker.tenants.redis_backend import RedisBackend
from picker.tenants.service import TenantService

DOC = """
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  defaultTier: t
  tiers: [{{name: t, limits: {{tokensPerHour: 1000}}}}]
  backend: {{type: redis, redis: {{url: "redis://127.0.0.1:1/0"{extra}}}}}
"""


def _prefix(scope: str, extra: str = "") -> str:
    svc = TenantService(CollectorRegistry(), redis_scope=scope)
    cfg = load_config_text(DOC.format(extra=extra)).settings.tenants
    assert cfg is not None
    svc.apply(cfg)
    assert svc.redis is not None  # built, never connected
    assert cfg.backend.redis is not None
    return svc.redis_config(cfg.backend.redis).key_prefix


@pytest.mark.parametrize(
    ("scope", "extra", "prefix"),
    [
        ("", "", "picker:tenants:"),  # one pool: as ever
        ("alpha", "", "picker:tenants:alpha:"),  # several pools: each pool's budgets its own
        ("alpha", ", keyPrefix: 'org:budgets:'", "org:budgets:"),  # written in the document: as written
        ("alpha", ", keyPrefix: 'picker:tenants:'", "picker:tenants:"),  # even when it is the default
    ],
)
def test_the_key_prefix_of_a_pool(scope: str, extra: str, prefix: str) -> None:
    assert _prefix(scope, extra) == prefix


def test_a_reload_with_the_same_section_keeps_the_client() -> None:
    svc = TenantService(CollectorRegistry(), redis_scope="alpha")
    cfg = load_config_text(DOC.format(extra="")).settings.tenants
    svc.apply(cfg)
    first = svc.redis
    svc.apply(load_config_text(DOC.format(extra="")).settings.tenants)
    assert svc.redis is first  # the scoped section compares equal to the one in use


def test_replica_ids_are_never_reused() -> None:
    """Built and dropped one at a time, every backend lands at the same address and (in a container) has
    the same pid as its counterpart in another replica: the id must not come from either."""
    cfg = load_config_text(DOC.format(extra="")).settings.tenants
    assert cfg is not None
    assert cfg.backend.redis is not None
    ids = {RedisBackend(cfg.backend.redis)._replica for _ in range(200)}
    assert len(ids) == 200
