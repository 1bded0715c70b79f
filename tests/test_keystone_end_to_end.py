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

    async def test_service_token(self) -> None:
        """
        X-Service-Token as keystonemiddleware 13: a user token that has
        expired (an application credential's, which expires with it) is
        refused alone and accepted beside the service user's token (service
        role: Keystone asked with allow_expired); a bad service token, or a
        member's sent as one, is a 401 even beside a valid user token.
        """
        from datetime import UTC, datetime, timedelta

        from twisted.internet.task import deferLater

        from tests.keystone_server import SERVICE_USER

        alpha, _ = await self.token("alpha-member")
        service, _ = await self.token(SERVICE_USER)
        response = await self.treq.get(
            self.keystone.url + "/v3/auth/tokens",
            headers={"X-Auth-Token": [alpha], "X-Subject-Token": [alpha]},
        )
        user_id = (await response.json())["token"]["user"]["id"]
        expires = datetime.now(UTC) + timedelta(seconds=3)
        response = await self.treq.post(
            f"{self.keystone.url}/v3/users/{user_id}/application_credentials",
            data=json.dumps({"application_credential": {
                "name": f"short-{time.time()}",
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S")}}).encode(),
            headers={"X-Auth-Token": [alpha], "Content-Type": ["application/json"]},
        )
        self.assertEqual(response.code, 201, await response.text())
        credential = (await response.json())["application_credential"]
        response = await self.treq.post(
            self.keystone.url + "/v3/auth/tokens",
            data=json.dumps({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": credential["id"],
                                           "secret": credential["secret"]}}}}).encode(),
            headers={"Content-Type": ["application/json"]},
        )
        self.assertEqual(response.code, 201, await response.text())
        short = response.headers.getRawHeaders("X-Subject-Token")[0]
        self.assertEqual((await self.call("GET", "/v2/images", short))[0], 200)
        await deferLater(reactor, 4.5, lambda: None)
        self.assertEqual((await self.call("GET", "/v2/images", short))[0], 401)
        code, _, body = await self.call(
            "GET", "/v2/images", short, **{"X-Service-Token": service})
        self.assertEqual(code, 200, body)
        code, _, _ = await self.call(
            "GET", "/v2/images", alpha, **{"X-Service-Token": "gAAAAAnotatoken"})
        self.assertEqual(code, 401)
        code, _, _ = await self.call("GET", "/v2/images", alpha, **{"X-Service-Token": alpha})
        self.assertEqual(code, 401)

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

    async def test_policy_matrix(self) -> None:
        """
        A smaller cell-by-cell matrix through real tokens (roles as Keystone
        grants and implies them): admin, alpha's member and reader and
        beta's member x alpha's private, shared-with-beta (accepted) and
        public images x show, download, update, tag and delete, each answered
        as Glance's rules say (L{tests.test_policy.expected}).
        """
        from tests.test_policy import expected

        users = {"admin": "admin", "alpha-member": "owner-member",
                 "alpha-reader": "owner-reader", "beta-member": "other-member"}
        tokens = {user: (await self.token(user)) for user in users}
        alpha_id = tokens["alpha-member"][1]
        beta_id = tokens["beta-member"][1]
        admin = tokens["admin"][0]

        async def image(visibility: str) -> str:
            kind = visibility.split("-")[0]
            code, _, created = await self.call("POST", "/v2/images", admin, {
                "name": visibility, "visibility": kind, "owner": alpha_id,
                "disk_format": "raw", "container_format": "bare"})
            self.assertEqual(code, 201, created)
            response = await self.treq.put(
                f"{self.base}/v2/images/{created['id']}/file", data=b"bytes",
                headers={"X-Auth-Token": [admin], "Content-Type": ["application/octet-stream"]})
            await response.content()
            self.assertEqual(response.code, 204)
            if kind == "shared":
                members = f"/v2/images/{created['id']}/members"
                code, _, _ = await self.call("POST", members, tokens["alpha-member"][0],
                                             {"member": beta_id})
                self.assertEqual(code, 200)
                code, _, _ = await self.call("PUT", f"{members}/{beta_id}",
                                             tokens["beta-member"][0], {"status": "accepted"})
                self.assertEqual(code, 200)
            return str(created["id"])

        async def attempt(token: str, image_id: str, operation: str) -> int:
            path = f"/v2/images/{image_id}"
            if operation == "download":
                response = await self.treq.get(self.base + path + "/file",
                                               headers={"X-Auth-Token": [token]})
                await response.content()
                return int(response.code)
            if operation == "update":
                response = await self.treq.patch(
                    self.base + path,
                    data=json.dumps([{"op": "replace", "path": "/name", "value": "x"}]).encode(),
                    headers={"X-Auth-Token": [token], "Content-Type":
                             ["application/openstack-images-v2.1-json-patch"]})
                await response.content()
                return int(response.code)
            method, suffix = {"show": ("GET", ""), "tag": ("PUT", "/tags/t"),
                              "delete": ("DELETE", "")}[operation]
            return (await self.call(method, path + suffix, token))[0]

        wrong = []
        for visibility in ("private", "shared-accepted", "public"):
            shared = await image(visibility)
            for user, persona in users.items():
                for operation in ("show", "download", "update", "tag", "delete"):
                    image_id = await image(visibility) if operation == "delete" else shared
                    got = await attempt(tokens[user][0], image_id, operation)
                    want = expected(persona, visibility, operation)
                    if got != want:
                        wrong.append(f"{user} {operation} {visibility}: {got}, Glance {want}")
        self.assertEqual(wrong, [], "\n".join(wrong))

    async def test_metadefs(self) -> None:
        """
        Metadata definitions under Keystone: only the admin creates; a
        project's private namespace is seen by its readers and is a 404 to
        another project, which sees the public ones; a member may not delete.
        """
        admin, _ = await self.token("admin")
        reader, alpha_id = await self.token("alpha-reader")
        alpha, _ = await self.token("alpha-member")
        beta, _ = await self.token("beta-member")
        namespaces = "/v2/metadefs/namespaces"
        code, _, _ = await self.call("POST", namespaces, alpha, {"namespace": "OS::Alpha::Own"})
        self.assertEqual(code, 403)
        code, _, created = await self.call(
            "POST", namespaces, admin,
            {"namespace": "OS::Alpha::Private", "owner": alpha_id, "visibility": "private"},
        )
        self.assertEqual((code, created["owner"]), (201, alpha_id))
        code, _, _ = await self.call(
            "POST", namespaces, admin, {"namespace": "OS::Everyone", "visibility": "public"}
        )
        self.assertEqual(code, 201)

        async def names(token: str) -> list[str]:
            code, _, listing = await self.call("GET", namespaces, token)
            self.assertEqual(code, 200)
            return sorted(n["namespace"] for n in listing["namespaces"])

        self.assertEqual(await names(reader), ["OS::Alpha::Private", "OS::Everyone"])
        self.assertEqual(await names(beta), ["OS::Everyone"])
        code, _, _ = await self.call("GET", f"{namespaces}/OS::Alpha::Private", beta)
        self.assertEqual(code, 404)
        code, _, _ = await self.call("GET", f"{namespaces}/OS::Alpha::Private", reader)
        self.assertEqual(code, 200)
        code, _, _ = await self.call("DELETE", f"{namespaces}/OS::Alpha::Private", alpha)
        self.assertEqual(code, 403)
        code, _, schema = await self.call("GET", "/v2/schemas/metadefs/namespace", beta)
        self.assertEqual((code, schema["name"]), (200, "namespace"))
        code, _, _ = await self.call("DELETE", f"{namespaces}/OS::Alpha::Private", admin)
        self.assertEqual(code, 204)
