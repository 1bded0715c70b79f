"""
Validators, caching rules and conditional requests (RFC 9110, section 13;
RFC 9111) for image data and metadata, so that Varnish, Squid or any HTTP
cache can keep images safely and revalidate them cheaply.

Image data (v2 C{/v2/images/ID/file}, GET and HEAD)
    - C{ETag}: strong, the image's stored hash in quotes: the
      C{os_hash_value} (sha512 by default) when there is one, otherwise
      the md5 C{checksum}. Both are written once, when the data becomes
      active, and no API changes them afterwards, so for an image the
      choice never flips and the tag never changes. It is preferred
      because sha512 (and any sensible hashing_algorithm) resists
      collisions; md5 is only there for images registered with
      nothing else (a v1 location with C{x-image-meta-checksum}). An image
      with neither has no ETag (a stored hash is the only thing that
      vouches for the bytes).
    - C{Last-Modified}: the image's C{created_at}, to the second. The
      registry records no activation time, and C{updated_at} moves with
      every metadata edit; C{created_at} never moves, and no other data
      was ever served at that URL (ids are never reused: a deleted
      image's row stays), so it is a safe, fixed date for
      C{If-Modified-Since} and C{If-Range}.
    - C{Cache-Control}: an active public or community image is
      C{public, max-age=PUBLIC_MAX_AGE, immutable} (data never changes;
      deletion, deactivation and loss of visibility are purged). Anything
      else -- private or shared images, and the data of a deactivated
      image, which only an admin may read -- is C{private, no-store}.
      With revalidation on (L{CacheConfig.revalidate}, C{auth_strategy =
      keystone}) every active image's data is C{REVALIDATE} instead; see
      "Revalidation" below.

Metadata (v2 image JSON, v1 listings, and v1 C{/images/ID})
    - C{ETag}: a digest of the exact representation sent, so it changes
      whenever the metadata does (C{updated_at} is part of every
      representation). For an image it is strong -- the same tag always
      means the same bytes -- so that a write can name it in C{If-Match},
      which compares strongly; a listing's is weak (nothing writes a
      listing).
    - C{Last-Modified}: C{updated_at} (none for a listing: an image
      leaving it moves no date still shown). HTTP dates have whole seconds and
      metadata can change twice within one, so date conditions compare
      with the exact instant: an C{If-Modified-Since} equal to the header
      still counts as modified (a 200, never a wrong 304). The ETag is the
      validator that works.
    - C{Cache-Control}: C{public, max-age=METADATA_MAX_AGE} for a public
      or community image (C{public, no-cache} when that is 0: store, but
      ask every time); C{private, no-store} for the rest. A listing
      depends on who asks, so it is never C{public}: C{private,
      max-age=...}/C{no-cache} when everything in it is public or
      community, C{private, no-store} otherwise. With revalidation on, an image's
      metadata is C{REVALIDATE}, whatever its visibility, unless it
      shows what only an admin may see (locations); a listing keeps the
      rules above.

v1 C{/images/ID} (GET data and HEAD) is one resource whose representation
is the data I{and} the metadata, sent as C{x-image-meta-*} headers; a
cache serves a HEAD from the stored GET, so both must agree. Its ETag is
therefore strong and made of both: the data tag above, a dash, and a
digest of the C{x-image-meta-*} headers (the digest alone while the
image has no data to send); Last-Modified and Cache-Control follow the
metadata rules, so no cache hands out stale metadata. Revalidating after
a metadata edit re-fetches the data; v2 C{/file}, what current clients
download, keeps the fixed data tag.

Why C{private, no-store} and not C{Vary} on identity: who a request comes
from is decided by the auth layer -- a Keystone token (C{X-Auth-Token})
that a proxy cannot interpret, or C{X-Project-Id}/C{X-Roles} headers
that are only trustworthy behind the middleware that sets them. C{Vary:
X-Auth-Token} would keep a copy of a multi-GiB image per token (tokens
rotate hourly) and could not forget a project removed from an image's
members; C{Vary: X-Project-Id} is safe only if no client can send that
header past the proxy, one misconfiguration away from serving one
project's private image to another. C{private} forbids every shared cache
to store the response; C{no-store} also keeps it off disks on the way
(and off caches told to ignore C{private}). Errors (404 for an image the
caller may not see, 403, 409, 412, 416) are C{no-store} too: a 404
cached for one project must not hide an image from its owner.

Revalidation, for callers a cache cannot check (C{auth_strategy =
keystone}): C{public, no-cache, must-revalidate} lets a shared cache keep
the image but never use it without asking glance-tx first. The cache's
conditional request carries the caller's own C{X-Auth-Token}, and
glance-tx answers it like any other: 401 for a missing or bad token, 404
for an image the caller may not see (errors come before preconditions,
below), and 304 with no body only to a caller who may read the image, so
the bytes leave the cache only for those. This holds for private and
shared images too: what is stored is the same for every caller (an ETag
digests the exact representation; data tags are fixed), only who may have
it differs, and that is decided per request. C{must-revalidate} makes a
cache that cannot reach glance-tx (or hears a 5xx, Keystone down) answer
an error, not the stored copy (Squid serves it otherwise).

Conditional requests are evaluated after the image is found and may be
served (errors take precedence, RFC 9110 section 13.2.1), in the RFC's
order: C{If-Match} (strong comparison; C{*} matches any current
representation) else C{If-Unmodified-Since} -> 412 when false; then
C{If-None-Match} (weak comparison) -> 304 for GET and HEAD, else
C{If-Modified-Since} (GET and HEAD only) -> 304; then, for a GET with
C{Range}, C{If-Range} (an ETag compared strongly, or a date that must
equal Last-Modified exactly) decides between 206 and 200. A 304 carries
the ETag, Last-Modified and Cache-Control a 200 would, and no body.

Writes (v1 C{PUT} and C{DELETE} of C{/images/ID}, v2 C{PATCH} and
C{DELETE} of C{/v2/images/ID}, v2 C{PUT} of C{/v2/images/ID/file}) take
the same preconditions through the same L{evaluate}, against what a GET or
HEAD of the same URL would send at that moment (L{check_preconditions}),
after the image is found and the caller may change it: a false one is a
412 and nothing is changed. C{If-None-Match} that matches (C{*} matches
any image) is a 412 too. The data of a queued image, the only one that
takes an upload, has no representation yet (a GET answers 204 with no
validators): C{If-Match} fails, C{If-None-Match: *} holds. A metadata
date has microseconds the C{Last-Modified} header drops, so
C{If-Unmodified-Since} with that header fails unless the last change fell
on a whole second (a 412, never a lost update); C{If-Match} is the
validator that works. The check holds for what is written: the write
names the version of the record the preconditions were evaluated against
(C{expected_version}), and when another change was committed in between
the request is evaluated again against the new record (see
L{glance_tx.api.base.ImagesAPI._change_image}), so an C{If-Match} naming
the old representation is a 412, never a lost update.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from attrs import field, frozen
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest

from glance_tx import images
from glance_tx.config import CacheConfig
from glance_tx.errors import PreconditionFailed
from glance_tx.images import Image

#: Visibilities whose images every caller may read.
SHAREABLE = frozenset({"public", "community"})

#: For anything no cache may keep: errors, private images.
NO_STORE = b"no-store"
PRIVATE_NO_STORE = b"private, no-store"
#: Stored by any cache, used only after glance-tx said yes (see above).
REVALIDATE = b"public, no-cache, must-revalidate"

#: Characters an opaque-tag may hold (RFC 9110, section 8.8.3: etagc).
_ETAGC = re.compile(r"[\x21\x23-\x7e]+")
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e]*)"')


def _optional_utc(when: datetime | None) -> datetime | None:
    return None if when is None else _utc(when)


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


@functools.lru_cache(maxsize=4096)
def _etag_header(opaque: str, weak: bool) -> bytes:
    """An ETag's header value, kept: a kept document sends the same one every GET."""
    return (("W/" if weak else "") + f'"{opaque}"').encode("ascii")


