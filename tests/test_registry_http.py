"""
The HTTP registry client against the registry server over real sockets:
a listening port on 127.0.0.1 in trial's reactor, a treq client with a
persistent connection pool, and an SQL registry on a real thread pool
behind the server, on a SQLite file and on PostgreSQL
(C{GLANCE_TX_TEST_POSTGRES_URL}, as in C{tests.test_registry_sql}). Also
what a node sees when the registry is unreachable, silent, or back again.
"""

from __future__ import annotations

import os
import time
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from glance_tx.errors import NotFound, ServiceUnavailable
from glance_tx.registry.client import (
    HTTPRegistryClient,
    KeptEndpoints,
    open_http_registry,
    registry_http_client,
)
from glance_tx.registry.server import RegistryServer
from glance_tx.registry.sql import open_sql_registry
from glance_tx.threads import ThreadPoolRunner
from tests.metadef_conformance import MetadefConformanceMixin
from tests.registry_conformance import RegistryConformanceMixin, make_image
from tests.test_registry_sql import empty_tables, postgres_admin_url, shared_database

TOKEN = "real-socket-token"

#: Seconds a call may take where the test is not about time: generous, so a
#: loaded machine (a pause of the whole process, a starved CPU) is never a
#: failure. The client's default, 5 s, once failed a listing test in CI.
CALL_TIMEOUT = 30.0


