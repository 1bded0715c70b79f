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
        self.assertEqual(config.registry_client_pool_maxsize, 8)
        self.assertEqual(config.registry_client_pool_unused_timeout, 240.0)

    def test_set(self) -> None:
        """Each option is read (the URL without a trailing slash)."""
        config = self.load(
            "[DEFAULT]\nregistry_url = http://10.0.0.5:9191/\n"
            "registry_token = t0k\nregistry_client_timeout = 2.5\n"
            "registry_client_retries = 0\n"
            "registry_client_ca_file = /etc/glance-tx/ca.pem\n"
            "registry_client_pool_maxsize = 32\n"
            "registry_client_pool_unused_timeout = 30\n"
        )
        self.assertEqual(config.registry_url, "http://10.0.0.5:9191")
        self.assertEqual(config.registry_token, "t0k")
        self.assertEqual(config.registry_client_timeout, 2.5)
        self.assertEqual(config.registry_client_retries, 0)
        self.assertEqual(config.registry_client_ca_file, "/etc/glance-tx/ca.pem")
        self.assertEqual(config.registry_client_pool_maxsize, 32)
        self.assertEqual(config.registry_client_pool_unused_timeout, 30.0)

    def test_refused(self) -> None:
        """A URL that is not http(s), or a timeout not a finite positive number."""
        for line in (
            "registry_url = 10.0.0.5:9191",
            "registry_client_timeout = 0",
            "registry_client_timeout = inf",
            "registry_client_timeout = soon",
            "registry_client_retries = -1",
            "registry_client_pool_maxsize = -1",
            "registry_client_pool_maxsize = many",
            "registry_client_pool_unused_timeout = 0",
            # Not below glance-registry's keep-alive: the registry could
            # close a connection as the node sends a call down it.
            "registry_client_pool_unused_timeout = 300",
        ):
            error = self.assertRaises(ConfigError, self.load, f"[DEFAULT]\n{line}\n")
            self.assertIn(line.split(" ")[0], str(error))


