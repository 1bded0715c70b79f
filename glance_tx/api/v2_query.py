"""
``GET /v2/images`` query strings, read into an L{ImageQuery}.

Glance's parameters:

- equality filters on core fields (``name``, ``status``, ``owner``,
  ``disk_format``...), with ``eq:`` and ``in:`` operators on the string
  ones (``name=in:a,"b,c"`` matches either name; quotes keep commas);
- ``visibility`` (``public``, ``private``, ``shared``, ``community``,
  ``all``) chooses the scope, ``member_status`` (``accepted`` by default,
  or ``pending``, ``rejected``, ``all``) which shared images count;
- ``os_hidden`` (hidden images are left out unless ``os_hidden=true``,
  which lists only them) and ``protected``, both ``true`` or ``false``;
- ``size_min``, ``size_max``; ``created_at`` and ``updated_at`` with
  ``gt: gte: eq: neq: lt: lte:`` and an ISO 8601 time;
- ``tag``, repeatable, every one required;
- sorting by repeatable ``sort_key``/``sort_dir`` (one direction applies to
  every key; otherwise one each) or by ``sort=key:dir,...``, not both;
- ``limit`` (capped at the maximum, as Glance does) and ``marker``;
- any other parameter filters on an extra property of that name.

One leniency: a value whose text before ``:`` is no operator is taken whole
(Glance refuses ``name=cirros:latest`` as an unknown operator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from glance_tx import images
from glance_tx.api.params import parse_int
from glance_tx.errors import BadRequest
from glance_tx.images import Comparison, ImageQuery, Viewer

#: Core columns a plain equality filter applies to, with their kind (as
#: Glance's database layer, which compares any image column it is given:
#: Tempest lists by C{size}).
STRING_FILTERS = frozenset(
    {
        "id", "name", "status", "disk_format", "container_format", "owner", "checksum",
        "os_hash_algo", "os_hash_value",
    }
)
INTEGER_FILTERS = frozenset({"min_ram", "min_disk", "size", "virtual_size"})
BOOLEAN_FILTERS = frozenset({"protected", "os_hidden"})
TIME_FILTERS = frozenset({"created_at", "updated_at"})
#: Image fields that exist but cannot be filtered on.
UNFILTERABLE = frozenset(
    {
        "locations", "direct_url", "self", "file", "schema", "tags", "deleted",
        "deleted_at", "stores",
    }
)
#: Parameters that are not filters.
CONTROL = frozenset(
    {
        "limit", "marker", "sort", "sort_key", "sort_dir", "visibility",
        "member_status", "tag", "size_min", "size_max",
    }
)
SORT_DIRS = ("asc", "desc")
DEFAULT_SORT_KEY = "created_at"
DEFAULT_SORT_DIR = "desc"
_OPERATORS = frozenset({"eq", "in", *images.COMPARISON_OPERATORS})


def parse_query(args: Mapping[bytes, Sequence[bytes]], viewer: Viewer) -> ImageQuery:
    """Read a v2 listing's query arguments (as twisted.web parses them)."""
    params = _decode(args)
    filters: dict[str, Any] = {}
    properties: dict[str, str] = {}
    comparisons: list[Comparison] = []
    for name, values in params.items():
        if name in CONTROL:
            continue
        value = values[-1]
        if name in STRING_FILTERS:
            filters[name] = _string_filter(name, value)
        elif name in INTEGER_FILTERS:
            filters[name] = parse_int(name, value, images.MAX_INT)
        elif name in BOOLEAN_FILTERS:
            filters[name] = _boolean(name, value)
        elif name in TIME_FILTERS:
            comparisons.append(_time_filter(name, value))
        elif name in UNFILTERABLE:
            raise BadRequest(f"Cannot filter images on {name!r}")
        elif name == "changes-since":
            raise BadRequest('The "changes-since" filter is no longer available on v2.')
        else:
            properties[name] = value
    # Glance's default: hidden images only when asked for.
    filters.setdefault("os_hidden", False)
    visibility = _last(params, "visibility")
    if visibility is not None and visibility not in images.LIST_VISIBILITIES:
        raise BadRequest(f"Invalid visibility value: {visibility}")
    sizes = {
        name: parse_int(name, given, images.MAX_SIZE)
        for name in ("size_min", "size_max")
        if (given := _last(params, name)) is not None
    }
    limit = _last(params, "limit")
    marker = _last(params, "marker")
    return ImageQuery(
        filters=filters,
        properties=properties,
        size_min=sizes.get("size_min"),
        size_max=sizes.get("size_max"),
        comparisons=tuple(comparisons),
        tags=frozenset(tag.strip() for tag in params.get("tag", ())),
        sort=parse_sort(params),
        marker=images.validate_image_id(marker) if marker is not None else None,
        limit=(
            min(parse_int("limit", limit), images.MAX_LIMIT)
            if limit is not None
            else images.DEFAULT_LIMIT
        ),
        exclude_statuses=frozenset({images.DELETED}),
        viewer=viewer,
        visibility=visibility,
        member_statuses=_member_statuses(_last(params, "member_status") or "accepted"),
    )


