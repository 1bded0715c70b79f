"""
``twistd glance-registry``: its options, its service tree, and one real
``twistd -n glance-registry`` process driven by the HTTP registry client.
"""

from __future__ import annotations

import signal

from twisted.application.service import IServiceCollection
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from glance_tx.errors import NotFound, ServiceUnavailable
from glance_tx.images import ImageQuery
from glance_tx.registry.client import open_http_registry
from glance_tx.registry.tap import Options, makeService, registry_service
from glance_tx.services import ServiceChain, ThreadPoolService
from glance_tx.threads import SynchronousRunner
from tests.registry_conformance import make_image
from tests.twistd_process import start_twistd


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


class OptionsTests(SynchronousTestCase):
    """What glance-registry's command line and configuration file set."""

    def test_defaults(self) -> None:
        """With no options: loopback port 9191, SQLite under ./glance-data, no token."""
        config = parse(self).config
        self.assertEqual(config.endpoint, "tcp:9191:interface=127.0.0.1")
        self.assertTrue(config.sql_connection.startswith("sqlite:///"))
        self.assertTrue(config.sql_connection.endswith("glance-data/glance.sqlite"))
        self.assertIsNone(config.registry_token)

    def test_config_file_and_command_line(self) -> None:
        """
        The file's sql_connection, registry_token and bind_port are used;
        --port wins over bind_port.
        """
        text = (
            "[DEFAULT]\nsql_connection = postgresql+psycopg://g@db/glance\n"
            "registry_token = t0k\nbind_host = 10.0.0.5\nbind_port = 9999\n"
        )
        config = parse(self, config=text).config
        self.assertEqual(config.sql_connection, "postgresql+psycopg://g@db/glance")
        self.assertEqual(config.registry_token, "t0k")
        self.assertEqual(config.endpoint, "tcp:9999:interface=10.0.0.5")
        config = parse(self, "--port", "tcp:1234", config=text).config
        self.assertEqual(config.endpoint, "tcp:1234")

    def test_bad_config(self) -> None:
        """An invalid setting is a usage error naming the option."""
        error = self.assertRaises(
            usage.UsageError, parse, self, config="[DEFAULT]\nbind_port = high\n"
        )
        self.assertIn("bind_port", str(error))

    def test_help_documents_options(self) -> None:
        """--help names every option."""
        text = str(Options())
        for option in ("--port", "--data-dir", "--config"):
            self.assertIn(option, text)


class ServiceTreeTests(SynchronousTestCase):
    """The service tree makeService builds, and that it serves the Registry API."""

    def test_make_service(self) -> None:
        """
        makeService returns a chain of threads, registry and listener, the
        pool sized by thread_pool_size, the registry on sql_connection.
        """
        options = parse(
            self,
            "--data-dir",
            self.mktemp(),
            "--port",
            "tcp:0",
            config="[DEFAULT]\nthread_pool_size = 7\n",
        )
        top = makeService(options)
        self.assertIsInstance(top, ServiceChain)
        self.assertTrue(IServiceCollection.providedBy(top))
        self.assertEqual([c.name for c in top], ["threads", "registry", "listener"])
        threads = top.getServiceNamed("threads")
        self.assertIsInstance(threads, ThreadPoolService)
        self.assertEqual(threads.pool.max, 7)
        self.assertEqual(
            top.getServiceNamed("registry").url, options.config.sql_connection
        )
        self.assertTrue(
            IStreamServerEndpoint.providedBy(top.getServiceNamed("listener").endpoint)
        )
        self.assertTrue(top.getServiceNamed("listener").freeze_heap)

    def test_serves_registry_api(self) -> None:
        """
        Started on a memory reactor and a synchronous runner, the tree opens
        the registry and listens with a Site serving the Registry API
        behind the configured token; it stops cleanly.
        """
        options = parse(
            self,
            "--data-dir",
            self.mktemp(),
            "--port",
            "tcp:0",
            config="[DEFAULT]\nregistry_token = t0k\n",
        )
        reactor = MemoryReactorClock()
        top = registry_service(
            options.config,
            reactor,
            ThreadPoolService(reactor, ThreadPool(minthreads=0, maxthreads=1)),
            runner=SynchronousRunner(),
        )
        top.startService()
        self.successResultOf(top.when_ready())
        site = reactor.tcpServers[0][1]
        self.assertIsInstance(site, Site)

        from treq.client import HTTPClient
        from treq.testing import RequestTraversalAgent

        http = HTTPClient(RequestTraversalAgent(site.resource))
        response = self.successResultOf(http.get("http://registry/images/detail"))
        self.assertEqual(response.code, 401)
        response = self.successResultOf(
            http.get(
                "http://registry/images/detail",
                headers={b"Authorization": [b"Bearer t0k"]},
            )
        )
        self.assertEqual(response.code, 200)
        self.successResultOf(top.stopService())

    def test_plugin(self) -> None:
        """The twistd plugin glance-registry points at glance_tx.registry.tap."""
        from twisted.plugins.glance_tx_plugin import glance_registry

        self.assertEqual(glance_registry.tapname, "glance-registry")
        self.assertEqual(glance_registry.module, "glance_tx.registry.tap")