class ThreadPoolNiceTests(SynchronousTestCase):
    """thread_pool_nice in [DEFAULT]."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_default_set_and_refused(self) -> None:
        """10 by default; 0 and more are taken; a negative one is refused."""
        self.assertEqual(load_config().thread_pool_nice, 10)
        self.assertEqual(self.load("[DEFAULT]\nthread_pool_nice = 0\n").thread_pool_nice, 0)
        self.assertEqual(self.load("[DEFAULT]\nthread_pool_nice = 19\n").thread_pool_nice, 19)
        error = self.assertRaises(ConfigError, self.load, "[DEFAULT]\nthread_pool_nice = -1\n")
        self.assertIn("thread_pool_nice", str(error))


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


class HealthCheckOptionTests(SynchronousTestCase):
    """healthcheck_probe_interval in [DEFAULT]."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_probe_interval(self) -> None:
        """
        1 s by default; 0 (hold no answer) and more are taken; a negative
        or non-number one is refused, naming the option.
        """
        self.assertEqual(load_config().healthcheck_probe_interval, 1.0)
        for raw, seconds in (("0", 0.0), ("0.0", 0.0), ("2.5", 2.5), ("", 1.0)):
            config = self.load(f"[DEFAULT]\nhealthcheck_probe_interval = {raw}\n")
            self.assertEqual(config.healthcheck_probe_interval, seconds, raw)
        for bad in ("-1", "soon", "inf"):
            error = self.assertRaises(
                ConfigError, self.load, f"[DEFAULT]\nhealthcheck_probe_interval = {bad}\n"
            )
            self.assertIn("healthcheck_probe_interval", str(error))


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
class AuthOptionsTests(SynchronousTestCase):
    """C{auth_strategy} and keystonemiddleware's C{[keystone_authtoken]}."""

    KEYSTONE = (
        "[DEFAULT]\nauth_strategy = keystone\n"
        "[keystone_authtoken]\n"
        "auth_url = http://ks:5000/\nusername = glance\npassword = s3cret\n"
        "project_name = service\n"
    )

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return load_config(path.path, data_dir=self.mktemp())

    def test_default_noauth(self) -> None:
        """Without auth_strategy: noauth, and no Keystone settings."""
        config = self.load("[DEFAULT]\n")
        self.assertEqual((config.auth_strategy, config.keystone), ("noauth", None))
        self.assertFalse(config.cache.revalidate)

    def test_keystone_revalidates(self) -> None:
        """With keystone, caches must ask glance-tx at every use."""
        self.assertTrue(self.load(self.KEYSTONE).cache.revalidate)

    def test_keystone(self) -> None:
        """An operator's keystonemiddleware section is read with its defaults."""
        config = self.load(
            self.KEYSTONE + "www_authenticate_uri = https://ks.example\n"
            "user_domain_name = Users\ncafile = /etc/ca.pem\nauth_type = password\n"
            "memcached_servers = ignored:11211\n"
        )
        keystone = config.keystone
        assert keystone is not None
        self.assertEqual(keystone.v3_url, "http://ks:5000/v3")
        self.assertEqual(keystone.www_authenticate_uri, "https://ks.example")
        self.assertEqual(
            (keystone.user_domain_name, keystone.project_domain_name), ("Users", "Default")
        )
        self.assertEqual((keystone.token_cache_time, keystone.http_connect_timeout), (300, 5))
        self.assertEqual(keystone.cafile, "/etc/ca.pem")
        self.assertFalse(keystone.insecure)
        self.assertNotIn("s3cret", repr(config))
        insecure = self.load(self.KEYSTONE + "insecure = true\n").keystone
        assert insecure is not None
        self.assertTrue(insecure.insecure)

    def test_www_authenticate_uri_defaults(self) -> None:
        """Without www_authenticate_uri (or the older auth_uri): auth_url."""
        keystone = self.load(self.KEYSTONE).keystone
        assert keystone is not None
        self.assertEqual(keystone.www_authenticate_uri, "http://ks:5000/")
        keystone = self.load(self.KEYSTONE + "auth_uri = http://old\n").keystone
        assert keystone is not None
        self.assertEqual(keystone.www_authenticate_uri, "http://old")

    def test_token_cache_time(self) -> None:
        """token_cache_time in seconds; -1 (keystonemiddleware's 'off') is 0."""
        for raw, expected in (("60", 60), ("-1", 0), ("0", 0)):
            keystone = self.load(self.KEYSTONE + f"token_cache_time = {raw}\n").keystone
            assert keystone is not None
            self.assertEqual(keystone.token_cache_time, expected)

    def test_service_token_options(self) -> None:
        """service_token_roles (a list, default service) and _required (default true)."""
        keystone = self.load(self.KEYSTONE).keystone
        assert keystone is not None
        self.assertEqual(keystone.service_token_roles, frozenset({"service"}))
        self.assertTrue(keystone.service_token_roles_required)
        keystone = self.load(
            self.KEYSTONE + "service_token_roles = Service, nova\n"
            "service_token_roles_required = false\n"
        ).keystone
        assert keystone is not None
        self.assertEqual(keystone.service_token_roles, frozenset({"service", "nova"}))
        self.assertFalse(keystone.service_token_roles_required)

    def test_refused(self) -> None:
        """Unknown strategies, missing options and other auth types are refused by name."""
        for text, words in (
            ("[DEFAULT]\nauth_strategy = magic\n", "auth_strategy"),
            ("[DEFAULT]\nauth_strategy = keystone\n", "auth_url, username, password, project_name"),
            (self.KEYSTONE + "auth_type = v3token\n", "auth_type"),
            (self.KEYSTONE.replace("http://ks:5000/", "ks:5000"), "auth_url"),
        ):
            error = self.assertRaises(ConfigError, self.load, text)
            self.assertIn(words, str(error))


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


