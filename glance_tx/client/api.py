"""
The async client of the Images API v2, on treq: the v2 paths and
documents over L{BaseClient}'s plumbing and data transfers.

Works against glance-tx and against OpenStack Glance: it sends only what
Glance's API defines, and reads refusals in either's shape
(L{glance_tx.client.errors}).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any, ClassVar

from attrs import define

from glance_tx.client.transport import BaseClient, Progress, Source, query_value
from glance_tx.client.values import ImageInfo, MemberInfo, StoreInfo

__all__ = ["PATCH_MEDIA_TYPE", "Client", "Progress", "Source", "json_patch"]

#: The JSON-patch flavour sent: draft 10, where C{add} on an existing
#: property replaces it, so a patch needs no GET first.
PATCH_MEDIA_TYPE = "application/openstack-images-v2.1-json-patch"


def _pointer(name: str) -> str:
    """A JSON pointer to the top-level member C{name} (RFC 6901)."""
    return "/" + name.replace("~", "~0").replace("/", "~1")


def json_patch(
    set: Mapping[str, Any] | None = None, remove: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """
    The JSON-patch document that sets every key of C{set} (a core field,
    C{tags} as a list, or an extra property) and removes every property
    named in C{remove}.
    """
    patch = [
        {"op": "add", "path": _pointer(name), "value": value}
        for name, value in (set or {}).items()
    ]
    patch += [{"op": "remove", "path": _pointer(name)} for name in remove]
    return patch




@define
class Client(BaseClient):
    """
    The Images API v2 at C{url} (the image endpoint, as the service
    catalog gives it: C{http://host:9292}, with or without C{/v2}), as
    the holder of C{token} (sent as C{X-Auth-Token}; never shown).
    Its settings are L{BaseClient}'s.
    """

    version: ClassVar[str] = "v2"

    # -- images ---------------------------------------------------------------

    async def list_images(
        self, *, page_size: int | None = None, **filters: Any
    ) -> AsyncGenerator[ImageInfo, None]:
        """
        Every image the filters select (Glance's listing parameters:
        C{name}, C{status}, C{visibility}, C{owner}, C{tag}, C{sort_key},
        C{sort_dir}, C{sort}, C{member_status}, C{os_hidden}, properties,
        ...; a list value is sent once per item), fetched a page at a time
        (of C{page_size}, else the server's default) as the iteration
        reaches it, following each page's C{next} link.
        """
        if "limit" in filters or "marker" in filters:
            raise TypeError("list_images() pages by itself: use page_size, not limit or marker")
        params: list[tuple[str, str]] = []
        for key, value in filters.items():
            values = value if isinstance(value, list | tuple | set | frozenset) else [value]
            params += [(key, query_value(v)) for v in values]
        if page_size is not None:
            params.append(("limit", str(page_size)))
        url: str | None = self._url("images")
        while url is not None:
            page = await self._json("GET", url, params=params or None)
            params = []
            for document in page.get("images", []):
                yield ImageInfo.from_document(document)
            next_link = page.get("next")
            url = self._follow(next_link) if next_link else None

    def _follow(self, link: str) -> str:
        """A C{next} link (C{/v2/images?...}, as Glance writes it) as a URL."""
        if "://" in link:
            return link
        return self.url + link

    async def show(self, image_id: str) -> ImageInfo:
        """The image C{image_id}."""
        return ImageInfo.from_document(await self._json("GET", self._url("images", image_id)))

    async def create(self, **fields: Any) -> ImageInfo:
        """
        A new (queued) image with C{fields}: core fields (C{name},
        C{disk_format}, C{container_format}, C{visibility}, C{tags}, ...)
        and extra properties (strings) alike.
        """
        document = await self._json("POST", self._url("images"), fields, expect=(201,))
        return ImageInfo.from_document(document)

    async def update(
        self,
        image_id: str,
        set: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
    ) -> ImageInfo:
        """
        Change image C{image_id}: set every field and property in C{set},
        remove every property named in C{remove}, in one JSON patch, all
        or nothing.
        """
        patch = json_patch(set, remove)
        document = await self._json(
            "PATCH", self._url("images", image_id), patch, content_type=PATCH_MEDIA_TYPE
        )
        return ImageInfo.from_document(document)

    async def delete(self, image_id: str) -> None:
        """Delete image C{image_id} and its data."""
        await self._json("DELETE", self._url("images", image_id), expect=(204,))

    async def deactivate(self, image_id: str) -> None:
        """Make an image's data unreadable to all but admins (admin only)."""
        await self._json("POST", self._url("images", image_id, "actions", "deactivate"), expect=(204,))

    async def reactivate(self, image_id: str) -> None:
        """Undo L{deactivate} (admin only)."""
        await self._json("POST", self._url("images", image_id, "actions", "reactivate"), expect=(204,))

    # -- tags -------------------------------------------------------------------

    async def add_tag(self, image_id: str, tag: str) -> None:
        await self._json("PUT", self._url("images", image_id, "tags", tag), expect=(204,))

    async def remove_tag(self, image_id: str, tag: str) -> None:
        await self._json("DELETE", self._url("images", image_id, "tags", tag), expect=(204,))

    # -- members ----------------------------------------------------------------

    async def list_members(self, image_id: str) -> list[MemberInfo]:
        """The projects a shared image is offered to (a member sees itself)."""
        document = await self._json("GET", self._url("images", image_id, "members"))
        return [MemberInfo.from_document(m) for m in document.get("members", [])]

    async def show_member(self, image_id: str, member_id: str) -> MemberInfo:
        url = self._url("images", image_id, "members", member_id)
        return MemberInfo.from_document(await self._json("GET", url))

    async def add_member(self, image_id: str, member_id: str) -> MemberInfo:
        """Offer a shared image to project C{member_id} (it starts pending)."""
        url = self._url("images", image_id, "members")
        return MemberInfo.from_document(await self._json("POST", url, {"member": member_id}))

    async def update_member(self, image_id: str, member_id: str, status: str) -> MemberInfo:
        """As the member: C{accepted}, C{rejected} or back to C{pending}."""
        url = self._url("images", image_id, "members", member_id)
        return MemberInfo.from_document(await self._json("PUT", url, {"status": status}))

    async def remove_member(self, image_id: str, member_id: str) -> None:
        url = self._url("images", image_id, "members", member_id)
        await self._json("DELETE", url, expect=(204,))

    # -- stores -----------------------------------------------------------------

    async def stores(self) -> list[StoreInfo]:
        """The stores an upload may name (C{GET /v2/info/stores})."""
        document = await self._json("GET", self._url("info", "stores"))
        return [StoreInfo.from_document(s) for s in document.get("stores", [])]

    # -- import -----------------------------------------------------------------

    async def import_methods(self) -> list[str]:
        """The import methods the server offers (C{GET /v2/info/import})."""
        document = await self._json("GET", self._url("info", "import"))
        return list(document.get("import-methods", {}).get("value", []))

    async def import_image(
        self,
        image_id: str,
        method: str = "glance-direct",
        *,
        uri: str | None = None,
        stores: Iterable[str] | None = None,
        all_stores: bool | None = None,
        all_stores_must_succeed: bool | None = None,
    ) -> None:
        """
        Ask the server to import image C{image_id} by C{method}
        (C{glance-direct} after L{stage}, C{web-download} from C{uri},
        C{copy-image} of an active image) into C{stores} (else
        C{all_stores}, else the default store). Returns once accepted
        (202): the data moves in the background; L{show} the image for
        C{active}, or C{os_glance_failed_import}.
        """
        document: dict[str, Any] = {"method": {"name": method}}
        if uri is not None:
            document["method"]["uri"] = uri
        if stores is not None:
            document["stores"] = list(stores)
        if all_stores is not None:
            document["all_stores"] = all_stores
        if all_stores_must_succeed is not None:
            document["all_stores_must_succeed"] = all_stores_must_succeed
        await self._json("POST", self._url("images", image_id, "import"), document, expect=(202,))

    # -- data -------------------------------------------------------------------

    async def upload(
        self,
        image_id: str,
        source: Source,
        *,
        size: int | None = None,
        store: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        """
        Upload image C{image_id}'s data from C{source}: a path, or a
        binary file object read from its position (a pipe too; it is not
        closed). Streamed a block at a time, never read whole. C{size} is
        how many bytes to send; by default all that is left of a regular
        file (sent with a C{Content-Length}), else up to the end (sent
        chunked). C{store} names the store to write to. C{progress} is
        called as each block is sent.
        """
        headers = {} if store is None else {"X-Image-Meta-Store": store}
        url = self._url("images", image_id, "file")
        await self._send_data("PUT", url, source, size, headers, progress)

    async def stage(
        self,
        image_id: str,
        source: Source,
        *,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """
        Stage image C{image_id}'s data for a C{glance-direct}
        L{import_image} (C{PUT /v2/images/{id}/stage}): C{source},
        C{size} and C{progress} as for L{upload}, streamed the same way.
        The image is then C{uploading}; the import chooses the stores.
        """
        await self._send_data("PUT", self._url("images", image_id, "stage"), source, size, {}, progress)


    def _data_url(self, image_id: str) -> str:
        return self._url("images", image_id, "file")
