"""
Downloads with C{os.sendfile} (L{glance_tx.api.sendfile}) over real
sockets: which requests take that path, the bytes and the log line they
give, a slow reader, a client that hangs up, and TLS, which does not.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import ssl
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from glance_tx.api import sendfile as sendfile_module
from glance_tx.config import load_config
from glance_tx.store import filesystem
from tests.live_server import listening_port, start_glance_tx
from tests.test_end_to_end import ServerTestCase
from tests.test_registry_http import write_tls_files

MiB = 1 << 20


def pattern(size: int) -> bytes:
    """Bytes whose every 4-byte word says where it is, so a shift shows."""
    return b"".join(i.to_bytes(4, "big") for i in range(size // 4))


class _Counting:
    """Wraps the module's sendfile, counting calls and bytes."""

    def __init__(self) -> None:
        self.calls = 0
        self.sent = 0
        self.real = sendfile_module.sendfile

    def __call__(self, out_fd: int, in_fd: int, offset: int, count: int) -> int:
        self.calls += 1
        sent = self.real(out_fd, in_fd, offset, count)
        self.sent += sent
        return sent


class _Loads:
    """
    Wraps the store's page-cache load, recording the ranges each thread
    finished loading (after C{delay} seconds, a slow disk) in order.
    """

    def __init__(self, real: Any, delay: float) -> None:
        self.real = real
        self.delay = delay
        self.ranges: list[tuple[int, int]] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, f: Any, offset: int, length: int) -> None:
        time.sleep(self.delay)
        self.real(f, offset, length)
        with self.lock:
            self.ranges.append((offset, length))
            self.threads.add(threading.get_ident())

    def loaded_at(self, end: int) -> int | None:
        """How many loads had finished when bytes up to C{end} were loaded."""
        with self.lock:
            covered = 0
            for i, (offset, length) in enumerate(self.ranges):
                if offset > covered:
                    return None
                covered = max(covered, offset + length)
                if covered >= end:
                    return i + 1
            return None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _Uploading:
    """Uploads an image through v1 and remembers the log lines."""

    base: str
    treq: Any

    def spy(self: Any) -> _Counting:
        counting = _Counting()
        self.patch(sendfile_module, "sendfile", counting)
        return counting

    def watch_loads(self: Any, delay: float = 0.0) -> _Loads:
        loads = _Loads(filesystem._load, delay)
        self.patch(filesystem, "_load", loads)
        return loads

    def watch_log(self: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    async def upload(self, data: bytes) -> str:
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={
                "Content-Type": "application/octet-stream",
                "x-image-meta-name": "sendfile",
                "x-image-meta-disk-format": "raw",
                "x-image-meta-container-format": "bare",
            },
            data=data,
        )
        assert response.code == 201, response.code
        image_id: str = (await response.json())["image"]["id"]
        # Its record read once, so the registry's change watch, opened at
        # the first read (glance_tx.registry.sql.fresh), is not counted
        # among the fds a download leaves.
        head = await self.treq.head(f"{self.base}/v1/images/{image_id}")
        assert head.code == 200, head.code
        return image_id


def _logged_lengths(events: list[dict[str, Any]], uri: str) -> list[int]:
    return [
        e["length"]
        for e in events
        if "length" in e and e.get("uri") == uri and e.get("method") == "GET"
    ]


