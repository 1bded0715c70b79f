"""
What the clients of every version of the Images API share: the HTTP
plumbing (headers, typed errors, timeouts, retries) and the moving of
image data (an upload streamed from a file, a download hashed, verified
and resumed as it arrives). L{glance_tx.client.api.Client} (v2) and
L{glance_tx.client.v1.V1Client} are this and their own paths and
documents.

Everything it needs is handed in: the treq L{HTTPClient} (so the caller
chooses the connection pool, TLS policy and, in tests, an in-memory
agent), the reactor (for the wait before a resumed download and for
timeouts) and a L{BlockingRunner} for file I/O and hashing, by default
the reactor's own thread pool. Nothing is imported globally.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import IO, Any, ClassVar, TypeVar, cast
from urllib.parse import quote, urlsplit

from attrs import Factory, define, field
from treq import collect, content
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionLost,
)
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from glance_tx import __version__
from glance_tx.bodies import BytesBody
from glance_tx.client.download import DataSink, new_hash, receive
from glance_tx.client.errors import (
    ClientError,
    ConnectionFailed,
    CorruptDownload,
    DownloadInterrupted,
    HTTPError,
    NoImageData,
    ServiceUnavailable,
    TimedOut,
    error_for,
)
from glance_tx.client.retry import RetryPolicy
from glance_tx.client.upload import FileBody, readable_length
from glance_tx.client.values import DownloadResult, ImageInfo
from glance_tx.store.describe import describe
from glance_tx.threads import BlockingRunner, ThreadPoolRunner

__all__ = ["BaseClient", "Progress", "Source", "query_value"]

#: The longest a download waits before resuming after a 503, whatever
#: its Retry-After says.
MAX_RETRY_AFTER = 60.0

#: The longest a metadata call waits before it is sent again after a 503:
#: one asking for longer is raised at once (with its C{retry_after}), as a
#: person or a script at the other end would rather know than hang.
MAX_RETRY_WAIT = 10.0

T = TypeVar("T")

#: An error body read past this is cut: the message is in the first bytes.
MAX_ERROR_BODY = 64 * 1024

#: How a connection fails before an answer arrives.
_UNREACHABLE = (
    ConnectError,
    ConnectionLost,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
#: Twisted's wrappers of the failures of one request, in C{reasons}.
_WRAPPERS = (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

Source = str | os.PathLike[str] | IO[bytes]
#: A transfer's progress callback: (bytes so far, bytes in all or None),
#: called on the reactor thread.
Progress = Callable[[int, int | None], object]


def query_value(value: Any) -> str:
    """A query parameter's value as Glance reads it (booleans as C{true}/C{false})."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _segment(value: str) -> str:
    """One path segment, every reserved character escaped."""
    return quote(value, safe="")


def _default_runner(client: BaseClient) -> BlockingRunner:
    """The reactor's own thread pool (a reactor with threads, as all real ones)."""
    reactor = cast(IReactorThreads, client.reactor)
    return ThreadPoolRunner(reactor, reactor.getThreadPool())



def _endpoint(url: str) -> str:
    """The image endpoint without a trailing slash or version segment."""
    url = url.rstrip("/")
    for version in ("/v1", "/v2"):
        url = url.removesuffix(version)
    return url


