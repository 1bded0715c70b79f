"""
Who may do what to an image: Glance's secure-RBAC rules, cell by cell.

The expectations are written out here from Glance's rules (its
C{glance/policies} defaults and the visibility its database layer
applies), independently of L{glance_tx.policy}, so that a rule changed
there shows up as a cell that fails here.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.config import ConfigError, load_config
from glance_tx.context import RequestContext
from glance_tx.errors import Unauthorized
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.images import Image
from glance_tx.policy import (
    DEFAULT_RULES,
    Policy,
    PolicyFile,
    effective_roles,
    load_policy,
)
from glance_tx.services import POLICY_CHECK_SECONDS, PolicyService
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import SiteTestCase

#: Who asks, as a token service would say: project and roles (Keystone's
#: implied roles included, as its tokens carry them).
PERSONAS: dict[str, RequestContext] = {
    "admin": RequestContext("ops", "u-admin", frozenset({"admin", "member", "reader"})),
    "owner-member": RequestContext("alpha", "u-am", frozenset({"member", "reader"})),
    "owner-reader": RequestContext("alpha", "u-ar", frozenset({"reader"})),
    "other-member": RequestContext("beta", "u-bm", frozenset({"member", "reader"})),
    "other-reader": RequestContext("beta", "u-br", frozenset({"reader"})),
    "stranger": RequestContext("gamma", "u-gm", frozenset({"member", "reader"})),
}

#: Every image is alpha's; beta is the member of the shared ones.
VISIBILITIES = ("public", "community", "shared-accepted", "shared-pending", "private")
OPERATIONS = ("list", "show", "download", "update", "delete", "share", "tag", "deactivate")


@implementer(IIdentityResolver)
@frozen
class TokenIdentity:
    """A verified fake token service: C{X-Auth-Token} names a persona."""

    personas: dict[str, RequestContext]

    async def resolve(self, request: IRequest) -> RequestContext:
        token = request.requestHeaders.getRawHeaders(b"X-Auth-Token")
        if not token or token[0].decode() not in self.personas:
            raise Unauthorized("Authentication required")
        return self.personas[token[0].decode()]


def sees(persona: str, visibility: str) -> bool:
    """Glance's visibility (its database layer): may show the image at all."""
    project = PERSONAS[persona].project_id
    if persona == "admin" or project == "alpha":
        return True
    if visibility in ("public", "community"):
        return True
    return visibility.startswith("shared") and project == "beta"


def listed(persona: str, visibility: str) -> bool:
    """
    Glance's default listing: public, own, and shared once accepted; an
    admin everything but other projects' community images (which only
    their owner's default listing shows).
    """
    project = PERSONAS[persona].project_id
    if project == "alpha":
        return True
    if persona == "admin":
        return visibility != "community"
    return visibility == "public" or (visibility == "shared-accepted" and project == "beta")


def expected(persona: str, visibility: str, operation: str) -> int:
    """The status Glance answers for one cell."""
    roles = PERSONAS[persona].roles
    owner = PERSONAS[persona].project_id == "alpha"
    admin = "admin" in roles
    if operation == "list":
        return 200 if listed(persona, visibility) else 0
    if not sees(persona, visibility):
        return 404
    if operation == "show":
        return 200
    if operation == "download":
        # download_image: admin, or the member role on a visible image.
        return 200 if admin or "member" in roles else 403
    if operation == "share" and not visibility.startswith("shared"):
        return 403  # only shared images have members, whoever asks
    # modify_image, delete_image, add_member, deactivate: admin or the
    # owner project's member.
    allowed = admin or (owner and "member" in roles)
    if not allowed:
        return 403
    return {"update": 200, "delete": 204, "share": 200, "tag": 204, "deactivate": 204}[operation]


