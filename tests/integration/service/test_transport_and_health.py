"""TLS on the ext_proc port (self-signed, ``--cert-path``, off), gRPC health, /healthz and /readyz."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.extproc.tls import generate_self_signed
from picker.testing.envoy import EnvoyClient, HttpRequest
from tests.integration.service.conftest import P0, StartService, completion

pytestmark = pytest.mark.integration

EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _routes(client: EnvoyClient) -> str | None:
    result = await client.exchange(HttpRequest(body=completion()))
    return result.destination


# ------------------------------------------------------------------------------------------ TLS


async def test_tls_with_a_self_signed_certificate_generated_at_start(start_service: StartService) -> None:
    svc = await start_service(pods=1, secure_serving=True)
    assert await _routes(svc.client) == P0
    assert svc.client.server_certificate is not None
    cert = x509.load_pem_x509_certificate(svc.client.server_certificate)
    assert cert.issuer == cert.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    # a plaintext (h2c) client cannot talk to the TLS port
    plain = await svc.new_client(tls=False)
    result = await plain.exchange(HttpRequest(body=completion()))
    assert result.destination is None
    assert result.code == grpc.StatusCode.UNAVAILABLE


async def test_tls_with_cert_path(start_service: StartService, tmp_path: Path) -> None:
    cert_pem, key_pem = generate_self_signed(("picker.test", "127.0.0.1"))
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    svc = await start_service(pods=1, secure_serving=True, cert_path=str(tmp_path))
    assert await _routes(svc.client) == P0
    assert svc.client.server_certificate is not None
    presented = ssl.PEM_cert_to_DER_cert(svc.client.server_certificate.decode())
    assert presented == ssl.PEM_cert_to_DER_cert(cert_pem.decode())


async def test_plaintext_when_secure_serving_is_off(start_service: StartService) -> None:
    svc = await start_service(pods=1, secure_serving=False)
    assert await _routes(svc.client) == P0
    with pytest.raises((ssl.SSLError, OSError)):
        await svc.new_client(tls=True)


# ------------------------------------------------------------------------------------------ health


async def _check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(response.status)


@pytest.mark.parametrize("service", ["", "liveness", "readiness", EXT_PROC, "inference-extension"])
async def test_grpc_health_serving_with_static_endpoints(start_service: StartService, service: str) -> None:
    svc = await start_service(pods=1)
    assert await _check(svc.ports.health, service) == SERVING


async def test_grpc_health_list_and_watch(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.ports.health}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=5)
        assert {name: s.status for name, s in listed.statuses.items()} == {EXT_PROC: SERVING}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5):
                pass
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_on_the_ext_proc_port_only_with_health_checking(start_service: StartService) -> None:
    without = await start_service(pods=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(without.ports.grpc, EXT_PROC)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

    svc = await start_service(pods=1, health_checking=True)
    for service in (EXT_PROC, "", "readiness"):
        assert await _check(svc.ports.grpc, service) == SERVING
    assert await _routes(svc.client) == P0  # ext_proc still served on the same port


async def test_health_and_readyz_follow_the_pool(start_service: StartService) -> None:
    svc = await start_service(pods=2)
    ready = await svc.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"ready": True, "endpoints": 2}
    healthz = await svc.get("/healthz")
    assert healthz.status == 200

    svc.service.datastore.set_pool(None)  # the InferencePool was deleted
    for service in ("", "readiness", EXT_PROC):
        assert await _check(svc.ports.health, service) == NOT_SERVING
    not_ready = await svc.get("/readyz")
    assert not_ready.status == 503
    assert await not_ready.json() == {"ready": False, "endpoints": 0}
    assert (await svc.get("/healthz")).status == 200  # alive, just not ready


async def test_cert_reload_serves_a_rotated_certificate(start_service: StartService, tmp_path: Path) -> None:
    """``--enable-cert-reload``: a Secret rotation (new files swapped in by renaming, as the kubelet's
    symlink swap does) is served to the next connection without a restart."""
    from picker.testing.envoy import fetch_server_certificate

    certs = tmp_path / "certs"
    certs.mkdir()

    def write_pair(name: str) -> bytes:
        cert, key = generate_self_signed((name, "127.0.0.1"))
        for filename, data in (("tls.key", key), ("tls.crt", cert)):
            staged = certs / f".{filename}.new"
            staged.write_bytes(data)
            staged.rename(certs / filename)
        return cert

    first = write_pair("first.example")
    svc = await start_service(pods=1, secure_serving=True, cert_path=str(certs), enable_cert_reload=True)
    assert await fetch_server_certificate("127.0.0.1", svc.ports.grpc) == first
    second = write_pair("second.example")
    assert await fetch_server_certificate("127.0.0.1", svc.ports.grpc) == second
    client = await svc.new_client()
    assert await _routes(client) == P0  # a client that pins the new certificate routes
