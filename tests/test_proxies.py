"""
glance-tx behind real caching proxies: Varnish and Squid with the
configurations shipped in C{doc/} (C{varnish.vcl}, C{squid.conf}).

Every test runs against both proxies (L{CachingProxyTests} is a mixin; see
L{VarnishTests} and L{SquidTests}) with this stack on loopback::

    treq client --> proxy --> Keystone stand-in --> glance-tx
                      ^                               |
                      `----------- PURGE -------------'

  - glance-tx runs in this process on trial's reactor (as in
    C{tests/test_end_to_end.py}): SQLite and the filesystem store in the
    test's directory, C{[cache] purge_urls} naming the proxy.
  - The proxy (C{varnishd} or C{squid}) is a child process with its own
    directory, started and stopped by L{tests.proxies}.
  - Between them, L{tests.proxies.KeystoneStandIn} plays keystonemiddleware:
    clients send only C{X-Auth-Token}, as OpenStack clients do; the
    stand-in turns it into the identity headers glance-tx reads, or answers
    401. So the cache sees what it would see in front of an OpenStack image
    API, and "anonymous" means a request without a token.

How fetches are counted: every request the proxy makes to glance-tx passes
through the stand-in, one connection each, and the stand-in records the
method, URI and the status glance-tx answered as its status line arrives
(L{OriginLog}). "One data fetch" is one C{GET} of the image's data URL
answered 200 by glance-tx (a 304 sends no data, a 206 only part). (glance-tx's
own request log is not used: it logs a request when the response is
finished, and a proxy that closes the connection as soon as it has read
C{Content-Length} bytes can beat that, leaving no line at all.)

Images are created and deleted straight at glance-tx (the API node), not
through the proxy, unless a test says otherwise: the proxy learns of a
deletion only from glance-tx's C{PURGE}.

Without C{varnishd} or C{squid} installed the tests of that proxy skip; with
C{CI=true} they fail. C{tools/run-tests} installs both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Mapping
from typing import Any

from attrs import define, field, frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.keystone_server import keystone_server
from tests.live_server import (
    keystone_identity,
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.proxies import (
    SQUID_CONF,
    SQUID_KEYSTONE_CONF,
    STARTERS,
    VARNISH_VCL,
    KeystoneStandIn,
    ProxySettings,
    ProxyUnavailable,
    RunningProxy,
    find_program,
    free_port,
    in_ci,
    placeholders,
    proxy_directory,
    render,
    wait_ready,
)
from tests.test_keystone_end_to_end import Relay

KiB = 1 << 10
MiB = 1 << 20

PROJECT_A = "6f1c0a2b9d8e4f7a8b6c5d4e3f2a1b0c"
PROJECT_B = "0a9b8c7d6e5f40312a3b4c5d6e7f8091"
PROJECT_C = "c3d2e1f0a9b84c7d6e5f4a3b2c1d0e9f"
ADMIN_PROJECT = "admin"

#: Tokens the Keystone stand-in knows, and what it turns each into.
TOKEN_A = "token-project-a"
TOKEN_B = "token-project-b"
TOKEN_C = "token-project-c"
TOKEN_ADMIN = "token-admin"
IDENTITIES: dict[str, dict[str, str]] = {
    TOKEN_A: keystone_identity(PROJECT_A, "a0000000000000000000000000000001", "member,reader"),
    TOKEN_B: keystone_identity(PROJECT_B, "b0000000000000000000000000000002", "member,reader"),
    TOKEN_C: keystone_identity(PROJECT_C, "d0000000000000000000000000000004", "member,reader"),
    TOKEN_ADMIN: keystone_identity(
        ADMIN_PROJECT, "c0000000000000000000000000000003", "admin,member,reader"
    ),
}

#: The project each token stands for.
PROJECTS = {token: identity["X-Project-Id"] for token, identity in IDENTITIES.items()}

#: A ranged request that misses and starts at or past this offset is passed
#: to glance-tx instead of fetching the whole image (@RANGE_PREFETCH_LIMIT@).
RANGE_PREFETCH_LIMIT = 1 * MiB
#: The image size used where size does not matter: more than one store
#: block (1 MiB) and past RANGE_PREFETCH_LIMIT.
SIZE = 3 * MiB + 517


def image_bytes(size: int, seed: int) -> bytes:
    """C{size} bytes that depend on C{seed}, with no two KiB alike."""
    unit = hashlib.sha512(seed.to_bytes(8, "big")).digest() * (KiB // 64)
    blocks = [
        i.to_bytes(8, "big") + unit[8:] for i in range(size // KiB + 1)
    ]
    return b"".join(blocks)[:size]


@implementer(IBodyProducer)
class ChunkedBody:
    """C{data} as a request body of unknown length: sent chunked, 1 MiB a piece."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self.data = data

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for offset in range(0, len(self.data), MiB):
            consumer.write(self.data[offset : offset + MiB])
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@frozen
class Answer:
    """One HTTP response, read whole."""

    code: int
    headers: Headers
    body: bytes

    def describe(self) -> str:
        """The status, headers and start of the body, for failure messages."""
        lines = [str(self.code)] + [
            f"{name.decode('latin-1')}: {value.decode('latin-1')}"
            for name, values in self.headers.getAllRawHeaders()
            for value in values
            if not name.lower().startswith(b"x-image-meta-")
        ]
        return "\n".join(lines) + f"\n{self.body[:200]!r}"

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None


