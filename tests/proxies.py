"""
Real caching proxies for the integration tests: C{varnishd} and C{squid}
(the Debian packages) started as child processes on free loopback ports,
with the configurations shipped in C{doc/} rendered for the test.

Each proxy gets a directory of its own (its working directory, cache, logs
and the rendered configuration) and is stopped, with every process it
started, when the test ends:

  - Varnish: C{varnishd -F -n DIR -a 127.0.0.1:PORT -f DIR/glance.vcl
    -s malloc,...} (C{-F}: the manager stays in the foreground as our child
    and takes its cache worker down with it on C{SIGTERM});
  - Squid: C{squid -z -N -f DIR/squid.conf} to create the cache directories,
    then C{squid -N -f DIR/squid.conf} (C{-N}: one process, in the
    foreground), stopped with C{SIGINT} (Squid's "shut down now", where
    C{SIGTERM} would wait C{shutdown_lifetime} for clients).

A proxy is ready once C{GET /healthcheck} through it answers 200 (so the
whole chain, proxy to glance-tx, works).

L{KeystoneStandIn} is what sits between the proxy and glance-tx in the tests:
glance-tx takes identity from the headers Keystone's auth_token middleware
sets, so, as in an OpenStack deployment with the cache in front of the image
API, clients send only C{X-Auth-Token} and a layer behind the cache turns it
into identity headers, or answers 401.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrs import define, field, frozen
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.web.proxy import ProxyClient, ProxyClientFactory, ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Request as WebRequest
from twisted.web.server import Site

from tests.live_server import IDENTITY_HEADERS

DOC = Path(__file__).resolve().parent.parent / "doc"
VARNISH_VCL = DOC / "varnish.vcl"
SQUID_CONF = DOC / "squid.conf"
#: For auth_strategy = keystone: each includes the one above.
VARNISH_KEYSTONE_VCL = DOC / "varnish-keystone.vcl"
SQUID_KEYSTONE_CONF = DOC / "squid-keystone.conf"

#: Where Debian puts the daemons (not always on a non-root PATH).
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")

#: How long a proxy may take to answer its first request.
START_TIMEOUT = 60.0

_PLACEHOLDER = re.compile(r"@[A-Z][A-Z0-9_]*@")


class ProxyUnavailable(Exception):
    """The proxy's program is not installed here."""


class ProxyFailed(Exception):
    """The proxy would not start, or died; the message has its log."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def find_program(name: str) -> str:
    """The path of C{name} on C{PATH} or in an sbin directory."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
    if found is None:
        raise ProxyUnavailable(
            f"{name} is not installed (Debian: apt-get install varnish squid; "
            "tools/run-tests installs them)"
        )
    return found


def render(template: str, values: Mapping[str, object]) -> str:
    """
    C{template} with every C{@NAME@} replaced by C{values["NAME"]}.

    @raise ValueError: a placeholder is left without a value.
    """
    text = template
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    left = sorted(set(_PLACEHOLDER.findall(text)))
    if left:
        raise ValueError(f"no value for {', '.join(left)}")
    return text


