"""
The HTTP store: image data that already lives on a web server, read-only.

A location is the data's own C{http://} or C{https://} URL. C{size} asks
with a C{HEAD} (its C{Content-Length}); C{read} sends one C{GET} with the
C{Range} asked for and relays the response body to the consumer as it
arrives, pausing the connection while the consumer is paused, so memory
does not grow with the image or with a slow client. A server that ignores
C{Range} and answers C{200} with everything still gives the right bytes:
the relay skips to the offset and stops (closing the connection) after the
length. Redirects are followed up to C{max_redirects} hops, and the
address guard (L{glance_tx.net_guard}) judges every hop, as it is applied
where each connection is made. Userinfo in a location
(C{http://user:password@host/...}) is sent as Basic authorisation to that
origin only, never across a redirect to another, and is never shown: every
message names the URL without userinfo or query.

Requests go through a C{twisted.web.client.Agent} (what treq is built on)
rather than a C{treq.HTTPClient}: treq's client asks for gzip and decodes
it (a server that complied would make C{Content-Length} and C{Range} count
compressed bytes, not the image's) and keeps a cookie jar across every
image. Here C{Accept-Encoding: identity} is sent and nothing is kept.

The body is read through the shared L{glance_tx.store.reader.BlockProducer}
from L{glance_tx.store.response.ResponseBlocks} (the connection paused while
the client is slow), each block's wait bounded by a
L{glance_tx.store.deadline.Deadline}; or, for a body framed by
C{Content-Length} from its first byte on, going to a client on plain TCP
from a server on plain TCP, relayed by the kernel with C{os.splice}
(L{glance_tx.store.response.relay_body}, L{glance_tx.api.splice}).

Writes and deletes are refused with L{StoreReadOnly} (403): the request is
understood and allowed in general, only this store cannot do it, and
asking again will not help. (Not 405: the image data resource does accept
uploads, to other stores; not 400: nothing is wrong with the request.)
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from attrs import frozen, mutable
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from glance_tx.config import ConfigError, StoreConfig
from glance_tx.errors import BadRequest, Forbidden, GlanceError, NotFound, StoreError
from glance_tx.net_guard import (
    SCHEMES,
    AddressPolicy,
    AddressRefused,
    GuardedEndpointFactory,
    parse_networks,
)
from glance_tx.store.deadline import Deadline
from glance_tx.store.factory import StoreServices
from glance_tx.store.interface import IStore, IStoreWriter
from glance_tx.store.reader import (
    BlockProducer,
    IBlockSource,
    NoBytes,
    check_read_range,
)
from glance_tx.store.response import relay_body, response_blocks
from glance_tx.store.tls import HTTP_TLS, load_tls_policy
from glance_tx.threads import BlockingRunner

__all__ = [
    "HTTPStore",
    "StoreReadOnly",
    "guarded_agent",
    "http_store_from_options",
    "load_http_store",
    "make_http_store",
]

#: The most one block of a read holds; about two are held while the
#: client is slow.
DEFAULT_BLOCK_SIZE = 1 << 20
#: Hops followed before a chain of redirects is given up.
DEFAULT_MAX_REDIRECTS = 5
#: Seconds a TCP connection attempt may take.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds without a response, or without a byte of the body while the
#: consumer wants more, before the server counts as stalled.
DEFAULT_READ_TIMEOUT = 60.0

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({404, 410})


class StoreReadOnly(Forbidden):
    """A write or delete asked of a store that can only be read."""


def shown_url(url: str) -> str:
    """
    C{url} as a message or an image document may show it: no userinfo, no
    query (where a signature or token goes). The fragment stays: it is
    never sent to a server, and it is what tells two locations of one
    resource apart (Tempest adds C{URL} and C{URL#new}).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an unusable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    query = "?..." if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query + fragment


@frozen
class _Target:
    """One URL to request, taken apart."""

    #: The URL sent in the request: userinfo removed, ASCII only.
    url: str
    #: What messages show of it (see L{shown_url}).
    shown: str
    #: (scheme, host, port): where credentials may be sent.
    origin: tuple[str, str, int]
    #: Basic credentials from the URL's userinfo, if it had any.
    authorization: bytes | None


def _target(url: object) -> _Target:
    """
    Take a location (or a redirect's target) apart.

    @raise BadRequest: not an absolute C{http(s)} URL with a host.
    """
    if not isinstance(url, str):
        raise BadRequest(f"Location {url!r} is not a string")
    shown = shown_url(url)
    refusal = f"{shown!r} is not an http or https URL"
    try:
        url.encode("ascii")
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except (UnicodeEncodeError, ValueError):
        raise BadRequest(refusal) from None
    if parts.scheme not in SCHEMES or not host or any(c in url for c in " \r\n\t\0"):
        raise BadRequest(refusal)
    netloc_host = f"[{host}]" if ":" in host else host
    netloc = netloc_host if port is None else f"{netloc_host}:{port}"
    authorization = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(pair.encode("utf-8"))
    default_port = 443 if parts.scheme == "https" else 80
    return _Target(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        shown=shown,
        origin=(parts.scheme, host, port or default_port),
        authorization=authorization,
    )


def _reason(error: BaseException | None) -> str:
    """A short account of a connection-level failure."""
    if error is None:
        return "unknown error"
    if isinstance(error, (ResponseFailed, ResponseNeverReceived)) and error.reasons:
        return _reason(error.reasons[0].value)
    return str(error) or type(error).__name__


class _Discard(Protocol):
    """Takes a response body we do not want, and drops the connection."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.stopProducing()  # type: ignore[attr-defined]


def _discard(response: IResponse) -> None:
    response.deliverBody(_Discard())


def _content_range(response: IResponse) -> tuple[int, int] | None:
    """The first and last byte of a 206's C{Content-Range: bytes A-B/SIZE}."""
    value = response.headers.getRawHeaders(b"content-range", [b""])[0]
    unit, _, rest = value.partition(b" ")
    span, _, _ = rest.partition(b"/")
    first, sep, last = span.partition(b"-")
    if unit.strip().lower() != b"bytes" or not sep:
        return None
    if not (first.strip().isdigit() and last.strip().isdigit()):
        return None
    return int(first), int(last)


#: What L{HTTPStore._extent} says when the offset is at or past the end.
_PAST_END = -1


@implementer(IBlockSource)
@mutable
class _Skip:
    """
    C{source} without its first C{skip} bytes: for a server that ignores
    C{Range} and sends everything.
    """

    source: IBlockSource
    skip: int

    def read_block(self, size: int) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self._read(size))

    async def _read(self, size: int) -> bytes:
        while self.skip:
            block = await self.source.read_block(self.skip)
            if not block:
                return b""
            self.skip -= len(block)
        return await self.source.read_block(size)

    def close(self) -> Deferred[None]:
        return self.source.close()


@implementer(IStore)
@frozen
class HTTPStore:
    """
    Reads image data from the web through C{agent} (see L{guarded_agent}
    for the one that keeps to the address guard); C{clock} times the
    waits.
    """

    scheme: ClassVar[str] = "http"
    #: The schemes of the locations this store can read.
    schemes: ClassVar[frozenset[str]] = SCHEMES
    #: Never written to: not a store to upload to by default.
    read_only: ClassVar[bool] = True

    agent: IAgent
    clock: IReactorTime
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    read_timeout: float = DEFAULT_READ_TIMEOUT
    block_size: int = DEFAULT_BLOCK_SIZE

    def open_writer(self, image_id: str, size: int | None = None) -> Deferred[IStoreWriter]:
        return fail(StoreReadOnly("The HTTP store is read-only: image data cannot be uploaded to it"))

    def delete(self, location: str) -> Deferred[None]:
        return fail(StoreReadOnly("The HTTP store is read-only: it does not delete data"))

    def locations(self) -> Deferred[frozenset[str]]:
        """Nothing: the store holds no data of its own."""
        return succeed(frozenset())

    def discard_incomplete(self, image_id: str | None = None) -> Deferred[int]:
        """Nothing: the store never writes."""
        return succeed(0)

    def ping(self) -> Deferred[None]:
        """Fires at once: there is no one server to ask; each read says."""
        return succeed(None)

    def size(self, location: str) -> Deferred[int]:
        """The C{Content-Length} a C{HEAD} of the location answers."""
        return Deferred.fromCoroutine(self._size(location))

    def read(
        self,
        location: str,
        consumer: IConsumer,
        offset: int = 0,
        length: int | None = None,
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._read(location, consumer, offset, length))

    async def _size(self, location: str) -> int:
        response, target = await self._request(b"HEAD", location, Headers())
        _discard(response)
        self._check_found(response, target)
        if response.code != 200:
            raise self._answered(response, target)
        values = response.headers.getRawHeaders(b"content-length")
        if not values or not values[0].strip().isdigit():
            raise StoreError(f"{target.shown} gave no Content-Length: its size is unknown")
        return int(values[0])

    async def _read(
        self, location: str, consumer: IConsumer, offset: int, length: int | None
    ) -> None:
        check_read_range(offset, length)
        if length == 0:
            await self._size(location)  # still a NotFound for missing data
            return await self._produce(NoBytes(), consumer, 0)
        headers = Headers()
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers.setRawHeaders(b"range", [f"bytes={offset}-{end}".encode("ascii")])
        response, target = await self._request(b"GET", location, headers)
        try:
            skip, available = self._extent(response, target, offset)
            if available is None:  # no length given: ask for the size
                available = await self._size(location) - offset
        except BaseException:
            _discard(response)
            raise
        if available is _PAST_END:
            return await self._produce(NoBytes(), consumer, 0)
        remaining = max(0, available if length is None else min(length, available))
        if not skip:
            relayed = relay_body(consumer, response, remaining, target.shown, self.read_timeout)
            if relayed is not None:
                return await relayed
        source: IBlockSource = Deadline(
            response_blocks(response, self.block_size, target.shown, wide_reads=True),
            self.clock,
            self.read_timeout,
            target.shown,
        )
        if skip:
            source = _Skip(source, skip)
        return await self._produce(source, consumer, remaining)

    def _produce(self, source: IBlockSource, consumer: IConsumer, remaining: int) -> Deferred[None]:
        return BlockProducer(source, consumer, remaining, self.block_size).start()

    def _extent(
        self, response: IResponse, target: _Target, offset: int
    ) -> tuple[int, int | None]:
        """
        How many bytes of C{response}'s body come before C{offset}, and how
        many from C{offset} on (C{None}: it does not say; L{_PAST_END}: the
        offset is at or past the end).
        """
        self._check_found(response, target)
        if response.code == 416:
            _discard(response)
            return 0, _PAST_END
        if response.code == 200:
            size = response.length
            return offset, (size - offset) if isinstance(size, int) else None
        if response.code == 206:
            extent = _content_range(response)
            if extent is None or extent[0] > offset:
                raise StoreError(f"{target.shown} answered a range other than the one asked for")
            start, end = extent
            return offset - start, end + 1 - offset
        raise self._answered(response, target)

    def _check_found(self, response: IResponse, target: _Target) -> None:
        if response.code in _GONE:
            raise NotFound(f"No image data at {target.shown} ({response.code})")

    def _answered(self, response: IResponse, target: _Target) -> StoreError:
        phrase = response.phrase.decode("latin-1", "replace")
        return StoreError(f"{target.shown} answered {response.code} {phrase}".rstrip())

    async def _request(
        self, method: bytes, location: str, headers: Headers
    ) -> tuple[IResponse, _Target]:
        """
        Send C{method}, following redirects; fire with the first response
        that is not one, and the URL that gave it.
        """
        target = _target(location)
        authorization = target.authorization
        for hop in range(self.max_redirects + 1):
            sent = headers.copy()
            sent.setRawHeaders(b"accept-encoding", [b"identity"])
            sent.setRawHeaders(b"user-agent", [b"glance-tx"])
            if authorization is not None:
                sent.setRawHeaders(b"authorization", [authorization])
            response = await self._send(method, target, sent)
            if response.code not in _REDIRECTS:
                return response, target
            _discard(response)
            where = response.headers.getRawHeaders(b"location")
            if not where:
                raise StoreError(f"{target.shown} redirected nowhere ({response.code})")
            if hop == self.max_redirects:
                raise StoreError(
                    f"{target.shown} redirected more than {self.max_redirects} times"
                )
            following = urljoin(target.url, where[0].decode("latin-1"))
            try:
                hop_target = _target(following)
            except BadRequest:
                raise AddressRefused(
                    f"{target.shown} redirected to {shown_url(following)!r}, "
                    "which is not an http or https URL"
                ) from None
            if hop_target.authorization is not None:
                authorization = hop_target.authorization
            elif hop_target.origin != target.origin:
                authorization = None
            target = hop_target
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, method: bytes, target: _Target, headers: Headers) -> IResponse:
        d = self.agent.request(method, target.url.encode("ascii"), headers)
        timer = self.clock.callLater(self.read_timeout, d.cancel)
        try:
            response: IResponse = await d
        except GlanceError:
            raise  # the guard's refusal, already clear and credential-free
        except Exception as e:
            if not timer.active():  # it fired: the cancellation is ours
                raise StoreError(
                    f"{target.shown} did not answer within {self.read_timeout:g} seconds"
                ) from None
            raise StoreError(f"Could not reach {target.shown}: {_reason(e)}") from None
        finally:
            if timer.active():
                timer.cancel()
        return response


