"""
Invalidation: telling caching proxies (Varnish, Squid) to forget an image.

When an image is deleted, deactivated or made less visible, what a proxy
holds for it must go: a deleted image must not stay downloadable through a
proxy. L{Purger} sends an HTTP C{PURGE} for each of the image's URLs to each
configured proxy, off the request path, retrying with backoff, and sends
them all again a few seconds later for the fills that were in flight.
L{glance_tx.registry.purging.PurgingRegistry} decides when.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import quote

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import Interface, implementer

log = Logger()

PURGE = "PURGE"


def purge_paths(image_id: str) -> tuple[str, ...]:
    """
    The paths, on a proxy, where anything about image C{image_id} may be
    cached: see L{Purger}.
    """
    image = quote(image_id, safe="")
    return (
        # Image data (v1 GET; v1 HEAD is the metadata at the same URL).
        f"/v1/images/{image}",
        f"/images/{image}",
        # Image data (v2).
        f"/v2/images/{image}/file",
        # Image metadata (v2 JSON).
        f"/v2/images/{image}",
        # Listings that may include the image.
        "/v1/images/detail",
        "/images/detail",
        "/v1/images",
        "/images",
        "/v2/images",
    )


class IPurger(Interface):
    """Makes caching proxies forget an image."""

    def purge(image_id: str) -> Deferred[None]:
        """
        Start purging everything the proxies may hold for the image and
        return at once. The Deferred fires (never fails) when every PURGE
        of this first round has succeeded or been given up; callers need
        not wait for it. A provider may purge again later on its own.
        """


class HTTPRequester(Protocol):
    """
    What the purger needs of an HTTP client: C{treq.client.HTTPClient}, or
    C{treq.testing.StubTreq} in tests.
    """

    @property
    def request(self) -> Callable[..., Deferred[Any]]: ...


def _tuple(urls: Iterable[str]) -> tuple[str, ...]:
    return tuple(urls)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@implementer(IPurger)
@define
class Purger:
    """
    Sends C{PURGE} requests to caching proxies, asynchronously, with retries.

    For image C{ID}, a C{PURGE} goes to each base URL in C{proxies} (for
    example C{http://127.0.0.1:6081}) followed by each of these paths (see
    L{purge_paths}), nine requests per proxy::

        /v1/images/ID          v1 data (GET) and metadata (HEAD)
        /images/ID             the same, unversioned
        /v2/images/ID/file     v2 data
        /v2/images/ID          v2 metadata (JSON)
        /v1/images/detail      v1 detailed listing
        /images/detail         the same, unversioned
        /v1/images             v1 listing
        /images                the same, unversioned
        /v2/images             v2 listing

    For a proxy's configuration:

      - The request line carries the path only, with no query string: a
        listing cached under C{/v2/images?limit=10} is not matched exactly.
        A proxy that caches listings should treat a C{PURGE} of a listing
        path as a ban of that path with any query string (Varnish: C{ban()}
        on C{req.url}), or not cache listings at all.
      - The C{Host} header is the proxy's own authority from
        C{purge_urls} (say C{127.0.0.1:6081}), not the name clients use,
        so the cache key must not depend on C{Host} (or the proxy must
        normalize it) for the C{PURGE} to hit.
      - A C{PURGE} should drop every variant (every C{Vary} value) of the
        URL, as Varnish's C{return (purge)} does.

    A response of 2xx (purged) or 404 (nothing cached) counts as done.
    Anything else, a connection failure, or no complete response within
    C{request_timeout} seconds is logged as a warning and retried after
    C{first_delay}, then twice as long each time (at most C{max_delay}),
    until C{attempts} attempts have been made; then the give-up is logged
    as an error. Each URL on each proxy is retried on its own. With the
    defaults (5 attempts): retries 1, 2, 4 and 8 seconds after the
    previous failure.

    A proxy may be filling its cache from glance-tx when the C{PURGE}
    arrives -- a download that started before the change -- and store the
    image once the fill ends, after the purge. So, with C{repeat_delay}
    above 0, every URL is purged again in a second round C{repeat_delay}
    seconds after L{purge} was called (retried the same way): a fill that
    has ended by then is gone too. Purging an image whose second round is
    still waiting pushes that round back rather than adding another.

    L{stop} ends the purges in flight, and drops the second rounds still
    waiting, when the service stops.
    """

    client: HTTPRequester
    clock: IReactorTime
    proxies: tuple[str, ...] = field(converter=_tuple)
    attempts: int = 5
    first_delay: float = 1.0
    max_delay: float = 60.0
    request_timeout: float = 10.0
    #: Seconds after a purge to purge again (0: no second round).
    repeat_delay: float = 0.0
    _pending: set[Deferred[None]] = field(factory=set, init=False)
    _repeats: dict[str, IDelayedCall] = field(factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _cancelled: bool = field(default=False, init=False)

    def urls(self, image_id: str) -> list[str]:
        """Every URL L{purge} sends a C{PURGE} to, proxy by proxy."""
        paths = purge_paths(image_id)
        return [proxy.rstrip("/") + path for proxy in self.proxies for path in paths]

    @property
    def pending(self) -> int:
        """How many URLs are still being purged (including waits to retry)."""
        return len(self._pending)

    def purge(self, image_id: str) -> Deferred[None]:
        if not self.proxies:
            return succeed(None)
        if self._stopping:
            log.error(
                "Not purging image {image_id} from caching proxies: shutting down",
                image_id=image_id,
            )
            return succeed(None)
        if self.repeat_delay > 0:
            waiting = self._repeats.get(image_id)
            if waiting is not None:
                waiting.reset(self.repeat_delay)
            else:
                self._repeats[image_id] = self.clock.callLater(
                    self.repeat_delay, self._repeat, image_id
                )
        return self._round(image_id)

    def _repeat(self, image_id: str) -> None:
        del self._repeats[image_id]
        self._round(image_id)

    def _round(self, image_id: str) -> Deferred[None]:
        """Purge every URL of the image; fires when all are done."""
        tasks = [self._start(image_id, url) for url in self.urls(image_id)]
        return DeferredList(tasks, consumeErrors=True).addCallback(lambda _: None)

    def stop(self, grace: float = 0.0) -> Deferred[None]:
        """
        Start no more purges and drop the second rounds still waiting,
        logging each; give those in flight C{grace} seconds to end
        (retries included), then cancel the rest, logging each as
        abandoned. Fires when none is left.
        """
        self._stopping = True
        for image_id, waiting in self._repeats.items():
            waiting.cancel()
            log.warn(
                "Second PURGE round for image {image_id} not sent: shutting down",
                image_id=image_id,
            )
        self._repeats.clear()
        pending = list(self._pending)
        if not pending:
            return succeed(None)
        done = DeferredList(pending, consumeErrors=True)
        if grace <= 0:
            self._cancel_all()
            return done.addCallback(lambda _: None)
        timer: IDelayedCall = self.clock.callLater(grace, self._cancel_all)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(finished)

    def _cancel_all(self) -> None:
        self._cancelled = True
        for task in list(self._pending):
            task.cancel()

    def _start(self, image_id: str, url: str) -> Deferred[None]:
        task = Deferred.fromCoroutine(self._purge(image_id, url))
        if not task.called:
            self._pending.add(task)

            def forget(result: object) -> object:
                self._pending.discard(task)
                return result

            task.addBoth(forget)
        return task

    async def _purge(self, image_id: str, url: str) -> None:
        """Purge one URL until done, given up, or stopped. Never fails."""
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            try:
                reason = await self._attempt(url)
            except Exception as e:
                if self._cancelled:
                    log.warn(
                        "PURGE {url} for image {image_id} abandoned at shutdown",
                        url=url,
                        image_id=image_id,
                    )
                    return
                reason = _reason(e)
            if reason is None:
                return
            if attempt == self.attempts:
                log.error(
                    "Giving up on PURGE {url} for image {image_id} after "
                    "{attempts} attempts ({reason}): the proxy may still serve it",
                    url=url,
                    image_id=image_id,
                    attempts=self.attempts,
                    reason=reason,
                )
                return
            log.warn(
                "PURGE {url} for image {image_id} failed (attempt {attempt} of "
                "{attempts}: {reason}); retrying in {delay} s",
                url=url,
                image_id=image_id,
                attempt=attempt,
                attempts=self.attempts,
                reason=reason,
                delay=delay,
            )
            try:
                await deferLater(self.clock, delay)
            except Exception:
                log.warn(
                    "PURGE {url} for image {image_id} abandoned at shutdown",
                    url=url,
                    image_id=image_id,
                )
                return
            delay = min(delay * 2, self.max_delay)

    async def _attempt(self, url: str) -> str | None:
        """One PURGE: None when done, else why not. Fails on a timeout."""
        d = Deferred.fromCoroutine(self._send(url))
        d.addTimeout(self.request_timeout, self.clock)
        code = await d
        if 200 <= code < 300 or code == 404:
            return None
        return f"HTTP {code}"

    async def _send(self, url: str) -> int:
        response = await self.client.request(PURGE, url, allow_redirects=False)
        # Read the body so that the connection goes back to the pool.
        await response.content()
        code: int = response.code
        return code
