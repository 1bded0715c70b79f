"""
Logging in to Keystone v3, on treq: the one login body and exchange that
every glance-tx client of Keystone uses (the service user of token
validation and unified limits, L{glance_tx.identity.keystone_client}; the
Swift store's Keystone auth, L{glance_tx.store.swift_client}).

C{POST <v3>/auth/tokens} with a password (user, domain, and the project
it is scoped to) or an application credential (scoped already); the
token is the C{X-Subject-Token} header, its expiry and catalog are in the
body. Each caller turns L{LoginRefused} and L{LoginFailed} into its own
error and bounds the exchange in time as it needs. No message carries
the password, the secret or the token.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from attrs import field, frozen

__all__ = [
    "Login",
    "LoginFailed",
    "LoginRefused",
    "PasswordCredentials",
    "log_in",
    "timestamp",
]


class LoginFailed(Exception):
    """Keystone answered the login with something other than a token."""


class LoginRefused(LoginFailed):
    """Keystone refused the credentials (401 or 403)."""


@frozen
class PasswordCredentials:
    """
    Who logs in: a password user (domain by id or name) scoped to
    C{project} or, with C{system_scope = "all"}, to the system (what
    oslo.limit's users are given to read every project's limits); or,
    when C{application_credential_id} is set, that application credential.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    project: str | None = None
    user_domain_id: str | None = "default"
    user_domain_name: str | None = None
    project_domain_id: str | None = "default"
    project_domain_name: str | None = None
    application_credential_id: str | None = None
    application_credential_secret: str | None = field(default=None, repr=False)
    system_scope: str | None = None

    def request_body(self) -> dict[str, Any]:
        """The JSON document C{POST /v3/auth/tokens} takes."""
        if self.application_credential_id:
            return {
                "auth": {
                    "identity": {
                        "methods": ["application_credential"],
                        "application_credential": {
                            "id": self.application_credential_id,
                            "secret": self.application_credential_secret,
                        },
                    }
                }
            }
        user: dict[str, Any] = {
            "name": self.user,
            "password": self.password,
            "domain": _domain(self.user_domain_id, self.user_domain_name),
        }
        auth: dict[str, Any] = {
            "identity": {"methods": ["password"], "password": {"user": user}}
        }
        if self.system_scope:
            auth["scope"] = {"system": {self.system_scope: True}}
        elif self.project:
            auth["scope"] = {
                "project": {
                    "name": self.project,
                    "domain": _domain(self.project_domain_id, self.project_domain_name),
                }
            }
        return {"auth": auth}


def _domain(domain_id: str | None, name: str | None) -> dict[str, str]:
    return {"name": name} if name else {"id": domain_id or "default"}


@frozen
class Login:
    """A token Keystone handed out, and the C{token} document it came with."""

    token: str = field(repr=False)
    #: The body's C{"token"} object (user, project, roles, catalog, ...).
    document: dict[str, Any]

    @property
    def expires(self) -> float | None:
        """When the token expires (epoch seconds), if Keystone said."""
        value = self.document.get("expires_at")
        if not isinstance(value, str):
            return None
        try:
            return timestamp(value)
        except ValueError:
            return None


def timestamp(value: str) -> float:
    """Epoch seconds of one of Keystone's ISO 8601 times (UTC when unmarked)."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Keystone's times are UTC
    return moment.timestamp()


def v3_url(auth_url: str) -> str:
    """C{auth_url} ending in C{/v3}, as keystoneauth accepts both forms."""
    url = auth_url.rstrip("/")
    return url if url.endswith("/v3") else url + "/v3"


async def log_in(http: Any, auth_url: str, credentials: PasswordCredentials) -> Login:
    """
    Log in as C{credentials} at C{auth_url} (with or without C{/v3})
    through C{http} (a treq C{HTTPClient}).

    @raise LoginRefused: Keystone refused the credentials.
    @raise LoginFailed: Keystone answered, but not with a token.
    """
    response = await http.request(
        "POST",
        v3_url(auth_url) + "/auth/tokens",
        data=json.dumps(credentials.request_body()).encode("utf-8"),
        headers={"Content-Type": ["application/json"]},
    )
    body = await response.content()
    if response.code in (401, 403):
        raise LoginRefused("Keystone refused the credentials")
    if not 200 <= response.code < 300:
        raise LoginFailed(f"Keystone answered {response.code} to the login")
    tokens = response.headers.getRawHeaders("X-Subject-Token")
    try:
        document = json.loads(body)["token"]
        if not isinstance(document, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise LoginFailed("Keystone sent a token document that is not JSON") from None
    if not tokens:
        raise LoginFailed("Keystone sent no X-Subject-Token")
    return Login(tokens[0], document)