def guarded_agent(
    reactor: Any,
    policy: AddressPolicy,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    resolver: Any = None,
    tls_policy: IPolicyForHTTPS | None = None,
) -> IAgent:
    """
    An agent whose connections keep to C{policy}, names resolved by
    C{resolver} (by default the reactor's C{nameResolver}, which runs
    C{getaddrinfo} on a thread), https checked as C{tls_policy} says (by
    default against the system's CAs). Connections are not kept: each read
    is one long transfer, and none is left open at shutdown.
    """
    factory = GuardedEndpointFactory(
        reactor,
        resolver if resolver is not None else reactor.nameResolver,
        policy,
        connect_timeout=connect_timeout,
        tls_policy=tls_policy or BrowserLikePolicyForHTTPS(),
    )
    return Agent.usingEndpointFactory(
        reactor, factory, pool=HTTPConnectionPool(reactor, persistent=False)
    )


def _number(options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be above 0")
    return value


async def make_http_store(config: StoreConfig, services: StoreServices) -> HTTPStore:
    """
    The L{glance_tx.store.factory.StoreFactory} of C{http} stores. The
    shared C{services.http_client} is not used: it may reach any address,
    and this store's connections must keep to the guard.
    """
    return await load_http_store(f"store {config.id!r}", config.options, services.runner, services.reactor)


async def load_http_store(
    name: str, options: Mapping[str, str], runner: BlockingRunner, reactor: Any
) -> HTTPStore:
    """
    An L{HTTPStore} from C{options} (see L{http_store_from_options}), its
    CA file read on C{runner}; also the reader of web-download URLs when no
    HTTP store is enabled (C{[import_filtering_opts]}).

    @raise ConfigError: naming C{name} and the option that is wrong.
    """
    tls = await load_tls_policy(options, HTTP_TLS, runner)
    try:
        return http_store_from_options(options, reactor, tls_policy=tls)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def http_store_from_options(
    options: Mapping[str, str],
    reactor: Any,
    resolver: Any = None,
    tls_policy: IPolicyForHTTPS | None = None,
) -> HTTPStore:
    """
    An L{HTTPStore} from its config section (see doc/configuration.rst).

    @raise ValueError: naming the option that is wrong.
    """
    networks = parse_networks(options.get("http_store_allowed_networks", ""))
    raw_redirects = options.get("http_store_max_redirects", "").strip()
    try:
        max_redirects = int(raw_redirects) if raw_redirects else DEFAULT_MAX_REDIRECTS
    except ValueError:
        raise ValueError(
            f"http_store_max_redirects must be an integer, not {raw_redirects!r}"
        ) from None
    if max_redirects < 0:
        raise ValueError("http_store_max_redirects must be at least 0")
    agent = guarded_agent(
        reactor,
        AddressPolicy(networks),
        connect_timeout=_number(options, "http_store_connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        resolver=resolver,
        tls_policy=tls_policy,
    )
    return HTTPStore(
        agent=agent,
        clock=reactor,
        max_redirects=max_redirects,
        read_timeout=_number(options, "http_store_read_timeout", DEFAULT_READ_TIMEOUT),
    )
