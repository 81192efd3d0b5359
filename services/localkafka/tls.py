"""TLS for the local broker: a private CA and a broker certificate, generated here.

The broker takes its key and certificate chain inline as PEM (`ssl.keystore.type=PEM`, an
unencrypted PKCS#8 key, which Kafka accepts only as a property value); clients trust the CA with
librdkafka's `ssl.ca.location`. Certificates name 127.0.0.1 and localhost, the only addresses the
local broker listens on.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365
TLS_LISTENER = "SSL"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate: what clients trust (ssl.ca.location)
    certificate: Path  # the broker's certificate, signed by the CA
    key: Path  # the broker's private key (PKCS#8, unencrypted; readable by its owner only)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rendezvous-serving (local)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def generate(directory: Path, name: str = "rendezvous local broker") -> TlsFiles:
    """A new CA and a broker certificate for 127.0.0.1/localhost, written to `directory`."""
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} CA"))
        .issuer_name(_name(f"{name} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "broker.pem", directory / "broker-key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a key file kept from an earlier run keeps its mode through O_TRUNC (0644 stayed so)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return files


def tls_broker_options(files: TlsFiles, listener: str = TLS_LISTENER) -> dict[str, object]:
    """`LocalBroker` / `ephemeral_broker` keyword arguments for an extra TLS listener."""
    prefix = f"listener.name.{listener.lower()}"
    return {
        "extra_listeners": {listener.upper(): "SSL"},
        "extra_properties": {
            f"{prefix}.ssl.keystore.type": "PEM",
            f"{prefix}.ssl.keystore.certificate.chain": files.certificate.read_text() + files.ca.read_text(),
            f"{prefix}.ssl.keystore.key": files.key.read_text(),
            f"{prefix}.ssl.client.auth": "none",
        },
    }


def tls_client_config(bootstrap: str, ca: Path) -> dict[str, str]:
    """librdkafka settings of a client of that listener."""
    return {"bootstrap.servers": bootstrap, "security.protocol": "SSL", "ssl.ca.location": str(ca)}