class APINodeRegistryTests(SynchronousTestCase):
    """twistd glance's registry: in-process SQL, or glance-registry's client."""

    def test_registry_url_selects_the_http_client(self) -> None:
        """
        With registry_url, the API node's registry service is the HTTP
        client's, with the configured token, timeout, retries and
        connection pool limits; it opens
        no database and its start does not wait for the registry to answer.
        """
        from glance_tx import tap as api_tap
        from glance_tx.registry.client import HTTPRegistryClient
        from glance_tx.services import HTTPRegistryService, RegistryService

        options = api_tap.Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        self.assertIsInstance(
            api_tap.makeService(options).getServiceNamed("registry"), RegistryService
        )

        path = FilePath(self.mktemp())
        path.setContent(
            b"[DEFAULT]\nregistry_url = http://127.0.0.1:1/\nregistry_token = t0k\n"
            b"registry_client_timeout = 2\nregistry_client_retries = 3\n"
            b"registry_client_pool_maxsize = 3\nregistry_client_pool_unused_timeout = 45\n"
        )
        options = api_tap.Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--config", path.path])
        reactor = MemoryReactorClock()
        service = api_tap.glance_service(
            options.config,
            reactor,
            ThreadPoolService(reactor, ThreadPool(minthreads=0, maxthreads=1)),
            runner=SynchronousRunner(),
        ).getServiceNamed("registry")
        self.assertIsInstance(service, HTTPRegistryService)
        service.startService()
        client = self.successResultOf(service.when_ready())
        self.assertIsInstance(client, HTTPRegistryClient)
        self.assertEqual(
            (client.url, client.token, client.timeout, client.retries),
            ("http://127.0.0.1:1", "t0k", 2.0, 3),
        )
        assert client.pool is not None
        self.assertEqual(
            (client.pool.maxPersistentPerHost, client.pool.cachedConnectionTimeout), (3, 45.0)
        )
        self.assertEqual(reactor.tcpClients, [])
        self.successResultOf(service.stopService())


class TwistdProcessTests(TestCase):
    """A real twistd -n glance-registry, driven over a socket."""

    async def test_serves_clients_with_token(self) -> None:
        """
        twistd -n glance-registry with a registry_token serves the client
        that sends it (create, get, list, delete over a real socket),
        refuses one that does not, logs a line per request with its request
        id, and exits cleanly on SIGTERM.
        """
        from twisted.internet import reactor

        process = await start_twistd(
            self, "glance-registry", "[DEFAULT]\nregistry_token = t0k\n"
        )
        client = open_http_registry(reactor, process.url, token="t0k")
        self.addCleanup(client.close)

        image = await client.create(make_image(name="through-twistd"))
        self.assertEqual(await client.get(image.id), image)
        self.assertEqual([i.id for i in await client.list(ImageQuery())], [image.id])
        await client.delete(image.id)
        with self.assertRaises(NotFound):
            await client.get(image.id)

        intruder = open_http_registry(reactor, process.url, token="nope")
        self.addCleanup(intruder.close)
        with self.assertRaises(ServiceUnavailable) as refused:
            await intruder.get(image.id)
        self.assertIn("registry_token", refused.exception.message)

        await client.close()
        await intruder.close()
        ended = await process.stop()
        # twistd ends itself with the signal it was stopped by, after a
        # clean shutdown.
        self.assertIsInstance(ended, ProcessTerminated, process.output)
        self.assertEqual(getattr(ended, "signal", None), signal.SIGTERM)
        self.assertIn("Server Shut Down.", process.output)
        self.assertRegex(
            process.output, r'req-[0-9a-f-]+ 127\.0\.0\.1 "POST /images" 201'
        )
        self.assertIn("glance-registry serving on", process.output)
