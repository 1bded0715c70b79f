"""
How Images API v1 spells image metadata in headers, for both ends: the
server that reads and writes them (L{glance_tx.api.v1_meta}) and the
client that writes and reads them (L{glance_tx.client.v1}).
"""

from __future__ import annotations

__all__ = ["BOOLEANS", "PREFIX", "PROPERTY_PREFIX", "SETTABLE", "header_value"]

PREFIX = "x-image-meta-"
PROPERTY_PREFIX = "x-image-meta-property-"

#: The spellings of a boolean header value either end accepts.
BOOLEANS = {
    "true": True, "1": True, "yes": True, "on": True,
    "false": False, "0": False, "no": False, "off": False,
}

#: Headers a client may set; everything else under x-image-meta- that is not
#: a property is read-only and ignored, as in Glance.
SETTABLE = frozenset(
    {
        "name", "id", "disk_format", "container_format", "size", "checksum",
        "is_public", "min_ram", "min_disk", "owner", "protected", "location",
        "store",
    }
)


def header_value(value: object) -> bytes:
    """A metadata value as a header value: C{True}/C{False}, text on one line."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"True" if value else b"False"
    # Header values cannot hold line breaks; a name set through another API
    # could.
    return str(value).replace("\r", " ").replace("\n", " ").encode("utf-8")
