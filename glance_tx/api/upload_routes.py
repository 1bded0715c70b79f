"""
Image-data routes, declared once.

An upload's body streams to the store as it arrives, so the site must know
before the body -- before Klein routes anything -- that a request is an
upload, and start it (L{glance_tx.api.site}). After the last byte Klein
routes the same request to its handler, which finishes it. One
C{@uploads.route(rule, method, start=...)} declares both: the Klein route
of the handler and the L{UploadRoute} the site matches, from the same
werkzeug rule, so the two cannot disagree on which requests are uploads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from attrs import field, frozen
from klein import Klein
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.routing.exceptions import RoutingException

from glance_tx.uploads import Upload

#: C{start(api, request, **route_arguments)}: every check before the first
#: body byte, then the started L{Upload}; raises a GlanceError to refuse.
Start = Callable[..., Awaitable[Upload]]

H = TypeVar("H", bound=Callable[..., Any])


@frozen
class UploadRoute:
    """
    Requests matching C{method} and C{rule} (a werkzeug rule, with its
    version prefix) are image-data uploads, started by C{start} on C{api}.
    """

    method: str
    rule: str
    api: Any
    start: Start

    def begin(self, request: Any, arguments: Mapping[str, Any]) -> Awaitable[Upload]:
        return self.start(self.api, request, **arguments)


@frozen
class _Declared:
    rule: str
    method: str
    start: Start


@frozen
class UploadRoutes:
    """The image-data routes of one Klein app class."""

    app: Klein
    _declared: list[_Declared] = field(factory=list)

    def route(self, rule: str, method: str, *, start: Start) -> Callable[[H], H]:
        """
        Declare C{rule} with C{method} an upload: the decorated handler is
        its Klein route (it finishes the upload), C{start} begins it.
        """

        def declare(handler: H) -> H:
            self._declared.append(_Declared(rule, method, start))
            self.app.route(rule, methods=[method])(handler)
            return handler

        return declare

    def bound(self, api: Any, prefixes: Sequence[str]) -> tuple[UploadRoute, ...]:
        """The routes of C{api}, an instance, as served under each of C{prefixes}."""
        return tuple(
            UploadRoute(d.method, prefix + d.rule, api, d.start)
            for prefix in prefixes
            for d in self._declared
        )


@frozen
class UploadMatcher:
    """Which upload route, if any, a request line names; as Klein would match it."""

    routes: tuple[UploadRoute, ...]
    _map: Map = field(init=False)

    def __attrs_post_init__(self) -> None:
        rules = [
            Rule(route.rule, methods=[route.method], endpoint=index)
            for index, route in enumerate(self.routes)
        ]
        object.__setattr__(self, "_map", Map(rules))

    def match(self, method: bytes, path: bytes) -> tuple[UploadRoute, Mapping[str, Any]] | None:
        """
        C{path} without its query. Its segments are unquoted, as twisted.web
        does before Klein sees them.
        """
        try:
            text = b"/".join(unquote_to_bytes(s) for s in path.split(b"/")).decode("utf-8")
            endpoint, arguments = self._map.bind("localhost").match(
                text, method=method.decode("ascii").upper()
            )
        except (UnicodeDecodeError, HTTPException, RoutingException):
            return None
        return self.routes[endpoint], arguments
