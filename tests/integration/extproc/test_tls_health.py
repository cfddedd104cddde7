"""TLS on the ext_proc port (self-signed, --cert-path, reload, ALPN h2) and the gRPC health service."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.extproc import ExtProcServer, HealthServer, HealthService, HealthState, NullObserver, TLSConfig
from picker.extproc.tls import generate_self_signed
from picker.testing.envoy import EnvoyClient, HttpRequest, fetch_server_certificate
from tests.integration.extproc.conftest import POD_2, FakeRouter, StartHarness

pytestmark = pytest.mark.integration

BODY = b'{"model":"m","prompt":"p"}'
EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"


async def _alpn(port: int) -> str | None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        protocol: str | None = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    finally:
        writer.close()
    return protocol


async def test_self_signed_tls_with_alpn_h2(start: StartHarness) -> None:
    h = await start(tls=TLSConfig())
    result = await h.client.exchange(HttpRequest(body=BODY))
    assert result.destination == POD_2
    assert await _alpn(h.port) == "h2"
    assert h.client.server_certificate is not None
    cert = x509.load_pem_x509_certificate(h.client.server_certificate)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


async def test_each_start_generates_a_fresh_certificate(start: StartHarness) -> None:
    first = await start(tls=TLSConfig())
    second = await start(tls=TLSConfig())
    assert first.client.server_certificate != second.client.server_certificate


async def test_plaintext_server_serves_h2c(start: StartHarness) -> None:
    h = await start(tls=None)
    assert (await h.client.exchange(HttpRequest(body=BODY))).destination == POD_2
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await asyncio.wait_for(fetch_server_certificate("127.0.0.1", h.port), 5)


def _write_pair(directory: Path, name: str) -> bytes:
    cert, key = generate_self_signed((name, "127.0.0.1"))
    # write the key first and the cert last, each via rename, as a Secret update would appear
    for file_name, data in (("tls.key", key), ("tls.crt", cert)):
        tmp = directory / f".{file_name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(directory / file_name)
    return cert


async def test_cert_path_is_loaded(start: StartHarness, tmp_path: Path) -> None:
    cert = _write_pair(tmp_path, "picker.example")
    h = await start(tls=TLSConfig(cert_path=tmp_path))
    assert h.client.server_certificate == cert
    assert (await h.client.exchange(HttpRequest(body=BODY))).destination == POD_2


async def test_cert_path_with_missing_files_fails_at_start(start: StartHarness, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tls\.crt"):
        await start(tls=TLSConfig(cert_path=tmp_path))
    (tmp_path / "tls.crt").write_text("not pem")
    (tmp_path / "tls.key").write_text("not pem")
    with pytest.raises(ValueError, match="not a PEM file"):
        await start(tls=TLSConfig(cert_path=tmp_path))


async def test_cert_reload_applies_to_new_connections(start: StartHarness, tmp_path: Path) -> None:
    first = _write_pair(tmp_path, "first.example")
    h = await start(tls=TLSConfig(cert_path=tmp_path, reload=True))
    assert h.client.server_certificate == first
    second = _write_pair(tmp_path, "second.example")
    assert await fetch_server_certificate("127.0.0.1", h.port) == second
    async with EnvoyClient(f"127.0.0.1:{h.port}", tls=True) as client:
        assert client.server_certificate == second
        assert (await client.exchange(HttpRequest(body=BODY))).destination == POD_2
    # a half-written rotation keeps the current certificate
    (tmp_path / "tls.crt").write_text("garbage")
    assert await fetch_server_certificate("127.0.0.1", h.port) == second
    # so does a rotation caught between its two files (new key, old certificate)
    third_cert, third_key = generate_self_signed(("third.example",))
    (tmp_path / "tls.crt").write_bytes(second)
    (tmp_path / "tls.key").write_bytes(third_key)
    assert await fetch_server_certificate("127.0.0.1", h.port) == second
    (tmp_path / "tls.crt").write_bytes(third_cert)
    assert await fetch_server_certificate("127.0.0.1", h.port) == third_cert


# ------------------------------------------------------------------------------------------ health


class MutableState:
    """The app side: holds the current HealthState and lets the test change it."""

    def __init__(self, state: HealthState) -> None:
        self.state = state

    def __call__(self) -> HealthState:
        return self.state


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> str:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def test_health_server_without_leader_election() -> None:
    state = MutableState(HealthState(synced=False, leader_election=False))
    server = HealthServer(HealthService(state), port=0, host="127.0.0.1")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await _check(stub, "inference-extension") == "NOT_SERVING"
            state.state = HealthState(synced=True, leader_election=False)
            for service in ("", "liveness", "readiness", EXT_PROC, "inference-extension"):
                assert await _check(stub, service) == "SERVING"
            state.state = HealthState(synced=True, protocol_ok=False)
            assert await _check(stub, "readiness") == "NOT_SERVING"
            listed = await stub.List(health_pb2.HealthListRequest())
            assert {k: v.status for k, v in listed.statuses.items()} == {
                EXT_PROC: health_pb2.HealthCheckResponse.NOT_SERVING
            }
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                    pass
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


async def test_health_server_with_leader_election() -> None:
    state = MutableState(HealthState(synced=True, leader=False, leader_election=True))
    server = HealthServer(HealthService(state), port=0, host="127.0.0.1")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await _check(stub, "liveness") == "SERVING"
            assert await _check(stub, "readiness") == "NOT_SERVING"
            assert await _check(stub, "inference-extension") == "SERVICE_UNKNOWN"
            state.state = HealthState(synced=True, leader=True, leader_election=True)
            for service in ("", "readiness", EXT_PROC):
                assert await _check(stub, service) == "SERVING"
            listed = await stub.List(health_pb2.HealthListRequest())
            assert set(listed.statuses) == {EXT_PROC, "liveness", "readiness"}
            assert all(v.status == health_pb2.HealthCheckResponse.SERVING for v in listed.statuses.values())
    finally:
        await server.stop(0)


async def test_health_checking_on_the_ext_proc_port_over_tls(start: StartHarness) -> None:
    health = HealthService(lambda: HealthState(synced=True))
    h = await start(tls=TLSConfig(), health=health)
    assert h.client.server_certificate is not None
    credentials = grpc.ssl_channel_credentials(root_certificates=h.client.server_certificate)
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{h.port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert await _check(stub, EXT_PROC) == "SERVING"
    assert (await h.client.exchange(HttpRequest(body=BODY))).destination == POD_2


async def test_health_is_not_served_on_the_ext_proc_port_by_default(start: StartHarness) -> None:
    h = await start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=EXT_PROC))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reuse_port_lets_workers_share_a_port_and_is_off_by_default(start: StartHarness) -> None:
    exclusive = await start()
    taken = ExtProcServer(FakeRouter(), NullObserver(), port=exclusive.port, host="127.0.0.1", tls=None)
    with pytest.raises(RuntimeError):
        await taken.start()
    shared = await start(reuse_port=True)
    second = ExtProcServer(
        FakeRouter(), NullObserver(), port=shared.port, host="127.0.0.1", tls=None, reuse_port=True
    )
    await second.start()
    try:
        assert second.bound_port == shared.port
    finally:
        await second.stop(0)
