"""
glance-tx with C{auth_strategy = keystone} over a real socket, validating
tokens against the real Keystone that C{tools/run-tests} starts
(L{tests.keystone_server}). glance-tx reaches Keystone through a TCP relay
the tests can cut, to see what callers get while Keystone is unreachable.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from tests.keystone_server import KeystoneServer, keystone_server
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)


class Relay(portforward.ProxyFactory):
    """A TCP relay to Keystone that can be cut (listener and connections)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.live: set[Any] = set()
        self.listening: IListeningPort | None = None
        self.port_number = 0

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.live.add(protocol)
        return protocol

    def open(self) -> None:
        self.listening = reactor.listenTCP(self.port_number, self, interface="127.0.0.1")
        self.port_number = self.listening.getHost().port

    async def cut(self) -> None:
        if self.listening is not None:
            listening, self.listening = self.listening, None
            await listening.stopListening()
        for protocol in list(self.live):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        self.live.clear()


class KeystoneEndToEndTests(TestCase):
    timeout = 120

    def setUp(self) -> Deferred[None]:
        self.keystone: KeystoneServer = keystone_server(self)
        host, _, port = self.keystone.url.rsplit("/", 1)[-1].rpartition(":")
        self.relay = Relay(host, int(port))
        self.relay.open()
        self.treq = settled_client(self, before=self.relay.cut)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        config = live_config(
            self,
            "[DEFAULT]\nauth_strategy = keystone\n"
            + self.keystone.authtoken_section(
                auth_url=f"http://127.0.0.1:{self.relay.port_number}",
                token_cache_time=0,
                http_connect_timeout=2,
            ),
        )
        service = await start_glance_tx(config, self.addCleanup, "keystone-e2e")
        self.base = f"http://127.0.0.1:{listening_port(service)}"

    async def token(self, user: str) -> tuple[str, str]:
        """A token of C{user} and its project's id, from Keystone itself."""
        response = await self.treq.post(
            self.keystone.url + "/v3/auth/tokens",
            data=self.keystone.login_body(user),
            headers={"Content-Type": ["application/json"]},
        )
        self.assertEqual(response.code, 201)
        document = await response.json()
        return response.headers.getRawHeaders("X-Subject-Token")[0], document["token"]["project"]["id"]

    async def call(self, method: str, path: str, token: str | None = None,
                   body: Any = None, **headers: str) -> tuple[int, Any, Any]:
        if token is not None:
            headers["X-Auth-Token"] = token
        if body is not None:
            headers["Content-Type"] = "application/json"
        response = await self.treq.request(
            method, self.base + path,
            headers={k: [v] for k, v in headers.items()},
            data=json.dumps(body).encode() if body is not None else None,
        )
        raw = await response.content()
        return response.code, response.headers, json.loads(raw) if raw else None

    async def test_no_token(self) -> None:
        """No token (identity headers or not): 401, WWW-Authenticate names Keystone."""
        code, headers, body = await self.call(
            "GET", "/v2/images", None, **{"X-Project-Id": "x", "X-Roles": "admin"}
        )
        self.assertEqual(code, 401)
        self.assertEqual(
            headers.getRawHeaders("WWW-Authenticate"), [f'Keystone uri="{self.keystone.url}"']
        )
        self.assertEqual(body["error"]["code"], 401)
        code, _, _ = await self.call("GET", "/v2/images", "gAAAAAnotatoken")
        self.assertEqual(code, 401)

    async def test_projects_and_spoofing(self) -> None:
        """
        A member's image belongs to its project; the other project does not
        see it, a reader of the same project does; a member sending X-Roles:
        admin and another project's id is still a member of its own.
        """
        alpha, alpha_id = await self.token("alpha-member")
        beta, _ = await self.token("beta-member")
        reader, _ = await self.token("alpha-reader")
        code, _, image = await self.call(
            "POST", "/v2/images", alpha, {"name": "alpha-only", "visibility": "private"}
        )
        self.assertEqual(code, 201)
        self.assertEqual(image["owner"], alpha_id)

        async def names(token: str, **headers: str) -> list[str]:
            code, _, listing = await self.call("GET", "/v2/images", token, **headers)
            self.assertEqual(code, 200)
            return [i["name"] for i in listing["images"]]

        self.assertEqual(await names(alpha), ["alpha-only"])
        self.assertEqual(await names(reader), ["alpha-only"])
        self.assertEqual(await names(beta), [])
        spoof = {"X-Roles": "admin", "X-Project-Id": alpha_id, "X-Tenant-Id": alpha_id,
                 "X-Identity-Status": "Confirmed"}
        self.assertEqual(await names(beta, **spoof), [])
        code, _, _ = await self.call("GET", "/v2/info/stores/detail", beta, **spoof)
        self.assertEqual(code, 403)
        code, _, _ = await self.call("GET", f"/v2/images/{image['id']}", beta, **spoof)
        self.assertEqual(code, 404)

    async def test_admin(self) -> None:
        """The admin's token (admin role) sees every project's private images."""
        alpha, _ = await self.token("alpha-member")
        admin, _ = await self.token("admin")
        code, _, image = await self.call("POST", "/v2/images", alpha, {"name": "a"})
        self.assertEqual(code, 201)
        code, _, _ = await self.call("GET", "/v2/info/stores/detail", admin)
        self.assertEqual(code, 200)
        code, _, shown = await self.call("GET", f"/v2/images/{image['id']}", admin)
        self.assertEqual((code, shown["name"]), (200, "a"))

    async def test_revoked(self) -> None:
        """A token revoked at Keystone is refused (token_cache_time = 0)."""
        alpha, _ = await self.token("alpha-member")
        admin, _ = await self.token("admin")
        self.assertEqual((await self.call("GET", "/v2/images", alpha))[0], 200)
        response = await self.treq.delete(
            self.keystone.url + "/v3/auth/tokens",
            headers={"X-Auth-Token": [admin], "X-Subject-Token": [alpha]},
        )
        self.assertEqual(response.code, 204)
        self.assertEqual((await self.call("GET", "/v2/images", alpha))[0], 401)

    async def test_keystone_down(self) -> None:
        """
        Keystone unreachable: 503 with Retry-After at once, not a 401 nor a
        hang; once it is back, the same token works.
        """
        alpha, _ = await self.token("alpha-member")
        self.assertEqual((await self.call("GET", "/v2/images", alpha))[0], 200)
        await self.relay.cut()
        started = time.monotonic()
        code, headers, body = await self.call("GET", "/v2/images", alpha)
        self.assertEqual(code, 503)
        self.assertLess(time.monotonic() - started, 4)
        self.assertEqual(headers.getRawHeaders("Retry-After"), ["5"])
        self.assertNotIn(alpha, json.dumps(body))
        self.relay.open()
        self.assertEqual((await self.call("GET", "/v2/images", alpha))[0], 200)
