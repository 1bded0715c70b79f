"""
A small client for the OpenStack Swift object API, on treq.

It logs in with tempauth / Swift's v1 auth (C{X-Auth-User} and
C{X-Auth-Key} answered with C{X-Storage-Url} and C{X-Auth-Token}) or with
Keystone v3 (a password or an application credential; the storage URL is
the C{object-store} endpoint of the token's catalog), renews the token
shortly before it expires, and when Swift answers 401 anyway (a token
revoked or expired early) logs in again and retries the request once. A
request whose body streams cannot be replayed, so it is not retried: the
caller sees the error.

Object bodies stream both ways: a L{glance_tx.store.fed_body.FedBody}
is fed as bytes arrive and paused by the connection (with a
Content-Length when the caller knows it, else chunked transfer
encoding), and C{get_object} returns the
response unread for the caller to relay. Static Large Objects are a
manifest PUT with C{?multipart-manifest=put}; deleting with
C{?multipart-manifest=delete} removes the segments too.

Errors are L{glance_tx.errors.NotFound} for a 404 and otherwise
L{glance_tx.errors.StoreError}s naming the store, the operation and the
status; no message carries the key, the token or the storage URL's host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from attrs import field, frozen, mutable
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from glance_tx.errors import GlanceError, NotFound, StorageFull, StoreError
from glance_tx.keystone_auth import LoginFailed, PasswordCredentials, log_in
from glance_tx.store.describe import describe
from glance_tx.store.fed_body import FedBody

__all__ = [
    "KeystoneV3Auth",
    "Segment",
    "SwiftClient",
    "SwiftSession",
    "TempAuth",
]

#: Renew a token this many seconds before it expires (glance_store's
#: C{swift_store_expire_soon_interval} default).
EXPIRE_SOON = 60.0
#: When an auth service does not say how long a token lasts.
DEFAULT_TOKEN_LIFETIME = 3600.0
#: Seconds a request without a streamed body may take before it is given up.
REQUEST_TIMEOUT = 60.0

#: glance_store's endpoint type names, and Keystone v3's interface names.
INTERFACES = {
    "publicURL": "public",
    "internalURL": "internal",
    "adminURL": "admin",
    "public": "public",
    "internal": "internal",
    "admin": "admin",
}


class AuthError(StoreError):
    """The auth service refused the credentials, or could not be used."""


@frozen
class SwiftSession:
    """A token, the storage URL it is for, and when (clock time) it expires."""

    storage_url: str
    token: str = field(repr=False)
    expires: float


@frozen
class TempAuth:
    """Swift's v1 auth (tempauth, swauth): C{user} is C{account:user}."""

    auth_address: str
    user: str
    key: str = field(repr=False)

    async def login(self, http: Any, now: float) -> SwiftSession:
        headers = {"X-Auth-User": [self.user], "X-Auth-Key": [self.key]}
        response = await http.request("GET", self.auth_address, headers=headers)
        await _drain(response)
        if response.code in (401, 403):
            raise AuthError("the auth service refused the credentials")
        if not 200 <= response.code < 300:
            raise AuthError(f"the auth service answered {response.code}")
        token = _header(response, "X-Auth-Token") or _header(response, "X-Storage-Token")
        storage_url = _header(response, "X-Storage-Url")
        if not token or not storage_url:
            raise AuthError("the auth service sent no token or storage URL")
        lifetime = _float(_header(response, "X-Auth-Token-Expires"), DEFAULT_TOKEN_LIFETIME)
        return SwiftSession(storage_url, token, now + lifetime)


@frozen
class KeystoneV3Auth:
    """
    Keystone v3: a login (L{glance_tx.keystone_auth}) with C{credentials}
    (a password user scoped to a project, or an application credential,
    scoped already), then the C{object-store} endpoint of C{interface} (in
    C{region}, if given) from the catalog, unless C{endpoint} overrides it.
    """

    auth_address: str
    credentials: PasswordCredentials
    region: str | None = None
    interface: str = "public"
    service_type: str = "object-store"
    endpoint: str | None = None

    async def login(self, http: Any, now: float) -> SwiftSession:
        try:
            login = await log_in(http, self.auth_address, self.credentials)
        except LoginFailed as e:
            raise AuthError(str(e)) from None
        storage_url = self.endpoint or self._endpoint(login.document.get("catalog") or [])
        expires = login.expires
        lifetime = DEFAULT_TOKEN_LIFETIME if expires is None else expires - time.time()
        return SwiftSession(storage_url, login.token, now + lifetime)

    def _endpoint(self, catalog: Sequence[Mapping[str, Any]]) -> str:
        for service in catalog:
            if service.get("type") != self.service_type:
                continue
            for endpoint in service.get("endpoints") or []:
                if endpoint.get("interface") != self.interface:
                    continue
                region = endpoint.get("region_id") or endpoint.get("region")
                if self.region and region != self.region:
                    continue
                if endpoint.get("url"):
                    return str(endpoint["url"])
        where = f" in region {self.region}" if self.region else ""
        raise AuthError(
            f"the Keystone catalog has no {self.interface} "
            f"{self.service_type} endpoint{where}"
        )


