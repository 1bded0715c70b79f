"""
The one-node Swift that C{tools/run-tests} starts, as the tests see it.

C{tools/run-tests} lays out a cluster with C{tools/swift-one-node}, starts
memcached and the four servers once per run, and exports
C{GLANCE_TX_TEST_SWIFT_URL} (the tempauth v1 auth URL),
C{GLANCE_TX_TEST_SWIFT_USER} and C{GLANCE_TX_TEST_SWIFT_KEY}. Without them
the Swift tests skip, except under C{CI=true}, where a missing server is a
failure.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from attrs import frozen
from twisted.trial.unittest import SkipTest, SynchronousTestCase

URL_ENV = "GLANCE_TX_TEST_SWIFT_URL"
USER_ENV = "GLANCE_TX_TEST_SWIFT_USER"
KEY_ENV = "GLANCE_TX_TEST_SWIFT_KEY"


@frozen
class SwiftCluster:
    """Where the test cluster is and how to log in to it."""

    auth_url: str
    user: str
    key: str

    def connection(self) -> Any:
        """A blocking swiftclient connection, for checking from the side."""
        from swiftclient.client import Connection

        return Connection(
            authurl=self.auth_url, user=self.user, key=self.key, retries=0
        )


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def swift_cluster(case: SynchronousTestCase) -> SwiftCluster:
    """The running cluster; skip (fail under CI) when there is none."""
    values = {name: os.environ.get(name) for name in (URL_ENV, USER_ENV, KEY_ENV)}
    problem = None
    unset = [name for name, value in values.items() if not value]
    if unset:
        problem = f"{', '.join(unset)} not set (tools/run-tests starts Swift)"
    else:
        try:
            import swiftclient  # noqa: F401
        except ImportError:
            problem = "python-swiftclient is not installed"
    if problem is not None:
        if in_ci():
            case.fail(f"Swift tests cannot run under CI: {problem}")
        raise SkipTest(f"Swift tests not run: {problem}")
    return SwiftCluster(
        auth_url=values[URL_ENV] or "", user=values[USER_ENV] or "", key=values[KEY_ENV] or ""
    )


def unique_container(prefix: str = "glance-tx-test") -> str:
    """A container name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