class SendfileTests(_Uploading, ServerTestCase):
    size = 8 * MiB + 12  # not a whole number of steps or blocks

    async def test_whole_download_is_sent_with_sendfile(self) -> None:
        """
        A whole download over plain TCP is sent by os.sendfile, with every
        byte right, and its log line counts them all.
        """
        data = pattern(self.size)
        image_id = await self.upload(data)
        counting = self.spy()
        loads = self.watch_loads()
        events = self.watch_log()
        uri = f"/v2/images/{image_id}/file"
        response = await self.treq.get(f"{self.base}{uri}", unbuffered=True)
        self.assertEqual(response.code, 200)
        body = await response.content()
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(data).hexdigest())
        self.assertGreater(counting.calls, 0)
        self.assertEqual(counting.sent, len(data))
        self.assertEqual(_logged_lengths(events, uri), [len(data)])
        # The open loaded the first window; the rest, just written, is in
        # the page cache, so the sender sent it with no pool load.
        self.assertEqual(loads.ranges, [(0, filesystem.LOAD_WINDOW)])

    async def test_without_a_residency_probe_the_sender_loads_every_window(self) -> None:
        """
        Where neither cachestat nor mincore exists, every window after the
        first is loaded by a pool thread before it is sent.
        """
        self.patch(filesystem, "_cachestat", lambda: None)
        self.patch(filesystem, "_mincore", lambda: None)
        data = pattern(self.size)
        image_id = await self.upload(data)
        loads = self.watch_loads()
        response = await self.treq.get(f"{self.base}/v2/images/{image_id}/file")
        self.assertEqual(await response.content(), data)
        window = filesystem.LOAD_WINDOW
        self.assertEqual(loads.ranges, [(0, window), (window, len(data) - window)])

    async def test_resident_windows_skip_the_pool(self) -> None:
        """
        A window reported resident (this one and the next) is sent with no
        pool call; one that is not is loaded first.
        """
        window = filesystem.LOAD_WINDOW
        data = pattern(4 * window)
        image_id = await self.upload(data)
        probed: list[tuple[int, int]] = []

        def resident(fd: int, offset: int, length: int) -> bool:
            probed.append((offset, length))
            return offset != 2 * window  # the third window is cold

        self.patch(filesystem, "_resident", resident)
        loads = self.watch_loads()
        response = await self.treq.get(f"{self.base}/v2/images/{image_id}/file")
        self.assertEqual(await response.content(), data)
        self.assertEqual(probed, [(window, 2 * window), (2 * window, 2 * window), (3 * window, window)])
        self.assertEqual(loads.ranges, [(0, window), (2 * window, window)])

    async def test_sendfile_sends_only_what_a_pool_thread_loaded(self) -> None:
        """
        sendfile runs on the reactor thread, so it must never be the one to
        wait for the disk: every byte it is asked for was loaded into the
        page cache first, by a pool thread, even when the loads are slower
        than the socket (each one here takes 50 ms).
        """
        data = pattern(3 * filesystem.LOAD_WINDOW + 12)
        image_id = await self.upload(data)
        self.patch(filesystem, "_resident", lambda *_: False)  # a cold file
        loads = self.watch_loads(delay=0.05)
        reactor_thread = threading.get_ident()
        asked: list[tuple[int, int, bool]] = []
        sent: list[int] = []
        real = sendfile_module.sendfile

        def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
            asked.append((offset, count, threading.get_ident() == reactor_thread))
            sent.append(real(out_fd, in_fd, offset, count))
            return sent[-1]

        self.patch(sendfile_module, "sendfile", sendfile)
        response = await self.treq.get(f"{self.base}/v2/images/{image_id}/file")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), data)
        self.assertEqual(sum(sent), len(data))
        self.assertTrue(all(on_reactor for _, _, on_reactor in asked))
        self.assertEqual(loads.ranges[-1][0] + loads.ranges[-1][1], len(data))
        self.assertNotIn(reactor_thread, loads.threads)
        for offset, count, _ in asked:
            loaded_before = loads.loaded_at(offset + count)
            self.assertIsNotNone(loaded_before, (offset, count, loads.ranges))

    async def test_one_range_is_sent_with_sendfile(self) -> None:
        """A single range (a 206) is sent by os.sendfile too, from its offset."""
        data = pattern(self.size)
        image_id = await self.upload(data)
        counting = self.spy()
        response = await self.treq.get(
            f"{self.base}/v2/images/{image_id}/file",
            headers={"Range": "bytes=1001-5000000"},
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(await response.content(), data[1001:5000001])
        self.assertEqual(counting.sent, 5000000 - 1000)

    async def test_multipart_ranges_stream_from_the_store(self) -> None:
        """
        Several ranges (multipart/byteranges) interleave part heads with
        the bytes, so they take the store's producer: no sendfile.
        """
        data = pattern(self.size)
        image_id = await self.upload(data)
        counting = self.spy()
        response = await self.treq.get(
            f"{self.base}/v2/images/{image_id}/file",
            headers={"Range": "bytes=0-9,2000000-2000099"},
        )
        self.assertEqual(response.code, 206)
        body = await response.content()
        self.assertIn(data[:10], body)
        self.assertIn(data[2000000:2000100], body)
        self.assertEqual(counting.calls, 0)

    async def test_connection_kept_alive_after_sendfile(self) -> None:
        """
        After a body sent by sendfile the HTTP/1.1 connection serves the
        next request: the body ended exactly at its Content-Length.
        """
        data = pattern(3 * MiB)
        image_id = await self.upload(data)
        counting = self.spy()
        request = f"GET /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        bodies = await deferToThread(_two_on_one_connection, self.port, request)
        self.assertEqual(bodies, [data, data])
        self.assertEqual(counting.sent, 2 * len(data))

    async def test_slow_reader_pauses_sendfile(self) -> None:
        """
        A client that stops reading holds the sender on the socket's
        buffers: far less than the image is sent, and it is not retried in
        a loop (a few calls, not one per reactor turn); once the client
        reads again the rest comes, every byte right.
        """
        data = pattern(32 * MiB)
        image_id = await self.upload(data)
        counting = self.spy()
        client = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(
            f"GET /v2/images/{image_id}/file HTTP/1.0\r\nHost: x\r\n\r\n".encode()
        )
        # Until the socket's buffers are full (a loaded machine is slow to fill them).
        previous = -1
        for _ in range(50):
            await deferLater(reactor, 0.2, lambda: None)
            if counting.sent and counting.sent == previous:
                break
            previous = counting.sent
        sent_while_stalled, calls_while_stalled = counting.sent, counting.calls
        await deferLater(reactor, 0.5, lambda: None)
        self.assertLess(counting.sent, 16 * MiB)
        self.assertEqual(counting.sent, sent_while_stalled)
        self.assertLess(counting.calls - calls_while_stalled, 3)
        received = await deferToThread(_read_all, client)
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertEqual(body, data)

    async def test_hang_up_mid_transfer_closes_everything(self) -> None:
        """
        A client that hangs up mid-download stops the sender: its
        descriptor and the file are closed (no fd is left open), and the
        request is logged as lost with the bytes sent so far.
        """
        data = pattern(32 * MiB)
        image_id = await self.upload(data)
        counting = self.spy()
        events = self.watch_log()
        await deferLater(reactor, 0.2, lambda: None)
        before = _open_fds()
        client = socket.create_connection(("127.0.0.1", self.port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        uri = f"/v2/images/{image_id}/file"
        client.sendall(f"GET {uri} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        while counting.calls == 0:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertGreater(_open_fds(), before)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()  # a reset
        for _ in range(100):
            await deferLater(reactor, 0.05, lambda: None)
            if _open_fds() <= before and _logged_lengths(events, uri):
                break
        self.assertEqual(_open_fds(), before)
        (logged,) = _logged_lengths(events, uri)
        self.assertLess(logged, len(data))
        self.assertEqual(logged, counting.sent)
        # The sender let go of the request before it was finished (the
        # soak run logged "Producer was not unregistered" on hang-ups).
        failures = [e["log_failure"] for e in events if "log_failure" in e]
        self.assertEqual([f for f in failures if f.check(RuntimeError)], [])


def _two_on_one_connection(port: int, request: bytes) -> list[bytes]:
    bodies = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        stream = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(request)
            length = None
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            assert length is not None
            bodies.append(stream.read(length))
    return bodies


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class TLSTests(_Uploading, TestCase):
    """Over TLS the bytes must be encrypted in user space: no sendfile."""

    timeout = 120

    async def test_tls_download_streams_from_the_store(self) -> None:
        """A download over TLS has every byte right, and no sendfile call."""
        directory = FilePath(self.mktemp())
        directory.makedirs()
        ca, key, cert = write_tls_files(directory)
        config = load_config(
            None,
            endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            data_dir=os.path.abspath(self.mktemp()),
        )
        service = await start_glance_tx(config, self.addCleanup, "tls")
        port = listening_port(service)
        data = pattern(4 * MiB)
        image_id = await deferToThread(_tls_upload, port, ca, data)
        counting = self.spy()
        received = await deferToThread(
            _tls_request, port, ca, f"GET /v2/images/{image_id}/file HTTP/1.0\r\n\r\n".encode()
        )
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertEqual(body, data)
        self.assertEqual(counting.calls, 0)


def _tls_request(port: int, ca: bytes, request: bytes) -> bytes:
    context = ssl.create_default_context(cadata=ca.decode("ascii"))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            chunks = []
            while True:
                try:
                    chunk = tls.recv(1 << 20)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)


def _tls_upload(port: int, ca: bytes, data: bytes) -> str:
    import json

    head = (
        "POST /v1/images HTTP/1.0\r\nContent-Type: application/octet-stream\r\n"
        "x-image-meta-name: tls\r\nx-image-meta-disk-format: raw\r\n"
        f"x-image-meta-container-format: bare\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    received = _tls_request(port, ca, head.encode() + data)
    image_id: str = json.loads(received.partition(b"\r\n\r\n")[2])["image"]["id"]
    return image_id





class GoneBeforeStartTests(TestCase):
    def test_client_gone_while_opening_closes_the_file(self) -> None:
        """
        A client that went away while the file was being opened: the
        sender writes nothing, closes the file and fires with None.
        """
        from twisted.internet.defer import succeed
        from twisted.internet.testing import MemoryReactor
        from twisted.web.test.requesthelper import DummyRequest

        from glance_tx.store.interface import FileRange

        closed = []
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"data")
        f = open(path, "rb")  # noqa: SIM115 -- the sender closes it
        self.addCleanup(f.close)

        def close() -> Any:
            closed.append(True)
            f.close()
            return succeed(None)

        request = DummyRequest([b""])
        request._disconnected = True
        done = sendfile_module.send_file(MemoryReactor(), request, FileRange(f, 0, 4, close))
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(closed, [True])
        self.assertEqual(request.written, [])


class LoadTests(TestCase):
    """L{filesystem._load}: the page-cache load the sender waits for."""

    def _cold_file(self, size: int) -> Any:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(pattern(size))
            f.flush()
            os.fsync(f.fileno())
        f = open(path, "rb", buffering=0)  # noqa: SIM115 -- closed by the cleanup
        self.addCleanup(f.close)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return f

    def test_load_puts_the_range_in_the_page_cache(self) -> None:
        """
        After a load, reading the range does not need the disk (a read
        with RWF_NOWAIT, which fails with EAGAIN where it would wait, gets
        every byte), and a range past the end of the file just stops.
        """
        f = self._cold_file(2 * MiB)
        filesystem._load(f, MiB, 2 * MiB)
        buffer = bytearray(MiB)
        self.assertEqual(os.preadv(f.fileno(), [buffer], MiB, os.RWF_NOWAIT), MiB)
        self.assertEqual(bytes(buffer), pattern(2 * MiB)[MiB:])

    def test_load_reads_where_sendfile_to_dev_null_is_refused(self) -> None:
        """A kernel that refuses sendfile to /dev/null gets the range read instead."""
        f = self._cold_file(MiB)
        reads = []
        real_pread = os.pread

        def refused(*args: Any) -> int:
            raise OSError(errno.EINVAL, "no")

        def pread(fd: int, length: int, offset: int) -> bytes:
            reads.append((offset, length))
            return real_pread(fd, length, offset)

        self.patch(filesystem.os, "sendfile", refused)
        self.patch(filesystem.os, "pread", pread)
        filesystem._load(f, 0, 2 * MiB)
        self.assertEqual(reads, [(0, MiB), (MiB, MiB)])


class ResidentTests(TestCase):
    """L{filesystem._resident}: whether a window is in the page cache."""

    def _clean_file(self, size: int) -> Any:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(pattern(size))
            f.flush()
            os.fsync(f.fileno())  # clean pages, which DONTNEED drops
        f = open(path, "rb", buffering=0)  # noqa: SIM115 -- closed by the cleanup
        self.addCleanup(f.close)
        return f

    def _check(self) -> None:
        f = self._clean_file(4 * MiB)
        if filesystem._cachestat() is not None and filesystem._cached_pages(f.fileno(), 0, 1) is None:
            self.skipTest("no cachestat (Linux < 6.5)")
        self.assertTrue(filesystem._may_probe(f))
        self.assertTrue(filesystem._resident(f.fileno(), 12345, 3 * MiB))
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        self.assertFalse(filesystem._resident(f.fileno(), 0, 4 * MiB))
        os.pread(f.fileno(), 4096, 3 * MiB)
        self.assertTrue(filesystem._resident(f.fileno(), 3 * MiB, 4096))
        self.assertFalse(filesystem._resident(f.fileno(), 3 * MiB - 4096, 8192))

    def test_cachestat(self) -> None:
        """A just-written file is resident; after DONTNEED it is not."""
        self._check()

    def test_mincore(self) -> None:
        """The same, told by mincore where there is no cachestat."""
        self.patch(filesystem, "_cachestat", lambda: None)
        self._check()

    def test_neither(self) -> None:
        """Without cachestat or mincore nothing is resident: every window is loaded."""
        self.patch(filesystem, "_cachestat", lambda: None)
        self.patch(filesystem, "_mincore", lambda: None)
        f = self._clean_file(MiB)
        self.assertFalse(filesystem._resident(f.fileno(), 0, MiB))

    def test_not_probed_for_a_file_of_another_user(self) -> None:
        """mincore says "resident" for another user's files: not asked."""
        f = self._clean_file(MiB)
        self.patch(filesystem.os, "geteuid", lambda: os.fstat(f.fileno()).st_uid + 1)
        self.assertFalse(filesystem._may_probe(f))
