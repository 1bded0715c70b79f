"""
python-glanceclient and openstacksdk authenticating through the real
Keystone that C{tools/run-tests} starts (password auth with
C{--os-auth-url} / C{openstack.connect(auth_url=...)}; no token or image
URL shortcut), against glance-tx with C{auth_strategy = keystone},
registered in Keystone's catalog as the C{image} endpoint of a region of
the test's own (so no other test's catalog entry is picked). Each drives a
whole image life cycle as alpha's member, with beta's member accepting a
share and downloading.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.keystone_server import KeystoneServer, keystone_server
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.test_clients_glanceclient import (
    COMMAND_TIMEOUT,
    GLANCE,
    GlanceRun,
    _Collect,
    list_table,
    show_table,
)
from tests.test_clients_glanceclient import _skip_reason as _glance_skip
from tests.test_clients_openstacksdk import _close_leftover_connections
from tests.test_clients_openstacksdk import _skip_reason as _sdk_skip

T = TypeVar("T")


class CatalogCase(TestCase):
    """glance-tx with Keystone auth, in Keystone's catalog for C{self.region}."""

    timeout = 180

    def setUp(self) -> Deferred[None]:
        self.keystone: KeystoneServer = keystone_server(self)
        self.treq = settled_client(self)
        self.region = f"Clients-{uuid.uuid4().hex[:8]}"
        return Deferred.fromCoroutine(self._start())

    async def admin_call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = await self.treq.request(
            method, self.keystone.url + "/v3" + path,
            headers={"X-Auth-Token": [self.admin], "Content-Type": ["application/json"]},
            data=json.dumps(body).encode() if body is not None else None,
        )
        raw = await response.content()
        return response.code, json.loads(raw) if raw else None

    async def project_id(self, user: str) -> str:
        response = await self.treq.post(
            self.keystone.url + "/v3/auth/tokens", data=self.keystone.login_body(user),
            headers={"Content-Type": ["application/json"]},
        )
        document = await response.json()
        self.assertEqual(response.code, 201, document)
        if user == "admin":
            self.admin = response.headers.getRawHeaders("X-Subject-Token")[0]
        return str(document["token"]["project"]["id"])

    async def _start(self) -> None:
        await self.project_id("admin")
        self.alpha_id = await self.project_id("alpha-member")
        self.beta_id = await self.project_id("beta-member")
        config = live_config(
            self,
            "[DEFAULT]\nauth_strategy = keystone\n" + self.keystone.authtoken_section(),
        )
        service = await start_glance_tx(config, self.addCleanup, "keystone-clients")
        self.base = f"http://127.0.0.1:{listening_port(service)}"
        code, body = await self.admin_call("POST", "/regions", {"region": {"id": self.region}})
        self.assertEqual(code, 201, body)
        self.addCleanup(lambda: Deferred.fromCoroutine(
            self.admin_call("DELETE", f"/regions/{self.region}")))
        code, body = await self.admin_call(
            "POST", "/services", {"service": {"type": "image", "name": "glance"}})
        self.assertEqual(code, 201, body)
        service_id = body["service"]["id"]
        self.addCleanup(lambda: Deferred.fromCoroutine(
            self.admin_call("DELETE", f"/services/{service_id}")))
        code, body = await self.admin_call("POST", "/endpoints", {"endpoint": {
            "service_id": service_id, "interface": "public", "region_id": self.region,
            "url": self.base}})
        self.assertEqual(code, 201, body)
        endpoint_id = body["endpoint"]["id"]
        self.addCleanup(lambda: Deferred.fromCoroutine(
            self.admin_call("DELETE", f"/endpoints/{endpoint_id}")))

    def make_file(self, size: int) -> tuple[str, bytes]:
        data = os.urandom(size)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path, data