class TLSOptionsTests(SynchronousTestCase):
    """Glance's C{cert_file} and C{key_file}: TLS on the API port."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return load_config(path.path, data_dir=self.mktemp())

    def files(self) -> tuple[str, str]:
        cert, key = FilePath(self.mktemp()), FilePath(self.mktemp())
        cert.setContent(b"cert")
        key.setContent(b"key")
        return cert.path, key.path

    def test_ssl_endpoint(self) -> None:
        """Both set: an ssl endpoint string with bind_host and bind_port."""
        cert, key = self.files()
        config = self.load(
            f"[DEFAULT]\nbind_host = ::1\nbind_port = 9443\ncert_file = {cert}\nkey_file = {key}\n"
        )
        escaped = [p.replace(":", "\\:").replace("=", "\\=") for p in (cert, key)]
        self.assertEqual(
            config.endpoint,
            f"ssl:9443:interface=\\:\\:1:certKey={escaped[0]}:privateKey={escaped[1]}",
        )
        self.assertEqual(config.node_id.rsplit(":", 1)[-1], "9443")
        self.assertEqual(self.load("[DEFAULT]\n").endpoint, "tcp:9292:interface=127.0.0.1")

    def test_refused(self) -> None:
        """One without the other, or a missing file, names the option."""
        cert, key = self.files()
        for text, named in (
            (f"cert_file = {cert}", "key_file"),
            (f"key_file = {key}", "cert_file"),
            (f"cert_file = {cert}\nkey_file = /nonexistent/key.pem", "key_file"),
        ):
            error = self.assertRaises(ConfigError, self.load, f"[DEFAULT]\n{text}\n")
            self.assertIn(named, str(error))


class ImportOptionsTests(SynchronousTestCase):
    """C{enabled_import_methods} and C{[import_filtering_opts]}."""

    def load(self, text: str) -> Config:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return load_config(path, data_dir=self.mktemp())

    def test_defaults(self) -> None:
        """Glance's three methods, and no filtering options."""
        config = self.load("")
        self.assertEqual(
            config.enabled_import_methods, ("glance-direct", "web-download", "copy-image")
        )
        self.assertEqual(dict(config.import_filtering), {})

    def test_set(self) -> None:
        """The methods named, in order; the section's own options only."""
        config = self.load(
            "[DEFAULT]\nenabled_import_methods = web-download, glance-direct\n"
            "[import_filtering_opts]\nhttp_store_allowed_networks = 10.0.0.0/8\n"
        )
        self.assertEqual(config.enabled_import_methods, ("web-download", "glance-direct"))
        self.assertEqual(
            dict(config.import_filtering), {"http_store_allowed_networks": "10.0.0.0/8"}
        )

    def test_unknown_method(self) -> None:
        """A method glance-tx does not have stops the service, named."""
        with self.assertRaises(ConfigError) as caught:
            self.load("[DEFAULT]\nenabled_import_methods = glance-download\n")
        self.assertIn("glance-download", str(caught.exception))

    def test_task_time_to_live(self) -> None:
        """[task] task_time_to_live (hours, default 48), also read from [DEFAULT]."""
        self.assertEqual(self.load("").task_time_to_live, 48)
        self.assertEqual(self.load("[task]\ntask_time_to_live = 2\n").task_time_to_live, 2)
        self.assertEqual(self.load("[DEFAULT]\ntask_time_to_live = 3\n").task_time_to_live, 3)
        with self.assertRaises(ConfigError):
            self.load("[task]\ntask_time_to_live = soon\n")

    def test_image_conversion(self) -> None:
        """[image_conversion]: output_format (raw, qcow2, vmdk) and its limits."""
        self.assertIsNone(self.load("").image_conversion.output_format)
        config = self.load(
            "[image_conversion]\noutput_format = raw\ntimeout = 30\nmemory_limit = 268435456\n"
        )
        self.assertEqual(
            (config.image_conversion.output_format, config.image_conversion.timeout,
             config.image_conversion.memory_limit),
            ("raw", 30.0, 1 << 28),
        )
        with self.assertRaises(ConfigError) as caught:
            self.load("[image_conversion]\noutput_format = vhd\n")
        self.assertIn("output_format", str(caught.exception))
