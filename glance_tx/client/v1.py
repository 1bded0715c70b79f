"""
The async client of the Images API v1, for servers too old for v2: the
v1 paths and its C{x-image-meta-*} headers over L{BaseClient}'s
plumbing, so errors, timeouts, retries, streamed uploads and verified,
resumed downloads are the v2 client's own.

Its methods are L{glance_tx.client.api.Client}'s where v1 has the same
thing, with the same signatures and values (a caller, the blocking
client and the command line switch versions without other change);
what v1 lacks (tags, stores, import, member statuses, image actions)
raises L{ClientError} saying so. In v1 an image is public or not:
C{visibility} C{public} is C{is_public} true and anything else false,
read back as C{private}. A v1 image has no C{os_hash_value}: a download
is checked against its md5 C{checksum}.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any, ClassVar

from attrs import define
from twisted.web.http_headers import Headers

from glance_tx.client.errors import ClientError
from glance_tx.client.transport import BaseClient, Progress, Source, query_value
from glance_tx.client.values import ImageInfo, MemberInfo, StoreInfo
from glance_tx.v1_wire import BOOLEANS, PREFIX, PROPERTY_PREFIX, SETTABLE, header_value

__all__ = ["V1Client"]

#: What a v1 listing filters on by name; any other key is a property.
_FILTERS = frozenset({
    "name", "status", "container_format", "disk_format", "min_ram", "min_disk",
    "size_min", "size_max", "sort_key", "sort_dir", "is_public", "changes-since",
})
#: v2 listing parameters v1 has no equivalent of.
_V2_ONLY_FILTERS = frozenset({"tag", "member_status", "os_hidden", "sort", "owner"})
#: The v1 image fields read from headers as numbers and as booleans.
_INTEGERS = frozenset({"size", "virtual_size", "min_ram", "min_disk"})
_FLAGS = frozenset({"is_public", "protected", "deleted"})


def _not_in_v1(what: str) -> ClientError:
    return ClientError(f"The Images API v1 has no {what}: use version 2")


def _is_public(visibility: Any) -> bool:
    if visibility not in ("public", "private", "shared"):
        raise _not_in_v1(f"{visibility!r} visibility (only public or not)")
    return bool(visibility == "public")


def meta_headers(fields: Mapping[str, Any]) -> dict[str, str]:
    """
    C{fields} (v2's names: core fields, C{visibility}, extra properties)
    as the C{x-image-meta-*} headers of a v1 create or update.
    """
    headers: dict[str, str] = {}
    for key, value in fields.items():
        if key == "tags":
            raise _not_in_v1("tags")
        if key == "visibility":
            key, value = "is_public", _is_public(value)
        prefix = PREFIX if key in SETTABLE else PROPERTY_PREFIX
        headers[prefix + key] = header_value(value).decode("utf-8")
    return headers


def document_from_headers(headers: Headers) -> dict[str, Any]:
    """The v1 image document the C{x-image-meta-*} headers of a HEAD spell."""
    document: dict[str, Any] = {}
    properties: dict[str, str] = {}
    for raw_name, values in headers.getAllRawHeaders():
        name = raw_name.decode("latin-1").lower()
        value = values[-1].decode("utf-8", "replace")
        if name.startswith(PROPERTY_PREFIX):
            properties[name[len(PROPERTY_PREFIX):]] = value
        elif name.startswith(PREFIX):
            key = name[len(PREFIX):].replace("-", "_")
            if key in _INTEGERS:
                document[key] = int(value) if value.isdigit() else None
            elif key in _FLAGS:
                document[key] = BOOLEANS.get(value.strip().lower(), False)
            else:
                document[key] = value or None
    document["properties"] = properties
    return document


def _filter_params(filters: Mapping[str, Any]) -> list[tuple[str, str]]:
    """v2-style listing filters as v1's query parameters."""
    params: list[tuple[str, str]] = []
    for key, value in filters.items():
        if key in _V2_ONLY_FILTERS:
            raise _not_in_v1(f"listing filter {key!r}")
        if key == "visibility":
            # v1's is_public=none is every image the caller may see.
            params.append(("is_public", "none" if value == "all" else query_value(_is_public(value))))
        elif key in _FILTERS:
            params.append((key, query_value(value)))
        else:
            params.append((f"property-{key}", query_value(value)))
    return params


@define
class V1Client(BaseClient):
    """
    The Images API v1 at C{url} (the image endpoint, with or without
    C{/v1}), as the holder of C{token}; its settings are L{BaseClient}'s.
    """

    version: ClassVar[str] = "v1"

    # -- images ---------------------------------------------------------------

    async def list_images(
        self, *, page_size: int | None = None, **filters: Any
    ) -> AsyncGenerator[ImageInfo, None]:
        """
        Every image the filters select (v1's: C{name}, C{status},
        C{disk_format}, C{container_format}, C{min_ram}, C{min_disk},
        C{size_min}, C{size_max}, C{sort_key}, C{sort_dir}, C{visibility}
        as C{is_public}; any other key a property), from
        C{/v1/images/detail} a page at a time, each page after the last
        image of the one before (v1 has no C{next} link).
        """
        if "limit" in filters or "marker" in filters:
            raise TypeError("list_images() pages by itself: use page_size, not limit or marker")
        params = _filter_params(filters)
        if page_size is not None:
            params.append(("limit", str(page_size)))
        marker: str | None = None
        while True:
            page_params = params + ([("marker", marker)] if marker is not None else [])
            page = await self._json("GET", self._url("images", "detail"), params=page_params)
            documents = page.get("images", [])
            for document in documents:
                yield ImageInfo.from_v1_document(document)
            if not documents or (page_size is not None and len(documents) < page_size):
                return
            marker = str(documents[-1]["id"])

    async def _head(self, image_id: str) -> Headers:
        """The headers of a HEAD of image C{image_id}: its metadata and ETag."""
        url = self._url("images", image_id)

        async def once() -> Headers:
            response = await self._request("HEAD", url)
            await self._body(response)
            return response.headers

        return await self._repeated("HEAD", None, once)

    async def show(self, image_id: str) -> ImageInfo:
        """The image C{image_id}, from the C{x-image-meta-*} headers of a HEAD."""
        return ImageInfo.from_v1_document(document_from_headers(await self._head(image_id)))

    async def create(self, **fields: Any) -> ImageInfo:
        """
        A new (queued) image with C{fields}, as for v2's C{create}: core
        fields, C{visibility} (public or not) and extra properties; no
        C{tags}. Upload its data with L{upload}.
        """
        document = await self._json(
            "POST", self._url("images"), headers=meta_headers(fields), expect=(201,)
        )
        return ImageInfo.from_v1_document(document["image"])

    async def update(
        self,
        image_id: str,
        set: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
    ) -> ImageInfo:
        """
        Set every field and property in C{set} (a PUT of headers: sent
        again after a failure worth a retry). Removing properties
        (C{remove}) is v1's replace-them-all (C{x-glance-registry-purge-props}):
        the image is read first and written with C{If-Match} on what was
        read, so a change made in between is refused
        (L{glance_tx.client.PreconditionFailed}), not lost.
        """
        headers = meta_headers(set or {})
        removed = frozenset(remove)
        if removed:
            current = await self._head(image_id)
            kept = {
                key: value
                for key, value in document_from_headers(current)["properties"].items()
                if key not in removed
            }
            headers = {**meta_headers(kept), **headers, "x-glance-registry-purge-props": "true"}
            etag = current.getRawHeaders(b"etag")
            if etag:
                headers["If-Match"] = etag[0].decode("latin-1")
        document = await self._json("PUT", self._url("images", image_id), headers=headers)
        return ImageInfo.from_v1_document(document["image"])

    async def delete(self, image_id: str) -> None:
        """Delete image C{image_id} and its data."""
        await self._json("DELETE", self._url("images", image_id), expect=(200, 204))

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
        Upload a queued image's data (a PUT of C{/v1/images/{id}} with a
        body), from C{source} as for v2's C{upload}: streamed, never
        read whole, never sent twice.
        """
        headers = {} if store is None else {PREFIX + "store": store}
        await self._send_data("PUT", self._url("images", image_id), source, size, headers, progress)

    def _data_url(self, image_id: str) -> str:
        return self._url("images", image_id)

    # -- members ----------------------------------------------------------------
    # v1 has no member statuses: a member sees the image at once, as an
    # accepted member does in v2.

    async def list_members(self, image_id: str) -> list[MemberInfo]:
        """The projects image C{image_id} is shared with."""
        document = await self._json("GET", self._url("images", image_id, "members"))
        return [
            MemberInfo(image_id, str(m["member_id"]), "accepted")
            for m in document.get("members", [])
        ]

    async def add_member(self, image_id: str, member_id: str) -> MemberInfo:
        """Share image C{image_id} with project C{member_id}."""
        await self._json(
            "PUT", self._url("images", image_id, "members", member_id), expect=(200, 204)
        )
        return MemberInfo(image_id, member_id, "accepted")

    async def remove_member(self, image_id: str, member_id: str) -> None:
        await self._json(
            "DELETE", self._url("images", image_id, "members", member_id), expect=(200, 204)
        )

    # -- what v1 does not have ------------------------------------------------------

    async def show_member(self, image_id: str, member_id: str) -> MemberInfo:
        raise _not_in_v1("single member view")

    async def update_member(self, image_id: str, member_id: str, status: str) -> MemberInfo:
        raise _not_in_v1("member statuses")

    async def add_tag(self, image_id: str, tag: str) -> None:
        raise _not_in_v1("tags")

    async def remove_tag(self, image_id: str, tag: str) -> None:
        raise _not_in_v1("tags")

    async def deactivate(self, image_id: str) -> None:
        raise _not_in_v1("image actions")

    async def reactivate(self, image_id: str) -> None:
        raise _not_in_v1("image actions")

    async def stores(self) -> list[StoreInfo]:
        raise _not_in_v1("store listing")

    async def import_methods(self) -> list[str]:
        raise _not_in_v1("interoperable import")

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
        raise _not_in_v1("interoperable import")

    async def stage(
        self,
        image_id: str,
        source: Source,
        *,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        raise _not_in_v1("staging")
