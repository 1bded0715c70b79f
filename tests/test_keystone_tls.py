"""
glance-tx validating tokens against an https Keystone: the real Keystone
that C{tools/run-tests} starts, behind a TLS relay whose certificate a
throwaway CA signed (L{tests.tls}), as the Swift store's TLS tests do.
C{[keystone_authtoken] cafile} trusts that CA; without it the system's
authorities refuse the certificate (Keystone unreachable: 503, never a
401); C{insecure = true} checks nothing; C{certfile}/C{keyfile}
present a client certificate to a relay that requires one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.keystone_server import KeystoneServer, keystone_server
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.tls import certificate_authority, tls_relay


class KeystoneTLSTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.keystone: KeystoneServer = keystone_server(self)
        self.ca = certificate_authority()
        port = tls_relay(self, reactor, urlsplit(self.keystone.url).netloc, self.ca)
        self.https_url = f"https://localhost:{port}"
        self.treq = settled_client(self)

    async def images_status(self, **authtoken: object) -> int:
        """The status of an alpha member's GET /v2/images through glance-tx so set up."""
        config = live_config(
            self,
            "[DEFAULT]\nauth_strategy = keystone\n"
            + self.keystone.authtoken_section(
                auth_url=self.https_url, token_cache_time=0, http_connect_timeout=5,
                **authtoken,
            ),
        )
        service = await start_glance_tx(config, self.addCleanup, "keystone-tls")
        response = await self.treq.post(
            self.keystone.url + "/v3/auth/tokens",
            data=self.keystone.login_body("alpha-member"),
            headers={"Content-Type": ["application/json"]},
        )
        await response.content()
        token = response.headers.getRawHeaders("X-Subject-Token")[0]
        response = await self.treq.get(
            f"http://127.0.0.1:{listening_port(service)}/v2/images",
            headers={"X-Auth-Token": [token]},
        )
        body = await response.content()
        self.assertNotIn(token.encode(), body)
        return int(response.code)

    async def test_cafile(self) -> None:
        """With cafile naming the CA, the service logs in and validates over TLS."""
        self.assertEqual(await self.images_status(cafile=self.ca.write(self)), 200)

    async def test_untrusted_by_default(self) -> None:
        """Without cafile the certificate is refused: 503 (Keystone unusable), not 401."""
        self.assertEqual(await self.images_status(), 503)

    async def test_client_certificate(self) -> None:
        """
        A Keystone relay that requires a client certificate: refused (503)
        without certfile, served with certfile (key in the same file) and
        with certfile and keyfile apart.
        """
        port = tls_relay(self, reactor, urlsplit(self.keystone.url).netloc, self.ca,
                         require_client=True)
        self.https_url = f"https://localhost:{port}"
        cafile = self.ca.write(self)
        self.assertEqual(await self.images_status(cafile=cafile), 503)
        both = self.ca.write_client(self)
        self.assertEqual(await self.images_status(cafile=cafile, certfile=both), 200)
        pem = self.ca.client_pem
        split = pem.index(b"-----BEGIN PRIVATE KEY-----")
        cert, key = self.mktemp(), self.mktemp()
        with open(cert, "wb") as f:
            f.write(pem[:split])
        with open(key, "wb") as f:
            f.write(pem[split:])
        self.assertEqual(
            await self.images_status(cafile=cafile, certfile=cert, keyfile=key), 200
        )

    async def test_insecure(self) -> None:
        """insecure = true validates without checking the certificate."""
        self.assertEqual(await self.images_status(insecure="true"), 200)
