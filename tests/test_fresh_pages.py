"""
Tests for L{glance_tx.registry.sql.page_read.FreshPages}: listing pages
answered without the registry's runner while the SQLite file has not
changed, and read again after any change, whoever made it.
"""

from __future__ import annotations

import os
from datetime import timedelta

from twisted.trial.unittest import SynchronousTestCase

from glance_tx.images import Image, ImageQuery, ImageUpdate, Viewer
from glance_tx.registry.sql import SQLRegistry
from glance_tx.threads import SynchronousRunner
from tests.fakes import RecordingRunner
from tests.registry_conformance import T0, make_image
from tests.test_registry_fresh import CommittingRunner, commit, open_registry


class FreshPageTests(SynchronousTestCase):
    """SQLRegistry.list on a SQLite file shared with another registry (node)."""

    def setUp(self) -> None:
        self.url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        self.runner = RecordingRunner()
        self.registry = self.open(self.runner)
        self.other = self.open(SynchronousRunner())
        for n in range(3):
            self.successResultOf(self.registry.create(self.image(f"i{n}", n)))
        self.query = ImageQuery(viewer=Viewer("p1"), limit=2)

    def image(self, name: str, minutes: int) -> Image:
        """A public image made C{minutes} after T0 (pages are newest first)."""
        return make_image(
            name=name, visibility="public", created_at=T0 + timedelta(minutes=minutes)
        )

    def open(self, runner: object) -> SQLRegistry:
        registry = open_registry(self.url, runner)
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        return registry

    def names(self, query: ImageQuery | None = None) -> list[str]:
        page = self.successResultOf(self.registry.list(query or self.query))
        return [image.name or "" for image in page]

    def kept(self) -> list[str]:
        """List until the page is kept; then a listing costs no runner call."""
        for _ in range(3):
            self.names()
        calls = self.runner.calls
        names = self.names()
        self.assertEqual(self.runner.calls, calls)
        return names

    def test_unchanged_page_answered_without_the_runner(self) -> None:
        """A page read at this version is answered again with no runner call."""
        self.assertEqual(self.kept(), ["i2", "i1"])

    def test_other_queries_read_their_own(self) -> None:
        """Another limit, marker or viewer is not the kept page."""
        first = self.kept()
        page = self.successResultOf(self.registry.list(self.query))
        self.assertEqual(self.names(ImageQuery(viewer=Viewer("p1"), limit=1)), ["i2"])
        self.assertEqual(
            self.names(ImageQuery(viewer=Viewer("p1"), limit=2, marker=page[-1].id)), ["i0"]
        )
        self.assertEqual(self.names(ImageQuery(viewer=Viewer("p2"), limit=2)), first)

    def test_changes_seen(self) -> None:
        """This registry's and another node's commits are each seen at the next listing."""
        self.kept()
        page = self.successResultOf(self.registry.list(self.query))
        self.successResultOf(self.registry.update(page[0].id, ImageUpdate(fields={"name": "x"})))
        self.assertEqual(self.names(), ["x", "i1"])
        self.kept()
        self.successResultOf(self.other.create(self.image("new", 9)))
        self.assertEqual(self.names(), ["new", "x"])
        self.kept()
        # A writer bumps the version, as the registry does: the page's
        # records are told unchanged by it (ImageReader.get_many).
        path = self.registry._fresh.path  # type: ignore[union-attr]
        commit(path, "UPDATE images SET name = 'y', version = version + 1 WHERE name = 'new'")
        self.assertEqual(self.names(), ["y", "x"])

    def test_commit_during_the_read_not_kept(self) -> None:
        """A commit landing while a page is read on the pool leaves it not kept."""
        self.kept()
        path = self.registry._fresh.path  # type: ignore[union-attr]
        runner = CommittingRunner(path)
        self.registry.runner = runner  # type: ignore[assignment]
        self.addCleanup(setattr, self.registry, "runner", self.runner)
        commit(path, "UPDATE images SET min_disk = 1")
        runner.statement = "UPDATE images SET name = 'z', version = version + 1 WHERE name = 'i2'"
        self.assertEqual(self.names(), ["i2", "i1"])  # read before the commit
        self.assertEqual(self.names(), ["z", "i1"])

    def test_kept_page_is_a_copy(self) -> None:
        """A caller changing its page leaves the kept one alone."""
        self.kept()
        self.successResultOf(self.registry.list(self.query)).clear()
        self.assertEqual(self.kept(), ["i2", "i1"])
