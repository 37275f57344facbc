"""What every emulator shares: its served certificate, its listening ports and ``run(stop)``."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Emulator:
    """Gives `run(stop)` and `certificate_pem` to an emulator with `start` and `stop`."""

    _certificate_pem: bytes | None = None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    @property
    def certificate_pem(self) -> bytes | None:
        """The served certificate (generated unless files were given); trust it."""
        return self._certificate_pem


def check_certificate_files(cert_file: Path | None, key_file: Path | None) -> None:
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both cert_file and key_file, or neither")


def certificate_pair(
    cert_file: Path | None, key_file: Path | None, host: str
) -> tuple[bytes, bytes]:
    """The given files' (certificate PEM, key PEM), or a self-signed pair for `host`."""
    if cert_file is not None and key_file is not None:
        return cert_file.read_bytes(), key_file.read_bytes()
    return self_signed_certificate(host)


def load_cert_chain(context: ssl.SSLContext, certificate_pem: bytes, key_pem: bytes) -> None:
    """`context.load_cert_chain` from PEM bytes (the ssl module reads only files)."""
    with tempfile.TemporaryDirectory(prefix="clarion-emulator-") as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(certificate_pem)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)


def bound_port(server: asyncio.Server | None) -> int:
    if server is None:
        raise RuntimeError("the emulator is not started")
    return int(server.sockets[0].getsockname()[1])


def self_signed_certificate(
    host: str = "127.0.0.1", common_name: str = "Clarion APNs emulator"
) -> tuple[bytes, bytes]:
    """A P-256 self-signed server certificate for `host`, localhost, 127.0.0.1 and ::1, as
    (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    if host not in {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""}:  # noqa: S104
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    # The certificate's validity is about the real TLS handshake, so it uses the real time.
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Every emulator's certificate has the same subject: with the key identifier OpenSSL
        # tells them apart, so one CA bundle can trust several emulators at once.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
