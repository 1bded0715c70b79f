"""
A real glance-tx on a real socket for the tests that drive real OpenStack
clients (python-glanceclient's ``glance`` command, openstacksdk) against it.

L{LiveServerTestCase} starts a fresh server for every test, in this process
on trial's reactor, with SQLite and the filesystem store in the test's
temporary directory, the way C{tests/test_end_to_end.py} does. The clients
run outside the reactor thread (a subprocess, or a worker thread for the
synchronous openstacksdk) so the reactor keeps serving them.

Who is asking: glance-tx takes identity from the headers Keystone's
auth_token middleware sets (C{X-Project-Id}, C{X-Roles}, ...); a request
without them acts as the default project with the admin role. The clients
send only C{X-Auth-Token}, so to act as another project (an image member
accepting a share) the tests point the client at an L{IdentityProxy}: a
stand-in for keystonemiddleware that turns a known token into those headers,
strips any the client sent, answers 401 to an unknown token and forwards the
request unchanged otherwise. The owner's token goes straight to the server
and exercises the no-headers default.

Set C{GLANCE_TX_CLIENT_TESTS_URL} to run the same tests against another
Images API v2 server instead (for example OpenStack Glance, to check that
the tests pin Glance's real behaviour). That server must take identity from
the headers, so then every client request, the owner's too, goes through
the proxy. For OpenStack Glance (as in C{bench/transfer.py}, under uwsgi)
that is a paste pipeline with Glance's own C{context} filter and no
C{authtoken}, chosen with C{[paste_deploy] flavor = headers}::

    [composite:api]
    headers = cors http_proxy_to_wsgi versionnegotiation osprofiler context rootapp

(plus a C{[composite:glance-api-headers]} like C{glance-api-keystone}).
Every test there uses names, properties and tags of its own, so images
left by other runs do not disturb it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from attrs import define, field
from treq import collect as treq_collect
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.tcp import Connection
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.server import Request as WebRequest

from glance_tx import twisted_private
from glance_tx.config import Config, load_config
from glance_tx.services import ServiceChain, ThreadPoolService
from glance_tx.tap import glance_service

log = Logger()

MiB = 1 << 20

#: Set to a base URL to run the client tests against that server instead.
EXTERNAL_URL = os.environ.get("GLANCE_TX_CLIENT_TESTS_URL", "").rstrip("/")

#: The token the owner's clients send. Against glance-tx it maps to no
#: identity headers at all: the request acts as the default project, admin.
OWNER_TOKEN = "fake-token"
#: What keystoneauth's "none" auth plugin (openstacksdk's auth_type="none")
#: sends as X-Auth-Token: the owner too.
NOAUTH_TOKEN = "notused"
#: glance-tx's default project (its ``default_project`` setting).
OWNER_PROJECT = "admin"
#: A second project, as Keystone would name it, for image members.
MEMBER_TOKEN = "member-token"
MEMBER_PROJECT = "5d3a1c0e9b8f47a6a2e4c6b8d0f1e2a3"


def keystone_identity(project: str, user: str, roles: str) -> dict[str, str]:
    """
    The headers keystonemiddleware's auth_token sets for a token it accepts:
    C{user} of C{project}, with the comma-separated C{roles}.
    """
    return {
        "X-Identity-Status": "Confirmed",
        "X-Project-Id": project,
        "X-User-Id": user,
        "X-Roles": roles,
    }


#: What keystonemiddleware's auth_token sets for each token it accepts.
IDENTITIES: dict[str, dict[str, str]] = {
    OWNER_TOKEN: keystone_identity(
        OWNER_PROJECT, "0a1b2c3d4e5f40718293a4b5c6d7e8f9", "admin,member,reader"
    ),
    MEMBER_TOKEN: keystone_identity(
        MEMBER_PROJECT, "7e1f0c2b3a4d45e6b7c8d9e0f1a2b3c4", "member,reader"
    ),
}

IDENTITIES[NOAUTH_TOKEN] = IDENTITIES[OWNER_TOKEN]

#: Headers an identity middleware owns: whatever the client sent is dropped.
IDENTITY_HEADERS = frozenset({
    b"x-identity-status", b"x-project-id", b"x-tenant-id", b"x-tenant",
    b"x-user-id", b"x-user", b"x-roles", b"x-role", b"x-domain-id",
    b"x-project-name", b"x-user-name", b"x-service-catalog",
})
#: Hop-by-hop headers (RFC 9110 7.6.1) and the ones the forwarding side
#: computes again.
_HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length",
}


def identity_headers(token: str) -> dict[str, str]:
    """
    The identity headers a request made with C{token} carries once it is
    past the identity middleware. Against glance-tx the owner sends none.
    """
    if token in (OWNER_TOKEN, NOAUTH_TOKEN) and not EXTERNAL_URL:
        return {}
    return dict(IDENTITIES[token])


def write_pattern_file(path: str, size: int) -> tuple[str, str]:
    """
    Write C{size} bytes that no two MiB of are alike (each MiB is a run of
    its own index) to C{path}; return their md5 and sha512 hex digests.
    Blocking: call it in a thread.
    """
    md5, sha512 = hashlib.md5(), hashlib.sha512()
    with open(path, "wb") as f:
        index = 0
        left = size
        while left:
            chunk = (index.to_bytes(4, "big") * (MiB // 4))[:left]
            f.write(chunk)
            md5.update(chunk)
            sha512.update(chunk)
            left -= len(chunk)
            index += 1
    return md5.hexdigest(), sha512.hexdigest()


def pattern_bytes(size: int, seed: int = 7) -> bytes:
    """C{size} bytes of a pattern that depends on C{seed}."""
    unit = hashlib.sha512(seed.to_bytes(4, "big")).digest()
    return (unit * (size // len(unit) + 1))[:size]


def file_digests(path: str) -> tuple[int, str, str]:
    """Size, md5 and sha512 of a file. Blocking: call it in a thread."""
    md5, sha512 = hashlib.md5(), hashlib.sha512()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            size += len(chunk)
            md5.update(chunk)
            sha512.update(chunk)
    return size, md5.hexdigest(), sha512.hexdigest()


def live_config(case: TestCase, config_text: str = "") -> Config:
    """
    The configuration of a glance-tx for C{case}: listening on a free
    loopback port, SQLite and the filesystem store in a fresh directory of
    the test's, and C{config_text} (when there is any) as its file.
    """
    data_dir = os.path.abspath(case.mktemp())
    path = None
    if config_text:
        path = case.mktemp()
        with open(path, "w") as f:
            f.write(config_text)
    return load_config(path, endpoint="tcp:0:interface=127.0.0.1", data_dir=data_dir)


async def start_glance_tx(
    config: Config, on_stop: Callable[[Callable[[], object]], object], name: str
) -> ServiceChain:
    """
    Start glance-tx with C{config} in this process on the reactor, with a
    thread pool named C{name}, and wait until it listens. Its
    C{stopService} is handed to C{on_stop} (C{addCleanup}, say) before
    anything can fail.
    """
    pool = ThreadPool(minthreads=2, maxthreads=8, name=name)
    service = glance_service(config, reactor, ThreadPoolService(reactor, pool))
    service.startService()
    on_stop(service.stopService)
    await service.when_ready()
    return service


def listening_port(service: ServiceChain) -> int:
    """The port a started glance-tx listens on."""
    port = service.getServiceNamed("listener").port
    assert port is not None
    return port.getHost().port


def settled_client(
    case: TestCase,
    before: Callable[[], Awaitable[None]] | None = None,
    tries: int = 500,
) -> HTTPClient:
    """
    A treq client for C{case} with connections of its own. At cleanup,
    after C{before} (stopping what sits between the client and the server),
    it closes them and waits (C{tries} times 20 ms at most) for both ends of
    every TCP connection in the reactor to go, so trial finds it clean.
    """
    http_pool = HTTPConnectionPool(reactor, persistent=False)

    async def settle() -> None:
        if before is not None:
            await before()
        await http_pool.closeCachedConnections()
        for _ in range(tries):
            if not [r for r in reactor.getReaders() if isinstance(r, Connection)]:
                break
            await deferLater(reactor, 0.02)

    case.addCleanup(lambda: Deferred.fromCoroutine(settle()))
    return HTTPClient(Agent(reactor, pool=http_pool))


class _ProxyResource(Resource):
    """Forwards every request to C{backend}, with identity set from the token."""

    isLeaf = True

    def __init__(
        self,
        backend: str,
        client: HTTPClient,
        identities: Mapping[str, Mapping[str, str]],
        log_lines: list[str],
    ) -> None:
        Resource.__init__(self)
        self.backend = backend
        self.client = client
        self.identities = identities
        self.log_lines = log_lines

    def render(self, request: WebRequest) -> object:
        d = Deferred.fromCoroutine(self._forward(request))

        def failed(failure: Any) -> None:
            log.failure("identity proxy", failure)
            if not request.finished and not twisted_private.client_gone(request):
                # Finishing a gone request raises.
                request.setResponseCode(502)
                request.finish()

        d.addErrback(failed)
        return NOT_DONE_YET

    async def _forward(self, request: WebRequest) -> None:
        method = request.method
        raw_token = request.getHeader(b"x-auth-token")
        # No token at all (openstacksdk with auth_type="none"): the owner, as
        # glance-tx treats a request with no identity.
        token = raw_token.decode("ascii", "replace") if raw_token else OWNER_TOKEN
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            lower = name.lower()
            if lower in IDENTITY_HEADERS or lower in _HOP_BY_HOP:
                continue
            headers.setRawHeaders(name, values)
        if token not in self.identities:
            self.log_lines.append(f"{method.decode()} {request.uri.decode()} -> 401 (token)")
            request.setResponseCode(401)
            request.setHeader(b"Content-Type", b"application/json")
            request.write(b'{"error": {"code": 401, "message": "unknown token"}}')
            request.finish()
            return
        identity = identity_headers(token)
        for name, value in identity.items():
            headers.setRawHeaders(name.encode(), [value.encode()])
        body = request.content
        body.seek(0, os.SEEK_END)
        length = body.tell()
        body.seek(0)
        response = await self.client.request(
            method.decode("ascii"),
            self.backend + request.uri.decode("ascii"),
            headers=headers,
            data=FileBodyProducer(body) if length else None,
            unbuffered=True,
        )
        self.log_lines.append(
            f"{method.decode()} {request.uri.decode()} as {identity.get('X-Project-Id', '-')}"
            f" -> {response.code}"
        )
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() in _HOP_BY_HOP - {b"content-length"}:
                continue
            request.responseHeaders.setRawHeaders(name, values)
        if method != b"HEAD":
            await treq_collect(response, request.write)
        if not twisted_private.client_gone(request):
            request.finish()


@define
class IdentityProxy:
    """
    A stand-in for keystonemiddleware's auth_token in front of the server:
    listens on a loopback port; C{url} is what clients should use.
    """

    backend: str
    port: IListeningPort
    pool: HTTPConnectionPool
    log_lines: list[str] = field(factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    @classmethod
    async def start(cls, backend: str) -> IdentityProxy:
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = HTTPClient(Agent(reactor, pool=pool))
        lines: list[str] = []
        resource = _ProxyResource(backend, client, IDENTITIES, lines)
        site = Site(resource)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return cls(backend=backend, port=port, pool=pool, log_lines=lines)

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.pool.closeCachedConnections()


class LiveServerTestCase(TestCase):
    """
    Each test gets a fresh glance-tx at C{self.base} (or the external server
    named by C{GLANCE_TX_CLIENT_TESTS_URL}), a treq client C{self.treq}, and
    on demand an L{IdentityProxy}. Cleanup stops them all and waits for every
    TCP connection to close, so trial finds a clean reactor.
    """

    timeout = 120
    config_text = ""

    async def _start_server(self) -> None:
        if EXTERNAL_URL:
            self.base = EXTERNAL_URL
            return
        config = live_config(self, self.config_text)
        self.assertEqual(config.default_project, OWNER_PROJECT)
        self.service = await start_glance_tx(config, self.addCleanup, "live-server")
        self.base = f"http://127.0.0.1:{listening_port(self.service)}"

    def setUp(self) -> Deferred[None]:
        self._proxy: IdentityProxy | None = None

        async def stop_proxy() -> None:
            if self._proxy is not None:
                for line in self._proxy.log_lines:
                    log.info("identity proxy: {line}", line=line)
                await self._proxy.stop()

        # Clients (subprocesses, worker threads) may still be closing their
        # sockets when a test ends.
        self.treq = settled_client(self, stop_proxy)
        return Deferred.fromCoroutine(self._start_server())

    async def proxy(self) -> IdentityProxy:
        """The identity proxy in front of the server (started on first use)."""
        if self._proxy is None:
            self._proxy = await IdentityProxy.start(self.base)
        return self._proxy

    async def endpoint(self, token: str = OWNER_TOKEN) -> str:
        """The image endpoint a client sending C{token} should be given."""
        if identity_headers(token):
            return (await self.proxy()).url
        return self.base

    async def api(
        self,
        method: str,
        path: str,
        *,
        token: str = OWNER_TOKEN,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request straight to the server as C{token}'s project: the
        status and the JSON body (C{None} when there is none)."""
        all_headers = {"X-Auth-Token": token, **identity_headers(token), **(headers or {})}
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        response = await self.treq.request(
            method, self.base + path,
            headers={k: [v] for k, v in all_headers.items()}, data=data,
        )
        body = await response.content()
        try:
            return response.code, json.loads(body) if body else None
        except ValueError:
            return response.code, body

    async def image(self, image_id: str, token: str = OWNER_TOKEN) -> dict[str, Any] | None:
        """The image as C{GET /v2/images/{id}} shows it, or C{None} on 404."""
        code, body = await self.api("GET", f"/v2/images/{image_id}", token=token)
        if code == 404:
            return None
        self.assertEqual(code, 200, f"GET /v2/images/{image_id}: {code} {body!r}")
        return body

    async def make_file(self, name: str, size: int) -> tuple[str, str, str]:
        """A file of C{size} pattern bytes in the test's temporary
        directory: its path, md5 and sha512."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        md5, sha512 = await deferToThread(write_pattern_file, path, size)
        return path, md5, sha512


def hold_trial_worker_log(case: TestCase) -> None:
    """
    For the rest of C{case}, hold the log's text for C{trial -j}'s worker
    until cleanup. That worker sends each event to the manager as an AMP
    call whose answer it reads only once the test has ended, so every event
    keeps 14 objects alive until then: a test that counts the objects the
    collector tracks, across rounds that log, would see them grow ~1,400 a
    round (tests.test_hangups). Held as text, they are strings, which the
    collector does not track. Under plain trial this does nothing.
    """
    from twisted.python import log as legacy

    for observer in legacy.theLogPublisher.observers:
        if type(getattr(observer, "__self__", None)).__name__ == "WorkerLogObserver":
            break
    else:
        return
    held: list[str] = []

    def hold(event: dict[str, Any]) -> None:
        text = legacy.textFromEventDict(event)
        if text is not None:
            held.append(text)

    def release() -> None:
        legacy.removeObserver(hold)
        legacy.addObserver(observer)
        for text in held:
            observer({"message": (text,), "isError": 0})

    legacy.removeObserver(observer)
    legacy.addObserver(hold)
    case.addCleanup(release)
