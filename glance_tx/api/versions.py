"""
The versions document: what ``GET /``, ``GET /versions`` and ``GET /v2/``
answer.

Only versions whose features glance-tx really serves are listed. Images API
v2 minor versions add up: 2.1 image members, 2.2 and 2.3 (tasks aside,
which glance-tx does not have) deactivate/reactivate, 2.4 nothing a client
can see, 2.5 community images. 2.6 adds interoperable image import, which
glance-tx does not have, so 2.5 is the newest listed -- although the fields
of 2.7 (``os_hidden``, ``os_hash_algo``/``os_hash_value``) are served, a
client that sees 2.7 may assume import too.

v1 comes first: that is where the original glance-tx served its only
version, and clients look versions up by id (glanceclient picks any ``v2``
entry; keystoneauth sorts them), so the order carries no meaning.
"""

from __future__ import annotations

from typing import Any

#: (id, status, path) of each version served.
VERSIONS: tuple[tuple[str, str, str], ...] = (
    ("v1.1", "SUPPORTED", "v1"),
    ("v1.0", "SUPPORTED", "v1"),
    ("v2.5", "CURRENT", "v2"),
    ("v2.4", "SUPPORTED", "v2"),
    ("v2.3", "SUPPORTED", "v2"),
    ("v2.2", "SUPPORTED", "v2"),
    ("v2.1", "SUPPORTED", "v2"),
    ("v2.0", "SUPPORTED", "v2"),
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
