"""
Faults of the machinery under the API, made for real: a store whose disk
fills up mid-upload (a small tmpfs this test mounts), one that turns
read-only or unreadable, a SQLite database locked or moved away, a
PostgreSQL server stopped or silent (behind a relay the test cuts). Each must end in a
clear answer, the image in its truthful state, no partial data left, and
service that goes on once the fault is mended.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from glance_tx.config import HEALTHCHECK_PROBE_INTERVAL
from glance_tx.errors import StorageFull, StoreError, os_error
from glance_tx.images import ImageQuery
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import Answer, SiteTestCase
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.mounts import remount, tmpfs
from tests.tcp_relay import TCPRelay
from tests.test_api_v1 import OCTET, ErrorShapeMixin, meta
from tests.test_registry_sql import create_database, drop_database, postgres_admin_url

T = TypeVar("T")
MiB = 1024 * 1024

#: Glance's message for glance_store's StorageFull.
FULL = "Image storage media is full: There is not enough disk space on the image storage media."


def after_probe_interval(case: SiteTestCase) -> int:
    """
    The status of a health check asked once the last one's probe no longer
    answers (C{healthcheck_probe_interval} later on the site's clock), so
    that it probes the registry and the stores as they are now.
    """
    cast(MemoryReactorClock, case.site.reactor).advance(HEALTHCHECK_PROBE_INTERVAL)
    return case.request("GET", "/healthcheck").code


class DiskFullTests(ErrorShapeMixin, SiteTestCase):
    """The filesystem store on a 2 MiB tmpfs; uploads of 3 MiB fill it."""

    def make_stores(self) -> StoreMap:
        self.disk = tmpfs(self, "2m")
        self.store_root = self.disk.child("images")
        self.store_root.makedirs()
        self.store = FilesystemStore(self.store_root.path, self.runner)
        return StoreMap({"file": self.store}, "file")

    def files_on_disk(self) -> list[str]:
        return sorted(p.path for p in self.disk.walk() if p.isfile())

    def test_v1_upload_fills_the_disk(self) -> None:
        """
        v1: a POST whose body does not fit gets 413 with Glance's message;
        the image is killed (as Glance's safe_kill), the partial file is
        gone, and an upload that fits then succeeds.
        """
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="big", disk_format="raw", container_format="bare")},
            data=b"x" * (3 * MiB),
        )
        self.assertError(answer, 413, FULL)
        self.assertEqual(self.files_on_disk(), [])
        (big,) = self.successResultOf(self.registry.list(ImageQuery(exclude_statuses=frozenset())))
        self.assertEqual(big.status, "killed")

        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="small", disk_format="raw", container_format="bare")},
            data=b"y" * MiB,
        )
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json()["image"]["status"], "active")
        self.assertEqual(len(self.files_on_disk()), 1)

    def test_v2_upload_fills_the_disk(self) -> None:
        """
        v2: a PUT /file that does not fit gets 413 with Glance's message,
        the image goes back to queued (Glance's _restore), the partial
        file is gone, and the same image then takes data that fits.
        """
        created = self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"disk_format": "raw", "container_format": "bare"}',
        )
        image_id = created.json()["id"]
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"x" * (3 * MiB))
        self.assertError(answer, 413, FULL)
        self.assertEqual(self.files_on_disk(), [])
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").json()["status"], "queued")

        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"y" * MiB)
        self.assertEqual(answer.code, 204, answer.body)
        shown = self.request("GET", f"/v2/images/{image_id}").json()
        self.assertEqual((shown["status"], shown["size"]), ("active", MiB))
        download = self.request("GET", f"/v2/images/{image_id}/file")
        self.assertEqual(download.body, b"y" * MiB)



class OSErrorTests(SynchronousTestCase):
    """L{os_error}: the one mapping of a store's OS errors to answers."""

    def test_full(self) -> None:
        """ENOSPC, EDQUOT and EFBIG are StorageFull: 413, Glance's message."""
        for number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            error = os_error(OSError(number, os.strerror(number), "/secret/path"), "Writing")
            self.assertIsInstance(error, StorageFull)
            self.assertEqual((error.status, error.message), (413, FULL))

    def test_other(self) -> None:
        """Anything else is a 503 StoreError without the file name."""
        error = os_error(OSError(errno.EROFS, os.strerror(errno.EROFS), "/secret/path"), "Writing")
        self.assertIsInstance(error, StoreError)
        self.assertEqual(error.status, 503)
        self.assertEqual(error.message, "Writing: Read-only file system")


class ReadOnlyStoreTests(ErrorShapeMixin, SiteTestCase):
    """
    The filesystem store on a tmpfs remounted read-only (EROFS; as root,
    permission bits would not stop a write), then read-write again.
    """

    def make_stores(self) -> StoreMap:
        self.disk = tmpfs(self, "4m")
        self.store_root = self.disk.child("images")
        self.store_root.makedirs()
        self.store = FilesystemStore(self.store_root.path, self.runner)
        return StoreMap({"file": self.store}, "file")

    def assertUnavailable(self, answer: Answer, fragment: str) -> None:
        self.assertError(answer, 503, fragment)
        self.assertEqual(answer.header("Retry-After"), "5")

    def test_read_only_then_mended(self) -> None:
        """
        While the store is read-only, v1 and v2 uploads get a 503 JSON
        answer with Retry-After naming the cause, their images end killed
        (v1) or queued (v2), data already stored is still served, and the
        health check says the store is down. Once the store is writable
        again, uploads work with no restart.
        """
        stored = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="before", disk_format="raw", container_format="bare")},
            data=b"kept" * 1000,
        ).json()["image"]
        remount(self, self.disk, "ro")
        self.addCleanup(remount, self, self.disk, "rw")

        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="v1", disk_format="raw", container_format="bare")},
            data=b"x" * 1000,
        )
        self.assertUnavailable(answer, "Read-only file system")
        v1 = [
            image
            for image in self.successResultOf(
                self.registry.list(ImageQuery(exclude_statuses=frozenset()))
            )
            if image.name == "v1"
        ]
        self.assertEqual([image.status for image in v1], ["killed"])

        created = self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"disk_format": "raw", "container_format": "bare"}',
        )
        image_id = created.json()["id"]
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"y" * 1000)
        self.assertUnavailable(answer, "Read-only file system")
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").json()["status"], "queued")

        self.assertEqual(self.request("GET", f"/v1/images/{stored['id']}").body, b"kept" * 1000)
        health = self.request("GET", "/healthcheck")
        self.assertEqual(health.code, 503)
        self.assertIn("Read-only file system", health.json()["checks"]["store:file"])

        remount(self, self.disk, "rw")
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"y" * 1000)
        self.assertEqual(answer.code, 204, answer.body)
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file").body, b"y" * 1000)
        self.assertEqual(after_probe_interval(self), 200)


