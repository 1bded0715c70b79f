"""
Image data that already lives somewhere: adding and removing an image's
locations.

v1's ``x-image-meta-location`` and v2's ``PATCH`` of ``/locations`` both
come here, so both judge a URL alike. The store that serves the URL's
scheme (or the one named) must accept it and tell its size: the HTTP store
asks with a C{HEAD}, through the address guard, so a URL that is malformed,
refused by the guard or unreachable is a 400 that says why. A queued image
becomes active with that size; an active image gains another copy only if
the sizes agree (a copy of other bytes is not a copy). Digests the caller
vouches for (v1's checksum, v2's C{validation_data}) follow Glance's rules:
they may repeat what the image has, fill in what it lacks only while it is
queued, and never contradict it (409). The data is not read to verify
them, as in Glance.

Removing a location, as in Glance, deletes the data there (where this
service owns it) and is refused for the last one of an active image.

Every step of one request is checked against the state the previous one
left (L{LocationEdit}), and the lot is saved as one registry update that
holds only if nobody changed the image meanwhile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from attrs import define, field, frozen
from twisted.logger import Logger

from glance_tx import images
from glance_tx.errors import BadRequest, Conflict, Forbidden, GlanceError
from glance_tx.images import Image, ImageUpdate, Location
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap, is_read_only
from glance_tx.store.http import shown_url

__all__ = ["HASH_ALGORITHM", "LocationEdit", "Validation", "delete_data"]

log = Logger()

#: The digest every upload records as C{os_hash_algo} (Glance's default
#: C{hashing_algorithm}).
HASH_ALGORITHM = "sha512"
#: Statuses in which an image may gain a location (Glance's).
ADDABLE_STATUSES = frozenset({images.QUEUED, images.ACTIVE})


@frozen
class Validation:
    """
    Digests the caller says the data at a location has (Glance's
    C{validation_data}; v1's C{x-image-meta-checksum}).
    """

    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None


def _new_digests(image: Image, validation: Validation) -> dict[str, str]:
    """
    The digests C{validation} gives that C{image} lacks, refused (409) when
    one contradicts the image or is no digest of the right kind and size.
    """
    new: dict[str, str] = {}
    for name, value in attrs.asdict(validation).items():
        if value is None:
            continue
        current = getattr(image, name)
        if value == current:
            continue
        if current:
            raise Conflict(f"{name} is already set with a different value")
        new[name] = value
    if not new:
        return {}
    if image.status != images.QUEUED:
        raise Conflict(
            f"New value(s) for {', '.join(sorted(new))} may only be provided "
            "when image status is 'queued'"
        )
    if "checksum" in new:
        _check_hex("checksum", new["checksum"], "md5")
    if "os_hash_algo" in new or "os_hash_value" in new:
        algo = new.get("os_hash_algo", image.os_hash_algo)
        if algo != HASH_ALGORITHM:
            raise Conflict(f"os_hash_algo must be {HASH_ALGORITHM}, not {algo}")
        _check_hex("os_hash_value", new.get("os_hash_value", image.os_hash_value), algo)
    return new


def _check_hex(name: str, value: str | None, algorithm: str) -> None:
    size = hashlib.new(algorithm).digest_size
    try:
        length = len(bytes.fromhex(value or ""))
    except ValueError:
        raise Conflict(f"{name} ({value}) is not a valid hexadecimal value") from None
    if length != size:
        raise Conflict(
            f"{name} ({value}) is not the correct size for {algorithm} "
            f"(should be {size} bytes)"
        )


@define
class LocationEdit:
    """
    One request's changes to an image's locations: each checked against
    the image as the previous ones left it, then saved at once.

    @ivar image: The record as the request read it.
    """

    image: Image
    stores: StoreMap
    _fields: dict[str, Any] = field(factory=dict)
    _removed: list[Location] = field(factory=list)

    @property
    def current(self) -> Image:
        """The image as it will be once saved."""
        return attrs.evolve(self.image, **self._fields)

    async def add(
        self,
        url: str,
        *,
        store_id: str | None = None,
        position: int | None = None,
        declared_size: int | None = None,
        validation: Validation = Validation(),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Add the data at C{url} at C{position} (C{None}: last), held by the
        store C{store_id} (C{None}: the one that serves the URL's scheme),
        with the caller's C{metadata} kept beside it.
        C{declared_size} is the size the caller says the data has.

        @raise Conflict: the image can take no location now, or
            C{validation} contradicts it.
        @raise BadRequest: the URL, store, position or size is wrong.
        """
        image = self.current
        if image.status not in ADDABLE_STATUSES:
            raise Conflict(
                f"It's not allowed to add locations if image status is {image.status}."
            )
        if position is None:
            position = len(image.locations)
        if not 0 <= position <= len(image.locations):
            raise BadRequest("Invalid position for adding a location.")
        if any(location.url == url for location in image.locations):
            raise BadRequest(f"The location {shown_url(url)} is already one of image {image.id}'s.")
        digests = _new_digests(image, validation)
        location, size = await self._locate(url, store_id)
        if declared_size is not None and declared_size != size:
            raise BadRequest(
                f"The declared size ({declared_size}) does not match the data at "
                f"the location ({size})"
            )
        if image.status == images.ACTIVE and image.size is not None and size != image.size:
            raise BadRequest(
                f"The data at the location is {size} bytes; image {image.id} is "
                f"{image.size} bytes"
            )
        locations = list(image.locations)
        locations.insert(position, attrs.evolve(location, metadata=metadata or {}))
        self._fields.update(digests, locations=tuple(locations))
        if image.status == images.QUEUED:
            self._fields.update(status=images.ACTIVE, size=size)

    async def _locate(self, url: str, store_id: str | None) -> tuple[Location, int]:
        """The location of C{url} in its store, and the size of its data."""
        try:
            if store_id is None:
                store_id = self.stores.store_id_for(url)
            elif not self.stores.serves(store_id, url):
                raise BadRequest(f"Store {store_id!r} does not serve {shown_url(url)}")
            location = Location(url, store_id)
            size = await self.stores.for_location(location).size(url)
        except GlanceError as e:
            raise BadRequest(f"Location cannot be used: {e.message}") from None
        return location, size

    async def replace(self, wanted: Iterable[Location]) -> None:
        """
        Glance's replace of C{/locations}: an image with none gains
        C{wanted} (as L{add}s, in order); one with locations may only have
        their metadata and order changed (the same URLs, each in the same
        store), else a 400.
        """
        image, wanted = self.current, list(wanted)
        if image.status not in ADDABLE_STATUSES:
            raise Conflict(
                f"It's not allowed to replace locations if image status is {image.status}."
            )
        if not image.locations:
            for location in wanted:
                await self.add(location.url, store_id=location.store, metadata=location.metadata)
            return
        held = {location.url: location for location in image.locations}
        if sorted(loc.url for loc in wanted) != sorted(held):
            raise BadRequest(
                "Original locations is not empty: only their metadata and order can be replaced."
            )
        for location in wanted:
            if location.store is not None and location.store != held[location.url].store:
                raise BadRequest(f"The location {shown_url(location.url)} is not in store {location.store!r}")
        self._fields["locations"] = tuple(
            attrs.evolve(held[location.url], metadata=location.metadata) for location in wanted
        )

    def remove(self, position: int | None = None) -> None:
        """
        Remove the location at C{position} (C{None}: the last one); its
        data goes once the change is saved.

        @raise Conflict: the image is not active.
        @raise Forbidden: it is the image's last location.
        @raise BadRequest: there is no location at C{position}.
        """
        image = self.current
        if image.status != images.ACTIVE:
            raise Conflict(
                f"It's not allowed to remove locations if image status is {image.status}."
            )
        if len(image.locations) == 1:
            raise Forbidden("Cannot remove last location in the image.")
        if position is None:
            position = len(image.locations) - 1
        if not 0 <= position < len(image.locations):
            raise BadRequest("Invalid position for removing a location.")
        locations = list(image.locations)
        self._removed.append(locations.pop(position))
        self._fields["locations"] = tuple(locations)

    async def save(self, registry: IRegistry, update: ImageUpdate | None = None) -> Image:
        """
        Save these changes with C{update}'s in one registry update, which
        holds only if the image is as it was read (else a 409); then delete
        the data of the removed locations.
        """
        update = update or ImageUpdate()
        saved = await registry.update(
            self.image.id,
            attrs.evolve(update, fields={**update.fields, **self._fields}),
            expected_version=self.image.version,
        )
        await delete_data(self.stores, saved.id, self._removed)
        return saved


async def delete_data(stores: StoreMap, image_id: str, locations: Iterable[Location]) -> bool:
    """
    Delete the data at C{locations} of an image whose record no longer
    names them (or, for the scrubber, is pending delete); data in a
    read-only store (the web's) is not ours to delete, and a failure is
    logged, not raised: the orphan sweep removes what a store failed to
    delete now (the scrubber tries again instead). Returns whether every
    location's data is gone.
    """
    deleted = True
    for location in locations:
        try:
            store = stores.for_location(location)
            if is_read_only(store):
                continue
            await store.delete(location.url)
        except Exception:
            deleted = False
            log.failure("Could not delete data of image {image_id}", image_id=image_id)
    return deleted
