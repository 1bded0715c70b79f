"""The versions document: what ``GET /`` and ``GET /versions`` answer."""

from __future__ import annotations

from typing import Any

#: (id, status, path) of each version served, newest first.
VERSIONS: tuple[tuple[str, str, str], ...] = (
    ("v1.1", "CURRENT", "v1"),
    ("v1.0", "SUPPORTED", "v1"),
)


def versions_document(base_url: str) -> dict[str, Any]:
    base = base_url.rstrip("/")
    return {
        "versions": [
            {
                "id": version_id,
                "status": status,
                "links": [{"rel": "self", "href": f"{base}/{path}/"}],
            }
            for version_id, status, path in VERSIONS
        ]
    }
