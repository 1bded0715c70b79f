"""
Real ``twistd -n PLUGIN`` processes for end-to-end tests: started with
C{spawnProcess} on trial's reactor (so the reactor keeps running while they
do), on a free loopback port, their output kept for the failure message,
stopped with SIGTERM at clean-up.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How long a process may take to answer its health check.
START_SECONDS = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Collect(ProcessProtocol):
    """Keeps a process's output and fires C{ended} with how it ended."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[Exception] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


@define
class TwistdProcess:
    """One running C{twistd -n} process."""

    name: str
    url: str
    protocol: _Collect = field(repr=False)

    @property
    def output(self) -> str:
        return self.protocol.output.decode("utf-8", "replace")

    async def stop(self) -> Exception:
        """SIGTERM (unless it ended already); fires with how it ended."""
        if not self.protocol.ended.called:
            self.protocol.transport.signalProcess("TERM")
        return await self.protocol.ended


async def start_twistd(
    case: TestCase,
    plugin: str,
    config_text: str,
    extra_args: Sequence[str] = (),
    name: str | None = None,
    port: int | None = None,
) -> TwistdProcess:
    """
    Start C{twistd -n PLUGIN --port ... --data-dir ... --config ...} in a
    directory of C{case}'s, with C{config_text} as its configuration, and
    wait until C{GET /healthcheck} answers 200. C{port} (default: a free
    one) lets a test start a service again where it was. Stopped at C{case}'s
    clean-up; a start that fails fails C{case} with the process's output.
    """
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent

    process = spawn_twistd(case, plugin, config_text, extra_args, name, port)
    protocol = process.protocol
    http = HTTPClient(Agent(reactor))
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            response = await http.get(process.url + "/healthcheck", timeout=2)
            await response.content()
            if response.code == 200:
                return process
        except Exception:
            pass
        if protocol.ended.called or time.monotonic() > deadline:
            case.fail(f"{process.name} did not come up:\n{process.output}")
        await deferLater(reactor, 0.2, lambda: None)


def spawn_twistd(
    case: TestCase,
    plugin: str,
    config_text: str,
    extra_args: Sequence[str] = (),
    name: str | None = None,
    port: int | None = None,
) -> TwistdProcess:
    """As L{start_twistd}, without waiting for it to come up (or fail)."""
    from twisted.internet import reactor

    workdir = FilePath(case.mktemp())
    workdir.makedirs()
    config = workdir.child("service.conf")
    config.setContent(config_text.encode("utf-8"))
    if port is None:
        port = free_port()
    protocol = _Collect()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [
        twistd,
        "-n",
        "--pidfile=",
        plugin,
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--data-dir",
        workdir.child("data").path,
        "--config",
        config.path,
        *extra_args,
    ]
    reactor.spawnProcess(  # type: ignore[attr-defined]
        protocol, twistd, argv, env=env, path=workdir.path
    )
    process = TwistdProcess(name or plugin, f"http://127.0.0.1:{port}", protocol)
    case.addCleanup(process.stop)
    return process
