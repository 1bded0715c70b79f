"""
A streaming client for the S3 protocol, on treq.

txaws, the Twisted S3 library, is Python 2 only (see doc/configuration.rst),
so this speaks the protocol itself: requests go out through an injected
treq L{HTTPClient} and are signed by botocore's SigV4 signer
(L{S3SigV4Auth} over an L{AWSRequest}). Bodies that stream are signed as
C{UNSIGNED-PAYLOAD}, as botocore does for streaming uploads; small XML
bodies are signed with their SHA-256.

Request bodies are L{glance_tx.store.fed_body.FedBody}s, fed as the bytes arrive and paused by the
connection; response bodies of C{GET} are handed back unread, for the
caller to relay with backpressure. Nothing here buffers an object.

Credentials never leave this module: they are excluded from C{repr}, and
errors name the store, the operation and S3's error code, never a key, a
signature or the server's free-text message about a refused signature.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from attrs import field, frozen
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotocoreConfig
from botocore.credentials import Credentials
from treq import content
from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer, IResponse

from glance_tx.bodies import BytesBody
from glance_tx.errors import BadRequest, NotFound, StoreError
from glance_tx.store.fed_body import FedBody

__all__ = [
    "MultipartUpload",
    "UploadedPart",
    "S3Client",
    "S3Credentials",
    "S3Error",
]

#: botocore's switch between hashing a body and C{UNSIGNED-PAYLOAD}.
_STREAMING = BotocoreConfig(s3={"payload_signing_enabled": False})
_HASHED = BotocoreConfig(s3={"payload_signing_enabled": True})

#: S3 error codes that mean "these credentials are not accepted".
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidSecurity",
        "AuthorizationHeaderMalformed",
        "AccessDenied",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload"})

_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class HTTPRequester(Protocol):
    """What the client needs of treq: an C{HTTPClient}, or a fake in tests."""

    @property
    def request(self) -> Callable[..., Deferred[Any]]: ...


@frozen
class S3Credentials:
    """An access key pair; never shown by C{repr}."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)


class S3Error(StoreError):
    """
    S3 refused a request: a L{StoreError} that also carries the HTTP status
    and S3's error code, so callers can tell cases apart without parsing
    the message.
    """

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code


