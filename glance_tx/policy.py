"""
Who may see and change an image: Glance's default rules, through oslo.policy.

The rules are Glance's secure-RBAC defaults (admin, project member,
project reader), under Glance's rule names, so that an operator's
C{policy.yaml} written for Glance overrides them here too. v1 and v2 ask
one L{Policy}; nothing else decides.

Two layers, as in Glance. Visibility (L{Policy.can_see}) is what Glance's
database layer filters: an admin sees everything, others public and
community images, their own project's, and shared images their project
is a member of (whatever the membership's status). An image the caller
may not see is a 404. The rules then decide each action on an image the
caller sees; a refusal there is a 403.

Enforcement never touches a file: the policy file is read when a L{Policy}
is loaded (L{load_policy}, on a thread at start-up, and again by
L{PolicyFile.refresh} when the file changes); enforcing is in memory.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

from attrs import define, field
from oslo_config import cfg
from oslo_policy import policy as oslo

from glance_tx.context import RequestContext
from glance_tx.errors import Forbidden, NotFound
from glance_tx.images import Image, Member
from glance_tx.threads import BlockingRunner

# Glance's check strings (glance/policies/base.py), written out here.
_PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
_PROJECT_READER = "role:reader and project_id:%(project_id)s"
_SEEN_BY = (
    "(project_id:%(project_id)s or project_id:%(member_id)s"
    " or 'community':%(visibility)s or 'public':%(visibility)s"
    " or 'shared':%(visibility)s)"
)
ADMIN_OR_PROJECT_MEMBER = f"role:admin or ({_PROJECT_MEMBER})"
ADMIN_OR_PROJECT_READER = f"role:admin or ({_PROJECT_READER})"
ADMIN_OR_PROJECT_READER_GET_IMAGE = f"role:admin or (role:reader and {_SEEN_BY})"
ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE = f"role:admin or (role:member and {_SEEN_BY})"
ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE = (
    f"role:admin or ({_PROJECT_MEMBER} and project_id:%(owner)s)"
)
ADMIN_OR_SHARED_MEMBER = "role:admin or (role:member and project_id:%(member_id)s)"
ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER = (
    "role:admin or (role:reader and (project_id:%(project_id)s"
    " or project_id:%(member_id)s))"
)

_PUBLIC_NAMESPACE_OR_PROJECT_READER = (
    "role:reader and (project_id:%(project_id)s or 'public':%(visibility)s)"
)
ADMIN_OR_PROJECT_READER_GET_NAMESPACE = f"role:admin or ({_PUBLIC_NAMESPACE_OR_PROJECT_READER})"

#: Glance's metadef rules (glance/policies/metadef.py): readers see the
#: public namespaces and their project's, only an admin changes any.
METADEF_RULES: dict[str, str] = {
    "metadef_default": "",
    "metadef_admin": "role:admin",
    "get_metadef_namespaces": ADMIN_OR_PROJECT_READER,
    **{
        f"get_metadef_{name}": ADMIN_OR_PROJECT_READER_GET_NAMESPACE
        for name in (
            "namespace", "object", "objects", "resource_type", "property",
            "properties", "tag", "tags",
        )
    },
    "list_metadef_resource_types": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    **{
        f"{verb}_metadef_{name}": "rule:metadef_admin"
        for verb, name in (
            ("add", "namespace"), ("modify", "namespace"), ("delete", "namespace"),
            ("add", "object"), ("modify", "object"), ("delete", "object"),
            ("add", "property"), ("modify", "property"), ("remove", "property"),
            ("add", "tag"), ("add", "tags"), ("modify", "tag"), ("delete", "tag"),
            ("delete", "tags"), ("add", "resource_type_association"),
            ("remove", "resource_type_association"),
        )
    },
}

#: Glance's default rules by name. One deliberate difference:
#: C{set_image_location} is admin-only (Glance: project member), because
#: the server fetches the URL and a user should not make it fetch
#: arbitrary URLs on their behalf; an operator's policy file may relax it.
DEFAULT_RULES: dict[str, str] = {
    "default": "",
    "context_is_admin": "role:admin",
    "add_image": ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE,
    "get_images": ADMIN_OR_PROJECT_READER,
    "get_image": ADMIN_OR_PROJECT_READER_GET_IMAGE,
    "modify_image": ADMIN_OR_PROJECT_MEMBER,
    "publicize_image": "role:admin",
    "communitize_image": ADMIN_OR_PROJECT_MEMBER,
    "delete_image": ADMIN_OR_PROJECT_MEMBER,
    "download_image": ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE,
    "upload_image": ADMIN_OR_PROJECT_MEMBER,
    "get_image_location": ADMIN_OR_PROJECT_READER,
    "set_image_location": "role:admin",
    "delete_image_location": "role:admin",
    "add_member": ADMIN_OR_PROJECT_MEMBER,
    "delete_member": ADMIN_OR_PROJECT_MEMBER,
    "get_member": ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
    "get_members": ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
    "modify_member": ADMIN_OR_SHARED_MEMBER,
    "deactivate": ADMIN_OR_PROJECT_MEMBER,
    "reactivate": ADMIN_OR_PROJECT_MEMBER,
    "copy_image": "role:admin",
    **METADEF_RULES,
    # Tasks (glance/policies/tasks.py): the API as a whole is admin-only;
    # the rest are Glance's "rule:default" (anyone), checked after it.
    "tasks_api_access": "role:admin",
    "get_task": "",
    "get_tasks": "",
    "add_task": "",
    "modify_task": "",
}

#: Keystone's default role implications (what C{keystone-manage bootstrap}
#: creates): a token for a member also carries reader, an admin's both.
#: Identity from trusted headers (noauth) gets the same expansion, so
#: C{X-Roles: member} means what it means with Keystone.
IMPLIED_ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"member", "reader"}),
    "member": frozenset({"reader"}),
}


def effective_roles(roles: frozenset[str]) -> frozenset[str]:
    implied: set[str] = set(roles)
    for role in roles:
        implied |= IMPLIED_ROLES.get(role, frozenset())
    return frozenset(implied)


def image_target(image: Image, membership: Member | None = None) -> dict[str, Any]:
    """What a rule may name about an image, in Glance's target keys."""
    target: dict[str, Any] = {
        "id": image.id,
        "project_id": image.owner,
        "owner": image.owner,
        "visibility": image.visibility,
        "protected": image.protected,
        "status": image.status,
    }
    if membership is not None and membership.image_id == image.id:
        target["member_id"] = membership.member_id
    return target