@define
class OriginLog:
    """
    What glance-tx answered the proxy, as the stand-in saw it (see the
    module docstring): (method, URI, status) in order.
    """

    answered: list[tuple[str, str, int]] = field(factory=list)

    def record(self, method: str, uri: str, code: int) -> None:
        self.answered.append((method, uri, code))

    def count(self, uri: str, method: str = "GET", codes: tuple[int, ...] = (200,)) -> int:
        return sum(1 for m, u, c in self.answered if m == method and u == uri and c in codes)

    def lines(self) -> str:
        return "\n".join(f"  {m} {u} -> {c}" for m, u, c in self.answered)


class ProxyHarness:
    """
    A proxy named by C{kind} (a key of L{tests.proxies.STARTERS}) whose
    program is C{program}, in front of glance-tx: the stack, requests and
    what glance-tx answered the proxy.
    """

    kind: str
    program: str
    timeout = 60

    # -- the stack ------------------------------------------------------------

    def setUp(self) -> None:
        try:
            find_program(self.program)
        except ProxyUnavailable as e:
            if in_ci():
                self.fail(f"{e} (CI=true: the proxy tests must run)")
            raise SkipTest(str(e)) from None
        self.origin = OriginLog()
        self._stoppers: list[Any] = []

        async def stop_stack() -> None:
            for stop in reversed(self._stoppers):
                await stop()

        # glance-tx's PURGE connections and the proxies' connections to the
        # stand-in close on their own.
        self.treq = settled_client(self, stop_stack)

    async def start(self, public_max_age: int | None = None) -> None:
        """
        Start glance-tx, the Keystone stand-in and the proxy. Sets
        C{self.base} (glance-tx itself) and C{self.proxy}.
        """
        proxy_port = free_port()
        config = f"[cache]\npurge_urls = http://127.0.0.1:{proxy_port}\n"
        if public_max_age is not None:
            config += f"public_max_age = {public_max_age}\n"
        service = await start_glance_tx(
            live_config(self, config), self._stoppers.append, "proxy-tests"
        )
        self.base = f"http://127.0.0.1:{listening_port(service)}"

        standin = KeystoneStandIn.start(
            reactor, listening_port(service), IDENTITIES, record=self.origin.record
        )
        self._stoppers.append(standin.stop)
        await self.start_proxy(ProxySettings(
            backend_port=standin.port_number,
            port=proxy_port,
            range_prefetch_limit=RANGE_PREFETCH_LIMIT,
        ))

    async def start_proxy(self, settings: ProxySettings) -> None:
        """Start the proxy with C{settings}; sets C{self.proxy}."""
        directory = proxy_directory(self.kind)
        if not os.environ.get("GLANCE_TX_KEEP_PROXY_DIRS"):
            self.addCleanup(shutil.rmtree, directory, True)
        self.proxy: RunningProxy = await STARTERS[self.kind](reactor, directory, settings)
        self._stoppers.append(self.proxy.stop)
        await wait_ready(self.proxy, self.treq)

    # -- requests ----------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        identity: Mapping[str, str] | None = None,
        body: bytes | IBodyProducer | None = None,
    ) -> Answer:
        all_headers: dict[str, list[str]] = {k: [v] for k, v in (headers or {}).items()}
        if token is not None:
            all_headers["X-Auth-Token"] = [token]
        for k, v in (identity or {}).items():
            all_headers[k] = [v]
        response = await self.treq.request(method, url, headers=all_headers, data=body)
        content = b"" if method == "HEAD" else await response.content()
        return Answer(response.code, response.headers, content)

    async def via_proxy(
        self, path: str, token: str | None = TOKEN_A, method: str = "GET", **kw: Any
    ) -> Answer:
        """A request through the proxy, as the project C{token} stands for."""
        return await self.request(method, self.proxy.url + path, token=token, **kw)

    async def direct(
        self, method: str, path: str, project: str | None = None, **kw: Any
    ) -> Answer:
        """
        A request straight to glance-tx, as an API client on the API node:
        as project C{project} (member role), or without identity (glance-tx
        then acts as its default project, admin).
        """
        identity = None
        if project is not None:
            identity = {"X-Project-Id": project, "X-Roles": "member,reader"}
        return await self.request(method, self.base + path, identity=identity, **kw)

    async def create_image(
        self, data: bytes, visibility: str = "public", project: str | None = None
    ) -> str:
        """An active image with C{data}, made straight at glance-tx; its id."""
        created = await self.direct(
            "POST", "/v2/images", project,
            headers={"Content-Type": "application/json"},
            body=json.dumps({
                "name": f"proxy-test-{visibility}",
                "disk_format": "raw",
                "container_format": "bare",
                "visibility": visibility,
            }).encode(),
        )
        self.assertEqual(created.code, 201, created.body)
        image_id: str = json.loads(created.body)["id"]
        uploaded = await self.direct(
            "PUT", f"/v2/images/{image_id}/file", project,
            headers={"Content-Type": "application/octet-stream"},
            body=data,
        )
        self.assertEqual(uploaded.code, 204, uploaded.body)
        return image_id

    async def wait_for(self, what: str, check: Any, timeout: float = 10.0) -> None:
        """Wait until C{check()} is true; fail saying C{what} otherwise."""
        for _ in range(int(timeout / 0.05)):
            if check():
                return
            await deferLater(reactor, 0.05)
        self.fail(f"timed out waiting for {what}; glance-tx answered the proxy:\n{self.origin.lines()}")

    def assertFetches(self, uri: str, expected: int, codes: tuple[int, ...] = (200,)) -> None:
        got = self.origin.count(uri, "GET", codes)
        if got != expected:
            self.fail(
                f"{self.kind}: expected {expected} GET {uri} answered {codes} by "
                f"glance-tx, got {got}; glance-tx answered the proxy:\n{self.origin.lines()}"
            )

    def assertImage(self, answer: Answer, data: bytes, what: str = "download") -> None:
        self.assertEqual(answer.code, 200, f"{what}: {answer.describe()}")
        self.assertEqual(len(answer.body), len(data), what)
        self.assertTrue(answer.body == data, f"{what}: the bytes differ")

    def assertPart(self, answer: Answer, data: bytes, first: int, last: int) -> None:
        """A 206 carrying bytes C{first}..C{last} (inclusive) of C{data}."""
        self.assertEqual(answer.code, 206, f"{answer.code} {answer.describe()}")
        self.assertEqual(answer.header("Content-Range"), f"bytes {first}-{last}/{len(data)}")
        self.assertEqual(len(answer.body), last - first + 1)
        self.assertTrue(answer.body == data[first : last + 1], "the range's bytes differ")
        # Content-MD5 would describe the whole image, not this part.
        self.assertIsNone(answer.header("Content-MD5"), answer.describe())


