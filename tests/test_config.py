"""The C{[cache]} section of the configuration file (L{glance_tx.config})."""

from __future__ import annotations

import os
import socket

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.config import CacheConfig, Config, ConfigError, ImageQuotas, load_config


class CacheSectionTests(SynchronousTestCase):
    def load(self, text: str) -> CacheConfig:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path).cache

    def test_purge_repeat_delay(self) -> None:
        """
        purge_repeat_delay is 5 seconds unless set; 0 turns the second
        round off; a negative or non-integer value is refused, naming it.
        """
        self.assertEqual(self.load("[cache]\n").purge_repeat_delay, 5)
        self.assertEqual(load_config().cache.purge_repeat_delay, 5)
        self.assertEqual(self.load("[cache]\npurge_repeat_delay = 30\n").purge_repeat_delay, 30)
        self.assertEqual(self.load("[cache]\npurge_repeat_delay = 0\n").purge_repeat_delay, 0)
        for bad in ("-1", "soon"):
            error = self.assertRaises(
                ConfigError, self.load, f"[cache]\npurge_repeat_delay = {bad}\n"
            )
            self.assertIn("purge_repeat_delay", str(error))


class RegistryClientOptionsTests(SynchronousTestCase):
    """registry_url and its companions in [DEFAULT]."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_defaults(self) -> None:
        """Without registry_url the registry is in-process; the bounds default."""
        config = load_config()
        self.assertIsNone(config.registry_url)
        self.assertIsNone(config.registry_token)
        self.assertEqual(config.registry_client_timeout, 5.0)
        self.assertEqual(config.registry_client_retries, 1)

    def test_set(self) -> None:
        """Each option is read (the URL without a trailing slash)."""
        config = self.load(
            "[DEFAULT]\nregistry_url = http://10.0.0.5:9191/\n"
            "registry_token = t0k\nregistry_client_timeout = 2.5\n"
            "registry_client_retries = 0\n"
            "registry_client_ca_file = /etc/glance-tx/ca.pem\n"
        )
        self.assertEqual(config.registry_url, "http://10.0.0.5:9191")
        self.assertEqual(config.registry_token, "t0k")
        self.assertEqual(config.registry_client_timeout, 2.5)
        self.assertEqual(config.registry_client_retries, 0)
        self.assertEqual(config.registry_client_ca_file, "/etc/glance-tx/ca.pem")

    def test_refused(self) -> None:
        """A URL that is not http(s), or a timeout not a finite positive number."""
        for line in (
            "registry_url = 10.0.0.5:9191",
            "registry_client_timeout = 0",
            "registry_client_timeout = inf",
            "registry_client_timeout = soon",
            "registry_client_retries = -1",
        ):
            error = self.assertRaises(ConfigError, self.load, f"[DEFAULT]\n{line}\n")
            self.assertIn(line.split(" ")[0], str(error))


class LeaseOptionsTests(SynchronousTestCase):
    """node_id and upload_lease_seconds in [DEFAULT]."""

    def load(self, text: str, endpoint: str | None = None) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path, endpoint=endpoint)

    def test_defaults(self) -> None:
        """
        node_id defaults to HOST:PORT of the listening endpoint (stable
        across restarts), to HOST:pidN without a fixed port; the lease is 60 s.
        """
        host = socket.gethostname()
        config = self.load("", endpoint="tcp:9393:interface=127.0.0.1")
        self.assertEqual(config.node_id, f"{host}:9393")
        self.assertEqual(load_config().node_id, f"{host}:9292")
        self.assertEqual(self.load("", endpoint="tcp:0").node_id, f"{host}:pid{os.getpid()}")
        self.assertEqual(config.upload_lease_seconds, 60.0)

    def test_set(self) -> None:
        """Both are read; a lease that is not a positive number is refused."""
        config = self.load("[DEFAULT]\nnode_id = api-1\nupload_lease_seconds = 2.5\n")
        self.assertEqual((config.node_id, config.upload_lease_seconds), ("api-1", 2.5))
        for bad in ("0", "soon"):
            error = self.assertRaises(
                ConfigError, self.load, f"[DEFAULT]\nupload_lease_seconds = {bad}\n"
            )
            self.assertIn("upload_lease_seconds", str(error))


class LocationOptionsTests(SynchronousTestCase):
    """show_multiple_locations and show_image_direct_url in [DEFAULT]."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_options(self) -> None:
        """Both are off unless set, as in Glance; a value not a boolean is refused."""
        config = load_config()
        self.assertEqual((config.show_multiple_locations, config.show_image_direct_url), (False, False))
        config = self.load("[DEFAULT]\nshow_multiple_locations = true\nshow_image_direct_url = yes\n")
        self.assertEqual((config.show_multiple_locations, config.show_image_direct_url), (True, True))
        error = self.assertRaises(ConfigError, self.load, "[DEFAULT]\nshow_multiple_locations = maybe\n")
        self.assertIn("show_multiple_locations", str(error))


class HeadLimitOptionTests(SynchronousTestCase):
    """max_header_line in [DEFAULT]."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_max_header_line(self) -> None:
        """Glance's default, 16384; set; below 1024 or not a number refused."""
        self.assertEqual(load_config().max_header_line, 16384)
        self.assertEqual(self.load("[DEFAULT]\nmax_header_line = 32768\n").max_header_line, 32768)
        for bad in ("100", "big"):
            error = self.assertRaises(
                ConfigError, self.load, f"[DEFAULT]\nmax_header_line = {bad}\n"
            )
            self.assertIn("max_header_line", str(error))


class QuotaOptionTests(SynchronousTestCase):
    """The per-image quotas in [DEFAULT]."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_defaults(self) -> None:
        """Glance's defaults: 128 members, properties and tags, 10 locations."""
        self.assertEqual(load_config().quotas, ImageQuotas(128, 128, 128, 10))

    def test_set(self) -> None:
        """Each is read; negative (unlimited) is taken."""
        quotas = self.load(
            "[DEFAULT]\nimage_member_quota = 5\nimage_property_quota = -1\n"
            "image_tag_quota = 0\nimage_location_quota = 2\n"
        ).quotas
        self.assertEqual(quotas, ImageQuotas(5, -1, 0, 2))

    def test_refused(self) -> None:
        """Not a number, or a location quota of 0 (no upload could finish)."""
        for line in ("image_tag_quota = many", "image_location_quota = 0"):
            error = self.assertRaises(ConfigError, self.load, f"[DEFAULT]\n{line}\n")
            self.assertIn(line.split(" ")[0], str(error))
