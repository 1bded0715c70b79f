"""
The versions document: what ``GET /``, ``GET /versions`` and ``GET /v2/``
answer.

Only versions whose features glance-tx really serves are listed, as Glance
33 lists only those its configuration enables (``glance/api/versions.py``):
v2 minor versions add up, so the newest listed is CURRENT and the rest are
SUPPORTED. By 2.7 they bring members, tags, schemas, deactivation,
community images, import (2.6), hidden images and the multihash (2.7).
After that (Glance's version history and the change behind each bump):

- 2.8: several stores (C{GET /v2/info/stores}, C{X-Image-Meta-Store},
  C{stores} on an import and on an image); Glance lists it only with
  C{enabled_backends}, as glance-tx only with several stores;
- 2.9: several stores made stable (Train), no new call; always listed;
- 2.10: C{DELETE /v2/stores/{store}/{image}}, import into several stores
  and copy-image (Ussuri); several stores only;
- 2.11: the import lock (a second import of an image is a 409 while one
  runs, taken over when its node stops) and copy-image by policy
  (Victoria); several stores only;
- 2.12: C{GET /v2/images/{id}/tasks}; several stores only;
- 2.13: C{GET /v2/info/usage}; several stores only, as in Glance;
- 2.14, 2.16, 2.18: the cache API (C{/v2/cache}); Glance lists them only
  with an image cache, and glance-tx has none (shared HTTP caches in front
  of it do that work), so they are never listed;
- 2.15: C{GET /v2/info/stores/detail}; always listed;
- 2.17: the service-role location API (C{POST} and C{GET
  /v2/images/{id}/locations}): not served, so 2.15 is the newest listed.

v1 is listed first, as before v2 existed (``tests/test_api_v1.py`` reads
the first entry); clients look versions up by id (glanceclient takes any
``v2`` entry and checks C{v2.12} before an image's tasks, Tempest by id
too, keystoneauth sorts them), so the order carries no meaning.
"""

from __future__ import annotations

from typing import Any

#: The v1 versions served.
V1: tuple[str, ...] = ("1.1", "1.0")

#: The v2 minor versions served, newest first, each with whether it is
#: listed only where several stores are enabled (Glance: C{enabled_backends}).
V2: tuple[tuple[int, bool], ...] = (
    (15, False),
    (13, True),
    (12, True),
    (11, True),
    (10, True),
    (9, False),
    (8, True),
    *((minor, False) for minor in range(7, -1, -1)),
)


def version_ids(several_stores: bool) -> list[tuple[str, str, str]]:
    """(id, status, path) of each version listed, with several stores or one."""
    v2 = [f"v2.{minor}" for minor, only_several in V2 if several_stores or not only_several]
    return [
        *((f"v{number}", "SUPPORTED", "v1") for number in V1),
        *((version, "CURRENT" if i == 0 else "SUPPORTED", "v2") for i, version in enumerate(v2)),
    ]


def versions_document(base_url: str, several_stores: bool) -> dict[str, Any]:
    base = base_url.rstrip("/")
    return {
        "versions": [
            {
                "id": version_id,
                "status": status,
                "links": [{"rel": "self", "href": f"{base}/{path}/"}],
            }
            for version_id, status, path in version_ids(several_stores)
        ]
    }
