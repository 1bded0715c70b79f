"""
The versions document: what ``GET /``, ``GET /versions`` and ``GET /v2/``
answer.

Only versions whose features glance-tx really serves are listed. Images
API v2 minor versions add up; by 2.5 they bring image members, tags,
schemas, deactivate/reactivate and community visibility, all served here,
as are tasks (C{/v2/tasks}, of that era; no client infers them from a
version). 2.6 adds interoperable image import (L{glance_tx.imports}) and
2.7 hidden images and the multihash (``os_hidden``,
``os_hash_algo``/``os_hash_value``): served, so 2.7 is the newest listed.
2.8 and later (multiple stores made stable, deleting an image from one
store, an image's tasks, the cache API) bring endpoints not all of which
are served, so none of them is listed: an image's tasks (2.12) are
served, but 2.10's C{DELETE /v2/stores/{store}/{image}} is not yet, and
listing 2.12 would claim it.

v1 is listed first, as before v2 existed (``tests/test_api_v1.py`` reads
the first entry); clients look versions up by id (glanceclient takes any
``v2`` entry, keystoneauth sorts them), so the order carries no meaning.
"""

from __future__ import annotations

from typing import Any

#: (id, status, path) of each version served.
VERSIONS: tuple[tuple[str, str, str], ...] = (
    ("v1.1", "SUPPORTED", "v1"),
    ("v1.0", "SUPPORTED", "v1"),
    ("v2.7", "CURRENT", "v2"),
    ("v2.6", "SUPPORTED", "v2"),
    ("v2.5", "SUPPORTED", "v2"),
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
