"""
Per-store TLS trust (L{glance_tx.store.tls}): each network store checks
its server's certificate against the system's CAs, or the CA bundle its
section names, or, when told to, not at all; over real TLS sockets, with a
CA made for the test.
"""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web import server, static
from zope.interface.verify import verifyObject

from glance_tx.config import ConfigError, StoreConfig
from glance_tx.errors import StoreError
from glance_tx.store.factory import StoreServices, store_http_client
from glance_tx.store.http import make_http_store
from glance_tx.store.interface import IStore
from glance_tx.store.s3 import make_s3_store
from glance_tx.store.swift import SwiftStore, make_swift_store
from glance_tx.store.tls import (
    HTTP_TLS,
    KEYSTONE_TLS,
    SWIFT_TLS,
    ClientCertificatePolicy,
    Unverified,
    load_tls_policy,
)
from glance_tx.threads import SynchronousRunner
from tests.s3_server import s3_server
from tests.store_conformance import FakeConsumer
from tests.swift_cluster import swift_cluster, unique_container
from tests.tls import CertificateAuthority, certificate_authority, tls_relay


def _services(case: TestCase) -> StoreServices:
    return StoreServices(
        runner=SynchronousRunner(),
        reactor=reactor,
        http_client=store_http_client(reactor),
        data_dir=case.mktemp(),
    )


async def _read(store: IStore, location: str) -> bytes:
    consumer = FakeConsumer()
    await store.read(location, consumer)
    return consumer.value()


async def _write(store: IStore, data: bytes) -> str:
    writer = await store.open_writer(str(uuid.uuid4()), len(data))
    writer.write(data)
    return (await writer.commit()).location