class GlanceClientThroughKeystoneTests(CatalogCase):
    skip = _glance_skip()

    def setUp(self) -> Deferred[None]:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.runs: list[GlanceRun] = []
        return super().setUp()

    async def glance(self, user: str, *args: str, fails: bool = False) -> GlanceRun:
        """C{glance --os-auth-url KEYSTONE --os-username USER ... ARGS}, as USER."""
        project = {"alpha-member": "alpha", "beta-member": "beta"}[user]
        argv = [
            GLANCE, "--debug",
            "--os-auth-url", self.keystone.url + "/v3",
            "--os-username", user, "--os-password", self.keystone.password,
            "--os-project-name", project,
            "--os-user-domain-id", "default", "--os-project-domain-id", "default",
            "--os-region-name", self.region,
            "--os-image-api-version", "2",
            *args,
        ]
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("OS_") and name != "PYTHONPATH"
               and name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        env.update(HOME=self.home, NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
        done: Deferred[int | None] = Deferred()
        protocol = _Collect(None, done)
        transport = reactor.spawnProcess(protocol, GLANCE, argv, env=env, path=self.home,
                                         childFDs={1: "r", 2: "r"})
        killer = reactor.callLater(COMMAND_TIMEOUT, transport.signalProcess, "KILL")
        code = await done
        if killer.active():
            killer.cancel()
        run = GlanceRun(
            args=tuple(a if a != self.keystone.password else "***" for a in argv[1:]),
            code=code,
            out=b"".join(protocol.out).decode("utf-8", "replace"),
            err=b"".join(protocol.err).decode("utf-8", "replace"),
        )
        self.runs.append(run)
        if fails:
            self.assertNotEqual(run.code, 0, f"expected this command to fail:{run}")
        else:
            self.assertEqual(run.code, 0, f"the command failed:{run}")
        return run

    async def show(self, user: str, image_id: str) -> dict[str, str]:
        run = await self.glance(user, "image-show", "--max-column-width", "300", image_id)
        return show_table(run.out)

    async def test_life_cycle(self) -> None:
        """
        As alpha's member through Keystone: create with a file (upload),
        show, list, update, tag, share with beta (beta accepts, lists and
        downloads the same bytes), deactivate (no download) and reactivate,
        delete. Every call went to glance-tx's catalog URL with a token
        keystoneauth got by password.
        """
        path, data = self.make_file(3 * 1024 * 1024 + 5)
        name = f"ks-cli-{uuid.uuid4().hex[:8]}"
        run = await self.glance(
            "alpha-member", "image-create", "--name", name, "--disk-format", "raw",
            "--container-format", "bare", "--visibility", "shared", "--file", path)
        created = show_table(run.out)
        image_id = created["id"]
        self.assertEqual((created["status"], created["owner"]), ("active", self.alpha_id), run)
        self.assertIn("POST /v3/auth/tokens 201", run.requests(), run)
        self.assertIn(f"PUT /v2/images/{image_id}/file 204", run.requests(), run)

        shown = await self.show("alpha-member", image_id)
        self.assertEqual((shown["size"], shown["checksum"]),
                         (str(len(data)), hashlib.md5(data).hexdigest()))
        listed = await self.glance("alpha-member", "image-list")
        self.assertIn(image_id, [row["ID"] for row in list_table(listed.out)], listed)

        await self.glance("alpha-member", "image-update", "--name", name + "-2",
                          "--property", "flavour=vanilla", image_id)
        await self.glance("alpha-member", "image-tag-update", image_id, "green")
        shown = await self.show("alpha-member", image_id)
        self.assertEqual((shown["name"], shown["flavour"]), (name + "-2", "vanilla"))
        self.assertIn("green", shown["tags"])

        await self.glance("alpha-member", "member-create", image_id, self.beta_id)
        await self.glance("beta-member", "member-update", image_id, self.beta_id, "accepted")
        members = await self.glance("alpha-member", "member-list", "--image-id", image_id)
        self.assertEqual([(r["Member ID"], r["Status"]) for r in list_table(members.out)],
                         [(self.beta_id, "accepted")], members)
        beta_list = await self.glance("beta-member", "image-list")
        self.assertIn(image_id, [row["ID"] for row in list_table(beta_list.out)], beta_list)
        out = os.path.abspath(self.mktemp())
        await self.glance("beta-member", "image-download", "--file", out, image_id)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)

        await self.glance("alpha-member", "image-deactivate", image_id)
        self.assertEqual((await self.show("alpha-member", image_id))["status"], "deactivated")
        await self.glance("beta-member", "image-download", "--file", out + "2", image_id,
                          fails=True)
        await self.glance("alpha-member", "image-reactivate", image_id)
        self.assertEqual((await self.show("alpha-member", image_id))["status"], "active")

        await self.glance("alpha-member", "image-delete", image_id)
        await self.glance("alpha-member", "image-show", image_id, fails=True)
        for run in self.runs:
            self.assertNotIn("--os-image-url", run.args)
            self.assertNotIn(self.keystone.password, run.out)