@define
class UnreadableRunner:
    """
    Runs calls synchronously; while C{error} is set, a call of one of
    C{failing} fails instead as the store's own code fails on that
    L{OSError} (L{os_error}, as its C{except OSError} clauses do). As
    root, an unreadable directory cannot be made with permission bits, so
    EACCES is injected here.
    """

    failing: frozenset[str]
    error: OSError | None = None

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        error = self.error
        if error is not None and f.__name__ in self.failing:

            def broken() -> T:
                raise os_error(error, "Could not read image data") from error

            return SynchronousRunner().run(broken)
        return SynchronousRunner().run(f, *args, **kwargs)

    def serial(self) -> UnreadableRunner:
        return self


class UnreadableStoreTests(ErrorShapeMixin, SiteTestCase):
    """The store's directory cannot be read (EACCES on open)."""

    def make_stores(self) -> StoreMap:
        self.faults = UnreadableRunner(frozenset({"_open_for_read"}))
        self.store = FilesystemStore(self.store_root.path, self.faults)
        return StoreMap({"file": self.store}, "file")

    def test_unreadable_then_mended(self) -> None:
        """
        A download from an unreadable store is a 503 JSON answer with
        Retry-After, not a 500 or a 404; once readable, the data is served.
        """
        created = self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"disk_format": "raw", "container_format": "bare"}',
        )
        image_id = created.json()["id"]
        self.assertEqual(
            self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"z" * 100).code, 204
        )
        self.faults.error = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/x")
        for path in (f"/v2/images/{image_id}/file", f"/v1/images/{image_id}"):
            answer = self.request("GET", path)
            self.assertError(answer, 503, "Permission denied")
            self.assertEqual(answer.header("Retry-After"), "5")
            # The headers prepared for the data do not describe the error.
            self.assertIsNone(answer.header("Content-MD5"))
            self.assertNotEqual(answer.header("Content-Length"), "100")
        self.faults.error = None
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file").body, b"z" * 100)


