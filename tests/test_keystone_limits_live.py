"""
C{use_keystone_limits = true} against the real Keystone that
C{tools/run-tests} starts: the admin registers limits for a service of
its own (and a project limit for alpha), glance-tx reads them as its
service user (system-scoped reader, as Glance's docs set oslo.limit up)
and answers 413s as oslo.limit would.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.keystone_server import SERVICE_USER, KeystoneServer, keystone_server
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)

MiB = 1024 * 1024
REGION = "RegionOne"


class KeystoneLimitsLiveTests(TestCase):
    timeout = 120

    def setUp(self) -> Deferred[None]:
        self.keystone: KeystoneServer = keystone_server(self)
        self.treq = settled_client(self)
        return Deferred.fromCoroutine(self._start())

    async def keystone_call(self, method: str, path: str, body: Any = None,
                            token: str | None = None) -> tuple[int, Any]:
        response = await self.treq.request(
            method, self.keystone.url + "/v3" + path,
            headers={"X-Auth-Token": [token or self.admin], "Content-Type": ["application/json"]},
            data=json.dumps(body).encode() if body is not None else None,
        )
        raw = await response.content()
        return response.code, json.loads(raw) if raw else None

    async def token(self, user: str) -> tuple[str, str]:
        response = await self.treq.post(
            self.keystone.url + "/v3/auth/tokens", data=self.keystone.login_body(user),
            headers={"Content-Type": ["application/json"]},
        )
        document = await response.json()
        self.assertEqual(response.code, 201, document)
        return (response.headers.getRawHeaders("X-Subject-Token")[0],
                document["token"]["project"]["id"])

    async def _start(self) -> None:
        self.admin, _ = await self.token("admin")
        self.alpha, self.alpha_id = await self.token("alpha-member")
        self.beta, _ = await self.token("beta-member")
        # A service of our own, so no other test's catalog entry or limit
        # interferes: found by its type, in RegionOne, as oslo.limit finds it.
        service_type = f"image-limits-{uuid.uuid4().hex[:8]}"
        code, created = await self.keystone_call(
            "POST", "/services", {"service": {"type": service_type, "name": service_type}})
        self.assertEqual(code, 201, created)
        service_id = created["service"]["id"]
        self.addCleanup(lambda: Deferred.fromCoroutine(
            self.keystone_call("DELETE", f"/services/{service_id}")))
        code, created = await self.keystone_call("POST", "/endpoints", {"endpoint": {
            "service_id": service_id, "interface": "public", "region_id": REGION,
            "url": "http://127.0.0.1:9/unused"}})
        self.assertEqual(code, 201, created)
        endpoint_id = created["endpoint"]["id"]
        self.addCleanup(lambda: Deferred.fromCoroutine(
            self.keystone_call("DELETE", f"/endpoints/{endpoint_id}")))
        defaults = {"image_size_total": 1, "image_stage_total": 1,
                    "image_count_total": 2, "image_count_uploading": 1}
        code, created = await self.keystone_call("POST", "/registered_limits", {
            "registered_limits": [
                {"service_id": service_id, "region_id": REGION, "resource_name": name,
                 "default_limit": limit} for name, limit in defaults.items()]})
        self.assertEqual(code, 201, created)
        for registered in created["registered_limits"]:
            rid = registered["id"]
            self.addCleanup(lambda rid=rid: Deferred.fromCoroutine(
                self.keystone_call("DELETE", f"/registered_limits/{rid}")))
        code, created = await self.keystone_call("POST", "/limits", {"limits": [
            {"service_id": service_id, "region_id": REGION, "project_id": self.alpha_id,
             "resource_name": "image_count_total", "resource_limit": 3}]})
        self.assertEqual(code, 201, created)
        self.alpha_limit = created["limits"][0]["id"]
        self.addCleanup(lambda: Deferred.fromCoroutine(
            self.keystone_call("DELETE", f"/limits/{self.alpha_limit}")))
        # oslo.limit's user reads every project's limits: a system reader.
        _, users = await self.keystone_call("GET", f"/users?name={SERVICE_USER}")
        _, roles = await self.keystone_call("GET", "/roles?name=reader")
        code, _ = await self.keystone_call(
            "PUT", f"/system/users/{users['users'][0]['id']}/roles/{roles['roles'][0]['id']}")
        self.assertIn(code, (201, 204))
        config = live_config(
            self,
            "[DEFAULT]\nauth_strategy = keystone\nuse_keystone_limits = true\n"
            + self.keystone.authtoken_section(token_cache_time=0)
            + "[oslo_limit]\n"
            f"auth_url = {self.keystone.url}\nauth_type = password\n"
            f"username = {SERVICE_USER}\npassword = {self.keystone.password}\n"
            "user_domain_id = default\nsystem_scope = all\n"
            f"endpoint_service_type = {service_type}\nendpoint_region_name = {REGION}\n"
            "endpoint_interface = publicURL\ncache_time = 1\n",
        )
        service = await start_glance_tx(config, self.addCleanup, "keystone-limits")
        self.base = f"http://127.0.0.1:{listening_port(service)}"

    async def call(self, method: str, path: str, token: str, body: Any = None,
                   data: bytes | None = None) -> tuple[int, Any]:
        headers = {"X-Auth-Token": [token]}
        if body is not None:
            headers["Content-Type"] = ["application/json"]
            data = json.dumps(body).encode()
        elif data is not None:
            headers["Content-Type"] = ["application/octet-stream"]
        response = await self.treq.request(method, self.base + path, headers=headers, data=data)
        raw = await response.content()
        try:
            return response.code, json.loads(raw) if raw else None
        except ValueError:
            return response.code, raw

    async def create(self, token: str) -> tuple[int, Any]:
        return await self.call("POST", "/v2/images", token,
                               {"name": "n", "disk_format": "raw", "container_format": "bare"})

    async def test_limits_from_keystone(self) -> None:
        """
        alpha's project limit (3 images) wins over the registered default
        (2, beta's); the fourth (third) create is oslo.limit's 413; an
        upload past image_size_total (1 MiB) is a 413; /v2/info/usage
        shows Keystone's numbers; a raised project limit takes effect once
        cache_time has passed.
        """
        codes = [(await self.create(self.alpha))[0] for _ in range(4)]
        self.assertEqual(codes, [201, 201, 201, 413])
        code, body = await self.create(self.alpha)
        self.assertIn("Resource image_count_total is over limit of 3 due to current usage 3",
                      body["error"]["message"])
        codes = [(await self.create(self.beta))[0] for _ in range(3)]
        self.assertEqual(codes, [201, 201, 413])

        code, usage = await self.call("GET", "/v2/info/usage", self.alpha)
        self.assertEqual(code, 200)
        self.assertEqual(usage["usage"]["image_count_total"], {"limit": 3, "usage": 3})
        self.assertEqual(usage["usage"]["image_size_total"], {"limit": 1, "usage": 0})
        self.assertEqual(usage["usage"]["image_count_uploading"]["limit"], 1)

        _, listing = await self.call("GET", "/v2/images", self.alpha)
        image_id = listing["images"][0]["id"]
        code, body = await self.call("PUT", f"/v2/images/{image_id}/file", self.alpha,
                                     data=b"x" * (2 * MiB))
        self.assertEqual(code, 413, body)
        code, shown = await self.call("GET", f"/v2/images/{image_id}", self.alpha)
        self.assertEqual(shown["status"], "queued")
        code, _ = await self.call("PUT", f"/v2/images/{image_id}/file", self.alpha,
                                  data=b"x" * (MiB // 2))
        self.assertEqual(code, 204)

        code, _ = await self.keystone_call(
            "PATCH", f"/limits/{self.alpha_limit}", {"limit": {"resource_limit": 4}})
        self.assertEqual(code, 200)
        await deferLater(reactor, 1.2, lambda: None)
        self.assertEqual((await self.create(self.alpha))[0], 201)
        self.assertEqual((await self.create(self.alpha))[0], 413)