def placeholders(template: str) -> set[str]:
    """The names of the C{@NAME@} placeholders in C{template}."""
    return {p.strip("@") for p in _PLACEHOLDER.findall(template)}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def proxy_directory(kind: str) -> Path:
    """
    A new directory for one proxy, in the system's temporary directory and
    readable by everyone: varnishd and squid started as root drop to their
    own users (varnish and vcache, proxy), which must reach the
    configuration and, for Squid, write the cache and logs. trial's own
    temporary directories are private to root. The caller removes it.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"glance-tx-{kind}-"))
    directory.chmod(0o755)
    return directory


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


class _Child(ProcessProtocol):
    """A child process whose output goes to a file; C{ended} fires on exit."""

    def __init__(self) -> None:
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.running = True

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        value = reason.value
        if isinstance(value, ProcessDone | ProcessTerminated):
            self.exit_code = value.exitCode
        self.ended.callback(self.exit_code)


@define
class RunningProxy:
    """
    A caching proxy this module started: C{url} is where clients (and
    glance-tx's C{PURGE}) reach it.
    """

    kind: str
    port: int
    directory: Path
    log_path: Path
    reactor: Any
    _child: _Child
    _transport: Any
    _stop_signal: str
    extra_logs: tuple[Path, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._child.running

    def logs(self) -> str:
        """The tail of every log the proxy wrote, for failure messages."""
        parts = [f"--- {self.log_path}\n{tail(self.log_path)}"]
        parts += [f"--- {p}\n{tail(p)}" for p in self.extra_logs if p.exists()]
        return "\n".join(parts)

    def check_alive(self) -> None:
        if not self._child.running:
            raise ProxyFailed(
                f"{self.kind} exited with {self._child.exit_code}:\n{self.logs()}"
            )

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop the proxy (then kill it if it lingers) and wait for its exit."""
        if not self._child.running:
            return
        try:
            self._transport.signalProcess(self._stop_signal)
        except Exception:
            pass
        for _ in range(int(timeout / 0.05)):
            if not self._child.running:
                return
            await deferLater(self.reactor, 0.05)
        try:
            self._transport.signalProcess("KILL")
        except Exception:
            pass
        await self._child.ended


async def _spawn(
    reactor: Any,
    kind: str,
    argv: list[str],
    directory: Path,
    stop_signal: str,
    port: int,
    extra_logs: tuple[Path, ...] = (),
) -> RunningProxy:
    log_path = directory / f"{kind}.out"
    child = _Child()
    with open(log_path, "ab") as out:
        transport = reactor.spawnProcess(
            child,
            argv[0],
            argv,
            env=dict(os.environ),
            path=str(directory),
            childFDs={0: "w", 1: out.fileno(), 2: out.fileno()},
        )
    transport.closeStdin()
    return RunningProxy(
        kind=kind,
        port=port,
        directory=directory,
        log_path=log_path,
        reactor=reactor,
        child=child,
        transport=transport,
        stop_signal=stop_signal,
        extra_logs=extra_logs,
    )


async def wait_ready(proxy: RunningProxy, client: HTTPClient, timeout: float = START_TIMEOUT) -> None:
    """Wait until C{GET /healthcheck} through the proxy answers 200."""
    last = "no answer"
    for _ in range(int(timeout / 0.1)):
        proxy.check_alive()
        try:
            response = await client.get(proxy.url + "/healthcheck")
            await response.content()
            if response.code == 200:
                return
            last = f"HTTP {response.code}"
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        await deferLater(proxy.reactor, 0.1)
    await proxy.stop()
    raise ProxyFailed(f"{proxy.kind} not ready after {timeout:.0f}s ({last}):\n{proxy.logs()}")


@frozen
class ProxySettings:
    """What a test decides about the proxy it starts."""

    #: Where the proxy forwards to (glance-tx, or the layer in front of it).
    backend_port: int
    #: The port to listen on (chosen in advance: glance-tx's purge_urls
    #: names it before the proxy starts).
    port: int = field(factory=free_port)
    backend_host: str = "127.0.0.1"
    #: The only address PURGE is obeyed from.
    api_node: str = "127.0.0.1"
    range_prefetch_limit: int = 64 << 20
    #: Cache size: Varnish's malloc storage, Squid's disk cache.
    storage_mib: int = 256
    #: Load the configuration for auth_strategy = keystone
    #: (C{varnish-keystone.vcl}, C{squid-keystone.conf}), which includes
    #: the other.
    keystone: bool = False


async def start_varnish(reactor: Any, directory: Path, settings: ProxySettings) -> RunningProxy:
    """varnishd with C{doc/varnish.vcl}, listening on C{settings.port}."""
    varnishd = find_program("varnishd")
    directory.mkdir(parents=True, exist_ok=True)
    # varnishd drops privileges (users varnish, vcache) when run as root:
    # they must be able to reach the VCL and the working directory.
    directory.chmod(0o755)
    vcl = directory / ("varnish.vcl" if settings.keystone else "glance.vcl")
    vcl.write_text(
        render(
            VARNISH_VCL.read_text(),
            {
                "BACKEND_HOST": settings.backend_host,
                "BACKEND_PORT": settings.backend_port,
                "API_NODE": settings.api_node,
                "RANGE_PREFETCH_LIMIT": settings.range_prefetch_limit,
            },
        )
    )
    vcl.chmod(0o644)
    if settings.keystone:
        vcl = directory / "glance.vcl"
        vcl.write_text(VARNISH_KEYSTONE_VCL.read_text())
        vcl.chmod(0o644)
    argv = [
        varnishd,
        "-F",
        "-n", str(directory / "varnish"),
        "-a", f"127.0.0.1:{settings.port}",
        "-f", str(vcl),
        "-s", f"malloc,{settings.storage_mib}m",
        "-p", "send_timeout=86400",
        # No management port: the tests never use varnishadm.
        "-T", "none",
    ]
    return await _spawn(reactor, "varnishd", argv, directory, "TERM", settings.port)


def _squid_user() -> str:
    """The user Squid switches to when started as root (Debian: proxy)."""
    for name in ("proxy", "squid", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return "nobody"


async def start_squid(reactor: Any, directory: Path, settings: ProxySettings) -> RunningProxy:
    """squid with C{doc/squid.conf} in accelerator mode on C{settings.port}."""
    squid = find_program("squid")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    cache_dir, log_dir, run_dir = (directory / d for d in ("cache", "log", "run"))
    for d in (cache_dir, log_dir, run_dir):
        d.mkdir(exist_ok=True)
    user = _squid_user()
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        for d in (cache_dir, log_dir, run_dir):
            os.chown(d, entry.pw_uid, entry.pw_gid)
    conf = directory / "squid.conf"
    text = render(
        SQUID_CONF.read_text(),
        {
            "LISTEN": f"127.0.0.1:{settings.port}",
            "SITE": "glance.test",
            "BACKEND_HOST": settings.backend_host,
            "BACKEND_PORT": settings.backend_port,
            "API_NODE": settings.api_node,
            "RANGE_PREFETCH_LIMIT": settings.range_prefetch_limit,
            "CACHE_DIR": cache_dir,
            "CACHE_DIR_MB": settings.storage_mib,
            "LOG_DIR": log_dir,
            "RUN_DIR": run_dir,
            "CACHE_USER": user,
        },
    )
    # The shipped 16 x 256 directories take squid -z about two seconds of
    # mkdir per test; a test's cache needs no fan-out.
    text, found = re.subn(r"(?m)^(cache_dir aufs \S+ \d+) 16 256$", r"\1 1 1", text)
    if found != 1:
        raise ValueError(f"{SQUID_CONF}: no 'cache_dir aufs DIR MB 16 256' line")
    if settings.keystone:
        base = directory / "squid-base.conf"
        base.write_text(text)
        base.chmod(0o644)
        text = render(SQUID_KEYSTONE_CONF.read_text(), {"BASE_CONF": base})
    conf.write_text(text)
    conf.chmod(0o644)
    out, err, code = await getProcessOutputAndValue(
        squid, ["-z", "-N", "-f", str(conf)], env=dict(os.environ),
        path=str(directory), reactor=reactor,
    )
    if code != 0:
        raise ProxyFailed(
            f"squid -z exited with {code}:\n{out.decode(errors='replace')}"
            f"{err.decode(errors='replace')}\n{tail(log_dir / 'cache.log')}"
        )
    argv = [squid, "-N", "-f", str(conf)]
    return await _spawn(
        reactor, "squid", argv, directory, "INT", settings.port,
        extra_logs=(log_dir / "cache.log",),
    )


#: The proxies the tests run against: name -> starter.
STARTERS = {"varnish": start_varnish, "squid": start_squid}


# -- the identity layer behind the cache ----------------------------------------

class _ForwardingClient(ProxyClient):
    """
    twisted.web's ProxyClient, quiet when the proxy in front hangs up
    before the answer is complete (the stock one then finishes a request
    whose connection is gone, which raises).
    """

    _gone = False

    def connectionMade(self) -> None:
        self.father.notifyFinish().addErrback(self._father_gone)
        super().connectionMade()

    def _father_gone(self, reason: Failure) -> None:
        self._gone = True
        # ProxyClient's documented flag: the request needs no finish().
        self._finished = True
        if self.transport is not None:
            self.transport.loseConnection()

    def handleResponsePart(self, buffer: bytes) -> None:
        if not self._gone:
            super().handleResponsePart(buffer)


def _recording_factory(record: Callable[[str, str, int], None]) -> type[ProxyClientFactory]:
    """A ProxyClientFactory whose clients report each answer's status line."""

    class Client(_ForwardingClient):
        def handleStatus(self, version: bytes, code: bytes, message: bytes) -> None:
            record(self.command.decode("ascii"), self.rest.decode("ascii"), int(code))
            super().handleStatus(version, code, message)

    class Factory(ProxyClientFactory):
        protocol = Client

    return Factory


class _StandInResource(Resource):
    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        backend_port: int,
        identities: Mapping[str, Mapping[str, str]] | None,
        record: Callable[[str, str, int], None],
    ) -> None:
        Resource.__init__(self)
        self.reactor = reactor
        self.backend_port = backend_port
        self.identities = identities
        self.client_factory = _recording_factory(record)

    def render(self, request: WebRequest) -> object:
        if self.identities is None:
            return self._forward(request)
        raw = request.getHeader(b"x-auth-token")
        token = raw.decode("ascii", "replace") if raw else None
        identity = self.identities.get(token) if token is not None else None
        if request.path == b"/healthcheck":
            identity = {}
        if identity is None:
            request.setResponseCode(401)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"WWW-Authenticate", b"Keystone uri='http://keystone.test'")
            return b'{"error": {"code": 401, "message": "Authentication required"}}'
        headers = request.requestHeaders
        for name in IDENTITY_HEADERS:
            headers.removeHeader(name)
        for name, value in identity.items():
            headers.setRawHeaders(name.encode("ascii"), [value.encode("ascii")])
        return self._forward(request)

    def _forward(self, request: WebRequest) -> object:
        headers = request.requestHeaders
        # twisted.web has read the whole body (de-chunked): it goes on with
        # a Content-Length.
        if headers.hasHeader(b"transfer-encoding"):
            headers.removeHeader(b"transfer-encoding")
            request.content.seek(0, os.SEEK_END)
            headers.setRawHeaders(b"content-length", [b"%d" % request.content.tell()])
        # twisted.web's reverse proxy passes the answer on as it comes
        # (status, every header as sent, the body), which is what a proxy
        # in front must see; one connection per request, closed after it.
        forward = ReverseProxyResource(
            "127.0.0.1", self.backend_port, request.path, reactor=self.reactor
        )
        forward.proxyClientFactoryClass = self.client_factory
        return forward.render(request)