class _RealSocketHarness(TestCase):
    """A thread pool, and helpers to serve a registry and connect a client."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=6, name=type(self).__name__)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.runner = ThreadPoolRunner(cast(IReactorFromThreads, reactor), self.pool)

    async def serve(self, factory: Any, port: int = 0) -> int:
        """Listen on 127.0.0.1 (port 0: any free one); return the port."""
        endpoint = TCP4ServerEndpoint(self.reactor, port, interface="127.0.0.1")
        listening = await endpoint.listen(factory)
        self.addCleanup(listening.stopListening)
        return cast(int, listening.getHost().port)

    def connect(self, port: int, **kwargs: Any) -> HTTPRegistryClient:
        agent, pool = registry_http_client(self.reactor, connect_timeout=CALL_TIMEOUT)
        self.addCleanup(pool.closeCachedConnections)
        kwargs.setdefault("token", TOKEN)
        kwargs.setdefault("timeout", CALL_TIMEOUT)
        return HTTPRegistryClient(
            agent=agent, url=f"http://127.0.0.1:{port}", clock=self.reactor, **kwargs
        )

    async def serve_registry(self, registry: Any) -> HTTPRegistryClient:
        site = Site(RegistryServer(registry, token=TOKEN).resource())
        return self.connect(await self.serve(site))


class SQLiteHTTPConformanceTests(RegistryConformanceMixin, _RealSocketHarness):
    """The whole IRegistry contract through client and server, on a SQLite file."""

    async def make_registry(self) -> HTTPRegistryClient:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = await open_sql_registry(url, self.runner)
        self.addCleanup(registry.close)
        return await self.serve_registry(registry)


class PostgreSQLHTTPConformanceTests(RegistryConformanceMixin, _RealSocketHarness):
    """The whole IRegistry contract through client and server, on PostgreSQL."""

    def setUp(self) -> None:
        self.admin_url = postgres_admin_url(self)
        super().setUp()

    async def make_registry(self) -> HTTPRegistryClient:
        url = await self.runner.run(shared_database, self.admin_url)
        registry = await open_sql_registry(url, self.runner)
        self.addCleanup(registry.close)
        await self.runner.run(empty_tables, registry.engine)
        return await self.serve_registry(registry)


class SQLiteHTTPMetadefTests(MetadefConformanceMixin, _RealSocketHarness):
    """The metadef contract through client and server over a socket, on a SQLite file."""

    make_registry = SQLiteHTTPConformanceTests.make_registry


class PostgreSQLHTTPMetadefTests(MetadefConformanceMixin, _RealSocketHarness):
    """The metadef contract through client and server over a socket, on PostgreSQL."""

    def setUp(self) -> None:
        self.admin_url = postgres_admin_url(self)
        super().setUp()

    make_registry = PostgreSQLHTTPConformanceTests.make_registry


class RequestIdTests(_RealSocketHarness):
    """The API request's id, over a real socket, in the registry's log line."""

    async def test_registry_log_line_names_the_request(self) -> None:
        """
        A call the client makes while working for an API request carries
        that request's id, and the registry server's own Site (the one
        C{twistd glance-registry} runs) logs it on the call's line.
        """
        from twisted.logger import capturedLogs, formatEvent

        from glance_tx.registry.server import registry_site
        from glance_tx.request_ids import new_request_id, working_for

        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = await open_sql_registry(url, self.runner)
        self.addCleanup(registry.close)
        image = await registry.create(make_image())
        site = registry_site(RegistryServer(registry, token=TOKEN), self.reactor)
        client = self.connect(await self.serve(site))
        given = new_request_id()
        with capturedLogs() as events:
            with working_for(given):
                got = client.get(image.id)
            self.assertEqual(await got, image)
        [line] = [e for e in events if e.get("method") == "GET"]
        self.assertEqual(line["caller_request_id"], given)
        self.assertIn(f" for {given} ", formatEvent(line))


class _Counting(WrappingFactory):
    """A factory wrapper that counts the connections it accepted."""

    accepted = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.accepted += 1
        return super().buildProtocol(addr)


class PoolLimitTests(_RealSocketHarness):
    """registry_client_pool_maxsize: how many idle connections are kept."""

    async def test_idle_connections_kept(self) -> None:
        """
        Three calls at once open three connections; of those, the client
        keeps C{pool_maxsize} for the next calls and closes the rest, so
        the next three at once open only the ones missing.
        """
        from twisted.internet.defer import gatherResults

        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = await open_sql_registry(url, self.runner)
        self.addCleanup(registry.close)
        image = await registry.create(make_image())
        for maxsize, accepted in ((1, 3 + 2), (3, 3 + 0)):
            site = _Counting(Site(RegistryServer(registry, token=TOKEN).resource()))
            client = open_http_registry(
                self.reactor,
                f"http://127.0.0.1:{await self.serve(site)}",
                token=TOKEN,
                pool_maxsize=maxsize,
            )
            self.addCleanup(client.close)
            for _ in range(2):
                got = await gatherResults([client.get(image.id) for _ in range(3)])
                self.assertEqual(got, [image] * 3)
            self.assertEqual(site.accepted, accepted, f"pool_maxsize {maxsize}")


class _Silent(Protocol):
    """Accepts a connection and never answers."""


class AvailabilityTests(_RealSocketHarness):
    """A registry down or slow is a bounded ServiceUnavailable, and recovery."""

    async def assertUnavailableWithin(
        self, d: Deferred[Any], seconds: float
    ) -> ServiceUnavailable:
        started = time.monotonic()
        try:
            value = await d
        except ServiceUnavailable as e:
            self.assertLess(time.monotonic() - started, seconds)
            return e
        self.fail(f"expected ServiceUnavailable, got {value!r}")

    async def test_nothing_listening(self) -> None:
        """
        With no registry on the port, a call fails with ServiceUnavailable
        (connection refused, retried once) without waiting for its timeout.
        """
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        listening = await endpoint.listen(Factory.forProtocol(_Silent))
        port = listening.getHost().port
        await listening.stopListening()
        client = self.connect(port, retry_delay=0.05)
        error = await self.assertUnavailableWithin(
            client.get(make_image().id), CALL_TIMEOUT / 3
        )
        self.assertIn("unreachable", error.message)

    async def test_silent_registry_times_out(self) -> None:
        """
        A registry that accepts connections and never answers fails the call
        with ServiceUnavailable after the configured timeout, never a hang.
        """
        port = await self.serve(Factory.forProtocol(_Silent))
        client = self.connect(port, timeout=0.5)
        started = time.monotonic()
        # The upper bound only says "never a hang": the reactor may be late.
        error = await self.assertUnavailableWithin(client.ping(), CALL_TIMEOUT)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertIn("did not answer within 0.5s", error.message)

    async def test_recovers_when_registry_returns(self) -> None:
        """
        A node's client works, fails with ServiceUnavailable while the
        registry is gone (its port closed, its connections dropped), and
        works again by itself once the registry listens again, the pooled
        dead connection notwithstanding.
        """
        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = await open_sql_registry(url, self.runner)
        self.addCleanup(registry.close)
        image = await registry.create(make_image())

        def site() -> WrappingFactory:
            return WrappingFactory(
                Site(RegistryServer(registry, token=TOKEN).resource())
            )

        first = site()
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        listening = await endpoint.listen(first)
        port = listening.getHost().port
        client = self.connect(port, retry_delay=0.05)
        self.assertEqual(await client.get(image.id), image)

        await listening.stopListening()
        for protocol in list(first.protocols):
            protocol.transport.loseConnection()
        # Refused, not waited out: well inside the call's timeout.
        await self.assertUnavailableWithin(client.get(image.id), CALL_TIMEOUT / 3)
        await self.assertUnavailableWithin(client.ping(), CALL_TIMEOUT / 3)

        await self.serve(site(), port=port)
        self.assertEqual(await client.get(image.id), image)
        await self.assertFails(client.get(make_image().id))

    async def assertFails(self, d: Deferred[Any]) -> None:
        try:
            await d
        except NotFound:
            return
        self.fail("expected NotFound")


def write_tls_files(directory: FilePath[str]) -> tuple[bytes, str, str]:
    """
    A certificate authority and a server certificate it signed for
    localhost and 127.0.0.1; returns the CA's PEM and the paths of the
    server's key and certificate.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("glance-tx test CA"))
        .issuer_name(name("glance-tx test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_path = directory.child("server.key")
    key_path.setContent(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path = directory.child("server.crt")
    cert_path.setContent(cert.public_bytes(serialization.Encoding.PEM))
    return ca.public_bytes(serialization.Encoding.PEM), key_path.path, cert_path.path


class TLSTests(_RealSocketHarness):
    """The registry behind TLS, given by a Twisted endpoint string."""

    async def serve_tls(self) -> tuple[int, bytes]:
        from twisted.internet.endpoints import serverFromString

        directory = FilePath(self.mktemp())
        directory.makedirs()
        ca, key, cert = write_tls_files(directory)
        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = await open_sql_registry(url, self.runner)
        self.addCleanup(registry.close)
        site = Site(RegistryServer(registry, token=TOKEN).resource())
        endpoint = serverFromString(
            self.reactor,
            f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        )
        listening = await endpoint.listen(site)
        self.addCleanup(listening.stopListening)
        return listening.getHost().port, ca

    async def test_https_with_the_registrys_authority(self) -> None:
        """
        A client trusting the authority that signed the registry's
        certificate (registry_client_ca_file) works over https, by name and
        by address.
        """
        port, ca = await self.serve_tls()
        for host in ("localhost", "127.0.0.1"):
            client = open_http_registry(
                self.reactor,
                f"https://{host}:{port}",
                token=TOKEN,
                ca_certificate=ca,
                timeout=CALL_TIMEOUT,
            )
            self.addCleanup(client.close)
            image = await client.create(make_image())
            self.assertEqual(await client.get(image.id), image)

    async def test_https_untrusted_certificate_is_unavailable(self) -> None:
        """
        A client that does not trust the registry's certificate refuses it:
        ServiceUnavailable (never a 500, never a call sent in the clear).
        """
        port, _ = await self.serve_tls()
        client = open_http_registry(
            self.reactor, f"https://localhost:{port}", token=TOKEN, timeout=3
        )
        self.addCleanup(client.close)
        with self.assertRaises(ServiceUnavailable):
            await client.ping()


class KeptEndpointsTests(SynchronousTestCase):
    """The registry agent's endpoints are made once per peer, not per request."""

    def test_one_endpoint_per_peer(self) -> None:
        """
        Requests to one scheme, host and port share one endpoint (Agent's
        own factory made one, and for https a TLS creator, per request);
        another port or scheme gets its own, https wrapped in TLS, and a
        scheme the agent cannot speak is refused.
        """
        from twisted.internet.endpoints import HostnameEndpoint
        from twisted.internet.testing import MemoryReactorClock
        from twisted.web.client import URI, BrowserLikePolicyForHTTPS
        from twisted.web.error import SchemeNotSupported
        from twisted.web.iweb import IAgentEndpointFactory
        from zope.interface.verify import verifyObject

        endpoints = KeptEndpoints(MemoryReactorClock(), BrowserLikePolicyForHTTPS(), 5.0)
        verifyObject(IAgentEndpointFactory, endpoints)
        first = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9191/images/a"))
        again = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9191/images/b?x=1"))
        self.assertIs(first, again)
        self.assertIsInstance(first, HostnameEndpoint)
        other = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9192/images/a"))
        self.assertIsNot(other, first)
        secure = endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:9191/images/a"))
        self.assertNotIsInstance(secure, HostnameEndpoint)
        self.assertIs(
            secure, endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:9191/"))
        )
        with self.assertRaises(SchemeNotSupported):
            endpoints.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1:21/"))
