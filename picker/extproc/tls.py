"""Transport security of the ext_proc port (reference §1.13).

Gateways connect with TLS and do not verify the certificate, so by default a self-signed certificate is
generated when the server starts (ECDSA P-256, SANs ``localhost`` and ``127.0.0.1`` plus any extra
names, ten years). ``--cert-path`` loads ``tls.crt`` / ``tls.key`` from a directory instead (a mounted
Kubernetes TLS Secret); with ``reload`` the files are re-read when they change, checked at each new
connection, so a rotated Secret takes effect without a restart. gRPC negotiates ALPN ``h2`` itself.
Plaintext (``--secure-serving=false``) is expressed by passing no :class:`TLSConfig` at all.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "TLSConfig",
    "generate_self_signed",
    "load_key_pair",
    "server_credentials",
]

logger = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How the ext_proc port does TLS. ``cert_path=None`` → a self-signed certificate made at start."""

    #: directory holding ``tls.crt`` and ``tls.key`` (PEM), as a Kubernetes TLS Secret mounts them
    cert_path: Path | None = None
    #: re-read the files when their modification time changes (``--enable-cert-reload``)
    reload: bool = False
    #: extra SANs for the self-signed certificate (DNS names or IP addresses)
    extra_names: Sequence[str] = ()
    #: a certificate and key already in memory, ``(cert_pem, key_pem)``: used instead of generating one.
    #: ``--workers`` generates the self-signed pair once so every worker presents the same certificate.
    key_pair: tuple[bytes, bytes] | None = None


def generate_self_signed(
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A fresh self-signed certificate and its key, as ``(cert_pem, key_pem)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "picker"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost"),
        ]
    )
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def load_key_pair(cert_dir: Path) -> tuple[bytes, bytes]:
    """``(cert_pem, key_pem)`` from ``cert_dir``; raises ValueError naming the file that is unusable."""
    pair: list[bytes] = []
    for name in (CERT_FILE, KEY_FILE):
        path = cert_dir / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN" not in data:
            raise ValueError(f"{path} is not a PEM file")
        pair.append(data)
    cert_pem, key_pem = pair
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise ValueError(f"cannot parse the key pair in {cert_dir}: {exc}") from exc
    # During a rotation the two files change one after the other; a mismatched pair would break every
    # handshake, so it is refused (the reloader keeps the previous pair until both files agree).
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ValueError(f"{cert_dir / KEY_FILE} does not match {cert_dir / CERT_FILE}")
    return cert_pem, key_pem


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class _Reloader:
    """Called by gRPC before each TLS handshake; returns a new configuration when the files changed."""

    def __init__(self, cert_dir: Path, stamp: tuple[int, ...]) -> None:
        self._dir = cert_dir
        self._stamp = stamp

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = _stamp(self._dir)
        except OSError:
            return None
        if stamp == self._stamp:
            return None
        try:
            cert, key = load_key_pair(self._dir)
        except ValueError as exc:  # e.g. half-written during a rotation: keep serving the old pair
            logger.warning("TLS reload skipped: %s", exc)
            return None
        self._stamp = stamp
        logger.info("TLS certificate reloaded from %s", self._dir)
        return grpc.ssl_server_certificate_configuration([(key, cert)])


def _stamp(cert_dir: Path) -> tuple[int, ...]:
    """Identity of the current files: a Secret rotation swaps symlinks (new inode), an edit bumps mtime."""
    stamp: list[int] = []
    for name in (CERT_FILE, KEY_FILE):
        st = (cert_dir / name).stat()
        stamp += (st.st_mtime_ns, st.st_ino, st.st_size)
    return tuple(stamp)


def server_credentials(config: TLSConfig) -> grpc.ServerCredentials:
    """gRPC server credentials for ``config`` (generating or loading the key pair now)."""
    if config.cert_path is None:
        if config.key_pair is not None:
            cert, key = config.key_pair
        else:
            cert, key = generate_self_signed(("localhost", "127.0.0.1", *config.extra_names))
        return grpc.ssl_server_credentials([(key, cert)])
    stamp = _stamp(config.cert_path) if config.reload else ()
    cert, key = load_key_pair(config.cert_path)
    if not config.reload:
        return grpc.ssl_server_credentials([(key, cert)])
    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration([(key, cert)]),
        _Reloader(config.cert_path, stamp),
        require_client_authentication=False,
    )