class SQLiteFaultTests(ErrorShapeMixin, SiteTestCase):
    """
    The registry on a SQLite file, locked by another process's connection
    or moved away, then released or put back.
    """

    #: A short busy timeout, so that a locked database is a quick 503.
    busy_timeout = 0.2

    def open_registry(self) -> SQLRegistry:
        directory = FilePath(self.mktemp())
        directory.makedirs()
        self.database = directory.child("glance.sqlite").path
        return self.successResultOf(
            Deferred.fromCoroutine(
                open_sql_registry(
                    f"sqlite:///{self.database}",
                    self.runner,
                    engine_options={"connect_args": {"timeout": self.busy_timeout}},
                )
            )
        )

    def create(self) -> Answer:
        return self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"disk_format": "raw", "container_format": "bare"}',
        )

    def assertUnavailable(self, answer: Answer) -> None:
        self.assertError(answer, 503, "The image registry database is unavailable")
        self.assertEqual(answer.header("Retry-After"), "5")

    def test_locked_then_released(self) -> None:
        """
        While another connection holds the database's write lock, a write
        is a 503 with Retry-After after the busy timeout, not a hang;
        reads go on (WAL). Once the lock is released, writes work again.
        """
        image_id = self.create().json()["id"]
        holder = sqlite3.connect(self.database, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        self.assertUnavailable(self.create())
        self.assertLess(time.monotonic() - started, 5 * self.busy_timeout + 1)
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").code, 200)
        holder.execute("ROLLBACK")
        self.assertEqual(self.create().code, 201)

    def test_file_gone_then_back(self) -> None:
        """
        With the database file moved away, reads and writes are a 503 with
        Retry-After (not an empty database made in its place, nor writes
        to the file no one will see); once it is back, service resumes
        with the records it held. The health check, 200 before, says 503
        once the probe interval has passed, and 200 again after it.
        """
        image_id = self.create().json()["id"]
        self.assertEqual(self.request("GET", "/healthcheck").code, 200)
        away = self.mktemp()
        os.makedirs(away)
        names = [n for n in os.listdir(os.path.dirname(self.database)) if n.startswith("glance.sqlite")]
        for name in names:
            os.rename(os.path.join(os.path.dirname(self.database), name), os.path.join(away, name))
        self.assertUnavailable(self.request("GET", f"/v2/images/{image_id}"))
        self.assertUnavailable(self.create())
        self.assertEqual(after_probe_interval(self), 503)
        self.assertFalse(os.path.exists(self.database))
        for name in names:
            os.rename(os.path.join(away, name), os.path.join(os.path.dirname(self.database), name))
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").code, 200)
        self.assertEqual(self.create().code, 201)
        self.assertEqual(after_probe_interval(self), 200)


class PostgresFaultTests(ErrorShapeMixin, SiteTestCase):
    """
    The registry on PostgreSQL through a relay the test cuts: the server
    seems stopped (connections reset, the port closed) or silent (it
    accepts and never answers), then back.
    """

    connect_timeout = 1

    def open_registry(self) -> SQLRegistry:
        admin_url = postgres_admin_url(self)
        url = create_database(admin_url)
        self.addCleanup(drop_database, admin_url, url)
        self.relay = TCPRelay((admin_url.host or "127.0.0.1", admin_url.port or 5432)).start()
        self.addCleanup(self.relay.cut)
        return self.successResultOf(
            Deferred.fromCoroutine(
                open_sql_registry(
                    url.set(host="127.0.0.1", port=self.relay.port),
                    self.runner,
                    engine_options={"connect_args": {"connect_timeout": self.connect_timeout}},
                )
            )
        )

    def create(self) -> Answer:
        return self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"disk_format": "raw", "container_format": "bare"}',
        )

    def assertUnavailable(self, answer: Answer) -> None:
        self.assertError(answer, 503, "The image registry database is unavailable")
        self.assertEqual(answer.header("Retry-After"), "5")

    def assertResumes(self, image_id: str) -> None:
        self.relay.mend()
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").code, 200)
        self.assertEqual(self.create().code, 201)
        self.assertEqual(after_probe_interval(self), 200)

    def test_stopped_then_back(self) -> None:
        """
        With the server gone (its connections reset, its port closed),
        reads, writes and the health check answer 503 with Retry-After at
        once; once it is back, service resumes with no restart.
        """
        image_id = self.create().json()["id"]
        self.relay.cut()
        started = time.monotonic()
        self.assertUnavailable(self.request("GET", f"/v2/images/{image_id}"))
        self.assertUnavailable(self.create())
        self.assertEqual(self.request("GET", "/healthcheck").code, 503)
        self.assertLess(time.monotonic() - started, 3)
        self.assertResumes(image_id)

    def test_silent_then_back(self) -> None:
        """
        A server that accepts connections and never answers is a 503
        after the connect timeout, not a hang; then service resumes.
        """
        image_id = self.create().json()["id"]
        self.relay.black_hole()
        started = time.monotonic()
        self.assertUnavailable(self.request("GET", f"/v2/images/{image_id}"))
        self.assertLess(time.monotonic() - started, 3 * self.connect_timeout + 2)
        self.assertResumes(image_id)


