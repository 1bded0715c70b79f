"""
Pins for every private Twisted detail in L{glance_tx.twisted_private}: each
test fails loudly if a Twisted release changes the detail it names.
"""

from __future__ import annotations

import inspect

from twisted.internet import abstract, tcp
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web._newclient import TransportProxyProducer
from twisted.web.test.requesthelper import DummyChannel

from glance_tx import twisted_private
from tests.test_registry_http import write_tls_files


def _headers_seen(raw: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """What twisted_private reads at gotLength, for one request's head."""
    seen = []

    class Recording(http.Request):
        def gotLength(self, length):
            seen.append(
                (*twisted_private.request_line(self.channel), twisted_private.request_version(self.channel))
            )
            super().gotLength(length)

    channel = http.HTTPChannel()
    channel.requestFactory = Recording
    channel.makeConnection(StringTransport())
    channel.dataReceived(raw)
    return seen


class RequestLineTests(SynchronousTestCase):
    def test_request_line_known_at_got_length(self) -> None:
        """
        HTTPChannel's private _command and _path hold the request line at
        gotLength, before the body: streaming uploads are routed by them.
        """
        seen = _headers_seen(
            b"PUT /v1/images/x?y=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
        )
        self.assertEqual([s[:2] for s in seen], [(b"PUT", b"/v1/images/x?y=1")])

    def test_version_known_at_got_length(self) -> None:
        """
        HTTPChannel's private _version holds the request's HTTP version at
        gotLength: only an HTTP/1.1 client is sent 100 Continue.
        """
        self.assertEqual(
            [s[2] for s in _headers_seen(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")],
            [b"HTTP/1.1"],
        )
        self.assertEqual(
            [s[2] for s in _headers_seen(b"PUT /x HTTP/1.0\r\nContent-Length: 3\r\n\r\n")],
            [b"HTTP/1.0"],
        )


class ClientGoneTests(SynchronousTestCase):
    def test_disconnected_after_connection_lost(self) -> None:
        """
        twisted.web.http.Request sets its private _disconnected when its
        connection is lost, and not before.
        """
        request = http.Request(DummyChannel())
        self.assertFalse(twisted_private.client_gone(request))
        request.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(twisted_private.client_gone(request))


class ReadSizeTests(SynchronousTestCase):
    def test_tcp_reads_buffer_size(self) -> None:
        """
        twisted.internet.tcp.Connection reads self.bufferSize per recv(),
        a class attribute (64 KiB) an instance may override.
        """
        self.assertIsInstance(tcp.Connection.bufferSize, int)
        self.assertIn("self.socket.recv(self.bufferSize)", inspect.getsource(tcp.Connection.doRead))

    def test_set_and_restore(self) -> None:
        """set_read_size overrides per instance and gives back the default."""
        transport = type("TCPLike", (StringTransport,), {"bufferSize": 65536})()
        twisted_private.set_read_size(transport, 1 << 18)
        self.assertEqual(transport.bufferSize, 1 << 18)
        twisted_private.set_read_size(transport, None)
        self.assertEqual(transport.bufferSize, 65536)
        self.assertNotIn("bufferSize", vars(transport))
        plain = StringTransport()
        twisted_private.set_read_size(plain, 1 << 18)
        self.assertFalse(hasattr(plain, "bufferSize"))

    def test_response_body_transport_holds_connection(self) -> None:
        """
        twisted.web's client response body transport keeps the TCP
        connection as its private _producer.
        """
        connection = type("TCPLike", (StringTransport,), {"bufferSize": 65536})()
        twisted_private.widen_body_reads(TransportProxyProducer(connection), 1 << 20)
        self.assertEqual(connection.bufferSize, 1 << 20)


class SendLimitTests(SynchronousTestCase):
    def test_file_descriptor_sends_send_limit(self) -> None:
        """
        twisted.internet.abstract.FileDescriptor sends at most its class
        attribute SEND_LIMIT per write, which an instance may override.
        """
        self.assertIsInstance(abstract.FileDescriptor.SEND_LIMIT, int)
        self.assertIn("self.SEND_LIMIT", inspect.getsource(abstract.FileDescriptor.doWrite))
        transport = type("FDLike", (StringTransport,), {"SEND_LIMIT": 131072})()
        twisted_private.set_send_limit(transport, 1 << 20)
        self.assertEqual(transport.SEND_LIMIT, 1 << 20)


class UnsentBytesTests(SynchronousTestCase):
    def test_file_descriptor_buffers_until_do_write(self) -> None:
        """
        twisted.internet.abstract.FileDescriptor keeps what is written to it
        in dataBuffer/offset and _tempDataBuffer/_tempDataLen, sends it only
        from doWrite, and stops writing once all is sent: unsent_bytes
        counts it, as the sendfile sender needs before it writes around it.
        """
        taken: list[bytes] = []

        class Descriptor(abstract.FileDescriptor):
            budget = 3

            def writeSomeData(self, data: bytes) -> int:
                sent = bytes(data[: self.budget])
                taken.append(sent)
                return len(sent)

        reactor = MemoryReactor()
        descriptor = Descriptor(reactor)
        descriptor.connected = 1
        self.assertEqual(twisted_private.unsent_bytes(descriptor), 0)
        descriptor.write(b"head")
        descriptor.writeSequence([b"er", b"s"])
        self.assertEqual(taken, [])
        self.assertEqual(twisted_private.unsent_bytes(descriptor), 7)
        self.assertIn(descriptor, reactor.getWriters())
        descriptor.doWrite()
        self.assertEqual(twisted_private.unsent_bytes(descriptor), 4)
        descriptor.budget = 100
        descriptor.doWrite()
        self.assertEqual(b"".join(taken), b"headers")
        self.assertEqual(twisted_private.unsent_bytes(descriptor), 0)
        self.assertNotIn(descriptor, reactor.getWriters())


class TCPListenAddressTests(SynchronousTestCase):
    """
    C{tcp_listen_address}: the interface, port, backlog and TLS context
    that C{serverFromString} parsed into a TCP or TLS server endpoint.
    """

    def test_tcp_and_tcp6(self) -> None:
        """tcp: and tcp6: endpoints give their address and no TLS."""
        reactor = MemoryReactor()
        self.assertEqual(
            twisted_private.tcp_listen_address(
                serverFromString(reactor, "tcp:9292:interface=127.0.0.1:backlog=7")
            ),
            ("127.0.0.1", 9292, 7, None),
        )
        self.assertEqual(
            twisted_private.tcp_listen_address(serverFromString(reactor, "tcp6:0")),
            ("::", 0, 50, None),
        )

    def test_ssl(self) -> None:
        """An ssl: endpoint gives its context factory too."""
        directory = FilePath(self.mktemp())
        directory.makedirs()
        _, key, cert = write_tls_files(directory)
        endpoint = serverFromString(
            MemoryReactor(), f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        )
        interface, port, backlog, tls = twisted_private.tcp_listen_address(endpoint) or (
            "", -1, -1, None
        )
        self.assertEqual((interface, port, backlog), ("127.0.0.1", 0, 50))
        self.assertTrue(IOpenSSLServerConnectionCreator.providedBy(tls), tls)

    def test_other_endpoints(self) -> None:
        """A unix: endpoint is none of them."""
        endpoint = serverFromString(MemoryReactor(), "unix:/tmp/nowhere.sock")
        self.assertIsNone(twisted_private.tcp_listen_address(endpoint))


class ChunkedDecoderTests(SynchronousTestCase):
    def _channel_at_body(self, head: bytes) -> http.HTTPChannel:
        """An HTTPChannel that has read C{head}, at allHeadersReceived."""
        at_body: list[http.HTTPChannel] = []

        class Channel(http.HTTPChannel):
            def allHeadersReceived(self) -> None:
                at_body.append(self)
                twisted_private.decode_chunks_with(self, Decoder)
                super().allHeadersReceived()

        class Decoder(twisted_private.ChunkedTransferDecoder):
            pass

        class Request(http.Request):
            def process(self) -> None:
                self.content.seek(0)
                self.received = self.content.read()

        channel = Channel()
        channel.requestFactory = Request
        channel.makeConnection(StringTransport())
        channel.dataReceived(head)
        self.assertEqual(len(at_body), 1)
        self.Decoder = Decoder
        return channel

    def test_chunked_body_decoder_replaced(self) -> None:
        """
        HTTPChannel keeps a chunked body's decoder, Twisted's
        _ChunkedTransferDecoder (with dataCallback, finishCallback and the
        state machine ChunkedDecoder extends), in _transferDecoder from the
        head on; the one put there decodes the body.
        """
        channel = self._channel_at_body(
            b"PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertIs(type(channel._transferDecoder), self.Decoder)
        for name in ("_buffer", "state", "dataCallback", "finishCallback"):
            self.assertTrue(hasattr(channel._transferDecoder, name), name)
        for name in ("_dataReceived_CHUNK_LENGTH", "_dataReceived_CRLF", "_dataReceived_BODY"):
            self.assertTrue(hasattr(twisted_private.ChunkedTransferDecoder, name), name)
        channel.dataReceived(b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(channel.requests[0].received, b"abc")

    def test_other_bodies_keep_their_decoder(self) -> None:
        """A Content-Length body keeps Twisted's identity decoder."""
        channel = self._channel_at_body(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
        self.assertIs(type(channel._transferDecoder), http._IdentityTransferDecoder)


class ResponseConnectionTests(SynchronousTestCase):
    def test_response_body_comes_on_its_connection(self) -> None:
        """
        A twisted.web client response keeps its body's transport as the
        private _transport, a TransportProxyProducer over the connection
        (its private _producer); a treq response wraps it as original.
        Pausing that transport pauses the connection, and the body's bytes
        read with the head are held until deliverBody takes them.
        """
        from treq.response import _Response
        from twisted.web._newclient import HTTP11ClientProtocol, Request
        from twisted.web.http_headers import Headers

        connection = StringTransport()
        protocol = HTTP11ClientProtocol()
        protocol.makeConnection(connection)
        answered = protocol.request(Request(b"GET", b"/", Headers({b"host": [b"x"]}), None))
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        response = self.successResultOf(answered)
        self.assertIs(twisted_private.response_connection(response), connection)
        self.assertIs(twisted_private.response_connection(_Response(response, None)), connection)
        self.assertEqual(response.length, 10)

        from twisted.internet.protocol import Protocol

        got: list[bytes] = []
        body = Protocol()
        body.dataReceived = got.append  # type: ignore[method-assign]
        response.deliverBody(body)
        self.assertEqual(got, [b"abc"])
        body.transport.pauseProducing()  # type: ignore[union-attr]
        self.assertEqual(connection.producerState, "paused")

    def test_nothing_without_one(self) -> None:
        """Anything else (a fake response) has no connection to give."""
        self.assertIsNone(twisted_private.response_connection(object()))
