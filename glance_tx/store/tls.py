"""
Which servers a network store trusts over https: the system's CAs by
default, a CA bundle of the operator's (a private S3, Swift or web server
signed by an in-house CA), or, where the operator says so, no check at all.

Each store reads it from its own section with glance_store's option names
(L{S3_TLS}, L{SWIFT_TLS}, L{HTTP_TLS}) and gets its own HTTP client from
L{StoreServices.http_client_for}, so one store's CA never widens what
another trusts.

glance_store's C{https_insecure} defaults to true (the HTTP store checks
no certificate unless told to); here every store checks by default, and
turning the check off is an explicit choice.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen
from OpenSSL import SSL, crypto
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from glance_tx.config import ConfigError, bool_option
from glance_tx.threads import BlockingRunner

__all__ = [
    "HTTP_TLS",
    "KEYSTONE_TLS",
    "S3_TLS",
    "SWIFT_TLS",
    "TLSOptionNames",
    "load_tls_policy",
]

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


@frozen
class TLSOptionNames:
    """
    A section's names for its CA bundle and its no-check switch, and (where
    the section has them) for a client certificate and its key.
    """

    ca_file: str
    insecure: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


#: glance_store has no "insecure" switch for S3 (botocore always checks).
S3_TLS = TLSOptionNames("s3_store_cacert")
SWIFT_TLS = TLSOptionNames("swift_store_cacert", "swift_store_auth_insecure")
HTTP_TLS = TLSOptionNames("https_ca_certificates_file", "https_insecure")
#: keystoneauth's session options, in C{[keystone_authtoken]} and
#: C{[oslo_limit]} alike (Keystone clients, not a store: the same rules).
KEYSTONE_TLS = TLSOptionNames("cafile", "insecure", "certfile", "keyfile")


async def load_tls_policy(
    options: Mapping[str, str], names: TLSOptionNames, runner: BlockingRunner
) -> IPolicyForHTTPS | None:
    """
    The TLS policy a store's section asks for, or C{None} for the default
    (the system's CAs, host names checked). A CA bundle wins over the
    no-check switch, as in glance_store. The bundle is read once, at
    start-up, on C{runner}.

    With a client certificate (C{names.cert_file}, its key in the same
    file or C{names.key_file}) the policy presents it to servers that ask.

    @raise ConfigError: the bundle cannot be read or holds no certificate;
        the client certificate or key cannot be read or do not match.
    """
    client = await _client_certificate(options, names, runner)
    path = options.get(names.ca_file, "").strip()
    if path:
        try:
            pem = await runner.run(_read, path)
        except OSError as e:
            raise ConfigError(f"{names.ca_file}: cannot read {path!r}: {e.strerror}") from None
        trust = _trust_root(pem, names.ca_file, path)
        if client is not None:
            return ClientCertificatePolicy(trust, client)
        return BrowserLikePolicyForHTTPS(trustRoot=trust)
    if names.insecure is not None and bool_option(options, names.insecure, False):
        return Unverified(client)
    if client is not None:
        return ClientCertificatePolicy(None, client)
    return None


async def _client_certificate(
    options: Mapping[str, str], names: TLSOptionNames, runner: BlockingRunner
) -> PrivateCertificate | None:
    """The section's client certificate with its key, read on C{runner}."""
    cert_path = options.get(names.cert_file, "").strip() if names.cert_file else ""
    if not cert_path:
        return None
    key_path = (options.get(names.key_file, "").strip() if names.key_file else "") or cert_path
    pems = []
    for option, path in ((names.cert_file, cert_path), (names.key_file, key_path)):
        try:
            pems.append(await runner.run(_read, path))
        except OSError as e:
            raise ConfigError(f"{option}: cannot read {path!r}: {e.strerror}") from None
    cert_pem, key_pem = pems
    try:
        certificate = PrivateCertificate.loadPEM(
            cert_pem if key_path == cert_path else cert_pem + b"\n" + key_pem
        )
    except (crypto.Error, SSL.Error, ValueError):
        raise ConfigError(
            f"{names.cert_file} / {names.key_file}: {cert_path!r} and {key_path!r} are not "
            "a PEM certificate and its private key"
        ) from None
    return certificate


@implementer(IPolicyForHTTPS)
@frozen
class ClientCertificatePolicy:
    """
    Host names and certificates checked (against C{trust_root}, or the
    system's authorities when None), presenting C{client} when asked.
    """

    trust_root: object | None
    client: PrivateCertificate = field(repr=False)

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        creator: IOpenSSLClientConnectionCreator = optionsForClientTLS(
            hostname.decode("idna"),
            trustRoot=self.trust_root,  # type: ignore[arg-type]
            clientCertificate=self.client,
        )
        return creator


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _trust_root(pem: bytes, option: str, path: str) -> object:
    """Every certificate of a PEM bundle, as one trust root."""
    blocks = [_PEM_BEGIN + part for part in pem.split(_PEM_BEGIN)[1:]]
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except (crypto.Error, SSL.Error, ValueError):
        raise ConfigError(f"{option}: {path!r} is not a PEM certificate bundle") from None
    if not certificates:
        raise ConfigError(f"{option}: {path!r} holds no PEM certificate")
    return trustRootFromCertificates(certificates)


@implementer(IPolicyForHTTPS)
class Unverified:
    """
    TLS that checks no certificate and no host name (C{https_insecure},
    C{swift_store_auth_insecure}), still sending the host name (SNI) so
    that a server hosting several names picks the right one, and
    C{client}'s certificate when given.
    """

    def __init__(self, client: PrivateCertificate | None = None) -> None:
        self.client = client

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = hostname.decode("ascii")
        sni = None if isIPAddress(name) or isIPv6Address(name) else hostname
        options = (
            CertificateOptions(verify=False)
            if self.client is None
            else CertificateOptions(
                verify=False,
                privateKey=self.client.privateKey.original,
                certificate=self.client.original,
            )
        )
        return _UnverifiedCreator(options.getContext(), sni)


@implementer(IOpenSSLClientConnectionCreator)
@frozen
class _UnverifiedCreator:
    context: SSL.Context
    sni: bytes | None

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        # Twisted's TLS protocol finds itself through the app data.
        connection.set_app_data(tlsProtocol)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni)
        return connection
