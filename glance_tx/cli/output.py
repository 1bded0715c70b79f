"""
What the command line prints: the client's values as JSON documents (for
scripts, C{--format json}) or as tables (for people).

One function per value turns it into a document; the tables are drawn
from the same documents, so both formats always show the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from attrs import fields

from glance_tx.client.values import DownloadResult, ImageInfo, MemberInfo, StoreInfo

__all__ = [
    "download_document",
    "human_size",
    "image_document",
    "member_document",
    "render_fields",
    "render_table",
    "store_document",
]


def _timestamp(value: datetime | None) -> str | None:
    """As Glance writes it: UTC, whole seconds, C{Z}."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="seconds") + "Z"


def image_document(image: ImageInfo) -> dict[str, Any]:
    """
    An image as JSON: the core fields at the top, C{tags} and C{stores}
    as sorted lists, the extra properties under C{properties}.
    """
    document: dict[str, Any] = {}
    for f in fields(ImageInfo):
        value = getattr(image, f.name)
        if isinstance(value, datetime):
            value = _timestamp(value)
        elif f.name == "tags":
            value = sorted(value)
        elif f.name == "stores":
            value = list(value)
        elif f.name == "properties":
            value = dict(value)
        document[f.name] = value
    return document


def member_document(member: MemberInfo) -> dict[str, Any]:
    return {
        "image_id": member.image_id,
        "member_id": member.member_id,
        "status": member.status,
        "created_at": _timestamp(member.created_at),
        "updated_at": _timestamp(member.updated_at),
    }


def store_document(store: StoreInfo) -> dict[str, Any]:
    return {
        "id": store.id,
        "description": store.description,
        "default": store.default,
        "read_only": store.read_only,
    }


def download_document(result: DownloadResult, path: str) -> dict[str, Any]:
    return {
        "image_id": result.image_id,
        "file": path,
        "size": result.size,
        "algorithm": result.algorithm,
        "hexdigest": result.hexdigest,
        "resumed": result.resumed,
    }


def human_size(size: float) -> str:
    """C{size} bytes in binary units: C{512 B}, C{1.5 MiB}."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in sorted(value.items()))
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A boxed table, as python-glanceclient prints (without its wrapping)."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([rule, line(headers), rule, *(line(r) for r in cells), rule])


def render_fields(document: Mapping[str, Any]) -> str:
    """
    One value as a C{Property | Value} table, keys sorted; a nested
    C{properties} mapping is spread into rows of its own, as Glance's
    image document has them at the top.
    """
    rows = {key: value for key, value in document.items() if key != "properties"}
    rows.update(document.get("properties") or {})
    return render_table(["Property", "Value"], sorted(rows.items()))
