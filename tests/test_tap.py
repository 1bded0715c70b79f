"""twistd glance: options, config precedence and the service tree."""

from __future__ import annotations

from twisted.application.service import IServiceCollection
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.config import ONE_TIB, Config, ConfigError, load_config
from glance_tx.store.filesystem import filesystem_datadir
from glance_tx.tap import GlanceService, Options, makeService


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """With no options: loopback 9292, SQLite + filesystem under ./glance-data."""
        options = Options()
        options.parseOptions([])
        config = options.config
        self.assertEqual(config.endpoint, "tcp:9292:interface=127.0.0.1")
        self.assertTrue(config.data_dir.endswith("glance-data"))
        self.assertTrue(config.sql_connection.startswith("sqlite:///"))
        self.assertEqual(config.image_size_cap, ONE_TIB)
        self.assertEqual(config.default_backend, "file")
        self.assertEqual(config.store("file").type, "file")
        self.assertTrue(
            filesystem_datadir(config.store("file"), config.data_dir).endswith(
                "glance-data/images"
            )
        )

    def test_config_file_and_command_line(self) -> None:
        """The INI file sets options; the command line wins over it."""
        path = FilePath(self.mktemp())
        path.setContent(
            b"[DEFAULT]\nbind_port = 9393\nimage_size_cap = 1000\n"
            b"sql_connection = sqlite:////tmp/x.sqlite\n"
            b"enabled_backends = fast:file\ndefault_backend = fast\n"
            b"[fast]\nfilesystem_store_datadir = /srv/images\n"
        )
        options = Options()
        options.parseOptions(["--config", path.path])
        self.assertEqual(options.config.endpoint, "tcp:9393:interface=127.0.0.1")
        self.assertEqual(options.config.image_size_cap, 1000)
        self.assertEqual(options.config.sql_connection, "sqlite:////tmp/x.sqlite")
        self.assertEqual(
            options.config.store("fast").options, {"filesystem_store_datadir": "/srv/images"}
        )
        options = Options()
        options.parseOptions(["--config", path.path, "--port", "tcp:1234", "--data-dir", "/d"])
        self.assertEqual(options.config.endpoint, "tcp:1234")
        self.assertEqual(options.config.data_dir, "/d")

    def test_bad_config(self) -> None:
        """Invalid settings are usage errors naming the option."""
        for content, fragment in [
            (b"[DEFAULT]\nimage_size_cap = big\n", "image_size_cap"),
            (b"[DEFAULT]\nenabled_backends = nocolon\n", "enabled_backends"),
            (b"[DEFAULT]\ndefault_backend = s3\n", "default_backend"),
            (b"[DEFAULT]\nrecover_on_start = maybe\n", "recover_on_start"),
        ]:
            path = FilePath(self.mktemp())
            path.setContent(content)
            error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path.path])
            self.assertIn(fragment, str(error))
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", "/nonexistent"])
        self.assertIn("/nonexistent", str(error))

    def test_help_documents_options(self) -> None:
        """--help names every option."""
        text = str(Options())
        for option in ("--port", "--data-dir", "--config"):
            self.assertIn(option, text)


class RecoverOnStartOptionTests(SynchronousTestCase):
    """[DEFAULT] recover_on_start: whether start-up recovery runs."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_default_true(self) -> None:
        """
        Without the option, or with it empty, recovery runs: a single node
        must not leave an interrupted upload's image saving.
        """
        self.assertTrue(load_config().recover_on_start)
        self.assertTrue(self.load("[DEFAULT]\nbind_port = 9393\n").recover_on_start)
        self.assertTrue(self.load("[DEFAULT]\nrecover_on_start =\n").recover_on_start)

    def test_spellings(self) -> None:
        """
        Every spelling configparser accepts for a boolean works, in any case
        and with surrounding blanks.
        """
        for raw, expected in [
            ("true", True), ("True", True), ("yes", True), ("on", True), ("1", True),
            ("false", False), ("FALSE", False), ("no", False), ("off", False),
            ("0", False), ("  false  ", False),
        ]:
            config = self.load(f"[DEFAULT]\nrecover_on_start = {raw}\n")
            self.assertIs(config.recover_on_start, expected, raw)

    def test_invalid(self) -> None:
        """Anything else is a ConfigError naming the option and the value."""
        for raw in ("maybe", "2", "nope"):
            error = self.assertRaises(
                ConfigError, self.load, f"[DEFAULT]\nrecover_on_start = {raw}\n"
            )
            self.assertIn("recover_on_start", str(error))
            self.assertIn(raw, str(error))


class ServiceTreeTests(SynchronousTestCase):
    def test_make_service(self) -> None:
        """makeService returns the API service, owning a pool of the configured size."""
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--port", "tcp:0"])
        top = makeService(options)
        self.assertTrue(IServiceCollection.providedBy(top))
        children = list(top)
        self.assertEqual(len(children), 1)
        self.assertIsInstance(children[0], GlanceService)
        self.assertEqual(children[0].pool.max, load_config().thread_pool_size)

    def test_plugin(self) -> None:
        """The twistd plugin is named glance and points at glance_tx.tap."""
        from twisted.plugins.glance_tx_plugin import glance

        self.assertEqual(glance.tapname, "glance")
        self.assertEqual(glance.module, "glance_tx.tap")