class CachingProxyTests(ProxyHarness):
    """
    The behaviour required of glance-tx (noauth, identity from the Keystone
    stand-in) behind a caching proxy.
    """

    #: Whether concurrent misses for one URL share one fetch.
    coalesces_misses: bool

    # -- the configuration ---------------------------------------------------------

    async def test_config_is_valid(self) -> None:
        """
        The shipped template, with its placeholders filled in, is accepted
        by the proxy itself (C{varnishd -C}, C{squid -k parse}).
        """
        program = find_program(self.program)
        workdir = proxy_directory(self.kind)
        self.addCleanup(shutil.rmtree, workdir, True)
        if self.kind == "varnish":
            path = workdir / "glance.vcl"
            path.write_text(render(VARNISH_VCL.read_text(), {
                "BACKEND_HOST": "127.0.0.1", "BACKEND_PORT": 9292,
                "API_NODE": "10.0.0.11", "RANGE_PREFETCH_LIMIT": 64 * MiB,
            }))
            args = ["-C", "-n", str(workdir / "varnish"), "-f", str(path)]
        else:
            path = workdir / "squid.conf"
            path.write_text(render(SQUID_CONF.read_text(), {
                "LISTEN": "127.0.0.1:3128", "SITE": "images.example.com",
                "BACKEND_HOST": "127.0.0.1", "BACKEND_PORT": 9292,
                "API_NODE": "10.0.0.11 10.0.0.12", "RANGE_PREFETCH_LIMIT": 64 * MiB,
                "CACHE_DIR": workdir / "cache", "CACHE_DIR_MB": 1024,
                "LOG_DIR": workdir, "RUN_DIR": workdir, "CACHE_USER": "nobody",
            }))
            args = ["-k", "parse", "-f", str(path)]
        path.chmod(0o644)
        out, err, code = await getProcessOutputAndValue(
            program, args, env=dict(os.environ), path=str(workdir), reactor=reactor
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace")[-3000:])

    # -- caching public images -------------------------------------------------------

    async def test_public_image_fetched_once(self) -> None:
        """
        Ten downloads of a public image through the proxy, by two different
        projects, cause exactly one data fetch from glance-tx; every one has
        the right bytes. The same holds for the v1 data URL. A HEAD through
        the proxy is answered without a data fetch.
        """
        await self.start()
        data = image_bytes(SIZE, 1)
        image_id = await self.create_image(data)
        path = f"/v2/images/{image_id}/file"
        for i in range(10):
            answer = await self.via_proxy(path, token=(TOKEN_A, TOKEN_B)[i % 2])
            self.assertImage(answer, data, f"download {i + 1}")
            if i > 0:
                self.assertTrue(
                    (answer.header("X-Cache") or "").startswith("HIT"),
                    f"download {i + 1}: X-Cache {answer.header('X-Cache')}",
                )
        self.assertFetches(path, 1)

        v1 = f"/v1/images/{image_id}"
        for i in range(5):
            self.assertImage(await self.via_proxy(v1), data, f"v1 download {i + 1}")
        self.assertFetches(v1, 1)

        head = await self.via_proxy(path, method="HEAD")
        self.assertEqual(head.code, 200)
        self.assertEqual(head.header("Content-Length"), str(len(data)))
        self.assertFetches(path, 1)

    async def test_concurrent_downloads(self) -> None:
        """
        Eight clients asking at once for a public image that is not stored
        yet (a boot storm) all get it whole. Varnish serves them all from
        one fetch from glance-tx; Squid (whose request collapsing must stay
        off, see squid.conf) may fetch it for each, and then stores it.
        """
        await self.start()
        data = image_bytes(8 * MiB, 12)
        image_id = await self.create_image(data)
        path = f"/v2/images/{image_id}/file"
        answers = await gatherResults(
            [Deferred.fromCoroutine(self.via_proxy(path)) for _ in range(8)]
        )
        for i, answer in enumerate(answers):
            self.assertImage(answer, data, f"client {i + 1}")
        if self.coalesces_misses:
            self.assertFetches(path, 1)
        fetches = self.origin.count(path)
        self.assertImage(await self.via_proxy(path), data, "afterwards")
        self.assertFetches(path, fetches)

    async def test_upload_through_the_proxy(self) -> None:
        """
        An image created and uploaded through the proxy (chunked, as
        glanceclient sends it) is stored whole and then served.
        """
        await self.start()
        data = image_bytes(6 * MiB + 11, 13)
        created = await self.via_proxy(
            "/v2/images", token=TOKEN_ADMIN, method="POST",
            headers={"Content-Type": "application/json"},
            body=json.dumps({
                "name": "through-the-proxy", "disk_format": "raw",
                "container_format": "bare", "visibility": "public",
            }).encode(),
        )
        self.assertEqual(created.code, 201, created.describe())
        image_id = json.loads(created.body)["id"]
        uploaded = await self.via_proxy(
            f"/v2/images/{image_id}/file", token=TOKEN_ADMIN, method="PUT",
            headers={"Content-Type": "application/octet-stream"},
            body=ChunkedBody(data),
        )
        self.assertEqual(uploaded.code, 204, uploaded.describe())
        shown = json.loads((await self.direct("GET", f"/v2/images/{image_id}")).body)
        self.assertEqual(
            (shown["status"], shown["size"], shown["checksum"]),
            ("active", len(data), hashlib.md5(data).hexdigest()),
        )
        self.assertImage(await self.via_proxy(f"/v2/images/{image_id}/file"), data)

    # -- ranges -------------------------------------------------------------------

    async def test_ranges_from_a_cold_cache(self) -> None:
        """
        A ranged download that misses gets the right bytes. One starting
        early makes the proxy fetch the whole image once and keep it; one
        starting past the prefetch limit is passed to glance-tx as it is,
        and nothing is stored.
        """
        await self.start()
        data = image_bytes(SIZE, 2)
        image_id = await self.create_image(data)
        path = f"/v2/images/{image_id}/file"
        self.assertPart(
            await self.via_proxy(path, headers={"Range": "bytes=1000-50999"}),
            data, 1000, 50999,
        )
        # The proxy goes on fetching the whole image after the range is sent.
        await self.wait_for("the whole image to be fetched", lambda: self.origin.count(path) == 1)
        self.assertImage(await self.via_proxy(path), data)
        self.assertFetches(path, 1)

        far = await self.create_image(data, visibility="community")
        far_path = f"/v2/images/{far}/file"
        first = 2 * MiB + 3
        self.assertPart(
            await self.via_proxy(far_path, headers={"Range": f"bytes={first}-{first + 99999}"}),
            data, first, first + 99999,
        )
        self.assertFetches(far_path, 1, codes=(206,))
        self.assertFetches(far_path, 0, codes=(200,))
        self.assertImage(await self.via_proxy(far_path), data)
        self.assertFetches(far_path, 1, codes=(200,))

    async def test_ranges_from_a_warm_cache(self) -> None:
        """
        Once the image is stored, ranges of every form are served from it
        with the right bytes and no further request for the data reaches
        glance-tx; If-Range is honoured; a range past the end is refused
        with 416 and C{bytes */SIZE} (or ignored); several ranges at once
        get either C{multipart/byteranges} or the whole image.
        """
        await self.start()
        data = image_bytes(SIZE, 3)
        size = len(data)
        image_id = await self.create_image(data)
        path = f"/v2/images/{image_id}/file"
        whole = await self.via_proxy(path)
        self.assertImage(whole, data)
        etag = whole.header("ETag")
        self.assertIsNotNone(etag)
        assert etag is not None

        cases = [
            ("bytes=0-0", 0, 0),
            ("bytes=5-104", 5, 104),
            ("bytes=-100", size - 100, size - 1),
            (f"bytes={size - 4000}-", size - 4000, size - 1),
            (f"bytes={2 * MiB}-{size + 1000}", 2 * MiB, size - 1),
        ]
        for header, first, last in cases:
            answer = await self.via_proxy(path, headers={"Range": header})
            self.assertPart(answer, data, first, last)
        self.assertEqual(self.origin.count(path, "GET", (200, 206, 304, 416)), 1)
        # If-Range with the current ETag: the range; with another: the whole
        # (the Squid set-up lets glance-tx answer these; see squid.conf).
        self.assertPart(
            await self.via_proxy(path, headers={"Range": "bytes=10-19", "If-Range": etag}),
            data, 10, 19,
        )
        self.assertImage(
            await self.via_proxy(path, headers={"Range": "bytes=10-19", "If-Range": '"other"'}),
            data, "If-Range that does not match",
        )

        # Past the end: 416 (Varnish, glance-tx), or the Range ignored and
        # the whole image sent (Squid 5 from a stored image; RFC 9110 lets
        # a server ignore Range).
        beyond = await self.via_proxy(path, headers={"Range": f"bytes={size}-"})
        if beyond.code == 200:
            self.assertImage(beyond, data, "a range past the end, ignored")
        else:
            self.assertEqual(beyond.code, 416)
            self.assertEqual(beyond.header("Content-Range"), f"bytes */{size}")

        several = await self.via_proxy(path, headers={"Range": "bytes=0-9,100-109"})
        if several.code == 200:
            self.assertImage(several, data, "several ranges answered whole")
        else:
            self.assertEqual(several.code, 206)
            self.assertTrue(
                (several.header("Content-Type") or "").startswith("multipart/byteranges"),
                several.header("Content-Type"),
            )
            self.assertIn(data[0:10], several.body)
            self.assertIn(data[100:110], several.body)
            self.assertIn(b"Content-Range: bytes 100-109/", several.body)

    # -- revalidation --------------------------------------------------------------

    async def test_conditional_requests_answered_304(self) -> None:
        """
        A client's If-None-Match (or If-Modified-Since) through the proxy
        is answered 304 with no body: from the stored image without asking
        glance-tx, and on a cold cache as well. A validator that does not
        match gets the whole image. A false If-Match or If-Unmodified-Since
        is answered 412.
        """
        await self.start()
        data = image_bytes(SIZE, 4)
        image_id = await self.create_image(data)
        path = f"/v2/images/{image_id}/file"

        cold = await self.create_image(data)
        direct = await self.direct("GET", f"/v2/images/{cold}/file")
        cold_etag = direct.header("ETag")
        assert cold_etag is not None
        answer = await self.via_proxy(
            f"/v2/images/{cold}/file", headers={"If-None-Match": cold_etag}
        )
        self.assertEqual((answer.code, answer.body), (304, b""))

        whole = await self.via_proxy(path)
        self.assertImage(whole, data)
        etag, modified = whole.header("ETag"), whole.header("Last-Modified")
        assert etag is not None and modified is not None
        self.assertTrue(etag.startswith('"'), f"a strong ETag, not {etag}")

        answer = await self.via_proxy(path, headers={"If-None-Match": etag})
        self.assertEqual((answer.code, answer.body), (304, b""))
        self.assertEqual(answer.header("ETag"), etag)
        answer = await self.via_proxy(path, headers={"If-Modified-Since": modified})
        self.assertEqual((answer.code, answer.body), (304, b""))
        self.assertImage(
            await self.via_proxy(path, headers={"If-None-Match": '"something-else"'}), data
        )
        self.assertEqual(self.origin.count(path, "GET", (200, 206, 304)), 1)

        # If-Match and If-Unmodified-Since are glance-tx's: 412 when false.
        failed = await self.via_proxy(path, headers={"If-Match": '"something-else"'})
        self.assertEqual(failed.code, 412, failed.describe())
        self.assertImage(await self.via_proxy(path, headers={"If-Match": etag}), data)
        failed = await self.via_proxy(
            path, headers={"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}
        )
        self.assertEqual(failed.code, 412, failed.describe())

    async def test_proxy_revalidates_with_glance_tx(self) -> None:
        """
        When a stored image's max-age has passed, the proxy asks glance-tx
        with a conditional GET, gets 304 and serves the image it has: no
        second data fetch. (glance-tx's public max-age is 1 s here.)
        """
        await self.start(public_max_age=1)
        data = image_bytes(SIZE, 5)
        image_id = await self.create_image(data)
        path = f"/v2/images/{image_id}/file"
        first = await self.via_proxy(path)
        self.assertImage(first, data)
        self.assertIn("max-age=1", first.header("Cache-Control") or "")
        await deferLater(reactor, 2.2)
        self.assertImage(await self.via_proxy(path), data, "after max-age")
        self.assertFetches(path, 1, codes=(304,))
        self.assertFetches(path, 1)
        self.assertImage(await self.via_proxy(path), data, "after revalidation")
        self.assertFetches(path, 1)

    # -- private images --------------------------------------------------------------

    async def test_private_image_never_served_to_others(self) -> None:
        """
        A private image (project A's) and a shared one (A's, with B an
        accepted member) read through the proxy by the projects that may
        read them are never stored: every read reaches glance-tx. A project
        that may not read them gets 404 and a client without a token 401,
        for the data and the metadata, on v1 and v2, before and after the
        readers' downloads, and when all of them ask at the same moment.
        """
        await self.start()
        data = image_bytes(SIZE, 6)
        private = await self.create_image(data, visibility="private", project=PROJECT_A)
        shared = await self.create_image(data, visibility="shared", project=PROJECT_A)
        added = await self.direct(
            "POST", f"/v2/images/{shared}/members", PROJECT_A,
            headers={"Content-Type": "application/json"},
            body=json.dumps({"member": PROJECT_B}).encode(),
        )
        self.assertEqual(added.code, 200, added.body)
        accepted = await self.direct(
            "PUT", f"/v2/images/{shared}/members/{PROJECT_B}", PROJECT_B,
            headers={"Content-Type": "application/json"},
            body=json.dumps({"status": "accepted"}).encode(),
        )
        self.assertEqual(accepted.code, 200, accepted.body)

        for image_id, readers, other in (
            (private, (TOKEN_A,), TOKEN_B),
            (shared, (TOKEN_A, TOKEN_B), TOKEN_C),
        ):
            paths = (
                f"/v2/images/{image_id}/file", f"/v1/images/{image_id}",
                f"/v2/images/{image_id}",
            )
            served = {path: 0 for path in paths}
            for path in paths:
                await self._refused(path, other, data)
                await self._refused(path, None, data)
            for _ in range(2):
                for token in readers:
                    for path in paths:
                        await self._read_unshared(path, token, data, served)
                for path in paths:
                    await self._refused(path, other, data)
                    await self._refused(path, None, data)
            # All at once: nothing is shared between requests in flight.
            await gatherResults(
                [
                    Deferred.fromCoroutine(self._read_unshared(paths[0], token, data, served))
                    for token in readers * 3
                ]
                + [Deferred.fromCoroutine(self._refused(paths[0], other, data)) for _ in range(3)]
                + [Deferred.fromCoroutine(self._refused(paths[0], None, data)) for _ in range(3)],
                consumeErrors=True,
            )
            # Every successful read was glance-tx's answer, none the cache's.
            self.assertEqual(served[paths[0]], 5 * len(readers))
            for path in paths[:2]:
                self.assertFetches(path, served[path])

    async def _refused(self, path: str, token: str | None, data: bytes) -> None:
        """Through the proxy, C{token}'s project (or no token) may not read C{path}."""
        answer = await self.via_proxy(path, token=token)
        who = "without a token" if token is None else f"as {token}"
        self.assertEqual(answer.code, 404 if token else 401, f"{path} {who}")
        self.assertNotIn(data[:4096], answer.body, f"{path} {who}")

    async def _read_unshared(
        self, path: str, token: str, data: bytes, served: dict[str, int]
    ) -> None:
        """
        Through the proxy, C{token}'s project gets what glance-tx itself
        answers it for C{path} (its v1 does not show a shared image to the
        image's members: a 404), and never a cache hit; C{served} counts
        the 200s.
        """
        direct = await self.direct("GET", path, PROJECTS[token])
        answer = await self.via_proxy(path, token=token)
        self.assertEqual(answer.code, direct.code, f"{path} as {token}")
        if answer.code == 200:
            served[path] += 1
            if path.endswith("/file") or path.startswith("/v1/"):
                self.assertImage(answer, data, f"{path} as {token}")
        self.assertFalse(
            (answer.header("X-Cache") or "").startswith("HIT"),
            f"{path} as {token}: an image others may not read was a cache hit:\n"
            f"{answer.describe()}\nglance-tx answered the proxy:\n{self.origin.lines()}",
        )

    # -- purging ---------------------------------------------------------------------

    async def _cached(self, seed: int, visibility: str = "public") -> tuple[str, bytes]:
        """A public image stored by the proxy under both data URLs."""
        data = image_bytes(SIZE, seed)
        image_id = await self.create_image(data, visibility=visibility)
        for path in (f"/v2/images/{image_id}/file", f"/v1/images/{image_id}"):
            for _ in range(2):
                self.assertImage(await self.via_proxy(path), data)
            self.assertFetches(path, 1)
        return image_id, data

    async def test_deleted_image_is_gone_from_the_proxy(self) -> None:
        """
        After a DELETE at glance-tx, the very next request through the proxy
        for the image's data or metadata is a 404 (glance-tx purged it).
        """
        await self.start()
        image_id, _ = await self._cached(7)
        deleted = await self.direct("DELETE", f"/v2/images/{image_id}")
        self.assertEqual(deleted.code, 204)
        await self.assertGone(
            [f"/v2/images/{image_id}/file", f"/v1/images/{image_id}", f"/v2/images/{image_id}"]
        )

    async def assertGone(self, paths: list[str], token: str = TOKEN_A, code: int = 404) -> None:
        """
        The very next request through the proxy for each of C{paths} is
        answered C{code}. When it is not, say whether the purge arrived
        later (a race with the answer to the change) or never.
        """
        wrong = {}
        for path in paths:
            answer = await self.via_proxy(path, token=token)
            if answer.code != code:
                wrong[path] = answer
        if not wrong:
            return
        started = reactor.seconds()
        late = {}
        for path in wrong:
            while reactor.seconds() - started < 5:
                if (await self.via_proxy(path, token=token)).code == code:
                    late[path] = reactor.seconds() - started
                    break
                await deferLater(reactor, 0.01)
        self.fail(
            f"{self.kind}: right after the change, not {code}:\n"
            + "\n".join(
                f"  {path}: {answer.code} (X-Cache {answer.header('X-Cache')}); "
                + (f"{code} {late[path] * 1000:.0f} ms later" if path in late else f"still not {code} after 5 s")
                for path, answer in wrong.items()
            )
        )

    async def test_deleted_through_the_proxy(self) -> None:
        """
        A DELETE sent through the proxy itself: the next download through
        the proxy is a 404 too.
        """
        await self.start()
        image_id, _ = await self._cached(8)
        deleted = await self.via_proxy(f"/v2/images/{image_id}", token=TOKEN_ADMIN, method="DELETE")
        self.assertEqual(deleted.code, 204)
        await self.assertGone([f"/v2/images/{image_id}/file", f"/v1/images/{image_id}"])

    async def test_hidden_image_is_gone_from_the_proxy(self) -> None:
        """
        A stored public image made private is no longer served to another
        project; a deactivated one no longer to anyone but an admin.
        """
        await self.start()
        image_id, _ = await self._cached(9)
        patched = await self.direct(
            "PATCH", f"/v2/images/{image_id}",
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
            body=json.dumps([{"op": "replace", "path": "/visibility", "value": "private"}]).encode(),
        )
        self.assertEqual(patched.code, 200, patched.body)
        await self.assertGone([f"/v2/images/{image_id}/file"], token=TOKEN_B)

        other_id, _ = await self._cached(10)
        deactivated = await self.direct("POST", f"/v2/images/{other_id}/actions/deactivate")
        self.assertEqual(deactivated.code, 204, deactivated.body)
        await self.assertGone([f"/v2/images/{other_id}/file"], token=TOKEN_B, code=403)

    async def test_purge_only_from_api_nodes(self) -> None:
        """
        A PURGE from an address that is not an API node (127.0.0.2 here) is
        refused and the image stays stored; from the API node (127.0.0.1)
        it is obeyed and the next download fetches again.
        """
        await self.start()
        image_id, data = await self._cached(11)
        path = f"/v2/images/{image_id}/file"
        status = await deferToThread(raw_status, self.proxy.port, "PURGE", path, "127.0.0.2")
        self.assertEqual(status, 403)
        self.assertImage(await self.via_proxy(path), data)
        self.assertFetches(path, 1)

        status = await deferToThread(raw_status, self.proxy.port, "PURGE", path, "127.0.0.1")
        self.assertEqual(status, 200)
        self.assertImage(await self.via_proxy(path), data)
        self.assertFetches(path, 2)


def raw_status(port: int, method: str, path: str, source: str) -> int:
    """
    Send one bodiless request to 127.0.0.1:C{port} from address C{source}
    and return the status code. Blocking: call it in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


class VarnishTests(CachingProxyTests, TestCase):
    """Varnish with C{doc/varnish.vcl}."""

    kind = "varnish"
    program = "varnishd"
    coalesces_misses = True


class SquidTests(CachingProxyTests, TestCase):
    """Squid with C{doc/squid.conf}."""

    kind = "squid"
    program = "squid"
    coalesces_misses = False


class KeystoneProxyTests(ProxyHarness):
    """
    glance-tx with C{auth_strategy = keystone} (the real Keystone of
    L{tests.keystone_server}) behind a proxy with the configuration for it
    (C{doc/varnish-keystone.vcl}, C{doc/squid-keystone.conf})::

        treq client --> proxy --> relay (records) --> glance-tx --> Keystone

    Clients send real Keystone tokens; glance-tx validates them on every
    request the proxy makes, and the proxy must send stored bytes only
    after glance-tx's 304 for that caller.
    """

    timeout = 120
    #: Whether a 404 answered to a revalidation leaves the stored copy in
    #: place (Squid 5 drops it; a 401 it keeps).
    keeps_copy_after_404: bool

    async def start(self) -> None:
        """
        Start glance-tx (reaching Keystone through C{self.keystone_relay},
        which a test may cut), the recording relay and the proxy; get a
        token for each test user in C{self.tokens}.
        """
        self.keystone = keystone_server(self)
        host, _, port = self.keystone.url.rsplit("/", 1)[-1].rpartition(":")
        self.keystone_relay = Relay(host, int(port))
        self.keystone_relay.open()
        self._stoppers.append(self.keystone_relay.cut)
        proxy_port = free_port()
        config = (
            "[DEFAULT]\nauth_strategy = keystone\n"
            + self.keystone.authtoken_section(
                auth_url=f"http://127.0.0.1:{self.keystone_relay.port_number}",
                token_cache_time=0,
                http_connect_timeout=2,
            )
            + f"[cache]\npurge_urls = http://127.0.0.1:{proxy_port}\n"
        )
        service = await start_glance_tx(
            live_config(self, config), self._stoppers.append, "proxy-keystone-tests"
        )
        self.base = f"http://127.0.0.1:{listening_port(service)}"
        relay = KeystoneStandIn.start(
            reactor, listening_port(service), None, record=self.origin.record
        )
        self._stoppers.append(relay.stop)
        await self.start_proxy(ProxySettings(
            backend_port=relay.port_number, port=proxy_port, keystone=True
        ))
        self.tokens: dict[str, str] = {}
        for user in ("admin", "alpha-member", "alpha-reader", "beta-member"):
            response = await self.treq.post(
                self.keystone.url + "/v3/auth/tokens",
                data=self.keystone.login_body(user),
                headers={"Content-Type": ["application/json"]},
            )
            await response.content()
            self.tokens[user] = response.headers.getRawHeaders("X-Subject-Token")[0]

    async def keystone_image(self, data: bytes, visibility: str, user: str) -> str:
        """An active image made straight at glance-tx by C{user}; its id."""
        token = self.tokens[user]
        created = await self.request(
            "POST", self.base + "/v2/images", token=token,
            headers={"Content-Type": "application/json"},
            body=json.dumps({
                "name": f"proxy-keystone-{visibility}", "disk_format": "raw",
                "container_format": "bare", "visibility": visibility,
            }).encode(),
        )
        self.assertEqual(created.code, 201, created.describe())
        image_id: str = json.loads(created.body)["id"]
        uploaded = await self.request(
            "PUT", self.base + f"/v2/images/{image_id}/file", token=token,
            headers={"Content-Type": "application/octet-stream"}, body=data,
        )
        self.assertEqual(uploaded.code, 204, uploaded.describe())
        return image_id

    async def assertRefused(self, path: str, token: str | None, code: int, data: bytes) -> None:
        answer = await self.via_proxy(path, token=token)
        self.assertEqual(answer.code, code, f"{path} with {token!r}: {answer.describe()}")
        self.assertNotIn(data[:4096], answer.body)

    async def test_public_image_fetched_once_revalidated_always(self) -> None:
        """
        10 downloads of a public image by authorized callers (members of
        two projects, an admin) cost glance-tx 1 full fetch and 9 304s
        without a body; the image JSON likewise (a reader among them). No
        token or a bad token is a 401 through the proxy, and a reader's
        download a 403 (Glance's download_image rule), never the bytes,
        and the stored image stays in place.
        """
        await self.start()
        data = image_bytes(SIZE, 21)
        image_id = await self.keystone_image(data, "public", "admin")
        path, meta = f"/v2/images/{image_id}/file", f"/v2/images/{image_id}"
        # Glance's download_image wants a member: a reader sees the image
        # but gets no bytes (below).
        downloaders = ["alpha-member", "beta-member", "admin"]
        readers = ["alpha-member", "beta-member", "alpha-reader"]
        for i in range(10):
            answer = await self.via_proxy(path, token=self.tokens[downloaders[i % 3]])
            self.assertImage(answer, data, f"download {i + 1}")
            self.assertEqual(answer.header("Cache-Control"), "public, no-cache, must-revalidate")
        self.assertFetches(path, 1)
        self.assertFetches(path, 9, codes=(304,))
        for i in range(3):
            shown = await self.via_proxy(meta, token=self.tokens[readers[i]])
            self.assertEqual(shown.code, 200, shown.describe())
            self.assertEqual(json.loads(shown.body)["id"], image_id)
        self.assertFetches(meta, 1)
        self.assertFetches(meta, 2, codes=(304,))

        for token in (None, "gAAAAABnotatoken", self.tokens["alpha-member"] + "x"):
            await self.assertRefused(path, token, 401, data)
            await self.assertRefused(meta, token, 401, data)
        self.assertImage(await self.via_proxy(path, token=self.tokens["beta-member"]), data)
        self.assertFetches(path, 1)
        self.assertFetches(path, 10, codes=(304,))
        await self.assertRefused(path, self.tokens["alpha-reader"], 403, data)

    async def test_private_image_only_for_its_project(self) -> None:
        """
        A private image of project alpha is stored too and served from the
        store to alpha's member and an admin (after glance-tx's 304 for
        each), and is a 404 for beta's member and a 401 without a token,
        one at a time and all at once.
        """
        await self.start()
        data = image_bytes(SIZE, 22)
        image_id = await self.keystone_image(data, "private", "alpha-member")
        path = f"/v2/images/{image_id}/file"
        for user in ("alpha-member", "admin", "alpha-member"):
            self.assertImage(await self.via_proxy(path, token=self.tokens[user]), data, user)
        self.assertFetches(path, 1)
        self.assertFetches(path, 2, codes=(304,))
        await self.assertRefused(path, None, 401, data)
        await self.assertRefused(path, "gAAAAABnotatoken", 401, data)
        await self._reads(path, data)
        self.assertFetches(path, 1)
        await self.assertRefused(path, self.tokens["beta-member"], 404, data)
        await self._reads(path, data)
        self.assertFetches(path, 1 if self.keeps_copy_after_404 else 2)
        await gatherResults(
            [Deferred.fromCoroutine(self.assertRefused(path, self.tokens["beta-member"], 404, data))
             for _ in range(3)]
            + [Deferred.fromCoroutine(self.assertRefused(path, None, 401, data)) for _ in range(3)]
            + [Deferred.fromCoroutine(self._reads(path, data)) for _ in range(3)],
            consumeErrors=True,
        )
        if self.keeps_copy_after_404:
            self.assertFetches(path, 1)

    async def test_keystone_down_is_an_error_not_the_copy(self) -> None:
        """
        While glance-tx cannot reach Keystone it answers 503, and the proxy
        passes that on (must-revalidate) instead of its stored copy; once
        Keystone is back, the copy is served after a 304 again.
        """
        await self.start()
        data = image_bytes(SIZE, 23)
        image_id = await self.keystone_image(data, "public", "admin")
        path = f"/v2/images/{image_id}/file"
        self.assertImage(await self.via_proxy(path, token=self.tokens["beta-member"]), data)
        await self.keystone_relay.cut()
        for token in (self.tokens["beta-member"], "gAAAAABnotatoken"):
            await self.assertRefused(path, token, 503, data)
        self.keystone_relay.open()
        self.assertImage(await self.via_proxy(path, token=self.tokens["beta-member"]), data)
        self.assertFetches(path, 1)
        self.assertFetches(path, 1, codes=(304,))

    async def _reads(self, path: str, data: bytes) -> None:
        self.assertImage(await self.via_proxy(path, token=self.tokens["alpha-member"]), data)


class VarnishKeystoneTests(KeystoneProxyTests, TestCase):
    """Varnish with C{doc/varnish-keystone.vcl}."""

    kind = "varnish"
    program = "varnishd"
    keeps_copy_after_404 = True


class SquidKeystoneTests(KeystoneProxyTests, TestCase):
    """Squid with C{doc/squid-keystone.conf}."""

    kind = "squid"
    program = "squid"
    keeps_copy_after_404 = False


class TemplateTests(TestCase):
    """The shipped templates and the guide agree on the placeholders."""

    def test_placeholders_documented(self) -> None:
        """
        Every C{@NAME@} in C{doc/varnish.vcl} and C{doc/squid.conf} is
        explained in C{doc/caching.rst}, and the test helpers fill in all of
        them.
        """
        guide = (VARNISH_VCL.parent / "caching.rst").read_text()
        for template in (VARNISH_VCL, SQUID_CONF, SQUID_KEYSTONE_CONF):
            names = placeholders(template.read_text())
            self.assertTrue(names, template)
            for name in names:
                self.assertIn(f"@{name}@", guide, f"{template.name}: @{name}@")