def _header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


async def _drain(response: IResponse) -> bytes:
    from treq import content

    result: bytes = await content(response)
    return result


@frozen
class Segment:
    """One uploaded segment of a Static Large Object."""

    container: str
    name: str
    etag: str | None
    size: int

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "path": f"/{self.container}/{self.name}",
            "etag": self.etag,
            "size_bytes": self.size,
        }



@frozen
class StreamingPut:
    """An object PUT in flight: feed C{body}, then wait for C{response}."""

    body: FedBody
    response: Deferred[IResponse]


def _quote(name: str) -> str:
    return quote(name, safe="")


@mutable
class SwiftClient:
    """
    The Swift API of one account, through C{http} (a treq C{HTTPClient}).

    @ivar store_name: Named in every error, so a client knows which store
        failed.
    @ivar auth: How to log in: L{TempAuth} or L{KeystoneV3Auth}.
    @ivar clock: Tells when a token is about to expire, and times requests
        out.
    """

    http: Any
    auth: TempAuth | KeystoneV3Auth
    clock: IReactorTime
    store_name: str
    timeout: float = REQUEST_TIMEOUT

    _session: SwiftSession | None = field(default=None, init=False)
    _login: Deferred[SwiftSession] | None = field(default=None, init=False)
    _login_waiters: list[Deferred[SwiftSession]] = field(factory=list, init=False)

    # Sessions

    async def session(self) -> SwiftSession:
        """A token good for at least another minute, logging in if need be."""
        session = self._session
        if session is not None and session.expires - self.clock.seconds() > EXPIRE_SOON:
            return session
        return await self._relogin(session)

    def _relogin(self, stale: SwiftSession | None) -> Deferred[SwiftSession]:
        """Log in once for every caller that found C{stale} (coalesced)."""
        if self._session is not None and self._session is not stale:
            return succeed(self._session)
        waiter: Deferred[SwiftSession] = Deferred()
        self._login_waiters.append(waiter)
        if self._login is None:
            self._session = None
            self._login = Deferred.fromCoroutine(self._log_in())
            self._login.addBoth(self._logged_in)
        return waiter

    async def _log_in(self) -> SwiftSession:
        try:
            return await self.auth.login(self.http, self.clock.seconds())
        except StoreError as e:
            raise StoreError(f"Swift store {self.store_name!r}: {e.message}") from None
        except Exception as e:
            raise StoreError(
                f"Swift store {self.store_name!r}: could not reach the auth "
                f"service: {describe(e)}"
            ) from None

    def _logged_in(self, result: SwiftSession | Failure) -> None:
        self._login = None
        if isinstance(result, SwiftSession):
            self._session = result
        waiters, self._login_waiters = self._login_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    # Requests

    def _url(self, session: SwiftSession, container: str | None, name: str | None) -> str:
        url = session.storage_url.rstrip("/")
        if container is not None:
            url += "/" + _quote(container)
            if name is not None:
                url += "/" + _quote(name)
        return url

    def _error(self, doing: str, code: int) -> StoreError:
        return StoreError(f"Swift store {self.store_name!r}: {doing} answered {code}")

    async def request(
        self,
        method: str,
        container: str | None = None,
        name: str | None = None,
        *,
        doing: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        unbuffered: bool = False,
        ok: Callable[[int], bool] = lambda code: 200 <= code < 300,
    ) -> IResponse:
        """
        One request, retried once after a new login if Swift answers 401.
        Fires with the response if C{ok(code)}; otherwise its body is read
        and the error raised (L{NotFound} for 404).
        """
        for attempt in (1, 2):
            session = await self.session()
            all_headers = {k: [v] for k, v in (headers or {}).items()}
            all_headers["X-Auth-Token"] = [session.token]
            try:
                response: IResponse = await self.http.request(
                    method,
                    self._url(session, container, name),
                    headers=all_headers,
                    params=params,
                    data=data,
                    unbuffered=unbuffered,
                    reactor=self.clock,
                    timeout=self.timeout,
                )
            except Exception as e:
                raise StoreError(
                    f"Swift store {self.store_name!r}: {doing} failed: {describe(e)}"
                ) from None
            if ok(response.code):
                return response
            await _drain(response)
            if response.code == 401 and attempt == 1:
                await self._relogin(session)
                continue
            raise self._failure(doing, response.code)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, doing: str, code: int) -> GlanceError:
        if code == 404:
            return NotFound(f"Swift store {self.store_name!r}: {doing}: not found")
        if code == 413:
            # A container or account quota, or the cluster's largest
            # object: no room for this data, as glance_store's StorageFull.
            return StorageFull(
                f"Image storage media is full: Swift store {self.store_name!r}: "
                f"{doing} was refused (413: over a quota or the largest object size)"
            )
        if code == 401:
            return StoreError(
                f"Swift store {self.store_name!r}: {doing}: Swift refused the token"
            )
        return self._error(doing, code)

    # Containers

    async def create_container(self, container: str) -> None:
        await self.request("PUT", container, doing=f"creating container {container}")

    async def head_container(self, container: str) -> Mapping[str, str]:
        response = await self.request("HEAD", container, doing=f"reading container {container}")
        await _drain(response)
        return {k.decode(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}

    async def list_objects(self, container: str, prefix: str | None = None) -> list[str]:
        """Every object name in C{container} (paged through with markers)."""
        names: list[str] = []
        marker = ""
        while True:
            params = {"format": "json", "marker": marker}
            if prefix:
                params["prefix"] = prefix
            response = await self.request(
                "GET", container, doing=f"listing container {container}", params=params
            )
            page = json.loads(await _drain(response) or b"[]")
            if not page:
                return names
            names.extend(entry["name"] for entry in page)
            marker = names[-1]

    # Objects

    def put_object_streaming(
        self, session: SwiftSession, container: str, name: str,
        headers: Mapping[str, str] | None = None, length: int | None = None,
    ) -> StreamingPut:
        """
        Start a PUT whose body the caller feeds (never retried: it cannot be
        replayed), of C{length} bytes (a Content-Length) when known, else
        chunked. Take the session from L{session} just before, so the
        token is fresh.
        """
        body = FedBody(self.clock, UNKNOWN_LENGTH if length is None else length, peer="Swift")
        all_headers = {k: [v] for k, v in (headers or {}).items()}
        all_headers["X-Auth-Token"] = [session.token]
        response: Deferred[IResponse] = self.http.request(
            "PUT",
            self._url(session, container, name),
            headers=all_headers,
            data=body,
            reactor=self.clock,
        )
        return StreamingPut(body, response)

    async def finish_put(self, put: StreamingPut, doing: str) -> str | None:
        """End the body of C{put}, wait for Swift's answer; fire with the ETag."""
        put.body.finish()
        return await self.put_answer(put, doing)

    async def put_answer(self, put: StreamingPut, doing: str) -> str | None:
        """
        Swift's answer to C{put} (given up after C{timeout} seconds): the
        ETag, or the error it stands for.
        """
        timer = self.clock.callLater(self.timeout, put.response.cancel)
        try:
            response = await put.response
        except Exception as e:
            raise StoreError(
                f"Swift store {self.store_name!r}: {doing} failed: {describe(e)}"
            ) from None
        finally:
            if timer.active():
                timer.cancel()
        await _drain(response)
        if not 200 <= response.code < 300:
            raise self._failure(doing, response.code)
        etag = _header(response, "Etag")
        return etag.strip('"') if etag else None

    async def put_object(self, container: str, name: str, data: bytes, doing: str) -> None:
        response = await self.request("PUT", container, name, data=data, doing=doing)
        await _drain(response)

    async def put_manifest(
        self, container: str, name: str, segments: Sequence[Segment],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Make C{name} a Static Large Object of C{segments}, in order."""
        manifest = json.dumps([s.manifest_entry() for s in segments]).encode()
        response = await self.request(
            "PUT", container, name,
            params={"multipart-manifest": "put"},
            headers=headers,
            data=manifest,
            doing=f"storing the manifest of {name}",
        )
        await _drain(response)

    async def head_object(self, container: str, name: str) -> Mapping[str, str]:
        response = await self.request("HEAD", container, name, doing=f"reading {name}")
        await _drain(response)
        return {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}

    async def get_object(
        self, container: str, name: str, offset: int = 0, length: int | None = None
    ) -> IResponse | None:
        """
        The unread response for bytes C{[offset, offset + length)} (to the
        end when C{length} is C{None}), or C{None} when that range holds no
        bytes (Swift's 416). The caller reads or discards its body.
        """
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = await self.request(
            "GET", container, name,
            headers=headers,
            unbuffered=True,
            doing=f"reading {name}",
            ok=lambda code: 200 <= code < 300 or code == 416,
        )
        if response.code == 416:
            await _drain(response)
            return None
        return response

    async def delete_object(self, container: str, name: str, large: bool = False) -> bool:
        """
        Delete C{name} (with C{large}, a Static Large Object's segments
        too); fire with whether it was there.
        """
        params = {"multipart-manifest": "delete"} if large else None
        headers = {"Accept": "application/json"} if large else None
        try:
            response = await self.request(
                "DELETE", container, name, params=params, headers=headers,
                doing=f"deleting {name}",
            )
        except NotFound:
            return False
        body = await _drain(response)
        if not large:
            return True
        deleted = self._bulk_delete_result(name, body)
        if deleted is None:  # a plain object, not a manifest
            return await self.delete_object(container, name)
        return deleted

    def _bulk_delete_result(self, name: str, body: bytes) -> bool | None:
        """
        A manifest delete answers 200 and says in its body what it did:
        whether anything was deleted, or C{None} if C{name} is a plain
        object (which a manifest delete refuses).
        """
        try:
            result = json.loads(body)
        except ValueError:
            return True
        status = str(result.get("Response Status", "200"))
        if status.startswith("404"):
            return False
        if status.startswith("400") and "Not an SLO manifest" in json.dumps(
            result.get("Errors")
        ):
            return None
        if not status.startswith("2") or result.get("Errors"):
            raise StoreError(
                f"Swift store {self.store_name!r}: deleting {name} answered {status}"
            )
        return bool(result.get("Number Deleted", 1))