@frozen
class EntityTag:
    """An entity tag: C{"opaque"}, or C{W/"opaque"} when weak."""

    opaque: str
    weak: bool = False

    def header(self) -> bytes:
        return _etag_header(self.opaque, self.weak)

    def strong_match(self, other: EntityTag) -> bool:
        """RFC 9110 strong comparison: both strong, same opaque tag."""
        return not self.weak and not other.weak and self.opaque == other.opaque

    def weak_match(self, other: EntityTag) -> bool:
        """RFC 9110 weak comparison: same opaque tag, weak or not."""
        return self.opaque == other.opaque


@frozen
class Validators:
    """
    What a response says about its representation: how caches may keep
    it, and what conditional requests compare against. C{last_modified}
    is exact; the header carries it to the second.
    """

    cache_control: bytes
    etag: EntityTag | None = None
    last_modified: datetime | None = field(default=None, converter=_optional_utc)

    def apply(self, request: IRequest) -> None:
        """Set ETag, Last-Modified and Cache-Control on the response."""
        request.setHeader(b"Cache-Control", self.cache_control)
        if self.etag is not None:
            request.setHeader(b"ETag", self.etag.header())
        if self.last_modified is not None:
            request.setHeader(b"Last-Modified", http_date(self.last_modified))


# -- building validators ------------------------------------------------------


