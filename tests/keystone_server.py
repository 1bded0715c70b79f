"""
The real Keystone that C{tools/run-tests} starts, as the tests see it.

C{tools/run-tests} bootstraps Keystone once per run (C{tools/keystone-one-node}),
then runs C{python -m tests.keystone_server URL PASSWORD}, which waits for it
to hand out a token and creates the test identities below (every user's
password is the bootstrap admin's), and exports
C{GLANCE_TX_TEST_KEYSTONE_URL} and C{GLANCE_TX_TEST_KEYSTONE_PASSWORD}.
Without them the tests that need Keystone skip, except under C{CI=true},
where a missing Keystone is a failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from attrs import field, frozen
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.swift_cluster import in_ci

URL_ENV = "GLANCE_TX_TEST_KEYSTONE_URL"
PASSWORD_ENV = "GLANCE_TX_TEST_KEYSTONE_PASSWORD"

#: user -> (project, role). Two projects with members, a reader, an admin
#: (the bootstrap one) and the service user glance-tx validates tokens as.
USERS = {
    "admin": ("admin", "admin"),
    "alpha-member": ("alpha", "member"),
    "beta-member": ("beta", "member"),
    "alpha-reader": ("alpha", "reader"),
    "glance": ("service", "service"),
}
SERVICE_USER = "glance"


@frozen
class KeystoneServer:
    """Where the test Keystone is, and the password of all its users."""

    url: str
    password: str = field(repr=False)

    def authtoken_section(self, auth_url: str | None = None, **extra: Any) -> str:
        """A C{[keystone_authtoken]} for glance-tx as the service user."""
        lines = [
            "[keystone_authtoken]",
            f"www_authenticate_uri = {self.url}",
            f"auth_url = {auth_url or self.url}",
            "auth_type = password",
            f"username = {SERVICE_USER}",
            f"password = {self.password}",
            f"project_name = {USERS[SERVICE_USER][0]}",
            "user_domain_name = Default",
            "project_domain_name = Default",
            *(f"{k} = {v}" for k, v in extra.items()),
        ]
        return "\n".join(lines) + "\n"

    def login_body(self, user: str) -> bytes:
        """The C{POST /v3/auth/tokens} body of C{user}'s project-scoped login."""
        return password_login(user, self.password, USERS[user][0])


def password_login(user: str, password: str, project: str) -> bytes:
    return json.dumps(
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": user, "domain": {"id": "default"}, "password": password}
                    },
                },
                "scope": {"project": {"name": project, "domain": {"id": "default"}}},
            }
        }
    ).encode()


def keystone_server(case: SynchronousTestCase) -> KeystoneServer:
    """The running Keystone; skip (fail under CI) when there is none."""
    url, password = os.environ.get(URL_ENV), os.environ.get(PASSWORD_ENV)
    if not url or not password:
        problem = f"{URL_ENV} or {PASSWORD_ENV} not set (tools/run-tests starts Keystone)"
        if in_ci():
            case.fail(f"Keystone tests cannot run under CI: {problem}")
        raise SkipTest(f"Keystone tests not run: {problem}")
    return KeystoneServer(url.rstrip("/"), password)


# -- set-up, run by tools/run-tests (blocking: it is not a test) ------------


def _call(method: str, url: str, token: str | None, body: Any = None) -> tuple[Any, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
        return response.headers, json.loads(raw) if raw else None


def set_up(url: str, password: str, deadline: float = 90.0) -> None:
    """Wait for Keystone to hand out a token, then create the test identities."""
    v3 = url.rstrip("/") + "/v3"
    give_up = time.monotonic() + deadline
    while True:
        try:
            headers, _ = _call("POST", v3 + "/auth/tokens", None, password_login("admin", password, "admin"))
            token = headers["X-Subject-Token"]
            break
        except (OSError, urllib.error.URLError):
            if time.monotonic() > give_up:
                sys.exit(f"Keystone at {url} handed out no token within {deadline:g} s")
            time.sleep(0.1)
    _, roles = _call("GET", v3 + "/roles", token)
    role_ids = {r["name"]: r["id"] for r in roles["roles"]}
    if "service" not in role_ids:
        _, created = _call("POST", v3 + "/roles", token, {"role": {"name": "service"}})
        role_ids["service"] = created["role"]["id"]
    _, projects = _call("GET", v3 + "/projects", token)
    project_ids = {p["name"]: p["id"] for p in projects["projects"]}
    for project in {p for p, _ in USERS.values()} - set(project_ids):
        _, created = _call(
            "POST", v3 + "/projects", token, {"project": {"name": project, "domain_id": "default"}}
        )
        project_ids[project] = created["project"]["id"]
    for user, (project, role) in USERS.items():
        if user == "admin":
            continue
        _, created = _call(
            "POST",
            v3 + "/users",
            token,
            {"user": {"name": user, "password": password, "domain_id": "default",
                      "default_project_id": project_ids[project]}},
        )
        user_id = created["user"]["id"]
        _call(
            "PUT",
            f"{v3}/projects/{project_ids[project]}/users/{user_id}/roles/{role_ids[role]}",
            token,
        )


if __name__ == "__main__":
    set_up(sys.argv[1], sys.argv[2])