def parse_sort(params: Mapping[str, Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """The ordering asked for, in either of Glance's two syntaxes."""
    if "sort" in params:
        if "sort_key" in params or "sort_dir" in params:
            raise BadRequest("Old and new sorting syntax cannot be combined")
        order = []
        for part in params["sort"][-1].strip().split(","):
            key, _, direction = part.partition(":")
            order.append(
                (_sort_key(key.strip()), _sort_dir(direction.strip() or DEFAULT_SORT_DIR))
            )
        return tuple(order)
    keys = [_sort_key(key.strip()) for key in params.get("sort_key", ())]
    dirs = [_sort_dir(d.strip()) for d in params.get("sort_dir", ())]
    if len(dirs) > 1 and len(dirs) != len(keys):
        raise BadRequest("Number of sort dirs does not match the number of sort keys")
    keys = keys or [DEFAULT_SORT_KEY]
    if len(dirs) <= 1:
        dirs = [dirs[0] if dirs else DEFAULT_SORT_DIR] * len(keys)
    return tuple(zip(keys, dirs, strict=True))


def _sort_key(key: str) -> str:
    if key not in images.SORT_KEYS:
        raise BadRequest(
            f"Invalid sort key: {key}. It must be one of the following: "
            + ", ".join(sorted(images.SORT_KEYS))
            + "."
        )
    return key


def _sort_dir(direction: str) -> str:
    if direction not in SORT_DIRS:
        raise BadRequest(f"Invalid sort direction: {direction}")
    return direction


def _member_statuses(value: str) -> frozenset[str]:
    if value == "all":
        return images.MEMBER_STATUSES
    if value not in images.MEMBER_STATUSES:
        raise BadRequest(f"Invalid status: {value}")
    return frozenset({value})


def _decode(args: Mapping[bytes, Sequence[bytes]]) -> dict[str, list[str]]:
    try:
        return {
            key.decode("utf-8"): [v.decode("utf-8") for v in values]
            for key, values in args.items()
        }
    except UnicodeDecodeError:
        raise BadRequest("Query parameters must be UTF-8") from None


def _last(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def split_operator(value: str) -> tuple[str, str]:
    """
    ``op:rest`` -> (op, rest) for a known operator; anything else, an ISO
    8601 time with its colons included, is an ``eq`` of the whole value.
    """
    op, sep, rest = value.partition(":")
    if sep and op in _OPERATORS:
        return op, rest
    return "eq", value


def split_list(value: str) -> frozenset[str]:
    """``a,"b,c",d`` -> {a, "b,c", d}: the ``in:`` operator's list."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise BadRequest(f"Invalid list of values (unbalanced quotes): {value!r}")
    items.append("".join(current))
    return frozenset(item.strip() for item in items)


def _string_filter(name: str, value: str) -> str | frozenset[str]:
    op, operand = split_operator(value)
    if op == "in":
        return split_list(operand)
    if op != "eq":
        raise BadRequest(f"Unable to filter on {name!r} with the operator {op!r}")
    return operand


def _boolean(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise BadRequest(
            f"Invalid value '{value}' for '{name}' filter. Valid values are "
            "'true' or 'false'."
        )
    return lowered == "true"


def parse_time(value: str) -> datetime:
    """An ISO 8601 time, in UTC (a time without a zone is taken as UTC)."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest(f"Invalid ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _time_filter(name: str, value: str) -> Comparison:
    op, operand = split_operator(value)
    if op == "in":
        raise BadRequest(f"The 'in' operator cannot be used on {name!r}")
    return Comparison(field=name, op=op, value=parse_time(operand))
