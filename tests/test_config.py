"""The C{[cache]} section of the configuration file (L{glance_tx.config})."""

from __future__ import annotations

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.config import CacheConfig, ConfigError, load_config


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
