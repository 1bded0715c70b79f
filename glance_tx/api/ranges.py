"""
HTTP ``Range`` requests (RFC 9110, section 14) for image data.

L{parse_ranges} turns a ``Range`` header into the byte ranges to send:

  - no header, another unit, or a malformed header (any one range-spec
    that does not parse, or a ``first-last`` with last before first) is
    ignored: the whole representation is sent, as the RFC allows;
  - ranges wholly past the end are dropped; if none is left the request
    is a 416, answered with ``Content-Range: bytes */SIZE``;
  - the rest are coalesced: ranges that overlap, touch, or lie less than
    L{COALESCE_GAP} bytes apart (about what one more part's headers
    cost) become one, kept at the place of the first of them in the
    header. One range left is sent as a plain 206 with
    ``Content-Range``; several as ``multipart/byteranges``
    (L{MultipartRanges}).

Abuse (RFC 9110, section 17.15): a header naming more than
L{MAX_RANGE_SPECS} ranges is ignored and the whole sent -- what the
client could have had anyway, without the per-part overhead or one store
read per tiny part. After coalescing no byte is sent twice, so a
multipart answer is never larger than the image plus the part headers of
at most L{MAX_RANGE_SPECS} parts.
"""

from __future__ import annotations

import re
import secrets

from attrs import field, frozen

from glance_tx.errors import RangeNotSatisfiable

#: More range-specs than this in one header: the header is ignored. Real
#: clients (resuming downloads, reading a disk image's metadata blocks)
#: ask for one or a few; Apache's default MaxRanges is 200.
MAX_RANGE_SPECS = 100

#: Ranges closer than this are sent as one part (RFC 9110, section 14.6:
#: "a gap that is smaller than the overhead of sending multiple parts").
COALESCE_GAP = 80

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


def parse_ranges(header: bytes | None, size: int) -> tuple[ByteRange, ...] | None:
    """
    The byte ranges C{header} asks for within C{size} bytes, coalesced and
    in the order asked for; or None to send everything (see the module
    docstring).

    @raise RangeNotSatisfiable: no range asked for overlaps the data (or
        the data is empty).
    """
    if header is None or header.count(b",") >= MAX_RANGE_SPECS:
        return None
    try:
        text = header.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    unit, sep, specs = text.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in specs.split(",")]
    # RFC 9110 allows empty list elements ("bytes=0-1,,5-6").
    parts = [part for part in parts if part]
    if not parts:
        return None
    wanted: list[tuple[int, int, int]] = []  # (order, start, end exclusive)
    for order, part in enumerate(parts):
        match = _SPEC.fullmatch(part)
        if match is None:
            return None
        first, last = match.groups()
        if not first and not last:
            return None
        if not first:
            # A suffix: the last N bytes.
            suffix = int(last)
            if suffix > 0 and size > 0:
                wanted.append((order, max(0, size - suffix), size))
            continue
        start = int(first)
        if last and int(last) < start:
            # Invalid, not unsatisfiable: the whole header is ignored.
            return None
        if start < size:
            end = min(int(last) + 1, size) if last else size
            wanted.append((order, start, end))
    if not wanted:
        raise RangeNotSatisfiable(
            f"The requested range cannot be satisfied: the image has {size} bytes"
        )
    return tuple(
        ByteRange(offset=start, length=end - start, size=size)
        for _, start, end in _coalesce(wanted)
    )


def _coalesce(wanted: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """
    Merge ranges that overlap or lie less than L{COALESCE_GAP} apart; each
    merged range takes the place of the earliest range it swallowed.
    """
    merged: list[tuple[int, int, int]] = []
    for order, start, end in sorted(wanted, key=lambda w: (w[1], w[2])):
        if merged and start <= merged[-1][2] + COALESCE_GAP:
            first_order, first_start, first_end = merged[-1]
            merged[-1] = (min(first_order, order), first_start, max(first_end, end))
        else:
            merged.append((order, start, end))
    return sorted(merged)


def _new_boundary() -> str:
    return secrets.token_hex(16)


@frozen
class MultipartRanges:
    """
    The framing of a C{multipart/byteranges} body (RFC 9110, section
    14.6): for each part a head (delimiter, Content-Type, Content-Range,
    blank line) before its bytes, and a closing delimiter after the last.
    The boundary is random, so it cannot occur in the data by design of an
    uploader; L{content_length} is exact, so the response is not chunked.
    """

    parts: tuple[ByteRange, ...]
    content_type: bytes = b"application/octet-stream"
    boundary: str = field(factory=_new_boundary)

    def media_type(self) -> bytes:
        """The response's Content-Type."""
        return f"multipart/byteranges; boundary={self.boundary}".encode("ascii")

    def head(self, index: int) -> bytes:
        """What goes before the bytes of part C{index}."""
        delimiter = b"" if index == 0 else b"\r\n"
        return (
            delimiter
            + f"--{self.boundary}\r\n".encode("ascii")
            + b"Content-Type: " + self.content_type + b"\r\n"
            + b"Content-Range: " + self.parts[index].content_range() + b"\r\n\r\n"
        )

    def tail(self) -> bytes:
        """What goes after the bytes of the last part."""
        return f"\r\n--{self.boundary}--\r\n".encode("ascii")

    def content_length(self) -> int:
        return (
            sum(len(self.head(i)) + part.length for i, part in enumerate(self.parts))
            + len(self.tail())
        )
