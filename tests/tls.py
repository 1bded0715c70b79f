"""
TLS for tests: a throwaway CA, a certificate it signs for 127.0.0.1 and
localhost, and a TLS relay that puts https in front of a plain test server
(moto, Swift's proxy) so a store can be tried against a private CA.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import TestCase

__all__ = ["CertificateAuthority", "certificate_authority", "tls_relay"]


@frozen
class CertificateAuthority:
    """A CA's certificate and the server certificate (with key) it signed."""

    ca_pem: bytes
    server_pem: bytes

    def write(self, case: TestCase) -> str:
        """The CA certificate in a file of C{case}'s, for a C{*_cacert} option."""
        path = case.mktemp()
        with open(path, "wb") as f:
            f.write(self.ca_pem)
        return path

    def server_options(self) -> Any:
        """Context options for a server presenting the signed certificate."""
        return PrivateCertificate.loadPEM(self.server_pem).options()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@functools.cache
def certificate_authority(label: str = "glance-tx test CA") -> CertificateAuthority:
    """A CA named C{label} (one per label per run: EC keys, made quickly)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(label))
        .issuer_name(_name(label))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return CertificateAuthority(
        ca_pem=ca_cert.public_bytes(pem),
        server_pem=cert.public_bytes(pem)
        + key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def tls_relay(case: TestCase, reactor: Any, target: str, ca: CertificateAuthority) -> int:
    """
    Listen with TLS on a free 127.0.0.1 port, relaying each connection to
    C{target} (C{host:port}, plain TCP); the port, closed at cleanup.
    """
    host, port = target.rsplit(":", 1)
    listening = reactor.listenSSL(
        0, ProxyFactory(host, int(port)), ca.server_options(), interface="127.0.0.1"
    )
    case.addCleanup(listening.stopListening)
    return int(listening.getHost().port)
