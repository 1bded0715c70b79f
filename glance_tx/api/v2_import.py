"""
The wire side of interoperable import (L{glance_tx.imports}): the
C{GET /v2/info/import} document and the reading of a C{POST
/v2/images/{id}/import} body, refused as Glance 33 refuses it
(C{glance/api/v2/images.py}: C{_validate_import_body},
C{utils.get_stores_from_request}).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

from glance_tx.errors import BadRequest, Conflict
from glance_tx.imports import WEB_DOWNLOAD
from glance_tx.net_guard import SCHEMES
from glance_tx.store.backends import StoreMap, is_read_only


def import_info_document(methods: tuple[str, ...]) -> dict[str, Any]:
    """Glance's discovery document of the import methods served."""
    return {
        "import-methods": {
            "description": "Import methods available.",
            "type": "array",
            "value": list(methods),
        }
    }


@frozen
class ImportRequest:
    """What an import body asks for, checked."""

    method: str
    uri: str | None
    stores: tuple[str, ...]
    all_stores: bool
    all_stores_must_succeed: bool


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be boolean value only")
    return value


def parse_import(
    body: dict[str, Any], header_store: str | None, methods: tuple[str, ...], stores: StoreMap
) -> ImportRequest:
    """
    The import C{body} asks for (C{header_store}: C{X-Image-Meta-Store}).
    Without C{stores} or C{all_stores}, the header's store or the default;
    with C{all_stores}, every store that takes data.
    """
    method = body.get("method")
    if not isinstance(method, dict):
        raise BadRequest("Import request requires a 'method' field.")
    name = method.get("name")
    if name is None:
        raise BadRequest("Import request requires a 'name' field.")
    if name not in methods:
        raise BadRequest(f"Unknown import method name '{name}'.")
    uri = method.get("uri")
    if name == WEB_DOWNLOAD:
        parts = urlsplit(uri) if isinstance(uri, str) else None
        if parts is None or parts.scheme not in SCHEMES or not parts.hostname:
            raise BadRequest("URI for web-download must be an http or https URL.")
    all_stores_must_succeed = _flag(body, "all_stores_must_succeed", True)
    all_stores = _flag(body, "all_stores", False)
    if all_stores:
        if "stores" in body or header_store is not None:
            raise BadRequest(
                "All_stores parameter can't be used with x-image-meta-store "
                "header or stores parameter"
            )
        chosen = tuple(i for i, s in stores.stores.items() if not is_read_only(s))
    elif "stores" in body:
        if header_store is not None:
            raise BadRequest("Stores parameter and x-image-meta-store header can't be both specified")
        listed = body["stores"]
        if not isinstance(listed, list) or not listed or not all(isinstance(s, str) for s in listed):
            raise BadRequest("'stores' must be a non-empty list of store ids")
        chosen = tuple(dict.fromkeys(listed))
    else:
        chosen = (header_store or stores.default_id,)
    for store_id in chosen:
        if store_id not in stores.stores:
            # Glance answers an unknown store here with 409, not 400.
            raise Conflict(
                f"Unknown store {store_id!r}; enabled stores are " + ", ".join(sorted(stores.stores))
            )
        stores.checked_id(store_id)
    return ImportRequest(
        method=name,
        uri=uri if name == WEB_DOWNLOAD else None,
        stores=chosen,
        all_stores=all_stores,
        all_stores_must_succeed=all_stores_must_succeed,
    )
