"""twistd glance: options, config precedence and the service tree."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import treq
from attrs import define, evolve
from treq.client import HTTPClient
from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.server import Site

from glance_tx.config import ONE_TIB, Config, ConfigError, load_config
from glance_tx.services import (
    PurgerService,
    ServiceChain,
    ThreadPoolService,
    stop_reactor_on_failure,
)
from glance_tx.store.filesystem import filesystem_datadir
from glance_tx.tap import (
    IMPORT_DRAIN_SECONDS,
    Options,
    glance_service,
    makeService,
    worker_stop_seconds,
)
from glance_tx.threads import SynchronousRunner
from glance_tx.workers import STOP_SECONDS
from tests.memory_http import SiteAgent, memory_client


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """With no options: loopback 9292, SQLite + filesystem under ./glance-data."""
        options = Options()
        options.parseOptions([])
        config = options.config
        self.assertEqual(config.endpoint, "tcp:9292:interface=127.0.0.1")
        self.assertTrue(config.data_dir.endswith("glance-data"))
        self.assertTrue(config.sql_connection.startswith("sqlite:///"))
        self.assertEqual(config.image_size_cap, ONE_TIB)
        self.assertEqual(config.default_backend, "file")
        self.assertEqual(config.store("file").type, "file")
        self.assertTrue(
            filesystem_datadir(config.store("file"), config.data_dir).endswith(
                "glance-data/images"
            )
        )

    def test_config_file_and_command_line(self) -> None:
        """The INI file sets options; the command line wins over it."""
        path = FilePath(self.mktemp())
        path.setContent(
            b"[DEFAULT]\nbind_port = 9393\nimage_size_cap = 1000\n"
            b"sql_connection = sqlite:////tmp/x.sqlite\n"
            b"enabled_backends = fast:file\ndefault_backend = fast\n"
            b"[fast]\nfilesystem_store_datadir = /srv/images\n"
        )
        options = Options()
        options.parseOptions(["--config", path.path])
        self.assertEqual(options.config.endpoint, "tcp:9393:interface=127.0.0.1")
        self.assertEqual(options.config.image_size_cap, 1000)
        self.assertEqual(options.config.sql_connection, "sqlite:////tmp/x.sqlite")
        self.assertEqual(
            options.config.store("fast").options, {"filesystem_store_datadir": "/srv/images"}
        )
        options = Options()
        options.parseOptions(["--config", path.path, "--port", "tcp:1234", "--data-dir", "/d"])
        self.assertEqual(options.config.endpoint, "tcp:1234")
        self.assertEqual(options.config.data_dir, "/d")

    def test_bad_config(self) -> None:
        """Invalid settings are usage errors naming the option."""
        for content, fragment in [
            (b"[DEFAULT]\nimage_size_cap = big\n", "image_size_cap"),
            (b"[DEFAULT]\nenabled_backends = nocolon\n", "enabled_backends"),
            (b"[DEFAULT]\ndefault_backend = s3\n", "default_backend"),
            (b"[DEFAULT]\nrecover_on_start = maybe\n", "recover_on_start"),
            (b"[DEFAULT]\nhashing_algorithm = sha257\n", "hashing_algorithm"),
        ]:
            path = FilePath(self.mktemp())
            path.setContent(content)
            error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path.path])
            self.assertIn(fragment, str(error))
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", "/nonexistent"])
        self.assertIn("/nonexistent", str(error))

    def test_help_documents_options(self) -> None:
        """--help names every option."""
        text = str(Options())
        for option in ("--port", "--data-dir", "--config"):
            self.assertIn(option, text)


class WorkerStopSecondsTests(SynchronousTestCase):
    """How long the supervisor waits for a stopping worker before the kill."""

    def test_grace_and_drain_come_first(self) -> None:
        """
        graceful_shutdown_timeout and the imports' drain, plus the rest of
        the stop; no limit when the timeout is 0; the supervisor gets it.
        """
        config = load_config()
        self.assertEqual(
            worker_stop_seconds(config), 60.0 + IMPORT_DRAIN_SECONDS + STOP_SECONDS
        )
        endless = evolve(
            config, clients=evolve(config.clients, graceful_shutdown_timeout=None)
        )
        self.assertIsNone(worker_stop_seconds(endless))
        options = Options()
        options.parseOptions(["--workers", "2"])
        options.config = evolve(
            options.config, clients=evolve(config.clients, graceful_shutdown_timeout=5.0)
        )
        supervisor = makeService(options).getServiceNamed("supervisor")  # type: ignore[attr-defined]
        self.assertEqual(supervisor.stop_seconds, 5.0 + IMPORT_DRAIN_SECONDS + STOP_SECONDS)


class RecoverOnStartOptionTests(SynchronousTestCase):
    """[DEFAULT] recover_on_start: whether start-up recovery runs."""

    def load(self, text: str) -> Config:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return load_config(path.path)

    def test_default_true(self) -> None:
        """
        Without the option, or with it empty, recovery runs: a single node
        must not leave an interrupted upload's image saving.
        """
        self.assertTrue(load_config().recover_on_start)
        self.assertTrue(self.load("[DEFAULT]\nbind_port = 9393\n").recover_on_start)
        self.assertTrue(self.load("[DEFAULT]\nrecover_on_start =\n").recover_on_start)

    def test_spellings(self) -> None:
        """
        Every spelling configparser accepts for a boolean works, in any case
        and with surrounding blanks.
        """
        for raw, expected in [
            ("true", True), ("True", True), ("yes", True), ("on", True), ("1", True),
            ("false", False), ("FALSE", False), ("no", False), ("off", False),
            ("0", False), ("  false  ", False),
        ]:
            config = self.load(f"[DEFAULT]\nrecover_on_start = {raw}\n")
            self.assertIs(config.recover_on_start, expected, raw)

    def test_invalid(self) -> None:
        """Anything else is a ConfigError naming the option and the value."""
        for raw in ("maybe", "2", "nope"):
            error = self.assertRaises(
                ConfigError, self.load, f"[DEFAULT]\nrecover_on_start = {raw}\n"
            )
            self.assertIn("recover_on_start", str(error))
            self.assertIn(raw, str(error))


def parse(case: SynchronousTestCase, *args: str, config: str = "") -> Options:
    """Real command-line options, with C{config} as the INI file's text."""
    argv = list(args)
    if config:
        path = FilePath(case.mktemp())
        path.setContent(config.encode("utf-8"))
        argv += ["--config", path.path]
    options = Options()
    options.parseOptions(argv)
    return options