def is_owner(context: RequestContext, image: Image) -> bool:
    return image.owner is not None and image.owner == context.project_id


def read_policy_file(path: str) -> dict[str, str]:
    """An operator's C{policy.yaml} (or JSON) as rules. Blocking: reads it."""
    with open(path, "rb") as f:
        return oslo.parse_file_contents(f.read()) or {}


def _new_enforcer(overrides: dict[str, str] | None) -> oslo.Enforcer:
    """
    An enforcer of Glance's defaults with C{overrides} on top, used as an
    evaluator only: its own C{ConfigOpts} (our INI is not oslo.config's
    global C{CONF}), and C{use_conf} off, so that enforcing never stats or
    reads a file on the reactor thread (changes come through
    L{PolicyFile.refresh}, which builds a new one).
    """
    conf = cfg.ConfigOpts()
    conf([], project="glance-tx", default_config_files=[], default_config_dirs=[])
    enforcer = oslo.Enforcer(conf, use_conf=False)
    rules = {**DEFAULT_RULES, **(overrides or {})}
    enforcer.set_rules(oslo.Rules.from_dict(rules, "default"), use_conf=False)
    return enforcer


#: Decisions remembered per rule set: oslo.policy spends 100-350 us on
#: one enforce (it inspects each check's signature every time), measured
#: on this machine; a remembered one costs a dictionary look-up.
DECISION_CACHE_SIZE = 8192


_TARGET_KEY = re.compile(r"%\((\w+)\)s")


def _named_target_keys(enforcer: oslo.Enforcer) -> frozenset[str]:
    """Every C{%(key)s} the rules in force name."""
    return frozenset(
        key for rule in enforcer.rules.values() for key in _TARGET_KEY.findall(str(rule))
    )


