"""
A client for the Images API v2 that streams both ways and returns typed
values: L{Client}, its values and its errors; L{V1Client}, the same for
the Images API v1 of older servers. See C{doc/client.rst}.
"""

from glance_tx.client.api import PATCH_MEDIA_TYPE, Client, json_patch
from glance_tx.client.errors import (
    BadRequest,
    ClientError,
    Conflict,
    ConnectionFailed,
    CorruptDownload,
    DownloadInterrupted,
    Forbidden,
    HTTPError,
    NoImageData,
    NotFound,
    PreconditionFailed,
    RequestEntityTooLarge,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
)
from glance_tx.client.v1 import V1Client
from glance_tx.client.values import DownloadResult, ImageInfo, MemberInfo, StoreInfo

__all__ = [
    "PATCH_MEDIA_TYPE",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "CorruptDownload",
    "DownloadInterrupted",
    "DownloadResult",
    "Forbidden",
    "HTTPError",
    "ImageInfo",
    "MemberInfo",
    "NoImageData",
    "NotFound",
    "PreconditionFailed",
    "RequestEntityTooLarge",
    "ServiceUnavailable",
    "StoreInfo",
    "TimedOut",
    "Unauthorized",
    "V1Client",
    "json_patch",
]
