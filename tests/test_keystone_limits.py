"""
C{use_keystone_limits = true}: limits read from an in-memory Keystone's
unified limits (L{tests.fake_keystone}) on a fake clock, and enforced by
the same L{ProjectLimiter} as C{[project_limits]}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from glance_tx.config import ConfigError, OsloLimitConfig, ProjectLimits, load_config
from glance_tx.errors import ServiceUnavailable
from glance_tx.identity.keystone_client import KeystoneClient
from glance_tx.keystone_auth import PasswordCredentials
from glance_tx.keystone_limits import KeystoneLimits
from glance_tx.project_limits import FixedLimits, ILimitSource
from tests.api_fixtures import SiteTestCase
from tests.fake_keystone import SERVICE_PASSWORD, SERVICE_USER, FakeKeystone

NOW = 1_790_000_000.0


def registered(name: str, default: int, region: str | None = "RegionOne") -> dict[str, Any]:
    return {"id": f"rl-{name}", "service_id": "svc-image", "region_id": region,
            "resource_name": name, "default_limit": default}


def project_limit(project: str, name: str, limit: int) -> dict[str, Any]:
    return {"id": f"l-{project}-{name}", "service_id": "svc-image", "region_id": "RegionOne",
            "project_id": project, "resource_name": name, "resource_limit": limit}


class KeystoneLimitsHarness(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.keystone = FakeKeystone(self.clock)
        self.keystone.services = [
            {"id": "svc-image", "type": "image", "name": "glance"},
            {"id": "svc-compute", "type": "compute", "name": "nova"},
        ]
        self.keystone.regions = ["RegionOne", "RegionTwo"]
        self.keystone.endpoints = [
            {"id": "ep-1", "service_id": "svc-image", "region_id": "RegionOne",
             "interface": "public", "url": "http://glance:9292"},
            {"id": "ep-2", "service_id": "svc-image", "region_id": "RegionOne",
             "interface": "internal", "url": "http://glance.internal:9292"},
            {"id": "ep-3", "service_id": "svc-image", "region_id": "RegionTwo",
             "interface": "public", "url": "http://glance2:9292"},
        ]
        self.keystone.registered_limits = [
            registered("image_size_total", 1000),
            registered("image_stage_total", 500),
            registered("image_count_total", 100),
            registered("image_count_uploading", -1),
            registered("image_count_total", 7, region="RegionTwo"),
        ]
        self.keystone.limits = [project_limit("alpha", "image_count_total", 2)]
        self.stub = self.keystone.client()

    def source(self, **overrides: Any) -> KeystoneLimits:
        values: dict[str, Any] = {"endpoint_id": "ep-1", "cache_time": 30.0}
        values.update(overrides)
        config = OsloLimitConfig(
            auth_url="http://keystone.test:5000",
            credentials=PasswordCredentials(user=SERVICE_USER, password=SERVICE_PASSWORD,
                                            project="service"),
            **values,
        )
        client = KeystoneClient(http=self.stub, clock=self.clock, auth_url=config.auth_url,
                                credentials=config.credentials, timeout=5.0)
        return KeystoneLimits(client=client, clock=self.clock, config=config)

    def limits(self, source: KeystoneLimits, project: str | None) -> ProjectLimits:
        d = Deferred.fromCoroutine(source.limits_for(project))
        self.stub.flush()
        return self.successResultOf(d)


class KeystoneLimitsTests(KeystoneLimitsHarness):
    def test_interface(self) -> None:
        """Both limit sources provide ILimitSource."""
        verifyObject(ILimitSource, self.source())
        verifyObject(ILimitSource, FixedLimits(ProjectLimits()))

    def test_project_limit_over_registered(self) -> None:
        """
        A project's own limit wins; the registered limit's default is used
        for the rest; a negative limit is unlimited (-1); only the limits of
        the endpoint's service and region count.
        """
        self.assertEqual(
            self.limits(self.source(), "alpha"),
            ProjectLimits(image_size_total=1000, image_stage_total=500,
                          image_count_total=2, image_count_uploading=-1),
        )
        self.assertEqual(self.limits(self.source(), "beta").image_count_total, 100)
        self.assertEqual(self.limits(self.source(endpoint_id="ep-3"), "beta").image_count_total, 7)

    def test_unregistered_is_zero(self) -> None:
        """A resource with no registered limit allows nothing (oslo.limit's 0)."""
        self.keystone.registered_limits = [registered("image_count_total", 5)]
        limits = self.limits(self.source(), "beta")
        self.assertEqual((limits.image_count_total, limits.image_size_total), (5, 0))

    def test_endpoint_by_service_type_and_region(self) -> None:
        """
        Without endpoint_id, the one endpoint of the service type on the
        interface in the region; none or several is a 503, not "no limit".
        """
        source = self.source(endpoint_id=None, endpoint_service_type="image",
                             endpoint_region_name="RegionTwo")
        self.assertEqual(self.limits(source, "beta").image_count_total, 7)
        source = self.source(endpoint_id=None, endpoint_service_type="image",
                             endpoint_region_name="RegionOne", endpoint_interface="internal")
        self.assertEqual(self.limits(source, "beta").image_count_total, 100)
        for overrides in (
            {"endpoint_id": "ep-none"},
            {"endpoint_id": None, "endpoint_service_type": "volume"},
            {"endpoint_id": None, "endpoint_service_type": "image"},  # two regions
            {"endpoint_id": None, "endpoint_service_type": "image",
             "endpoint_region_name": "Nowhere"},
        ):
            source = self.source(**overrides)
            d = Deferred.fromCoroutine(source.limits_for("beta"))
            self.stub.flush()
            self.failureResultOf(d, ServiceUnavailable)
        self.flushLoggedErrors()

    def test_missing_endpoint_remembered(self) -> None:
        """
        A catalog without the endpoint is believed for cache_time (503s
        without asking Keystone), then looked at again: once the endpoint
        is registered, limits are read.
        """
        source = self.source(endpoint_id="ep-new")

        def attempt() -> Deferred[ProjectLimits]:
            d = Deferred.fromCoroutine(source.limits_for("beta"))
            self.stub.flush()
            return d

        self.failureResultOf(attempt(), ServiceUnavailable)
        reads = len(self.keystone.reads)
        self.keystone.endpoints.append({"id": "ep-new", "service_id": "svc-image",
                                        "region_id": "RegionOne", "interface": "admin"})
        self.failureResultOf(attempt(), ServiceUnavailable)
        self.assertEqual(len(self.keystone.reads), reads)
        self.clock.advance(31)
        self.assertEqual(self.successResultOf(attempt()).image_count_total, 100)
        self.flushLoggedErrors()

    def test_cached_for_cache_time(self) -> None:
        """
        Limits read are used for cache_time seconds: a changed limit takes
        effect after that, and Keystone is not asked meanwhile.
        """
        source = self.source()
        self.assertEqual(self.limits(source, "alpha").image_count_total, 2)
        reads = len(self.keystone.reads)
        self.keystone.limits = [project_limit("alpha", "image_count_total", 9)]
        self.clock.advance(29)
        self.assertEqual(self.limits(source, "alpha").image_count_total, 2)
        self.assertEqual(len(self.keystone.reads), reads)
        self.clock.advance(2)
        self.assertEqual(self.limits(source, "alpha").image_count_total, 9)

    def test_concurrent_one_read(self) -> None:
        """Concurrent checks of one project share one read of its limits."""
        source = self.source()
        self.keystone.gate = Deferred()
        ds = [Deferred.fromCoroutine(source.limits_for("alpha")) for _ in range(5)]
        gate, self.keystone.gate = self.keystone.gate, None
        gate.callback(None)
        self.stub.flush()
        for d in ds:
            self.assertEqual(self.successResultOf(d).image_count_total, 2)
        self.assertEqual(self.keystone.reads.count("/v3/limits"), 1)
        self.assertEqual(self.keystone.logins, 1)

    def test_keystone_down(self) -> None:
        """Keystone failing is a 503 (Retry-After), and is not remembered."""
        source = self.source()
        self.keystone.broken = 500
        d = Deferred.fromCoroutine(source.limits_for("alpha"))
        self.stub.flush()
        self.failureResultOf(d, ServiceUnavailable)
        self.keystone.broken = None
        self.assertEqual(self.limits(source, "alpha").image_count_total, 2)


class KeystoneLimitsSiteTests(SiteTestCase):
    """The API enforces Keystone's limits through the one ProjectLimiter."""

    def setUp(self) -> None:
        harness = KeystoneLimitsHarness()
        harness.setUp()
        harness.keystone.limits = [project_limit("alpha", "image_count_total", 1),
                                   project_limit("alpha", "image_size_total", 1)]
        source = harness.source()
        # Read once, so the in-memory requests below find them remembered
        # (the fake clock does not move).
        harness.limits(source, "alpha")
        self.site_options = {"limit_source": source}
        super().setUp()

    def test_count_and_usage(self) -> None:
        """
        alpha may create one image (its project limit), then gets oslo.limit's
        413; /v2/info/usage shows Keystone's numbers.
        """
        alpha = {"X-Project-Id": "alpha", "X-Roles": "member",
                 "Content-Type": "application/json"}
        body = json.dumps({"name": "n"}).encode()
        self.assertEqual(self.request("POST", "/v2/images", alpha, body).code, 201)
        answer = self.request("POST", "/v2/images", alpha, body)
        self.assertEqual(answer.code, 413)
        self.assertIn("Resource image_count_total is over limit of 1",
                      answer.json()["error"]["message"])
        usage = self.request("GET", "/v2/info/usage", alpha).json()["usage"]
        self.assertEqual(usage["image_count_total"], {"limit": 1, "usage": 1})
        self.assertEqual(usage["image_size_total"]["limit"], 1)
        self.assertEqual(usage["image_stage_total"]["limit"], 500)


class OsloLimitConfigTests(SynchronousTestCase):
    """C{use_keystone_limits} and C{[oslo_limit]} with oslo.limit's names."""

    def load(self, text: str) -> Any:
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return load_config(path.path, data_dir=self.mktemp())

    def test_read(self) -> None:
        """An operator's Glance [oslo_limit] section is read as oslo.limit reads it."""
        config = self.load(
            "[DEFAULT]\nuse_keystone_limits = true\n[oslo_limit]\n"
            "auth_url = https://ks:5000\nauth_type = password\nusername = glance\n"
            "password = s3cret\nuser_domain_id = default\nsystem_scope = all\n"
            "endpoint_service_type = image\nendpoint_region_name = RegionOne\n"
            "endpoint_interface = internalURL\ncafile = /etc/ca.pem\n"
        )
        limits = config.keystone_limits
        assert limits is not None
        self.assertEqual(limits.auth_url, "https://ks:5000")
        self.assertEqual(limits.credentials.system_scope, "all")
        self.assertEqual(limits.credentials.request_body()["auth"]["scope"],
                         {"system": {"all": True}})
        self.assertEqual((limits.endpoint_service_type, limits.endpoint_region_name,
                          limits.endpoint_interface), ("image", "RegionOne", "internal"))
        self.assertEqual(limits.cafile, "/etc/ca.pem")
        self.assertNotIn("s3cret", repr(config))
        self.assertIsNone(self.load("[DEFAULT]\n").keystone_limits)

    def test_refused(self) -> None:
        """Missing credentials or endpoint, and unknown values, stop the start by name."""
        base = "[DEFAULT]\nuse_keystone_limits = true\n[oslo_limit]\n"
        creds = "auth_url = http://ks\nusername = u\npassword = p\n"
        for text, words in (
            (base, "auth_url, username, password"),
            (base + creds, "endpoint_id"),
            (base + creds + "endpoint_id = e\nendpoint_interface = side\n", "endpoint_interface"),
            (base + creds + "endpoint_id = e\nsystem_scope = domain\n", "system_scope"),
            (base + creds + "endpoint_id = e\nauth_type = token\n", "auth_type"),
        ):
            error = self.assertRaises(ConfigError, self.load, text)
            self.assertIn(words, str(error))