class S3NotFound(NotFound):
    """S3 has no such key, bucket or upload; C{code} says which."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@frozen
class MultipartUpload:
    """A multipart upload in progress: where it goes and its id."""

    bucket: str
    key: str
    upload_id: str


@frozen
class UploadedPart:
    """A part S3 has stored: its number, its ETag and its CRC32 checksum."""

    number: int
    etag: str
    crc32: int

    @property
    def checksum(self) -> str:
        """The CRC32 as S3 writes it: base64 of its four bytes, big-endian."""
        return base64.b64encode(self.crc32.to_bytes(4, "big")).decode("ascii")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ElementTree.Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


def _parse_xml(body: bytes) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise StoreError("S3 answered with a document that is not XML") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@frozen
class S3Client:
    """
    Speaks S3 to one endpoint for one store.

    @ivar http: The treq client requests go through.
    @ivar reactor: Passed to treq (which would otherwise import the global
        reactor) and used for request timeouts.
    @ivar endpoint: C{scheme://host[:port]}, as in C{s3_store_host}.
    @ivar region: The region requests are signed for.
    @ivar credentials: The key pair requests are signed with.
    @ivar addressing: C{"path"} (C{endpoint/bucket/key}) or C{"virtual"}
        (C{bucket.host/key}); C{"auto"} picks virtual for a bucket name that
        is a DNS label on a host that is not an IP address, else path.
    @ivar store_name: How errors name the store.
    @ivar timeout: Seconds to wait for the answer to a request without a
        streamed body (a streamed one takes as long as its body takes).
    """

    http: HTTPRequester
    reactor: Any
    endpoint: str = field()
    region: str
    credentials: S3Credentials
    addressing: str = "auto"
    store_name: str = "s3"
    timeout: float = 60.0

    @endpoint.validator
    def _check_endpoint(self, attribute: Any, value: str) -> None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"S3 endpoint {value!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("The S3 endpoint must not carry credentials")

    def __attrs_post_init__(self) -> None:
        if self.addressing not in ("auto", "path", "virtual"):
            raise ValueError(
                f"S3 addressing must be auto, path or virtual, not {self.addressing!r}"
            )

    # Addressing and signing

    def _virtual(self, bucket: str) -> bool:
        if self.addressing == "auto":
            host = urlsplit(self.endpoint).hostname or ""
            return bool(_DNS_BUCKET.match(bucket)) and not _is_ip(host) and host != "localhost"
        return self.addressing == "virtual"

    def url(self, bucket: str, key: str = "", query: Mapping[str, str] | None = None) -> str:
        """The URL of C{key} in C{bucket} (of the bucket when C{key} is empty)."""
        parts = urlsplit(self.endpoint)
        base = parts.path.rstrip("/")
        path = quote(key, safe="/-_.~")
        if self._virtual(bucket):
            netloc = f"{bucket}.{parts.netloc}"
            target = f"{base}/{path}"
        else:
            netloc = parts.netloc
            target = f"{base}/{quote(bucket, safe='-_.~')}" + (f"/{path}" if key else "")
        url = f"{parts.scheme}://{netloc}{target}"
        if query:
            # S3 subresources such as ?uploads take no value and no '='.
            url += "?" + "&".join(
                quote(k, safe="-_.~") + ("=" + quote(v, safe="-_.~") if v else "")
                for k, v in sorted(query.items())
            )
        return url

    def _signed_headers(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> dict[str, list[str]]:
        request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or b"")
        request.context["client_config"] = _STREAMING if body is None else _HASHED
        credentials = Credentials(self.credentials.access_key, self.credentials.secret_key)
        S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        return {name: [value] for name, value in request.headers.items()}

    def _describe(self, method: str, what: str) -> str:
        return f"S3 store {self.store_name!r}: {method} {what}"

    async def _request(
        self,
        method: str,
        bucket: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | FedBody | None = None,
        ok: Sequence[int] = (200,),
    ) -> IResponse:
        """
        Send one signed request; fire with the response (its body unread)
        when its status is in C{ok}, else fail with L{NotFound} or
        L{StoreError}.
        """
        url = self.url(bucket, key, query)
        what = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
        extra = dict(headers or {})
        producer: IBodyProducer | None
        if isinstance(body, FedBody):
            extra["Content-Length"] = str(body.length)
            signed = self._signed_headers(method, url, extra, None)
            producer = body
        else:
            signed = self._signed_headers(method, url, extra, body or b"")
            producer = BytesBody(body) if body else None
        kwargs: dict[str, Any] = {
            "headers": signed,
            "data": producer,
            "allow_redirects": False,
            "unbuffered": True,
            "reactor": self.reactor,
        }
        if not isinstance(body, FedBody):
            kwargs["timeout"] = self.timeout
        try:
            response: IResponse = await self.http.request(method, url, **kwargs)
        except StoreError:
            raise
        except Exception as e:
            # Twisted's errors name the host at most; never a header.
            raise StoreError(
                self._describe(method, what) + f" failed: {_reason(e)}"
            ) from None
        if response.code in ok:
            return response
        await self._raise_for(response, method, what)
        raise AssertionError("unreachable")

    async def _raise_for(self, response: IResponse, method: str, what: str) -> None:
        body = await _read_all(response)
        code = ""
        message = ""
        if body:
            try:
                root = ElementTree.fromstring(body)
            except ElementTree.ParseError:
                pass
            else:
                code, message = _text(root, "Code"), _text(root, "Message")
        status = response.code
        if status == 404 or code in _MISSING_CODES:
            raise S3NotFound(self._describe(method, what) + f": {code or 'not found'}", code)
        if status in (401, 403) or code in _CREDENTIAL_CODES:
            # Only the code: AWS puts the string to sign and the access key
            # id in the rest of such an answer.
            raise S3Error(
                self._describe(method, what)
                + f": the credentials were refused ({code or status})",
                status,
                code,
            )
        detail = f"{status} {code}".strip()
        if message and len(message) < 200:
            detail += f" ({message})"
        raise S3Error(self._describe(method, what) + f" failed: {detail}", status, code)

    # Buckets

    async def create_bucket(self, bucket: str) -> None:
        """Create C{bucket} in the client's region; one we own already is fine."""
        body = None
        if self.region and self.region != "us-east-1":
            body = (
                '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<LocationConstraint>{self.region}</LocationConstraint>"
                "</CreateBucketConfiguration>"
            ).encode()
        try:
            response = await self._request("PUT", bucket, body=body)
        except S3Error as e:
            if e.code == "BucketAlreadyOwnedByYou":
                return
            raise
        await _read_all(response)

    async def bucket_exists(self, bucket: str) -> bool:
        """Whether C{bucket} exists and these credentials may use it."""
        try:
            response = await self._request("HEAD", bucket)
        except NotFound:
            return False
        await _read_all(response)
        return True

    async def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in C{bucket} starting with C{prefix} (ListObjectsV2)."""
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2"}
            if prefix:
                query["prefix"] = prefix
            if token:
                query["continuation-token"] = token
            root = _parse_xml(await _read_all(await self._request("GET", bucket, query=query)))
            keys.extend(_text(item, "Key") for item in _children(root, "Contents"))
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return keys

    # Objects

    async def put_object(self, bucket: str, key: str, body: FedBody) -> None:
        """PUT C{key} with a body fed as it arrives; fires once S3 has it."""
        await _read_all(await self._request("PUT", bucket, key, body=body))

    async def get_object(
        self, bucket: str, key: str, offset: int = 0, length: int | None = None
    ) -> IResponse | None:
        """
        Start a GET of bytes C{[offset, offset + length)} of C{key}; fire
        with the response, its body unread, for the caller to relay. Fires
        with C{None} when the range starts at or past the end. A C{length}
        of 0 is the caller's to handle (there is no empty HTTP range).
        """
        if offset < 0 or (length is not None and length < 1):
            raise BadRequest(f"Invalid range: offset {offset}, length {length}")
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = await self._request("GET", bucket, key, headers=headers, ok=(200, 206, 416))
        if response.code == 416:
            await _read_all(response)
            return None
        return response

    async def object_size(self, bucket: str, key: str) -> int:
        """The size of C{key} (HEAD)."""
        response = await self._request("HEAD", bucket, key)
        await _read_all(response)
        values = response.headers.getRawHeaders(b"content-length") or []
        try:
            return int(values[0])
        except (IndexError, ValueError):
            raise StoreError(
                self._describe("HEAD", f"s3://{bucket}/{key}") + ": no Content-Length"
            ) from None

    async def delete_object(self, bucket: str, key: str) -> None:
        """DELETE C{key}; a key that is already gone is not an error."""
        try:
            response = await self._request("DELETE", bucket, key, ok=(200, 204))
        except S3NotFound as e:
            if e.code == "NoSuchBucket":
                raise
            return
        await _read_all(response)

    # Multipart uploads

    async def create_multipart_upload(self, bucket: str, key: str) -> MultipartUpload:
        """
        Start a multipart upload whose parts carry CRC32 checksums, as
        boto3's do: S3 checks each part's bytes against its checksum.
        """
        response = await self._request(
            "POST",
            bucket,
            key,
            query={"uploads": ""},
            headers={"x-amz-checksum-algorithm": "CRC32"},
        )
        upload_id = _text(_parse_xml(await _read_all(response)), "UploadId")
        if not upload_id:
            raise StoreError(self._describe("POST", f"s3://{bucket}/{key}") + ": no UploadId")
        return MultipartUpload(bucket, key, upload_id)

    async def upload_part(
        self, upload: MultipartUpload, number: int, body: FedBody, crc32: int
    ) -> UploadedPart:
        """Send part C{number} (from 1), whose bytes have C{crc32}."""
        part = UploadedPart(number, "", crc32)
        response = await self._request(
            "PUT",
            upload.bucket,
            upload.key,
            query={"partNumber": str(number), "uploadId": upload.upload_id},
            headers={"x-amz-checksum-crc32": part.checksum},
            body=body,
        )
        await _read_all(response)
        etags = response.headers.getRawHeaders(b"etag") or []
        if not etags:
            raise StoreError(
                self._describe("PUT", f"s3://{upload.bucket}/{upload.key}")
                + f": no ETag for part {number}"
            )
        return UploadedPart(number, etags[0].decode("ascii", "replace"), crc32)

    async def complete_multipart_upload(
        self, upload: MultipartUpload, parts: Sequence[UploadedPart]
    ) -> None:
        """Make one object of C{parts}, in part-number order."""
        listed = "".join(
            f"<Part><PartNumber>{part.number}</PartNumber>"
            f"<ETag>{_xml_escape(part.etag)}</ETag>"
            f"<ChecksumCRC32>{part.checksum}</ChecksumCRC32></Part>"
            for part in sorted(parts, key=lambda part: part.number)
        )
        body = f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode()
        response = await self._request(
            "POST", upload.bucket, upload.key, query={"uploadId": upload.upload_id}, body=body
        )
        # S3 may answer 200 and still report an error in the body.
        root = _parse_xml(await _read_all(response))
        if _local(root.tag) == "Error":
            raise S3Error(
                self._describe("POST", f"s3://{upload.bucket}/{upload.key}")
                + f" failed: {_text(root, 'Code')}",
                200,
                _text(root, "Code"),
            )

    async def abort_multipart_upload(self, upload: MultipartUpload) -> None:
        """Abort the upload and drop its parts; one already gone is fine."""
        try:
            response = await self._request(
                "DELETE",
                upload.bucket,
                upload.key,
                query={"uploadId": upload.upload_id},
                ok=(200, 204),
            )
        except S3NotFound as e:
            if e.code == "NoSuchBucket":
                raise
            return
        await _read_all(response)

    async def list_multipart_uploads(
        self, bucket: str, prefix: str = ""
    ) -> list[MultipartUpload]:
        """The multipart uploads in progress in C{bucket} under C{prefix}."""
        uploads: list[MultipartUpload] = []
        markers: dict[str, str] = {}
        while True:
            query = {"uploads": "", **markers}
            if prefix:
                query["prefix"] = prefix
            root = _parse_xml(await _read_all(await self._request("GET", bucket, query=query)))
            uploads.extend(
                MultipartUpload(bucket, _text(item, "Key"), _text(item, "UploadId"))
                for item in _children(root, "Upload")
            )
            if _text(root, "IsTruncated") != "true":
                return uploads
            markers = {
                "key-marker": _text(root, "NextKeyMarker"),
                "upload-id-marker": _text(root, "NextUploadIdMarker"),
            }


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _reason(error: BaseException) -> str:
    """A short reason for a transport failure (twisted wraps the real one)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        error = reasons[0].value
    text = str(error)
    return f"{type(error).__name__}" + (f": {text}" if text and len(text) < 200 else "")


async def _read_all(response: IResponse) -> bytes:
    """The whole (small) body of a response: S3's XML answers and errors."""
    try:
        body: bytes = await content(response)
    except Exception as e:
        raise StoreError(f"S3 answer cut short: {_reason(e)}") from None
    return body

