"""
TLS for tests: a throwaway CA, a certificate it signs for 127.0.0.1 and
localhost (and one for a client), and a TLS relay that puts https in front of a plain test server
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
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import TestCase

__all__ = ["CertificateAuthority", "certificate_authority", "tls_relay"]


@frozen
class CertificateAuthority:
    """A CA's certificate and the server certificate (with key) it signed."""

    ca_pem: bytes
    server_pem: bytes
    #: A client certificate the CA signed, with its key (for relays that
    #: require one).
    client_pem: bytes = b""

    def write(self, case: TestCase) -> str:
        """The CA certificate in a file of C{case}'s, for a C{*_cacert} option."""
        path = case.mktemp()
        with open(path, "wb") as f:
            f.write(self.ca_pem)
        return path

    def server_options(self, require_client: bool = False) -> Any:
        """
        Context options for a server presenting the signed certificate;
        with C{require_client}, refusing clients without a certificate the
        CA signed.
        """
        server = PrivateCertificate.loadPEM(self.server_pem)
        if not require_client:
            return server.options()
        return server.options(Certificate.loadPEM(self.ca_pem))

    def write_client(self, case: TestCase) -> str:
        """The client certificate and its key in one file of C{case}'s."""
        path = case.mktemp()
        with open(path, "wb") as f:
            f.write(self.client_pem)
        return path


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
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("glance-tx test client"))
        .issuer_name(ca_cert.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM

    def with_key(certificate: x509.Certificate, private: ec.EllipticCurvePrivateKey) -> bytes:
        return certificate.public_bytes(pem) + private.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    return CertificateAuthority(
        ca_pem=ca_cert.public_bytes(pem),
        server_pem=with_key(cert, key),
        client_pem=with_key(client_cert, client_key),
    )


def tls_relay(
    case: TestCase,
    reactor: Any,
    target: str,
    ca: CertificateAuthority,
    require_client: bool = False,
) -> int:
    """
    Listen with TLS on a free 127.0.0.1 port, relaying each connection to
    C{target} (C{host:port}, plain TCP); the port, closed at cleanup. With
    C{require_client}, only clients presenting a certificate C{ca} signed
    get through.
    """
    host, port = target.rsplit(":", 1)
    listening = reactor.listenSSL(
        0, ProxyFactory(host, int(port)), ca.server_options(require_client),
        interface="127.0.0.1",
    )
    case.addCleanup(listening.stopListening)
    return int(listening.getHost().port)
