"""
Delayed delete (C{delayed_delete}, C{scrub_time}, C{wakeup_time}): a
deleted active image is pending delete, its data kept for the window and
then removed by the scrubber's timer, on a L{Clock}; caching proxies are
purged at delete time all the same.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from attrs import define
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from glance_tx import images, scrubber_tap
from glance_tx.api.app import build_site
from glance_tx.config import load_config
from glance_tx.errors import ServiceUnavailable
from glance_tx.images import ImageUpdate, Location, new_image_id
from glance_tx.registry.purging import PurgingRegistry
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.scrubber import Scrubber
from glance_tx.scrubber_tap import Options as ScrubberOptions
from glance_tx.services import ThreadPoolService, scrubber_service
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore, filesystem_datadir
from glance_tx.task_log import TaskLog
from glance_tx.tasks import TaskChange, TaskQuery
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import BASE, SiteTestCase
from tests.memory_http import memory_client
from tests.registry_conformance import make_image
from tests.test_api_v1 import OCTET, meta
from tests.test_purge import RecordingPurger

T = TypeVar("T")

SCRUB_TIME = 60
WAKEUP_TIME = 10


@define
class Made(Generic[T]):
    """A L{glance_tx.services.Ready} that has made C{value} already."""

    value: T

    def when_ready(self) -> Deferred[T]:
        return succeed(self.value)


class DelayedDeleteTests(SiteTestCase):
    """The API with delayed_delete on, the registry on the test's clock."""

    site_options = {"delayed_delete": True}

    def open_registry(self) -> SQLRegistry:
        self.clock = Clock()
        # The API stamps records by the real clock; the registry's clock
        # starts there and then moves only with the test's.
        self.clock.advance(time.time())
        return self.successResultOf(
            Deferred.fromCoroutine(
                open_sql_registry(
                    "sqlite://",
                    self.runner,
                    now=lambda: datetime.fromtimestamp(self.clock.seconds(), UTC),
                )
            )
        )

    def start_scrubber(self) -> None:
        service = scrubber_service(
            Made(self.registry), Made(self.stores), self.clock, SCRUB_TIME, WAKEUP_TIME
        )
        service.startService()
        self.addCleanup(service.stopService)

    def active_image(self, api: str) -> str:
        if api == "v1":
            answer = self.request(
                "POST", "/v1/images",
                {**OCTET, **meta(name="x", disk_format="raw", container_format="bare")},
                data=b"data" * 100,
            )
            self.assertEqual(answer.code, 201, answer.body)
            image_id: str = answer.json()["image"]["id"]
            return image_id
        created = self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"disk_format": "raw", "container_format": "bare"}',
        )
        image_id = created.json()["id"]
        self.assertEqual(
            self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"data" * 100).code,
            204,
        )
        return image_id

    def test_pending_then_scrubbed(self) -> None:
        """
        v1 and v2: a delete answers as usual and the image is gone for
        readers (v2 answers 404; v1 shows it to admins only, on HEAD, as
        pending_delete and deleted, refuses to delete it again with 403,
        and answers 404 to others, as Glance does), but its data stays for
        all of scrub_time, through every round of the scrubber before;
        the first round after removes the data and deletes the record.
        """
        self.start_scrubber()
        for api, deleted in (("v1", 200), ("v2", 204)):
            image_id = self.active_image(api)
            path = self.store_root.child(image_id).path
            self.assertEqual(self.request("DELETE", f"/{api}/images/{image_id}").code, deleted)
            record = self.successResultOf(self.registry.get(image_id, include_deleted=True))
            self.assertEqual((record.status, record.deleted), (images.PENDING_DELETE, True))
            self.assertEqual(self.request("GET", f"/v2/images/{image_id}").code, 404)
            self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file").code, 404)
            self.assertEqual(self.request("DELETE", f"/v2/images/{image_id}").code, 404)
            head = self.request("HEAD", f"/v1/images/{image_id}")
            self.assertEqual(head.code, 200)
            self.assertEqual(head.header("x-image-meta-status"), "pending_delete")
            self.assertEqual(head.header("x-image-meta-deleted"), "True")
            self.assertEqual(self.request("GET", f"/v1/images/{image_id}").code, 404)
            again = self.request("DELETE", f"/v1/images/{image_id}")
            self.assertEqual(again.code, 403)
            self.assertIn("Forbidden to delete a pending_delete image", again.json()["error"]["message"])
            user = {"X-Project-Id": "other", "X-Roles": "member"}
            self.assertEqual(self.request("HEAD", f"/v1/images/{image_id}", user).code, 404)
            self.assertEqual(self.request("DELETE", f"/v1/images/{image_id}", user).code, 404)

            for _ in range(SCRUB_TIME // WAKEUP_TIME - 1):
                self.clock.advance(WAKEUP_TIME)
                self.assertTrue(os.path.exists(path), "removed before scrub_time")
            self.clock.advance(WAKEUP_TIME - 1)
            self.assertTrue(os.path.exists(path), "removed before scrub_time")
            self.clock.advance(1)  # the round at scrub_time: its first chance
            self.clock.advance(WAKEUP_TIME)
            self.assertFalse(os.path.exists(path))
            record = self.successResultOf(self.registry.get(image_id, include_deleted=True))
            self.assertEqual((record.status, record.locations), (images.DELETED, ()))
            self.assertEqual(self.stored_files(), [])
            self.assertEqual(self.request("HEAD", f"/v1/images/{image_id}").code, 404)

    def test_expired_tasks_deleted(self) -> None:
        """
        Each round deletes the tasks that have expired (by the registry's
        clock) for good, and only those.
        """
        log = TaskLog(self.registry)
        expired, shown = (
            self.successResultOf(Deferred.fromCoroutine(log.new("import", owner="p", input={})))
            for _ in range(2)
        )
        self.successResultOf(self.registry.update_task(expired.id, TaskChange("failure", expires_in=0)))
        self.successResultOf(Deferred.fromCoroutine(log.fail(shown.id, "no")))
        scrubber = Scrubber(self.registry, self.stores, 0)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(scrubber.scrub())), 0)
        self.assertEqual(self.successResultOf(self.registry.delete_expired_tasks()), 0)
        [left] = self.successResultOf(self.registry.list_tasks(TaskQuery()))
        self.assertEqual(left.id, shown.id)

    def test_scrubbed_at_once_with_scrub_time_0(self) -> None:
        """With Glance's default scrub_time of 0, the next round removes the data."""
        image_id = self.active_image("v2")
        self.request("DELETE", f"/v2/images/{image_id}")
        self.assertTrue(os.path.exists(self.store_root.child(image_id).path))
        self.clock.advance(1)  # past the real time the API stamped
        scrubbed = Scrubber(self.registry, self.stores, 0).scrub()
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(scrubbed)), 1)
        self.assertFalse(os.path.exists(self.store_root.child(image_id).path))

    def test_without_data_deleted_at_once(self) -> None:
        """An image with no data (queued) is deleted at once, as in Glance."""
        created = self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"}, data=b"{}"
        )
        image_id = created.json()["id"]
        self.assertEqual(self.request("DELETE", f"/v2/images/{image_id}").code, 204)
        record = self.successResultOf(self.registry.get(image_id, include_deleted=True))
        self.assertEqual(record.status, images.DELETED)

    def test_purged_at_delete_time(self) -> None:
        """Caching proxies are purged when the image goes pending delete, not when scrubbed."""
        purger = RecordingPurger()
        site = build_site(
            registry=PurgingRegistry(self.registry, purger),
            stores=self.stores,
            runner=self.runner,
            image_size_cap=1 << 30,
            default_project="admin",
            reactor=self.clock,
            delayed_delete=True,
        )
        client, agent = memory_client(site)
        image_id = self.active_image("v2")
        d = client.request("DELETE", f"{BASE}/v2/images/{image_id}")
        agent.flush()
        self.assertEqual(self.successResultOf(d).code, 204)
        self.assertEqual(purger.purged, [image_id])
        self.assertTrue(os.path.exists(self.store_root.child(image_id).path))


