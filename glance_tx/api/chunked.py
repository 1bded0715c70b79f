"""
A request body's chunked transfer coding, decoded without copying the data.

twisted.web's decoder (C{twisted.web.http._ChunkedTransferDecoder}) appends
every read to a buffer and copies each chunk out of it again: two copies of
the body, and a round of its state machine per chunk, on the reactor
thread. curl sends a file in 64 KiB chunks, so a 1 GiB upload is 16,384 of
them. L{ChunkedDecoder} is that decoder, with one change: while it is
inside a chunk's data it hands the data on as C{memoryview} slices of the
read that brought it, and gives Twisted's code only the lines between the
chunks (the size line, the CRLF after the data, the trailer), so the
framing is parsed, checked and refused exactly as Twisted does (the same
errors, the same limits). What it relies on of Twisted's class is named in
L{glance_tx.twisted_private}.

The slices are read-only views of the C{bytes} of one read: whoever keeps
one keeps that read alive, and may copy it (C{b"".join}, C{bytes()}).
L{glance_tx.twisted_private.decode_chunks_with} puts the decoder in place.
"""

from __future__ import annotations

from glance_tx.twisted_private import ChunkedTransferDecoder

__all__ = ["ChunkedDecoder"]


class ChunkedDecoder(ChunkedTransferDecoder):
    """See the module docstring."""

    def dataReceived(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # the views must not see it change
        view = memoryview(data)
        end = len(view)
        at = 0
        while at < end:
            state = self.state
            if state == "BODY" and not self._buffer:
                take = min(self.length, end - at)
                self.length -= take
                if not self.length:
                    self.state = "CRLF"
                at += take
                # A bytes-like view where Twisted says bytes: see the docstring.
                self.dataCallback(view[at - take : at])  # type: ignore[arg-type]
            elif state == "BODY" or state == "TRAILER" or state == "FINISHED":
                # What Twisted holds of a chunk already, the trailer and what
                # follows it (all of it goes to finishCallback), or an error.
                super().dataReceived(data[at:])
                return
            else:
                # A line between chunks: up to and with its LF, and no
                # further, so the chunk's data after it stays here.
                lf = data.find(b"\n", at)
                stop = end if lf == -1 else lf + 1
                super().dataReceived(data[at:stop])
                at = stop