@define
class KeystoneStandIn:
    """
    Stands for the part of an OpenStack image API node that authenticates
    (keystonemiddleware's auth_token): a known C{X-Auth-Token} becomes the
    identity headers glance-tx reads, identity headers a client sent are
    dropped, and a request with no token or an unknown one is answered 401
    (C{/healthcheck} needs none). Listens on a loopback port; C{port} is
    what the proxy forwards to.
    """

    port: IListeningPort

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    @classmethod
    def start(
        cls,
        reactor: Any,
        backend_port: int,
        identities: Mapping[str, Mapping[str, str]] | None,
        record: Callable[[str, str, int], None] = lambda method, uri, code: None,
    ) -> KeystoneStandIn:
        """
        Listen on a free loopback port, forwarding to glance-tx on
        C{backend_port}; C{record(method, uri, status)} is called for every
        answer glance-tx gives, as its status line arrives. With
        C{identities} None it only relays and records: glance-tx
        (C{auth_strategy = keystone}) checks the token itself.
        """
        site = Site(_StandInResource(reactor, backend_port, identities, record))
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return cls(port=port)

    async def stop(self) -> None:
        await self.port.stopListening()


__all__ = [
    "STARTERS",
    "KeystoneStandIn",
    "ProxyFailed",
    "ProxySettings",
    "ProxyUnavailable",
    "RunningProxy",
    "find_program",
    "free_port",
    "in_ci",
    "placeholders",
    "proxy_directory",
    "render",
    "start_squid",
    "start_varnish",
    "wait_ready",
]