class ImmediateDeleteTests(SiteTestCase):
    """delayed_delete off (the default): the data goes with the delete."""

    def test_deleted_at_once(self) -> None:
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="x", disk_format="raw", container_format="bare")},
            data=b"data",
        )
        image_id = answer.json()["image"]["id"]
        self.request("DELETE", f"/v1/images/{image_id}")
        record = self.successResultOf(self.registry.get(image_id, include_deleted=True))
        self.assertEqual(record.status, images.DELETED)
        self.assertEqual(self.stored_files(), [])


@define
class UnavailableRegistry:
    """Answers pending_deletes with a 503, as a registry that is down."""

    def pending_deletes(self, older_than: float) -> Deferred[Any]:
        return fail(ServiceUnavailable("The image registry database is unavailable"))


class ScrubberTests(SynchronousTestCase):
    def test_registry_down(self) -> None:
        """A round whose registry does not answer scrubs nothing and does not fail."""
        stores = StoreMap({"file": FilesystemStore(self.mktemp(), SynchronousRunner())}, "file")
        scrubber = Scrubber(UnavailableRegistry(), stores, 0)  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(scrubber.scrub())), 0)
        self.flushLoggedErrors(ServiceUnavailable)

    def test_options(self) -> None:
        """Glance's names and defaults: delayed_delete off, scrub_time 0, wakeup_time 300."""
        config = load_config()
        self.assertEqual(
            (config.delayed_delete, config.scrub_time, config.wakeup_time), (False, 0, 300)
        )
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[DEFAULT]\ndelayed_delete = true\nscrub_time = 3600\nwakeup_time = 60\n")
        config = load_config(path)
        self.assertEqual(
            (config.delayed_delete, config.scrub_time, config.wakeup_time), (True, 3600, 60)
        )