class PersonaSite(SiteTestCase):
    """A site whose callers are the L{PERSONAS}, and what they try."""

    def make_identity(self) -> IIdentityResolver:
        return TokenIdentity(PERSONAS)

    def as_(self, persona: str, **headers: str) -> dict[str, str]:
        return {"X-Auth-Token": persona, **headers}

    def image(self, visibility: str) -> str:
        """An active image of alpha's with C{visibility}, shared with beta."""
        kind = visibility.split("-")[0]
        body = {"name": visibility, "disk_format": "raw", "container_format": "bare",
                "visibility": kind, "owner": "alpha"}
        created = self.send_json("POST", "/v2/images", body, self.as_("admin"))
        self.assertEqual(created.code, 201, created.body)
        image_id: str = created.json()["id"]
        uploaded = self.request("PUT", f"/v2/images/{image_id}/file", self.as_(
            "admin", **{"Content-Type": "application/octet-stream"}), b"data")
        self.assertEqual(uploaded.code, 204, uploaded.body)
        if kind == "shared":
            members = f"/v2/images/{image_id}/members"
            added = self.send_json("POST", members, {"member": "beta"}, self.as_("owner-member"))
            self.assertEqual(added.code, 200, added.body)
            if visibility == "shared-accepted":
                accepted = self.send_json(
                    "PUT", f"{members}/beta", {"status": "accepted"}, self.as_("other-member")
                )
                self.assertEqual(accepted.code, 200, accepted.body)
        return image_id

    def send_json(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        content_type = (
            "application/openstack-images-v2.1-json-patch" if method == "PATCH" else "application/json"
        )
        return self.request(method, path, {**headers, "Content-Type": content_type},
                            json.dumps(body).encode())

    def attempt(self, persona: str, image_id: str, operation: str) -> int:
        who = self.as_(persona)
        base = f"/v2/images/{image_id}"
        if operation == "list":
            answer = self.request("GET", "/v2/images?limit=1000", who)
            self.assertEqual(answer.code, 200, answer.body)
            return 200 if image_id in {i["id"] for i in answer.json()["images"]} else 0
        if operation == "show":
            return self.request("GET", base, who).code
        if operation == "download":
            return self.request("GET", base + "/file", who).code
        if operation == "update":
            return self.send_json("PATCH", base, [{"op": "replace", "path": "/name", "value": "x"}], who).code
        if operation == "delete":
            return self.request("DELETE", base, who).code
        if operation == "share":
            return self.send_json("POST", base + "/members", {"member": "delta"}, who).code
        if operation == "tag":
            return self.request("PUT", base + "/tags/t", who).code
        if operation == "deactivate":
            return self.request("POST", base + "/actions/deactivate", who).code
        raise AssertionError(operation)


class MatrixTests(PersonaSite):
    """Projects x roles x visibility x operation, through the v2 API."""

    def test_matrix(self) -> None:
        """
        Every cell answers as Glance does: 200/204 where its rules allow,
        403 where the caller sees the image but may not act, 404 where the
        caller may not see it (another project's private image is a 404).
        """
        fixtures = {v: self.image(v) for v in VISIBILITIES}
        wrong = []
        cells = 0
        for visibility in VISIBILITIES:
            for persona in PERSONAS:
                for operation in OPERATIONS:
                    mutating = operation in ("update", "delete", "share", "tag", "deactivate")
                    image_id = self.image(visibility) if mutating else fixtures[visibility]
                    got = self.attempt(persona, image_id, operation)
                    want = expected(persona, visibility, operation)
                    cells += 1
                    if got != want:
                        wrong.append(f"{persona} {operation} {visibility}: {got}, Glance {want}")
        self.assertEqual(wrong, [], "\n".join(wrong))
        self.assertEqual(cells, len(PERSONAS) * len(VISIBILITIES) * len(OPERATIONS))

    def test_refused_cells_change_nothing(self) -> None:
        """A 403 or 404 update leaves the image as it was."""
        image_id = self.image("community")
        self.assertEqual(self.attempt("other-member", image_id, "update"), 403)
        self.assertEqual(self.attempt("owner-reader", image_id, "update"), 403)
        shown = self.request("GET", f"/v2/images/{image_id}", self.as_("admin")).json()
        self.assertEqual(shown["name"], "community")

    def test_reader_cannot_create(self) -> None:
        """add_image: a reader may not create an image; a member may, for its project only."""
        body = {"name": "n"}
        self.assertEqual(self.send_json("POST", "/v2/images", body, self.as_("owner-reader")).code, 403)
        self.assertEqual(self.send_json("POST", "/v2/images", body, self.as_("owner-member")).code, 201)
        other = {"name": "n", "owner": "beta"}
        self.assertEqual(self.send_json("POST", "/v2/images", other, self.as_("owner-member")).code, 403)

    def test_members_seen(self) -> None:
        """
        get_members: the owner's reader sees every member of a shared image
        (and may not add one); the member project sees only its own
        membership; a project no member gets 404.
        """
        image_id = self.image("shared-pending")
        members = f"/v2/images/{image_id}/members"
        self.send_json("POST", members, {"member": "delta"}, self.as_("owner-member"))

        def listed(persona: str) -> list[str]:
            answer = self.request("GET", members, self.as_(persona))
            self.assertEqual(answer.code, 200, answer.body)
            return sorted(m["member_id"] for m in answer.json()["members"])

        self.assertEqual(listed("owner-reader"), ["beta", "delta"])
        self.assertEqual(listed("other-reader"), ["beta"])
        self.assertEqual(self.request("GET", f"{members}/delta", self.as_("owner-reader")).code, 200)
        self.assertEqual(self.request("GET", f"{members}/delta", self.as_("other-member")).code, 404)
        self.assertEqual(self.request("GET", members, self.as_("stranger")).code, 404)
        added = self.send_json("POST", members, {"member": "epsilon"}, self.as_("owner-reader"))
        self.assertEqual(added.code, 403)

    def test_v1_asks_the_same_rules(self) -> None:
        """v1 answers alike: a reader may read but not change or delete."""
        image_id = self.image("private")
        reader = self.as_("owner-reader")
        self.assertEqual(self.request("HEAD", f"/v1/images/{image_id}", reader).code, 200)
        self.assertEqual(self.request("PUT", f"/v1/images/{image_id}", {
            **reader, "x-image-meta-name": "x"}).code, 403)
        self.assertEqual(self.request("DELETE", f"/v1/images/{image_id}", reader).code, 403)
        self.assertEqual(self.request("HEAD", f"/v1/images/{image_id}", self.as_("other-member")).code, 404)
        self.assertEqual(self.request("DELETE", f"/v1/images/{image_id}", self.as_("owner-member")).code, 200)


class OverrideTests(PersonaSite):
    """An operator's rules replace Glance's defaults, by Glance's names."""

    site_options = {"policy": Policy.with_rules({"download_image": "role:admin", "add_image": "role:admin"})}

    def test_override(self) -> None:
        """
        With download_image and add_image admin-only, the owner's member
        may no longer download or create (403); the admin still may; a
        rule not overridden (modify_image) keeps Glance's default.
        """
        image_id = self.image("private")
        self.assertEqual(self.attempt("owner-member", image_id, "download"), 403)
        self.assertEqual(self.attempt("admin", image_id, "download"), 200)
        self.assertEqual(self.attempt("owner-member", image_id, "update"), 200)
        refused = self.send_json("POST", "/v2/images", {"name": "n"}, self.as_("owner-member"))
        self.assertEqual(refused.code, 403)


class PolicyYamlTests(PersonaSite):
    """An operator's policy.yaml, as Glance's, read through L{load_policy}."""

    def setUp(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(
            b"# Glance's names and rule language\n"
            b'"get_image": "role:admin or project_id:%(project_id)s"\n'
            b'"deactivate": "role:admin"\n'
            b'"restricted": "not role:reader or role:member"\n'
            b'"get_images": "rule:restricted"\n'
        )
        self.site_options = {"policy": load_policy(path.path)}
        super().setUp()

    def test_policy_yaml(self) -> None:
        """
        Rules from the file apply: public images are hidden from other
        projects (get_image), only an admin deactivates, a reader may not
        list (a rule naming another rule); the owner's member still may
        update (a default the file leaves alone).
        """
        image_id = self.image("public")
        self.assertEqual(self.attempt("other-member", image_id, "show"), 404)
        self.assertEqual(self.attempt("owner-reader", image_id, "show"), 200)
        self.assertEqual(self.attempt("owner-member", image_id, "deactivate"), 403)
        self.assertEqual(self.attempt("admin", image_id, "deactivate"), 204)
        self.assertEqual(self.request("GET", "/v2/images", self.as_("owner-reader")).code, 403)
        self.assertEqual(self.request("GET", "/v2/images", self.as_("owner-member")).code, 200)
        self.assertEqual(self.attempt("owner-member", image_id, "update"), 200)


class PolicyFileTests(SynchronousTestCase):
    """C{[oslo_policy] policy_file}: found, read off the reactor, reread on change."""

    def write(self, text: str) -> FilePath[str]:
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return path

    def test_config_names_file(self) -> None:
        """policy_file is relative to the configuration file's directory."""
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("rules.yaml").setContent(b'"get_images": "role:admin"\n')
        conf = directory.child("glance.conf")
        conf.setContent(b"[oslo_policy]\npolicy_file = rules.yaml\n")
        self.assertEqual(load_config(conf.path).policy_file, directory.child("rules.yaml").path)

    def test_config_default_beside(self) -> None:
        """Unset, policy.yaml beside the configuration file is used when present, else none."""
        directory = FilePath(self.mktemp())
        directory.makedirs()
        conf = directory.child("glance.conf")
        conf.setContent(b"[DEFAULT]\n")
        self.assertIsNone(load_config(conf.path).policy_file)
        directory.child("policy.yaml").setContent(b"{}\n")
        self.assertEqual(load_config(conf.path).policy_file, directory.child("policy.yaml").path)

    def test_config_missing_file(self) -> None:
        """A policy_file that does not exist is a configuration error, not the defaults."""
        conf = self.write("[oslo_policy]\npolicy_file = /nonexistent/policy.yaml\n")
        self.assertRaises(ConfigError, load_config, conf.path)

    def test_service_reads_and_rereads(self) -> None:
        """
        PolicyService reads the file at start and, after it changes, at
        the next check; the Policy object handed out stays the same one.
        """
        path = self.write('"get_images": "role:admin"\n')
        clock = Clock()
        service = PolicyService(clock, path.path, SynchronousRunner())
        service.startService()
        policy = self.successResultOf(service.when_ready())
        member = PERSONAS["owner-member"]
        self.assertFalse(policy.allowed("get_images", member, {"project_id": "alpha"}))
        path.setContent(b'"get_images": ""\n')
        os.utime(path.path, (1, 1))
        clock.advance(POLICY_CHECK_SECONDS)
        self.assertTrue(policy.allowed("get_images", member, {"project_id": "alpha"}))
        self.successResultOf(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bad_change_keeps_rules(self) -> None:
        """A file that stops parsing leaves the rules in force as they were."""
        path = self.write('"get_images": "role:admin"\n')
        policy_file = PolicyFile(path.path, SynchronousRunner())
        self.assertTrue(self.successResultOf(_run(policy_file.refresh())))
        path.setContent(b"{{{ not yaml")
        os.utime(path.path, (2, 2))
        self.failureResultOf(_run(policy_file.refresh()))
        self.assertFalse(
            policy_file.policy.allowed("get_images", PERSONAS["owner-member"], {"project_id": "alpha"})
        )


def _run(coroutine: Any) -> Any:
    return Deferred.fromCoroutine(coroutine)


class RuleTests(SynchronousTestCase):
    """The rule set itself."""

    def test_fake_identity(self) -> None:
        """The matrix's identity fake provides the interface."""
        verifyObject(IIdentityResolver, TokenIdentity(PERSONAS))

    def test_implied_roles(self) -> None:
        """Keystone's default implications: admin > member > reader."""
        self.assertEqual(effective_roles(frozenset({"admin"})), frozenset({"admin", "member", "reader"}))
        self.assertEqual(effective_roles(frozenset({"member"})), frozenset({"member", "reader"}))
        self.assertEqual(effective_roles(frozenset({"reader"})), frozenset({"reader"}))

    def test_glance_names(self) -> None:
        """Every rule name is one of Glance's, so its policy files apply."""
        self.assertLessEqual(
            {"get_image", "get_images", "modify_image", "delete_image", "download_image",
             "upload_image", "publicize_image", "communitize_image", "add_member",
             "modify_member", "deactivate", "reactivate", "context_is_admin"},
            set(DEFAULT_RULES),
        )

    def test_unknown_rule(self) -> None:
        """A rule name that is not Glance's is a programming error, never "default"."""
        self.assertRaises(ValueError, Policy().allowed, "get_imagez", PERSONAS["admin"], {})

    def test_no_role_no_access(self) -> None:
        """A token with no role on the project may not even list (get_images)."""
        nobody = RequestContext("alpha", "u", frozenset())
        self.assertFalse(Policy().allowed("get_images", nobody, {"project_id": "alpha"}))


class DecisionMemoryTests(SynchronousTestCase):
    """
    Decisions are remembered by what the rules name, not by the whole
    target: with Glance's defaults, a thousand images of one owner share
    one remembered decision per rule, so the memory does not grow with the
    images served (it did, keyed by image id); a rule that names C{id}
    still decides per image.
    """

    def images(self, count: int) -> list[Image]:
        now = datetime.now(UTC)
        return [
            Image(id=str(uuid.uuid4()), status="active", created_at=now, updated_at=now,
                  owner="alpha", visibility="private")
            for _ in range(count)
        ]

    def test_keyed_by_named_keys(self) -> None:
        policy = Policy()
        member = RequestContext(project_id="alpha", user_id="u", roles=frozenset({"member"}))
        for image in self.images(1000):
            self.assertTrue(policy.can_see(member, image))
        self.assertLessEqual(policy._decide.cache_info().currsize, 2)  # type: ignore[attr-defined]

    def test_rule_naming_id(self) -> None:
        first, second = self.images(2)
        policy = Policy.with_rules({"get_image": f"'{first.id}':%(id)s"})
        member = RequestContext(project_id="alpha", user_id="u", roles=frozenset({"member"}))
        self.assertTrue(policy.can_see(member, first))
        self.assertFalse(policy.can_see(member, second))