class OpenStackSDKThroughKeystoneTests(CatalogCase):
    skip = _sdk_skip()

    async def connect(self, user: str) -> Any:
        """C{openstack.connect(auth_url=...)} as C{user}, closed at cleanup."""
        import openstack

        project = {"alpha-member": "alpha", "beta-member": "beta"}[user]

        def make() -> Any:
            conn = openstack.connect(
                auth_url=self.keystone.url + "/v3",
                username=user,
                password=self.keystone.password,
                project_name=project,
                user_domain_id="default",
                project_domain_id="default",
                region_name=self.region,
                image_api_version="2",
                api_timeout=60,
                load_yaml_config=False,
                load_envvars=False,
            )
            conn.session.session.trust_env = False
            try:
                conn.image  # noqa: B018  (discovery, off the reactor thread)
            except BaseException:
                conn.close()
                raise
            return conn

        conn = await deferToThread(make)

        def close() -> None:
            conn.close()
            _close_leftover_connections(int(self.base.rsplit(":", 1)[1]))

        self.addCleanup(deferToThread, close)
        return conn

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await deferToThread(function, *args, **kwargs)

    async def test_life_cycle(self) -> None:
        """
        The same life cycle through openstacksdk: create_image from a file,
        get, images(), update_image (core fields and an extra property of
        the active image), add_tag, add_member (beta accepts with
        update_member and downloads with checksum validation),
        deactivate/reactivate, delete_image; the image endpoint came from
        Keystone's catalog.
        """
        from openstack import exceptions

        alpha = await self.connect("alpha-member")
        beta = await self.connect("beta-member")
        endpoint = await self.call(alpha.session.get_endpoint, service_type="image",
                                   interface="public", region_name=self.region)
        self.assertEqual(endpoint.rstrip("/").removesuffix("/v2"), self.base)
        path, data = self.make_file(2 * 1024 * 1024 + 7)
        name = f"ks-sdk-{uuid.uuid4().hex[:8]}"
        created = await self.call(
            alpha.image.create_image, name, filename=path, disk_format="raw",
            container_format="bare", visibility="shared", allow_duplicates=True,
            validate_checksum=True,
        )
        image = await self.call(alpha.image.get_image, created.id)
        self.assertEqual((image.status, image.size, image.owner, image.checksum),
                         ("active", len(data), self.alpha_id, hashlib.md5(data).hexdigest()))
        ids = await self.call(lambda: [i.id for i in alpha.image.images()])
        self.assertIn(image.id, ids)

        # An extra property on the active image: the SDK's patch also
        # removes every property it was shown and does not know; with one
        # store no "stores" is shown (as Glance without enabled_backends),
        # so none of them is one the service refuses.
        self.assertNotIn("stores", image.properties)
        image = await self.call(alpha.image.update_image, image, name=name + "-2", min_disk=1,
                                colour="blue")
        await self.call(alpha.image.add_tag, image, "green")
        image = await self.call(alpha.image.get_image, image.id)
        self.assertEqual(
            (image.status, image.name, image.min_disk, image.tags, image.properties.get("colour")),
            ("active", name + "-2", 1, ["green"], "blue"),
        )

        await self.call(alpha.image.add_member, image, member_id=self.beta_id)
        member = await self.call(beta.image.update_member, self.beta_id, image,
                                 status="accepted")
        self.assertEqual(member.status, "accepted")
        beta_ids = await self.call(lambda: [i.id for i in beta.image.images()])
        self.assertIn(image.id, beta_ids)
        downloaded = await self.call(beta.image.download_image, image)
        self.assertEqual(downloaded.content if hasattr(downloaded, "content") else downloaded,
                         data)

        await self.call(alpha.image.deactivate_image, image)
        self.assertEqual((await self.call(alpha.image.get_image, image.id)).status,
                         "deactivated")
        with self.assertRaises(exceptions.SDKException):
            await self.call(beta.image.download_image, image)
        await self.call(alpha.image.reactivate_image, image)
        self.assertEqual((await self.call(alpha.image.get_image, image.id)).status, "active")

        await self.call(alpha.image.delete_image, image, ignore_missing=False)
        with self.assertRaises(exceptions.NotFoundException):
            await self.call(alpha.image.get_image, image.id)