class RecordingPort:
    """A listening port that records when it stops listening."""

    def __init__(self, events: list[str], port: IListeningPort) -> None:
        self.events = events
        self.port = port

    def getHost(self) -> Any:
        return self.port.getHost()

    def stopListening(self) -> None:
        self.events.append("listener stopped")


class RecordingReactor(MemoryReactorClock):
    """A memory reactor that records when something listens and stops."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self.events.append("listening")
        return RecordingPort(self.events, super().listenTCP(port, factory, backlog, interface))


@define
class RecordingRunner:
    """A synchronous runner that records the registry's open and close."""

    events: list[str]
    names = {"open_engine": "registry opened", "dispose": "registry closed"}

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        name = getattr(f, "__name__", "")
        if name in self.names:
            self.events.append(self.names[name])
        return SynchronousRunner().run(f, *args, **kwargs)

    def serial(self) -> RecordingRunner:
        return self


class RecordingPool(ThreadPool):
    """A thread pool that records its start and stop."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(minthreads=0, maxthreads=1)
        self.events = events

    def start(self) -> None:
        self.events.append("pool started")
        super().start()

    def stop(self) -> None:
        self.events.append("pool stopped")
        super().stop()


class ServiceTreeTests(SynchronousTestCase):
    """What makeService builds, and the order in which it starts and stops."""

    def node(self, options: Options) -> tuple[MemoryReactorClock, ServiceChain]:
        """The node C{options} configure, on a memory reactor, its blocking work inline."""
        reactor = MemoryReactorClock()
        top = glance_service(
            options.config,
            reactor,
            ThreadPoolService(reactor, ThreadPool(minthreads=0, maxthreads=1)),
            runner=SynchronousRunner(),
        )
        return reactor, top

    def serving(self, options: Options) -> tuple[MemoryReactorClock, HTTPClient, SiteAgent]:
        """That node started and ready, and an HTTP client of its listener."""
        reactor, top = self.node(options)
        top.startService()
        self.addCleanup(lambda: self.successResultOf(top.stopService()))
        self.successResultOf(top.when_ready())
        client, agent = memory_client(reactor.tcpServers[0][1])
        return reactor, client, agent

    def test_make_service(self) -> None:
        """
        makeService returns the chain of the node's services, in dependency
        order, with a pool of the configured size; no purger without
        purge_urls.
        """
        options = parse(self, "--data-dir", self.mktemp(), "--port", "tcp:0")
        top = makeService(options)
        self.assertIsInstance(top, ServiceChain)
        self.assertTrue(IServiceCollection.providedBy(top))
        self.assertEqual(
            [child.name for child in top],
            [
                "threads", "registry", "node", "stores", "recovery",
                "leases", "identity", "scrubber", "policy", "limits", "listener",
            ],
        )
        threads = top.getServiceNamed("threads")
        self.assertIsInstance(threads, ThreadPoolService)
        self.assertEqual(threads.pool.max, load_config().thread_pool_size)
        # The registry's database calls have a pool of their own.
        self.assertIsNotNone(threads.registry_pool)
        self.assertEqual(threads.registry_pool.max, load_config().registry_thread_pool_size)
        registry = top.getServiceNamed("registry")
        self.assertEqual(registry.url, options.config.sql_connection)
        self.assertIs(registry.runner, threads.registry_runner)
        self.assertIsNot(top.getServiceNamed("stores").runner, threads.registry_runner)
        self.assertTrue(IStreamServerEndpoint.providedBy(top.getServiceNamed("listener").endpoint))
        self.assertTrue(top.getServiceNamed("listener").freeze_heap)

    def test_bulk_pool_threads_are_nicer(self) -> None:
        """
        The bulk pool's threads run thread_pool_nice nicer than the thread
        that made them (Linux); the registry pool's at its priority.
        """
        if not sys.platform.startswith("linux"):
            raise SkipTest("niceness per thread is Linux's")
        options = parse(self, "--data-dir", self.mktemp(), "--port", "tcp:0")
        threads = makeService(options).getServiceNamed("threads")

        def nice_of(factory: Any) -> int:
            seen: list[int] = []
            thread = factory(
                target=lambda: seen.append(
                    os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
                )
            )
            thread.start()
            thread.join()
            return seen[0]

        here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        expected = min(19, here + load_config().thread_pool_nice)
        self.assertEqual(nice_of(threads.pool.threadFactory), expected)
        self.assertEqual(nice_of(threads.registry_pool.threadFactory), here)

    def test_purger_with_purge_urls(self) -> None:
        """
        With [cache] purge_urls the purger comes after recovery and before
        the listener: stopped after the listener, before the registry.
        """
        options = parse(
            self, "--data-dir", self.mktemp(),
            config="[cache]\npurge_urls = http://127.0.0.1:6081\n",
        )
        top = makeService(options)
        self.assertEqual(
            [child.name for child in top],
            [
                "threads", "registry", "node", "stores", "recovery",
                "leases", "identity", "scrubber", "policy", "limits", "purger", "listener",
            ],
        )
        self.assertIsInstance(top.getServiceNamed("purger"), PurgerService)

    def test_recovery_follows_recover_on_start(self) -> None:
        """The recovery service runs recovery only when recover_on_start is true."""
        for setting, enabled in [("true", True), ("false", False)]:
            options = parse(
                self, "--data-dir", self.mktemp(),
                config=f"[DEFAULT]\nrecover_on_start = {setting}\n",
            )
            self.assertIs(makeService(options).getServiceNamed("recovery").enabled, enabled)

    def test_start_and_stop_order(self) -> None:
        """
        The pool starts first and the registry opens before anything
        listens; at stop the listener stops first, a purge in flight gets
        its grace before the registry closes, and the pool stops last.
        """
        events: list[str] = []
        options = parse(
            self, "--data-dir", self.mktemp(), "--port", "tcp:0",
            config="[cache]\npurge_urls = http://127.0.0.1:6081\n",
        )
        reactor = RecordingReactor(events)
        top = glance_service(
            options.config,
            reactor,
            ThreadPoolService(reactor, RecordingPool(events)),
            runner=RecordingRunner(events),
        )
        top.startService()
        self.successResultOf(top.when_ready())
        self.assertEqual(events, ["pool started", "registry opened", "listening"])
        self.assertIsInstance(reactor.tcpServers[0][1], Site)

        # A PURGE that will not finish by itself (nothing answers).
        purger = top.getServiceNamed("purger").purger
        purger.purge("4c7f4b4e-8a0b-4d8e-9e57-2b1d3f0a5c6d")
        del events[:]
        stopped = top.stopService()
        self.assertEqual(events, ["listener stopped"])
        self.assertNoResult(stopped)
        reactor.advance(top.getServiceNamed("purger").grace)
        self.successResultOf(stopped)
        self.assertEqual(
            events, ["listener stopped", "registry closed", "pool stopped"]
        )

    def test_hashing_algorithm_reaches_uploads(self) -> None:
        """
        The node's uploads hash with the configured hashing_algorithm: an
        image uploaded to the site the listener serves records sha256.
        """
        options = parse(
            self, "--data-dir", self.mktemp(), "--port", "tcp:0",
            config="[DEFAULT]\nhashing_algorithm = sha256\n",
        )
        _, client, agent = self.serving(options)

        def call(method: str, path: str, data: bytes, media: str) -> Any:
            d = client.request(
                method, "http://127.0.0.1:9292" + path,
                headers={"Content-Type": [media]}, data=data,
            )
            agent.flush()
            response = self.successResultOf(d)
            body = treq.content(response)
            agent.flush()
            return response.code, self.successResultOf(body)

        code, body = call(
            "POST", "/v2/images",
            json.dumps({"disk_format": "raw", "container_format": "bare"}).encode(),
            "application/json",
        )
        self.assertEqual(code, 201, body)
        image_id = json.loads(body)["id"]
        data = b"sha256 please" * 1000
        code, body = call("PUT", f"/v2/images/{image_id}/file", data, "application/octet-stream")
        self.assertEqual(code, 204, body)
        code, body = call("GET", f"/v2/images/{image_id}", b"", "application/json")
        shown = json.loads(body)
        self.assertEqual(
            (shown["os_hash_algo"], shown["os_hash_value"]),
            ("sha256", hashlib.sha256(data).hexdigest()),
        )

    def test_healthcheck_probe_interval_reaches_the_site(self) -> None:
        """
        The node's health check holds a probe's answer for the configured
        healthcheck_probe_interval on the reactor's clock: the store's
        directory removed is reported once 30 s have passed, not before.
        """
        data_dir = FilePath(self.mktemp())
        options = parse(
            self, "--data-dir", data_dir.path, "--port", "tcp:0",
            config="[DEFAULT]\nhealthcheck_probe_interval = 30\n",
        )
        reactor, client, agent = self.serving(options)

        def health() -> int:
            d = client.get("http://127.0.0.1:9292/healthcheck")
            agent.flush()
            response = self.successResultOf(d)
            agent.flush()
            self.successResultOf(treq.content(response))
            return response.code

        self.assertEqual(health(), 200)
        data_dir.child("images").remove()
        reactor.advance(29)
        self.assertEqual(health(), 200)
        reactor.advance(1)
        self.assertEqual(health(), 503)

    def test_failed_start_is_logged_and_stops_the_reactor(self) -> None:
        """
        A start that fails (here the registry's directory cannot be made)
        never listens, is logged, and stops the reactor.
        """
        blocker = FilePath(self.mktemp())
        blocker.setContent(b"a file where a directory should be")
        options = parse(self, "--data-dir", blocker.child("data").path, "--port", "tcp:0")
        reactor, top = self.node(options)
        stop_reactor_on_failure(top, reactor, "glance-tx")
        top.startService()
        self.assertEqual(len(self.flushLoggedErrors(NotADirectoryError)), 1)
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual([f for f, _, _ in reactor.whenRunningHooks], [reactor.stop])
        self.successResultOf(top.stopService())

    def test_plugin(self) -> None:
        """The twistd plugin is named glance and points at glance_tx.tap."""
        from twisted.plugins.glance_tx_plugin import glance

        self.assertEqual(glance.tapname, "glance")
        self.assertEqual(glance.module, "glance_tx.tap")