class LoadPolicyTests(TestCase):
    """What each store section's options make of TLS."""

    async def load(self, **options: str) -> Any:
        return await load_tls_policy(options, HTTP_TLS, SynchronousRunner())

    async def test_default_is_system_trust(self) -> None:
        """No option: no policy of the store's own (the system's CAs)."""
        self.assertIsNone(await self.load())
        self.assertIsNone(await self.load(https_insecure="false"))

    async def test_insecure(self) -> None:
        self.assertIsInstance(await self.load(https_insecure="true"), Unverified)

    async def test_bundle_wins_over_insecure(self) -> None:
        """As in glance_store: with a CA bundle, the no-check switch is ignored."""
        path = certificate_authority().write(self)
        policy = await self.load(https_ca_certificates_file=path, https_insecure="true")
        self.assertNotIsInstance(policy, Unverified)
        self.assertIsNotNone(policy)

    async def test_unreadable_bundle(self) -> None:
        with self.assertRaises(ConfigError) as e:
            await self.load(https_ca_certificates_file="/nonexistent/ca.pem")
        self.assertIn("https_ca_certificates_file", str(e.exception))
        self.assertIn("/nonexistent/ca.pem", str(e.exception))

    async def test_not_a_bundle(self) -> None:
        """A file with no certificate, or a broken one, is named."""
        for content in (b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n"):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            with self.assertRaises(ConfigError) as e:
                await self.load(https_ca_certificates_file=path)
            self.assertIn("PEM", str(e.exception))

    async def test_client_certificate(self) -> None:
        """
        KEYSTONE_TLS's certfile/keyfile: a certificate without its key, or
        an unreadable key, is a ConfigError naming the options; cert and
        key (one file) make a policy, with or without the no-check switch.
        """
        ca = certificate_authority()
        cert_only = self.mktemp()
        with open(cert_only, "wb") as f:
            f.write(ca.ca_pem)
        for options in ({"certfile": cert_only},
                        {"certfile": ca.write_client(self), "keyfile": "/nonexistent/key"}):
            with self.assertRaises(ConfigError) as e:
                await load_tls_policy(options, KEYSTONE_TLS, SynchronousRunner())
            self.assertIn("certfile" if "keyfile" not in options else "keyfile",
                          str(e.exception))
        both = ca.write_client(self)
        policy = await load_tls_policy({"certfile": both}, KEYSTONE_TLS, SynchronousRunner())
        self.assertIsInstance(policy, ClientCertificatePolicy)
        policy = await load_tls_policy({"certfile": both, "insecure": "true"}, KEYSTONE_TLS,
                                       SynchronousRunner())
        self.assertIsInstance(policy, Unverified)

    async def test_bad_switch(self) -> None:
        with self.assertRaises(ConfigError) as e:
            await load_tls_policy(
                {"swift_store_auth_insecure": "maybe"}, SWIFT_TLS, SynchronousRunner()
            )
        self.assertIn("swift_store_auth_insecure", str(e.exception))


class HTTPStoreTLSTests(TestCase):
    """The HTTP store reading from an https server signed by a private CA."""

    def setUp(self) -> None:
        self.ca = certificate_authority()
        root = self.mktemp()
        os.makedirs(root)
        with open(os.path.join(root, "image"), "wb") as f:
            f.write(b"bytes over tls" * 1000)
        port = reactor.listenSSL(
            0, server.Site(static.File(root)), self.ca.server_options(), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.location = f"https://127.0.0.1:{port.getHost().port}/image"

    async def store(self, **options: str) -> IStore:
        options.setdefault("http_store_allowed_networks", "127.0.0.1/32")
        return await make_http_store(StoreConfig("web", "http", options), _services(self))

    async def test_private_ca(self) -> None:
        """With the CA's bundle configured, size and read work."""
        store = await self.store(https_ca_certificates_file=self.ca.write(self))
        self.assertTrue(verifyObject(IStore, store))
        self.assertEqual(await store.size(self.location), 14000)
        self.assertEqual(await _read(store, self.location), b"bytes over tls" * 1000)

    async def test_untrusted_by_default(self) -> None:
        """The system's CAs do not know the test CA: refused, and said so."""
        store = await self.store()
        with self.assertRaises(StoreError) as e:
            await store.size(self.location)
        self.assertIn("127.0.0.1", e.exception.message)

    async def test_other_ca(self) -> None:
        """A bundle of another CA does not vouch for this server."""
        other = certificate_authority("another CA")
        store = await self.store(https_ca_certificates_file=other.write(self))
        with self.assertRaises(StoreError):
            await store.size(self.location)

    async def test_insecure(self) -> None:
        """C{https_insecure = true} reads without checking the certificate."""
        store = await self.store(https_insecure="true")
        self.assertEqual(await store.size(self.location), 14000)


class S3TLSTests(TestCase):
    """The S3 store through https (a TLS relay in front of moto)."""

    timeout = 60

    def setUp(self) -> None:
        self.server = s3_server(self)
        self.bucket = self.server.new_bucket()
        self.ca: CertificateAuthority = certificate_authority()
        target = urlsplit(self.server.endpoint).netloc
        self.host = f"https://localhost:{tls_relay(self, reactor, target, self.ca)}"

    async def store(self, **options: str) -> IStore:
        settings = {
            "s3_store_host": self.host,
            "s3_store_access_key": self.server.access_key,
            "s3_store_secret_key": self.server.secret_key,
            "s3_store_bucket": self.bucket,
            "s3_store_bucket_url_format": "path",
        }
        settings.update(options)
        return await make_s3_store(StoreConfig("bulk", "s3", settings), _services(self))

    async def test_private_ca(self) -> None:
        """With C{s3_store_cacert}, data goes in and comes back over TLS."""
        store = await self.store(s3_store_cacert=self.ca.write(self))
        location = await _write(store, b"s3 over tls")
        self.assertEqual(await _read(store, location), b"s3 over tls")
        body = self.server.boto3().get_object(Bucket=self.bucket, Key=location.rsplit("/", 1)[1])
        self.assertEqual(body["Body"].read(), b"s3 over tls")

    async def test_untrusted_by_default(self) -> None:
        store = await self.store()
        with self.assertRaises(StoreError) as e:
            await store.ping()
        self.assertNotIn(self.server.secret_key, e.exception.message)


class SwiftTLSTests(TestCase):
    """
    The Swift store logging in over https (a TLS relay in front of the
    tempauth proxy). Only the log-in crosses TLS here: tempauth builds the
    storage URL it hands back from the request it saw, which came to it as
    plain http, so the relay's port appears there with the wrong scheme.
    """

    timeout = 60

    def setUp(self) -> None:
        self.cluster = swift_cluster(self)
        self.ca = certificate_authority()
        parts = urlsplit(self.cluster.auth_url)
        port = tls_relay(self, reactor, parts.netloc, self.ca)
        self.auth_url = f"https://localhost:{port}{parts.path}"

    async def store(self, **options: str) -> SwiftStore:
        settings = {
            "swift_store_auth_address": self.auth_url,
            "swift_store_auth_version": "1",
            "swift_store_user": self.cluster.user,
            "swift_store_key": self.cluster.key,
            "swift_store_container": unique_container(),
        }
        settings.update(options)
        return await make_swift_store(StoreConfig("obj", "swift", settings), _services(self))

    async def test_private_ca(self) -> None:
        """With C{swift_store_cacert} the log-in gets a token."""
        store = await self.store(swift_store_cacert=self.ca.write(self))
        session = await store.client.session()
        self.assertTrue(session.storage_url.endswith("/v1/AUTH_test"))

    async def test_untrusted_by_default(self) -> None:
        """Without it the log-in is refused, with no credential in the error."""
        store = await self.store()
        with self.assertRaises(StoreError) as e:
            await store.client.session()
        self.assertNotIn(self.cluster.key, e.exception.message)

    async def test_insecure(self) -> None:
        """C{swift_store_auth_insecure = true} logs in unchecked."""
        store = await self.store(swift_store_auth_insecure="true")
        self.assertTrue((await store.client.session()).token)