class ScrubberTapTests(SynchronousTestCase):
    """C{twistd glance-scrubber}: options, the service tree, a round."""

    def options(self, config: str) -> ScrubberOptions:
        path = FilePath(self.mktemp())
        path.setContent(config.encode("utf-8"))
        options = ScrubberOptions()
        options.parseOptions(["--data-dir", self.mktemp(), "--config", path.path])
        return options

    def test_plugin(self) -> None:
        """The twistd plugin glance-scrubber points at glance_tx.scrubber_tap."""
        from twisted.plugins.glance_tx_plugin import glance_scrubber

        self.assertEqual(glance_scrubber.tapname, "glance-scrubber")
        self.assertEqual(glance_scrubber.module, "glance_tx.scrubber_tap")

    def test_service_tree(self) -> None:
        """Threads, registry, stores and the scrubber, every wakeup_time; nothing listens."""
        top = scrubber_tap.makeService(self.options("[DEFAULT]\nwakeup_time = 42\n"))
        self.assertEqual([child.name for child in top], ["threads", "registry", "stores", "scrubber"])
        self.assertEqual(top.getServiceNamed("scrubber").step, 42)

    def test_scrubs(self) -> None:
        """
        Started, the chain's first round scrubs what the API nodes left
        pending delete: the data goes, the record is deleted for good.
        """
        config = self.options("[DEFAULT]\nscrub_time = 0\n").config
        os.makedirs(config.data_dir)
        runner = SynchronousRunner()
        registry = self.successResultOf(
            Deferred.fromCoroutine(open_sql_registry(config.sql_connection, runner))
        )
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        data = FilePath(filesystem_datadir(config.store("file"), config.data_dir))
        data.makedirs()
        image_id = new_image_id()
        data.child(image_id).setContent(b"data")
        location = Location(FilesystemStore(data.path, runner).location_for(image_id), "file")
        self.successResultOf(
            registry.create(make_image(id=image_id, status=images.ACTIVE, locations=(location,)))
        )
        self.successResultOf(
            registry.update(image_id, ImageUpdate(fields={"status": images.PENDING_DELETE}))
        )

        reactor = MemoryReactorClock()
        pool = ThreadPool(minthreads=0, maxthreads=1)
        top = scrubber_tap.scrubber_chain(config, reactor, ThreadPoolService(reactor, pool), runner)
        top.startService()
        self.addCleanup(top.stopService)
        self.successResultOf(top.when_ready())
        self.assertFalse(os.path.exists(data.child(image_id).path))
        record = self.successResultOf(registry.get(image_id, include_deleted=True))
        self.assertEqual(record.status, images.DELETED)
        self.assertEqual(reactor.getDelayedCalls()[0].getTime(), config.wakeup_time)
