"""
A TCP relay a test can cut, to stop a server it may not stop (the shared
PostgreSQL of C{tools/run-tests}).

It runs on threads of its own, not on the reactor: the unit tests run the
registry's blocking calls on the reactor thread (a synchronous runner), and
the relay must move bytes while they block.
"""

from __future__ import annotations

import socket
import threading

from attrs import define, field


@define
class TCPRelay:
    """
    Relays connections on C{127.0.0.1:port} to C{target}. L{cut} stops
    listening and drops every connection (the server looks stopped);
    L{black_hole} listens again but passes nothing on (a server that
    accepts and never answers); L{mend} relays again, on the same port.
    """

    target: tuple[str, int]
    port: int = 0
    _forwarding: bool = field(default=True, init=False)
    _listener: socket.socket | None = field(default=None, init=False)
    _sockets: set[socket.socket] = field(factory=set, init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)
    _acceptor: threading.Thread | None = field(default=None, init=False)

    def start(self) -> TCPRelay:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    def cut(self) -> None:
        """Stop listening; reset every connection."""
        listener, self._listener = self._listener, None
        if self._acceptor is not None:
            # The port is free only once accept() has returned.
            self._acceptor.join()
            self._acceptor = None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def black_hole(self) -> None:
        """Cut, then accept connections and send nothing either way."""
        self.cut()
        self._forwarding = False
        self.start()

    def mend(self) -> None:
        """Cut whatever is left and relay again, on the same port."""
        self.cut()
        self._forwarding = True
        self.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._sockets.add(client)
            if not self._forwarding:
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.add(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
