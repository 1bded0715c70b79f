"""The C{[cache]} section of the configuration file (L{glance_tx.config})."""

from __future__ import annotations

import os
import socket

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.config import CacheConfig, Config, ConfigError, load_config


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


class HashingAlgorithmTests(SynchronousTestCase):
    """hashing_algorithm in [DEFAULT] (Glance's option)."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_default(self) -> None:
        """Unset (or empty), it is sha512, Glance's default."""
        self.assertEqual(load_config().hashing_algorithm, "sha512")
        self.assertEqual(self.load("[DEFAULT]\nhashing_algorithm =\n").hashing_algorithm, "sha512")

    def test_set(self) -> None:
        """Any fixed-length hashlib algorithm, as hashlib spells it."""
        for raw, name in [("sha256", "sha256"), (" SHA3_256 ", "sha3_256"), ("blake2b", "blake2b")]:
            config = self.load(f"[DEFAULT]\nhashing_algorithm = {raw}\n")
            self.assertEqual(config.hashing_algorithm, name)

    def test_refused(self) -> None:
        """
        An unknown name, or a shake function (its digest has no fixed
        length), is a ConfigError naming the option and the value.
        """
        for bad in ("sha257", "shake_128"):
            error = self.assertRaises(
                ConfigError, self.load, f"[DEFAULT]\nhashing_algorithm = {bad}\n"
            )
            self.assertIn("hashing_algorithm", str(error))
            self.assertIn(bad, str(error))
            self.assertIn("sha256", str(error))