def shareable(image: Image) -> bool:
    """Whether every caller may read C{image}, so shared caches may keep it."""
    return image.visibility in SHAREABLE


def data_etag(image: Image) -> EntityTag | None:
    """The fixed strong ETag of an image's data (see the module docstring)."""
    for digest in (image.os_hash_value, image.checksum):
        if digest and _ETAGC.fullmatch(digest):
            return EntityTag(digest)
    return None


def data_validators(image: Image, config: CacheConfig) -> Validators:
    """Validators and caching rule for an image's data."""
    if image.status != images.ACTIVE:
        cache_control = PRIVATE_NO_STORE
    elif config.revalidate:
        cache_control = REVALIDATE
    elif shareable(image):
        cache_control = _public(config.public_max_age, immutable=True)
    else:
        cache_control = PRIVATE_NO_STORE
    return Validators(
        cache_control=cache_control,
        etag=data_etag(image),
        last_modified=image.created_at.replace(microsecond=0),
    )


def metadata_cache_control(
    config: CacheConfig, *, public: bool, per_caller: bool = False, admin_only: bool = False
) -> bytes:
    """
    The caching rule for metadata: C{public} when every caller may read it,
    C{per_caller} when what is shown depends on who asks (a listing),
    C{admin_only} when it shows what only an admin may see (kept out of
    every cache). With revalidation on, an image's is C{REVALIDATE}.
    """
    if admin_only:
        return PRIVATE_NO_STORE
    if config.revalidate and not per_caller:
        return REVALIDATE
    if not public:
        return PRIVATE_NO_STORE
    age = config.metadata_max_age
    freshness = f"max-age={age}" if age > 0 else "no-cache"
    return f"{'private' if per_caller else 'public'}, {freshness}".encode("ascii")


def fingerprint(pieces: Iterable[bytes]) -> str:
    """A short digest of a representation, for an entity tag."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(len(piece).to_bytes(8, "big"))
        digest.update(piece)
    return digest.hexdigest()[:32]


def metadata_validators(
    body: bytes, updated_at: datetime, cache_control: bytes
) -> Validators:
    """Validators for an image's metadata document C{body}."""
    return Validators(
        cache_control=cache_control,
        etag=EntityTag(fingerprint([body])),
        last_modified=updated_at,
    )


def listing_validators(
    body: bytes,
    shown: Iterable[Image],
    config: CacheConfig,
    pieces: Iterable[bytes] | None = None,
) -> Validators:
    """
    Validators for a listing C{body} of the images C{shown}: an ETag only.
    No date says when a listing last changed (an image leaving it moves
    no C{updated_at} that is still shown). C{pieces}, if given, are what
    the body is made of, each short (the digest of an image's document, the
    links): fingerprinting them instead of the whole body gives a tag that
    changes exactly when the body does, for a fraction of the hashing.
    """
    cache_control = metadata_cache_control(
        config, public=all(shareable(i) for i in shown), per_caller=True
    )
    return Validators(
        cache_control=cache_control,
        etag=EntityTag(fingerprint([body] if pieces is None else pieces), weak=True),
    )


def _public(max_age: int, immutable: bool) -> bytes:
    if max_age <= 0:
        return b"public, no-cache"
    return f"public, max-age={max_age}{', immutable' if immutable else ''}".encode("ascii")


# -- answering -------------------------------------------------------------------


def forbid_storing(request: IRequest) -> None:
    """
    Mark the response as not to be stored: call first in every cacheable
    route, so that any error answered later stays uncached; a successful
    answer replaces it with its own rule.
    """
    request.setHeader(b"Cache-Control", NO_STORE)


def not_modified(request: IRequest, validators: Validators) -> bool:
    """
    Evaluate the request's preconditions against C{validators}. If the
    answer is a 304, set it up (status, validators, no representation
    headers) and return True; the caller sends no body.

    @raise PreconditionFailed: an If-Match or If-Unmodified-Since is false,
        or an If-None-Match matches on a method other than GET or HEAD.
    """
    if not evaluate(request, validators):
        return False
    request.setResponseCode(304)
    for name in (b"Content-Type", b"Content-Length", b"Content-MD5", b"Content-Range"):
        request.responseHeaders.removeHeader(name)
    validators.apply(request)
    return True


def serve_document(
    request: IRequest, body: bytes, content_type: bytes, validators: Validators
) -> bytes:
    """
    Answer a GET or HEAD of an in-memory representation (a JSON document):
    a 304 (empty body), or a 200 with validators and an exact
    Content-Length, so HEAD says what GET would.
    """
    if not_modified(request, validators):
        return b""
    request.setResponseCode(200)
    validators.apply(request)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    return body


# -- evaluating ------------------------------------------------------------------


