"""Backoff, error translation, lease naming, and the emulator's own selector/patch semantics."""

from __future__ import annotations

import random

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from picker.kube import (
    Backoff,
    KubeConflictError,
    KubeError,
    KubeGoneError,
    KubeNotFoundError,
    KubeUnavailableError,
    lease_name,
)
from picker.kube.client import KubeConfigError, error_from_status, load_api_client, translate
from picker.testing.kube_api import field_matcher, label_matcher, merge_patch


def test_backoff_grows_jittered_and_capped():
    b = Backoff(initial=1.0, cap=8.0, rng=random.Random(3))
    delays = [b.next() for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True)), delays
    assert len({round(d, 6) for d in delays}) == len(delays), "jittered"
    b.reset()
    assert b.next() <= 1.0


def test_backoff_honours_retry_after_up_to_a_bound():
    b = Backoff(initial=0.1, cap=1.0, max_retry_after=30.0, rng=random.Random(1))
    assert b.next(retry_after=5.0) == 5.0
    assert b.next(retry_after=500.0) == 30.0
    assert b.next(retry_after=0.0) <= 1.0


def test_backoff_rejects_nonsense():
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial=0)
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial=2, cap=1)


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (410, KubeGoneError, True),
        (409, KubeConflictError, False),
        (404, KubeNotFoundError, False),
        (429, KubeUnavailableError, True),
        (503, KubeUnavailableError, True),
        (403, KubeError, False),
    ],
)
def test_status_mapping(status: int, kind: type[KubeError], transient: bool):
    err = error_from_status(status, {"reason": "R", "message": "m", "details": {"retryAfterSeconds": 2}})
    assert type(err) is kind
    assert err.transient is transient
    assert err.status == status
    assert err.retry_after == 2.0
    assert "m" in err.message


def test_translate_api_exception_reads_the_status_body_and_retry_after_header():
    exc = ApiException(status=429, reason="Too Many Requests")
    exc.body = '{"kind":"Status","code":429,"reason":"TooManyRequests","message":"slow down"}'
    exc.headers = {"Retry-After": "4"}
    err = translate(exc)
    assert isinstance(err, KubeUnavailableError)
    assert err.retry_after == 4.0
    assert "slow down" in err.message


def test_translate_transport_errors():
    assert isinstance(translate(urllib3.exceptions.ProtocolError("reset")), KubeUnavailableError)
    assert isinstance(translate(ConnectionRefusedError(111, "refused")), KubeUnavailableError)
    with pytest.raises(TypeError):
        translate(RuntimeError("a bug is not an API error"))


def test_lease_name_matches_the_reference():
    assert lease_name("default", "qwen") == "epp-default-qwen.gateway-api-inference-extension.sigs.k8s.io"


def test_missing_kubeconfig_is_a_config_error(tmp_path):
    with pytest.raises(KubeConfigError, match="cannot load"):
        load_api_client(tmp_path / "absent")


def test_kubeconfig_does_not_touch_the_global_default(tmp_path):
    from kubernetes import client as k8s_client

    before = k8s_client.Configuration.get_default_copy().host
    path = tmp_path / "kc"
    path.write_text(
        '{"apiVersion":"v1","kind":"Config","current-context":"c",'
        '"clusters":[{"name":"k","cluster":{"server":"http://127.0.0.1:1"}}],'
        '"users":[{"name":"u","user":{"token":"t"}}],'
        '"contexts":[{"name":"c","context":{"cluster":"k","user":"u"}}]}'
    )
    api = load_api_client(path)
    try:
        assert api.configuration.host == "http://127.0.0.1:1"
        assert k8s_client.Configuration.get_default_copy().host == before
    finally:
        api.close()


# --------------------------------------------------------------------------- the emulator's semantics
def test_label_selectors():
    labels = {"app": "x", "tier": "gpu"}
    assert label_matcher("app=x,tier==gpu")(labels)
    assert not label_matcher("app!=x")(labels)
    assert label_matcher("tier in (cpu, gpu),app")(labels)
    assert not label_matcher("tier notin (gpu)")(labels)
    assert label_matcher("!zone")(labels)
    assert not label_matcher("zone")(labels)
    assert label_matcher("")(labels)


def test_field_selectors():
    obj = {"metadata": {"name": "a", "namespace": "ns"}}
    assert field_matcher("metadata.name=a")(obj)
    assert not field_matcher("metadata.name!=a")(obj)
    assert field_matcher("metadata.namespace==ns,metadata.name=a")(obj)


def test_merge_patch_is_rfc7386():
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1,
        "b": {"d": 3, "e": 4},
        "f": [1],
    }