def _decider(enforcer: oslo.Enforcer) -> Callable[..., bool]:
    """C{enforcer}'s decisions, remembered (they depend on nothing else)."""

    @functools.lru_cache(maxsize=DECISION_CACHE_SIZE)
    def decide(
        rule: str,
        project_id: str | None,
        user_id: str | None,
        roles: frozenset[str],
        target: frozenset[tuple[str, Any]],
    ) -> bool:
        creds = {"project_id": project_id, "user_id": user_id, "roles": sorted(roles)}
        return bool(enforcer.enforce(rule, dict(target), creds))

    return decide


@define
class Policy:
    """The rules in force; every API decision about an image asks here."""

    _enforcer: oslo.Enforcer = field(factory=lambda: _new_enforcer(None))
    _decide: Callable[..., bool] = field(init=False)
    #: The target keys the rules name (C{%(owner)s}, ...): the only ones a
    #: decision depends on, so the only ones its memory is keyed by (with
    #: C{id} in the key it would remember one decision per image).
    _target_keys: frozenset[str] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._decide = _decider(self._enforcer)
        self._target_keys = _named_target_keys(self._enforcer)

    @classmethod
    def with_rules(cls, overrides: dict[str, str]) -> Policy:
        """Glance's defaults with some rules replaced (tests, embedding)."""
        return cls(_new_enforcer(overrides))

    def replace(self, other: Policy) -> None:
        """Take C{other}'s rules (a reloaded file) from now on."""
        self._enforcer = other._enforcer
        self._decide = other._decide
        self._target_keys = other._target_keys

    def allowed(self, rule: str, context: RequestContext, target: dict[str, Any]) -> bool:
        if rule not in DEFAULT_RULES:
            # A misspelt name would fall to "default" (which allows).
            raise ValueError(f"{rule!r} is not one of Glance's policy rules")
        return self._decide(
            rule,
            context.project_id,
            context.user_id,
            effective_roles(context.roles),
            frozenset((k, v) for k, v in target.items() if k in self._target_keys),
        )

    def enforce(
        self, rule: str, context: RequestContext, target: dict[str, Any], message: str = ""
    ) -> None:
        if not self.allowed(rule, context, target):
            raise Forbidden(message or f"You are not authorized to complete {rule} action.")

    def is_admin(self, context: RequestContext) -> bool:
        return self.allowed("context_is_admin", context, {})

    # -- seeing -----------------------------------------------------------------

    def can_see(
        self, context: RequestContext, image: Image, membership: Member | None = None
    ) -> bool:
        """
        C{membership} is the caller's project's membership of C{image}, when
        the caller looked it up; without it shared images are the owner's.
        """
        member = (
            image.visibility == "shared"
            and membership is not None
            and membership.image_id == image.id
            and membership.member_id == context.project_id
        )
        visible = (
            self.is_admin(context)
            or image.visibility in ("public", "community")
            or is_owner(context, image)
            or member
        )
        return visible and self.allowed(
            "get_image", context, image_target(image, membership if member else None)
        )

    def check_visible(
        self, context: RequestContext, image: Image, membership: Member | None = None
    ) -> Image:
        """An image the caller may not see is, to them, not there at all."""
        if not self.can_see(context, image, membership):
            raise NotFound(f"No image found with ID {image.id}")
        return image

    def check_list(self, context: RequestContext) -> None:
        self.enforce("get_images", context, {"project_id": context.project_id})

    # -- acting on an image the caller sees ---------------------------------------

    def check_create(self, context: RequestContext, owner: str | None) -> None:
        target = {"project_id": context.project_id, "owner": owner or context.project_id}
        self.enforce(
            "add_image",
            context,
            target,
            "You are not authorized to create an image"
            + ("" if target["owner"] == context.project_id else " for another owner"),
        )

    def check_modifiable(self, context: RequestContext, image: Image) -> None:
        self.enforce(
            "modify_image",
            context,
            image_target(image),
            f"You are not permitted to modify image {image.id}",
        )

    def check_upload(self, context: RequestContext, image: Image) -> None:
        self.enforce(
            "upload_image",
            context,
            image_target(image),
            f"You are not permitted to upload data to image {image.id}",
        )

    def check_download(
        self, context: RequestContext, image: Image, membership: Member | None = None
    ) -> None:
        self.enforce(
            "download_image",
            context,
            image_target(image, membership),
            f"You are not permitted to download image {image.id}",
        )

    def check_visibility(self, context: RequestContext, image: Image | None, visibility: str | None) -> None:
        """Only an admin makes an image public; community is the owner's to set."""
        target = image_target(image) if image is not None else {"project_id": context.project_id}
        if visibility == "public":
            self.enforce("publicize_image", context, target, "Only an admin can make an image public")
        elif visibility == "community":
            self.enforce("communitize_image", context, target, "You are not permitted to make this image community")

    def check_owner_change(
        self, context: RequestContext, image: Image | None, owner: str | None
    ) -> None:
        """Only an admin gives an image to another project."""
        current = image.owner if image is not None else context.project_id
        if owner != current and not self.is_admin(context):
            raise Forbidden("Only an admin can set an image's owner to another project")

    def sees_locations(self, context: RequestContext, image: Image) -> bool:
        """Whether the image document shows this caller where the data lives."""
        return self.allowed("get_image_location", context, image_target(image))

    def check_set_location(self, context: RequestContext, image: Image | None = None) -> None:
        """
        Pointing an image at data elsewhere (v1's C{x-image-meta-location},
        v2's C{/locations}): the server fetches the URL, so by default only
        an admin (see L{DEFAULT_RULES}).
        """
        target = image_target(image) if image is not None else {"project_id": context.project_id}
        self.enforce("set_image_location", context, target, "Only an admin may set an image's location")

    def check_delete_location(self, context: RequestContext, image: Image) -> None:
        """Removing an image's data from one store (Glance: an admin's)."""
        self.enforce(
            "delete_image_location", context, image_target(image),
            "You are not permitted to remove image data from a store",
        )

    def check_copy(self, context: RequestContext, image: Image) -> None:
        """copy-image import into more stores: an admin's, as in Glance."""
        self.enforce("copy_image", context, image_target(image), "Only an admin can copy images")

    def check_tasks(self, context: RequestContext, rule: str) -> None:
        """
        The tasks API: C{tasks_api_access} (admin by default, as Glance 33)
        and then the call's own rule (C{get_task}, C{get_tasks},
        C{add_task}).
        """
        target = {"project_id": context.project_id}
        self.enforce("tasks_api_access", context, target, "You are not authorized to access the tasks API")
        self.enforce(rule, context, target)

    def check_deletable(self, context: RequestContext, image: Image) -> None:
        self.enforce(
            "delete_image",
            context,
            image_target(image),
            f"You are not permitted to delete image {image.id}",
        )
        if image.protected:
            raise Forbidden(f"Image {image.id} is protected and cannot be deleted")

    def check_action(self, context: RequestContext, image: Image, action: str) -> None:
        """C{deactivate} / C{reactivate}."""
        self.enforce(action, context, image_target(image), f"You are not permitted to {action} image {image.id}")

    # -- members -----------------------------------------------------------------

    def manages_members(self, context: RequestContext, image: Image) -> bool:
        return self.allowed("add_member", context, image_target(image))

    def reads_members(self, context: RequestContext, image: Image) -> bool:
        """
        C{get_members} without a membership: the owner project's readers
        (and admins) see every member; a member project only its own.
        """
        return self.allowed("get_members", context, image_target(image))

    def may_answer_for(self, context: RequestContext, image: Image, member_id: str) -> bool:
        """Accepting or rejecting: the member project itself (or an admin)."""
        target = image_target(image)
        target["member_id"] = member_id
        return self.allowed("modify_member", context, target)


def load_policy(policy_file: str | None) -> Policy:
    """Glance's defaults overridden by C{policy_file}. Blocking: reads it."""
    return Policy(_new_enforcer(read_policy_file(policy_file) if policy_file else None))


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


@define
class PolicyFile:
    """
    The operator's policy file and the L{Policy} read from it; L{refresh}
    (run by a timer) rereads it on a thread when its mtime changes, and a
    file that no longer parses leaves the rules in force as they were.
    """

    path: str | None
    runner: BlockingRunner
    policy: Policy = field(factory=Policy)
    _seen: float | None = None

    async def refresh(self) -> bool:
        """Reload if the file changed; whether it did."""
        if self.path is None:
            return False
        mtime = await self.runner.run(_mtime, self.path)
        if mtime is None or mtime == self._seen:
            return False
        loaded = await self.runner.run(load_policy, self.path)
        self._seen = mtime
        self.policy.replace(loaded)
        return True