def check_preconditions(request: IRequest, validators: Validators | None) -> None:
    """
    Evaluate a write's preconditions against the C{validators} a GET or
    HEAD of the same URL would send now, or None when it has no current
    representation. The caller writes only the record these came from
    (see the module docstring).

    @raise PreconditionFailed: a precondition is false; change nothing.
    """
    # A write is never answered 304: evaluate returns False or raises.
    evaluate(request, validators)


def evaluate(request: IRequest, validators: Validators | None) -> bool:
    """
    RFC 9110, section 13.2.2, steps 1 to 4: True when the answer is a 304.
    C{validators} is None when the resource has no current representation:
    then C{If-Match} is false, C{If-None-Match} true, and dates are ignored.

    @raise PreconditionFailed: see L{not_modified}.
    """
    safe = request.method in (b"GET", b"HEAD")
    etag = validators.etag if validators is not None else None
    last_modified = validators.last_modified if validators is not None else None
    if_match = _field(request, b"if-match")
    if if_match is not None:
        if validators is None or not _matches(if_match, etag, strong=True):
            raise PreconditionFailed("If-Match: no current representation matches")
    else:
        since = _date_field(request, b"if-unmodified-since")
        if since is not None and last_modified is not None and last_modified > since:
            raise PreconditionFailed("If-Unmodified-Since: modified since")
    if_none_match = _field(request, b"if-none-match")
    if if_none_match is not None:
        if validators is not None and _matches(if_none_match, etag, strong=False):
            if safe:
                return True
            raise PreconditionFailed("If-None-Match: a current representation matches")
    elif safe:
        since = _date_field(request, b"if-modified-since")
        if since is not None and last_modified is not None and not last_modified > since:
            return True
    return False


def if_range_holds(request: IRequest, validators: Validators) -> bool:
    """
    Whether a C{Range} may be honoured: True without C{If-Range}; with
    one, when its entity tag matches strongly, or its date is exactly the
    Last-Modified (of a representation whose instant is a whole second).
    Anything else, malformed values included, sends the whole.
    """
    value = _field(request, b"if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        tags = _entity_tags(value)
        return (
            validators.etag is not None
            and len(tags) == 1
            and tags[0].strong_match(validators.etag)
        )
    date = parse_http_date(value)
    return (
        date is not None
        and validators.last_modified is not None
        and validators.last_modified == date
    )


def _field(request: IRequest, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return ", ".join(v.decode("latin-1") for v in values)


def _date_field(request: IRequest, name: bytes) -> datetime | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values or len(values) != 1:
        # Absent, or a list where one date belongs: ignored (RFC 9110 says
        # an invalid date is ignored).
        return None
    return parse_http_date(values[0].decode("latin-1"))


def _entity_tags(value: str) -> list[EntityTag]:
    return [
        EntityTag(opaque, weak=bool(weak)) for weak, opaque in _ENTITY_TAG.findall(value)
    ]


def _matches(value: str, etag: EntityTag | None, *, strong: bool) -> bool:
    """
    Whether an If-Match/If-None-Match value matches a current
    representation: C{*} matches any, a list when one of its tags does.
    """
    if value.strip() == "*":
        return True
    if etag is None:
        return False
    for tag in _entity_tags(value):
        if tag.strong_match(etag) if strong else tag.weak_match(etag):
            return True
    return False


# -- dates -----------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_IMF_FIXDATE = re.compile(
    r"[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT"
)
_RFC850_DATE = re.compile(
    r"[A-Za-z]{6,9}, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT"
)
_ASCTIME_DATE = re.compile(
    r"[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})"
)


@functools.lru_cache(maxsize=4096)
def http_date(when: datetime) -> bytes:
    """
    C{when} as an IMF-fixdate, to the second (fractions dropped). Kept per
    instant: a kept document's C{Last-Modified} is the same every GET.
    """
    return bytes(datetimeToString(int(_utc(when).timestamp())))


def parse_http_date(value: str) -> datetime | None:
    """
    An HTTP-date in any of its three formats (RFC 9110, section 5.6.7),
    or None when C{value} is not one. A two-digit rfc850 year is taken as
    1970-2069.
    """
    value = value.strip()
    try:
        if match := _IMF_FIXDATE.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
        elif match := _RFC850_DATE.fullmatch(value):
            day, month, short_year, hour, minute, second = match.groups()
            year = str(int(short_year) + (2000 if int(short_year) < 70 else 1900))
        elif match := _ASCTIME_DATE.fullmatch(value):
            month, day, hour, minute, second, year = match.groups()
        else:
            return None
        return datetime(
            int(year),
            _MONTHS[month.lower()],
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=UTC,
        )
    except (KeyError, ValueError):
        return None

