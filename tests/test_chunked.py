"""
L{glance_tx.api.chunked.ChunkedDecoder} decodes as Twisted's decoder does,
whatever the reads, and refuses what it refuses, without copying chunk data.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import _DataLoss, _MalformedChunkedDataError

from glance_tx.api.chunked import ChunkedDecoder
from glance_tx.twisted_private import ChunkedTransferDecoder


def _decode(cls: type, reads: list[bytes]) -> tuple[list[object], object]:
    """What C{cls} delivers for C{reads}: its data as bytes, then its end."""
    pieces: list[bytes] = []
    ends: list[bytes] = []
    decoder = cls(lambda data: pieces.append(bytes(data)), ends.append)
    try:
        for read in reads:
            decoder.dataReceived(read)
        decoder.noMoreData()
    except (_MalformedChunkedDataError, _DataLoss, RuntimeError) as e:
        return [b"".join(pieces)], type(e)
    return [b"".join(pieces)], ends


def _splits(body: bytes, rng: random.Random) -> list[bytes]:
    reads, at = [], 0
    while at < len(body):
        step = rng.choice([1, 2, 3, 7, 100, 4096, 70000])
        reads.append(body[at : at + step])
        at += step
    return reads


BODIES = [
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1\r\n",
    b"10000\r\n" + bytes(range(256)) * 256 + b"\r\n3\r\nabc\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\nrest",
    # Malformed: no CRLF after the data, a bad size, a bare LF, bad extension.
    b"5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n",
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5;\x00\r\nhello\r\n0\r\n\r\n",
    b"1" * 2000 + b"\r\n",
    b"5\r\nhello\r\n0\r\n\r\nx" + b"5\r\nhello\r\n",
    # Cut short: data loss at the end.
    b"5\r\nhel",
    b"5\r\nhello\r\n",
]


class ChunkedDecoderTests(SynchronousTestCase):
    def test_as_twisted(self) -> None:
        """
        Every body, in every way of reading it tried, gives the data, the
        rest after the last chunk, or the error Twisted's decoder gives.
        """
        rng = random.Random(14)
        for body in BODIES:
            for _ in range(50):
                reads = _splits(body, rng)
                self.assertEqual(
                    _decode(ChunkedDecoder, reads),
                    _decode(ChunkedTransferDecoder, reads),
                    (body[:40], [len(r) for r in reads]),
                )

    def test_views_of_the_read(self) -> None:
        """A chunk's data arrives as views of the read itself, not copies."""
        read = b"8\r\n" + b"a" * 8 + b"\r\n" + b"4\r\n" + b"bcde" + b"\r\n0\r\n\r\n"
        pieces: list[memoryview] = []
        ChunkedDecoder(pieces.append, lambda rest: None).dataReceived(read)
        self.assertEqual([bytes(p) for p in pieces], [b"a" * 8, b"bcde"])
        for piece in pieces:
            self.assertIsInstance(piece, memoryview)
            self.assertIs(piece.obj, read)
