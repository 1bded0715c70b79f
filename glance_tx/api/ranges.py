"""
HTTP ``Range`` requests (RFC 9110, section 14) for image data.

One byte range is served as a 206 with ``Content-Range``; a range that
cannot be satisfied is a 416 with ``Content-Range: bytes */SIZE``. Anything
else -- no header, another unit, a malformed header, several ranges, or an
``If-Range`` that does not match -- is served whole, as the RFC allows
(multipart/byteranges is not worth its complexity for VM images).
"""

from __future__ import annotations

import re

from attrs import frozen

from glance_tx.errors import RangeNotSatisfiable

_SPEC = re.compile(r"(\d*)-(\d*)")


@frozen
class ByteRange:
    """Bytes C{[offset, offset + length)} of a representation of C{size}."""

    offset: int
    length: int
    size: int

    @property
    def last(self) -> int:
        return self.offset + self.length - 1

    def content_range(self) -> bytes:
        return f"bytes {self.offset}-{self.last}/{self.size}".encode("ascii")


def unsatisfied_range(size: int) -> bytes:
    """The Content-Range a 416 carries."""
    return f"bytes */{size}".encode("ascii")


def parse_range(header: bytes | None, size: int) -> ByteRange | None:
    """
    The single byte range C{header} asks for within C{size} bytes, or None
    to send everything.

    @raise RangeNotSatisfiable: the one range asked for lies wholly past
        the end (or the data is empty).
    """
    if header is None:
        return None
    try:
        text = header.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    unit, sep, specs = text.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in specs.split(",") if part.strip()]
    if len(parts) != 1:
        return None
    match = _SPEC.fullmatch(parts[0])
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        # A suffix: the last N bytes.
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        length = min(suffix, size)
        return ByteRange(offset=size - length, length=length, size=size)
    start = int(first)
    if last and int(last) < start:
        # Invalid, not unsatisfiable: ignore it.
        return None
    if start >= size:
        raise _unsatisfiable(size)
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(offset=start, length=end - start + 1, size=size)


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"The requested range cannot be satisfied: the image has {size} bytes"
    )