@define
class BaseClient:
    """
    An Images API at C{url} (the image endpoint, as the service catalog
    gives it: C{http://host:9292}, with or without a version segment), as
    the holder of C{token} (sent as C{X-Auth-Token}; never shown).
    """

    #: The path segment of the API's version.
    version: ClassVar[str] = "v2"

    url: str = field(converter=_endpoint)
    http: HTTPClient
    reactor: IReactorTime
    token: str | None = field(default=None, repr=False)
    runner: BlockingRunner = field(default=Factory(_default_runner, takes_self=True))
    #: Seconds to wait for each answer's head, the longest an upload may
    #: go without the server taking a block or answering, and the longest
    #: a download may go without a byte before it is resumed; None: no limit.
    timeout: float | None = None
    #: How many times one download resumes after a dropped connection.
    resumes: int = 3
    #: Seconds to wait before each resume.
    resume_delay: float = 1.0
    #: Bytes read from the file at a time by an upload.
    block_size: int = 1 << 20
    #: How many more times a request that may be repeated (GET, HEAD,
    #: PUT and DELETE of metadata, each page of a listing) is sent after
    #: a connection refused, reset or lost, or a 503 with a Retry-After
    #: (L{glance_tx.client.retry}); never a create, a patch or an upload.
    retries: int = 3
    #: Seconds before the first retry; each next one waits twice as long.
    retry_delay: float = 0.5


    # -- plumbing -------------------------------------------------------------

    @property
    def _server(self) -> str:
        """The server's scheme, host and port: what errors may name."""
        parsed = urlsplit(self.url)
        return f"{parsed.scheme}://{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")

    def _url(self, *segments: str) -> str:
        return "/".join([self.url, self.version, *(_segment(s) for s in segments)])

    def _headers(self, extra: Mapping[str, str] | None = None) -> Headers:
        headers = {"User-Agent": f"glance-tx-client/{__version__}", "Accept": "application/json"}
        if self.token is not None:
            headers["X-Auth-Token"] = self.token
        headers.update(extra or {})
        return Headers({name: [value] for name, value in headers.items()})

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        params: list[tuple[str, str]] | None = None,
        expect: tuple[int, ...] = (200,),
        timed: bool = True,
    ) -> IResponse:
        """
        Send one request; return its response (body unread) if its status
        is in C{expect}, else raise the typed error the server's answer
        stands for. With C{timed}, the answer's head must come within
        C{timeout}; without, the caller keeps time.
        """
        d = self.http.request(
            method,
            url,
            headers=self._headers(headers),
            params=params,
            data=body,
            unbuffered=True,
        )
        timer = None
        if timed and self.timeout is not None:
            timer = self.reactor.callLater(self.timeout, d.cancel)
        try:
            response: IResponse = await d
        except Exception as e:
            if timer is not None and not timer.active():
                raise TimedOut(
                    f"No answer from {self._server} within {self.timeout} seconds"
                ) from e
            if _cancelled(e):
                raise CancelledError() from e
            if isinstance(e, RequestGenerationFailed) and e.reasons:
                # The body failed (a file shorter than its size): say why.
                e.reasons[0].raiseException()
            if isinstance(e, _UNREACHABLE):
                raise ConnectionFailed(f"Could not reach {self._server}: {_why(e)}") from e
            raise
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        if response.code not in expect:
            raise await self._error(response)
        return response

    async def _error(self, response: IResponse) -> HTTPError:
        body = await _read_capped(response, MAX_ERROR_BODY)
        header = response.headers.getRawHeaders
        return error_for(
            response.code,
            body,
            content_type=_first(header(b"content-type")),
            retry_after=_first(header(b"retry-after")),
            now=self.reactor.seconds(),
        )

    async def _repeated(self, method: str, body: Any, attempt: Callable[[], Awaitable[T]]) -> T:
        """
        C{attempt()} (one request and the reading of its answer), tried
        again while L{RetryPolicy} allows, if the request may be repeated.
        """
        policy = RetryPolicy(self.retries, self.retry_delay, MAX_RETRY_WAIT)
        repeatable = policy.repeatable(method, body)
        tries = 0
        while True:
            try:
                return await attempt()
            except (ConnectionFailed, ServiceUnavailable) as e:
                tries += 1
                wait = policy.wait(tries, e) if repeatable else None
                if wait is None:
                    raise
            await deferLater(self.reactor, wait)

    async def _body(self, response: IResponse) -> bytes:
        """A (small) answer's whole body; a connection lost on the way is L{ConnectionFailed}."""
        try:
            return await content(response)
        except ResponseFailed as e:
            raise ConnectionFailed(f"Lost {self._server} mid-answer: {_why(e)}") from e

    async def _json(
        self,
        method: str,
        url: str,
        document: Any = None,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        params: list[tuple[str, str]] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        """
        A request with a JSON body (if any) answered with JSON (if any),
        sent again as L{_repeated} allows.
        """
        extra = dict(headers or {})
        body = None
        if document is not None:
            body = BytesBody(json.dumps(document).encode("utf-8"))
            extra["Content-Type"] = content_type

        async def once() -> Any:
            response = await self._request(
                method, url, headers=extra, body=body, params=params, expect=expect
            )
            data = await self._body(response)
            return json.loads(data) if data else None

        return await self._repeated(method, body, once)


    # -- data -------------------------------------------------------------------

    async def _send_data(
        self,
        method: str,
        url: str,
        source: Source,
        size: int | None,
        headers: Mapping[str, str],
        progress: Progress | None,
    ) -> bytes:
        """
        Send C{source} (a path, opened here, or a file object) as the body
        of C{method} C{url}, streamed; return the answer's body.
        """
        if isinstance(source, str | os.PathLike):
            file: IO[bytes] = await self.runner.run(open, os.fspath(source), "rb")
            try:
                return await self._send_file(method, url, file, size, headers, progress)
            finally:
                await self.runner.run(file.close)
        return await self._send_file(method, url, source, size, headers, progress)

    async def _send_file(
        self,
        method: str,
        url: str,
        file: IO[bytes],
        size: int | None,
        extra: Mapping[str, str],
        progress: Progress | None,
    ) -> bytes:
        if size is None:
            size = await self.runner.run(readable_length, file)
        headers = {"Content-Type": "application/octet-stream", **extra}
        # The timeout bounds a silence, not the upload: a long upload that
        # keeps sending is not cut, one the server stops taking is.
        idle: IDelayedCall | None = None
        request: Deferred[IResponse] | None = None

        def expire() -> None:
            nonlocal idle
            idle = None
            if request is not None:
                request.cancel()

        def sent(done: int, total: int | None) -> None:
            if idle is not None and self.timeout is not None:
                idle.reset(self.timeout)
            if progress is not None:
                progress(done, total)

        body = FileBody(file, self.runner, size, self.block_size, sent)
        request = Deferred.fromCoroutine(
            self._request(
                method, url, headers=headers, body=body, expect=(204, 201, 200), timed=False,
            )
        )
        if self.timeout is not None:
            idle = self.reactor.callLater(self.timeout, expire)
        try:
            response = await request
        except CancelledError:
            if idle is None and self.timeout is not None:
                raise TimedOut(
                    f"{self._server} took nothing and answered nothing for "
                    f"{self.timeout} seconds after {body.sent} bytes"
                ) from None
            raise
        finally:
            # The body's producer may still report a read that ends after
            # the answer (a 413 while it sends): that finds no timer.
            timer, idle = idle, None
            if timer is not None:
                timer.cancel()
        return await self._body(response)


    async def show(self, image_id: str) -> ImageInfo:
        """The image C{image_id}: what a download checks its data against."""
        raise NotImplementedError

    def _data_url(self, image_id: str) -> str:
        """Where image C{image_id}'s data is read from."""
        raise NotImplementedError

    async def download(
        self, image_id: str, dest: Source, *, progress: Progress | None = None
    ) -> DownloadResult:
        """
        Write image C{image_id}'s data to C{dest}: a path (written under a
        temporary name beside it, and moved into place only once whole and
        verified; removed on any failure) or a binary file object (written
        from its position; not closed).

        The data is hashed as it arrives and checked against the image's
        C{os_hash_value} (C{os_hash_algo}), or its md5 C{checksum} when it
        has none: L{CorruptDownload} if they differ. A connection that
        drops is resumed from the byte it stopped at, up to C{resumes}
        times (then L{DownloadInterrupted}), with C{If-Match} on the ETag
        the first answer carried, so that bytes of other data are never
        spliced on (L{PreconditionFailed} instead). A 503 (a store
        briefly away) is resumed from too, after its C{Retry-After} (at
        most L{MAX_RETRY_AFTER} seconds). C{progress} is called as bytes
        arrive, with the image's size.
        """
        image = await self.show(image_id)
        if isinstance(dest, str | os.PathLike):
            return await self._download_to_path(image, os.fspath(dest), progress)
        return await self._download(image, dest, progress)


    async def _download_to_path(
        self, image: ImageInfo, path: str, progress: Progress | None
    ) -> DownloadResult:
        file: IO[bytes] = await self.runner.run(_incoming, path)
        try:
            result = await self._download(image, file, progress)
            await self.runner.run(_commit, file, path)
        except Exception:
            await self.runner.run(_discard, file)
            raise
        return result

    async def _download(
        self, image: ImageInfo, file: IO[bytes], progress: Progress | None
    ) -> DownloadResult:
        algorithm, expected = _checked_hash(image)
        sink = DataSink(
            file,
            new_hash(algorithm) if algorithm else None,
            self.runner.serial(),
            progress=progress,
            total=image.size,
        )
        try:
            resumed = await self._receive_all(image, sink)
            await sink.drain()
        except Exception:
            # No write may still be running once the caller has the file back.
            await sink.settle()
            raise
        if image.size is not None and sink.received != image.size:
            raise CorruptDownload(image.id, "size", str(image.size), str(sink.received))
        actual = sink.hexdigest()
        if algorithm is not None and expected is not None and actual != expected.lower():
            raise CorruptDownload(image.id, algorithm, expected, str(actual))
        return DownloadResult(image.id, sink.received, algorithm, actual, resumed)

    async def _receive_all(self, image: ImageInfo, sink: DataSink) -> int:
        """
        Every byte of C{image}'s data into C{sink}, resuming after each
        dropped connection; returns how many times it resumed.
        """
        url = self._data_url(image.id)
        etag: str | None = None
        resumed = 0
        while True:
            headers: dict[str, str] = {"Accept": "application/octet-stream"}
            if sink.received:
                headers["Range"] = f"bytes={sink.received}-"
                if etag is not None:
                    headers["If-Match"] = etag
            try:
                response = await self._request("GET", url, headers=headers, expect=(200, 204, 206))
                if response.code == 204:
                    raise NoImageData(image.id)
                skip = self._resumed_at(response, sink.received, image)
                if etag is None:
                    etag = _strong(_first(response.headers.getRawHeaders(b"etag")))
                ended = await receive(response, sink, self.reactor, skip, self.timeout)
            except ConnectionFailed as e:
                reason, wait = str(e), self.resume_delay
            except ServiceUnavailable as e:
                # A store or registry behind the server that is briefly
                # away: worth waiting for, as long as the server asks.
                reason = str(e)
                wait = self.resume_delay if e.retry_after is None else e.retry_after
                wait = min(wait, MAX_RETRY_AFTER)
            else:
                if isinstance(ended, ResponseDone) or sink.received == image.size:
                    return resumed
                reason, wait = _why(ended), self.resume_delay
            if sink.failed:
                return resumed  # drain() raises why
            if resumed >= self.resumes:
                raise DownloadInterrupted(image.id, sink.received, resumed + 1, reason)
            resumed += 1
            await deferLater(self.reactor, wait)

    def _resumed_at(self, response: IResponse, received: int, image: ImageInfo) -> int:
        """
        How many bytes of C{response} to drop: none for a 206 from where we
        stopped, all we have for a 200 (a server that ignored the Range).
        """
        if response.code != 206:
            return received
        content_range = _first(response.headers.getRawHeaders(b"content-range")) or ""
        unit, _, spec = content_range.partition(" ")
        start = spec.split("-", 1)[0]
        if unit.strip().lower() != "bytes" or not start.isdigit() or int(start) != received:
            raise ClientError(
                f"Image {image.id}: asked for bytes from {received}, got {content_range!r}"
            )
        return 0




def _checked_hash(image: ImageInfo) -> tuple[str | None, str | None]:
    """The hash to check a download with: os_hash_algo's, else md5's, else none."""
    if image.os_hash_algo and image.os_hash_value:
        try:
            new_hash(image.os_hash_algo)
        except ValueError:
            pass  # an algorithm hashlib does not have: fall back to md5
        else:
            return image.os_hash_algo, image.os_hash_value
    if image.checksum:
        return "md5", image.checksum
    return None, None


def _incoming(path: str) -> IO[bytes]:
    """A new file beside C{path} for its data to arrive in."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, incoming = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return open(incoming, "wb")


def _commit(file: IO[bytes], path: str) -> None:
    """Flush and fsync the incoming file, then move it into place."""
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(file.name, path)


def _discard(file: IO[bytes]) -> None:
    file.close()
    try:
        os.unlink(file.name)
    except FileNotFoundError:
        pass


def _cancelled(error: BaseException) -> bool:
    """Whether a request failed because its Deferred was cancelled."""
    if isinstance(error, _WRAPPERS):
        return any(r.check(CancelledError) for r in error.reasons)
    return isinstance(error, CancelledError | ConnectingCancelledError)


def _why(error: BaseException) -> str:
    """What went wrong with a connection, in a line (no file names)."""
    if isinstance(error, _WRAPPERS) and error.reasons:
        error = error.reasons[0].value
    return describe(error)


def _strong(etag: str | None) -> str | None:
    """An ETag If-Match can name: a weak one never matches (RFC 9110 13.1.1)."""
    return None if etag is None or etag.startswith("W/") else etag


def _first(values: list[bytes] | None) -> str | None:
    return values[0].decode("latin-1") if values else None


async def _read_capped(response: IResponse, cap: int) -> bytes:
    """The first C{cap} bytes of a body; the rest is read and dropped."""
    parts: list[bytes] = []
    kept = 0

    def take(data: bytes) -> None:
        nonlocal kept
        if kept < cap:
            parts.append(data[: cap - kept])
            kept += len(parts[-1])

    try:
        await collect(response, take)
    except ResponseFailed:
        pass
    return b"".join(parts)
