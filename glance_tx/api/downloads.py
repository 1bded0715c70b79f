"""
Sending image data: one streaming path for every API version.

The store's producer is registered on the request, so a slow client pauses
the store and memory stays flat whatever the image size.
"""

from __future__ import annotations

import base64
from typing import cast

from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from glance_tx import images
from glance_tx.errors import Conflict, Forbidden
from glance_tx.images import Image
from glance_tx.store.backends import StoreMap

log = Logger()


def check_downloadable(image: Image) -> None:
    """Only active images have data to give; say why others do not."""
    if image.status == images.DEACTIVATED:
        raise Forbidden(f"Image {image.id} is deactivated; its data cannot be downloaded")
    if image.status != images.ACTIVE:
        raise Conflict(
            f"Image {image.id} is {image.status}; only an active image's data "
            "can be downloaded"
        )


def set_data_headers(request: IRequest, image: Image) -> None:
    request.setHeader(b"Content-Type", b"application/octet-stream")
    request.setHeader(b"Content-Length", str(image.size or 0).encode("ascii"))
    if image.checksum:
        digest = base64.b64encode(bytes.fromhex(image.checksum))
        request.setHeader(b"Content-MD5", digest)
        request.setHeader(b"ETag", f'"{image.checksum}"'.encode("ascii"))


async def send_data(request: IRequest, image: Image, stores: StoreMap) -> None:
    """Stream the whole of an active image's data to C{request}."""
    if not image.size or not image.locations or request.method == b"HEAD":
        return
    location = image.locations[0]
    consumer = cast(IConsumer, request)  # a twisted.web Request is one
    await stores.for_location(location).read(location, consumer, 0, image.size)