def _upload_until_answered(port: int, path: str, size: int) -> tuple[int, bytes]:
    """
    PUT C{size} bytes to C{path} over a plain socket, a chunk at a time,
    stopping as soon as the server answers; return how many bytes were
    sent and the answer. Blocking: run it on a thread.
    """
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        chunk = b"x" * (64 * 1024)
        while sent < size:
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                break
            try:
                s.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        answer = b""
        try:
            while data := s.recv(65536):
                answer += data
        except OSError:
            pass
    return sent, answer


class DiskFullLiveTests(TestCase):
    """A real glance-tx over TCP whose store is a 2 MiB tmpfs."""

    timeout = 60

    def test_answered_before_the_body_ends(self) -> Deferred[None]:
        """
        A 4 GiB upload to a 2 MiB disk is answered 413, with Glance's
        message, long before the client has sent its body (the bytes that
        reach the server while the partial data is removed and the image
        marked are dropped), and the image is queued again.
        """
        disk = tmpfs(self, "2m")

        async def run() -> None:
            config = live_config(
                self, f"[file]\nfilesystem_store_datadir = {disk.child('images').path}\n"
            )
            service = await start_glance_tx(config, self.addCleanup, "disk-full")
            port = listening_port(service)
            client = settled_client(self)
            response = await client.post(
                f"http://127.0.0.1:{port}/v2/images",
                json={"disk_format": "raw", "container_format": "bare"},
            )
            image_id = (await response.json())["id"]
            size = 4096 * MiB
            sent, answer = await deferToThread(
                _upload_until_answered, port, f"/v2/images/{image_id}/file", size
            )
            self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
            self.assertIn(FULL.encode(), answer)
            self.assertLess(sent, size // 4)
            response = await client.get(f"http://127.0.0.1:{port}/v2/images/{image_id}")
            self.assertEqual((await response.json())["status"], "queued")
            self.assertEqual([p for p in disk.walk() if p.isfile()], [])

        return Deferred.fromCoroutine(run())
