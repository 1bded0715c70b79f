"""
C{use_keystone_limits = true}: each project's limits from Keystone's
unified limits, read as oslo.limit's flat enforcer reads them (Glance 33's
behaviour), without blocking the reactor.

  - Which service and region the limits are for: the endpoint
    C{[oslo_limit] endpoint_id} (C{GET /v3/endpoints/{id}}), or the one
    endpoint of the service C{endpoint_service_type}/C{_name}
    (C{GET /v3/services}) on C{endpoint_interface} in
    C{endpoint_region_name} (C{GET /v3/regions/{name}}, C{GET
    /v3/endpoints}). None, or more than one, is an error logged and
    answered 503 until the catalog is fixed (looked for again after
    C{cache_time}).
  - A project's limit of a resource: its project limit (C{GET /v3/limits}
    for that service, region and project), else the registered limit's
    default (C{GET /v3/registered_limits}), else C{0}: as oslo.limit, a
    resource with no registered limit allows nothing. A negative limit is
    no limit (glance-tx's C{-1}).

Everything read is used for C{cache_time} seconds (a changed limit takes
effect within that long; oslo.limit, built per request in Glance, asks on
every check); concurrent requests for one project share one read. The
calls go through a L{KeystoneClient} logged in as C{[oslo_limit]}'s user,
which must be allowed to read every project's limits and the catalog
(Keystone's defaults: a system-scoped reader, C{system_scope = all}).
Keystone unreachable is a 503, never "no limit".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import attrs
from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from glance_tx.config import OsloLimitConfig, ProjectLimits
from glance_tx.errors import ServiceUnavailable
from glance_tx.identity.keystone_client import (
    KeystoneClient,
    KeystoneUnavailable,
    UnexpectedAnswer,
)
from glance_tx.once import Once, run_once
from glance_tx.project_limits import ILimitSource

log = Logger()

K = TypeVar("K")
V = TypeVar("V")

#: Projects whose limits are remembered at most.
MAX_PROJECTS = 10000
#: Glance's resource names (the fields of L{ProjectLimits}).
RESOURCES = tuple(attrs.fields_dict(ProjectLimits))


class EndpointNotFound(Exception):
    """C{[oslo_limit]} names no endpoint of the catalog, or more than one."""


@frozen
class LimitScope:
    """The service and region Keystone's limits are registered for."""

    service_id: str
    region_id: str | None

    def params(self, **more: str) -> dict[str, str]:
        params = {"service_id": self.service_id, **more}
        if self.region_id is not None:
            params["region_id"] = self.region_id
        return params


@define
class _Remembered(Generic[K, V]):
    """Values kept for C{ttl} seconds, bounded, with one fetch per key at a time."""

    clock: IReactorTime
    ttl: float
    max_entries: int = MAX_PROJECTS
    _entries: OrderedDict[K, tuple[float, V]] = field(factory=OrderedDict, init=False)
    _pending: dict[K, Once[V]] = field(factory=dict, init=False)

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and self.clock.seconds() < entry[0]:
            self._entries.move_to_end(key)
            return entry[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = run_once(self._fetch(key, fetch))
            if not pending.done:
                self._pending[key] = pending
        return await pending.observe()

    async def _fetch(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await fetch()
        finally:
            self._pending.pop(key, None)
        self._entries[key] = (self.clock.seconds() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value


@implementer(ILimitSource)
@define
class KeystoneLimits:
    """Each project's limits, read from Keystone through C{client}."""

    client: KeystoneClient
    clock: IReactorTime
    config: OsloLimitConfig
    _scope: _Remembered[None, LimitScope] = field(init=False)
    _registered: _Remembered[None, dict[str, int]] = field(init=False)
    _projects: _Remembered[str | None, ProjectLimits] = field(init=False)
    #: Until when (clock time) a catalog without the endpoint is believed
    #: without asking again, so a misconfigured node does not walk the
    #: catalog on every request.
    _no_endpoint_until: float = field(default=0.0, init=False)

    def __attrs_post_init__(self) -> None:
        ttl = self.config.cache_time
        # The endpoint does not move under a running service: found once
        # (a failure is not remembered, so a fixed catalog is picked up).
        self._scope = _Remembered(self.clock, float("inf"))
        self._registered = _Remembered(self.clock, ttl)
        self._projects = _Remembered(self.clock, ttl)

    async def limits_for(self, project_id: str | None) -> ProjectLimits:
        no_endpoint = ServiceUnavailable(
            "The project's limits cannot be read from Keystone now: the "
            "service's endpoint is not in Keystone's catalog"
        )
        if self.clock.seconds() < self._no_endpoint_until:
            raise no_endpoint
        try:
            return await self._projects.get(project_id, lambda: self._read(project_id))
        except KeystoneUnavailable as e:
            raise ServiceUnavailable(
                f"The project's limits cannot be read from Keystone now: {e}"
            ) from None
        except EndpointNotFound as e:
            log.error("[oslo_limit]: {problem}", problem=str(e))
            self._no_endpoint_until = self.clock.seconds() + self.config.cache_time
            raise no_endpoint from None

    async def _read(self, project_id: str | None) -> ProjectLimits:
        scope = await self._scope.get(None, self._find_scope)
        limits = dict(await self._registered.get(None, lambda: self._registered_limits(scope)))
        if project_id is not None:
            document = await self.client.get_json(
                "/limits", scope.params(project_id=project_id)
            )
            limits.update(_named(document, "limits", "resource_limit"))
        return ProjectLimits(**{name: _glance_limit(limits.get(name, 0)) for name in RESOURCES})

    async def _registered_limits(self, scope: LimitScope) -> dict[str, int]:
        document = await self.client.get_json("/registered_limits", scope.params())
        return _named(document, "registered_limits", "default_limit")

    async def _find_scope(self) -> LimitScope:
        config = self.config
        if config.endpoint_id:
            try:
                document = await self.client.get_json(
                    f"/endpoints/{quote(config.endpoint_id, safe='')}"
                )
            except UnexpectedAnswer as e:
                if e.code == 404:
                    raise EndpointNotFound(f"no endpoint {config.endpoint_id}") from None
                raise
            endpoint = _mapping(document.get("endpoint") if isinstance(document, dict) else None)
            if endpoint is None or not endpoint.get("service_id"):
                raise EndpointNotFound(f"no endpoint {config.endpoint_id}")
            return LimitScope(str(endpoint["service_id"]), endpoint.get("region_id"))
        filters = {}
        if config.endpoint_service_type:
            filters["type"] = config.endpoint_service_type
        if config.endpoint_service_name:
            filters["name"] = config.endpoint_service_name
        services = [
            s
            for s in _list(await self.client.get_json("/services", filters), "services")
            if all(s.get(k) == v for k, v in filters.items())
        ]
        if len(services) != 1:
            raise EndpointNotFound(
                f"{'no' if not services else 'more than one'} service "
                + " ".join(f"{k} {v}" for k, v in filters.items())
            )
        service_id = str(services[0]["id"])
        region_id = None
        if config.endpoint_region_name:
            region = config.endpoint_region_name
            try:
                found = await self.client.get_json(f"/regions/{quote(region, safe='')}")
            except UnexpectedAnswer as e:
                if e.code == 404:
                    raise EndpointNotFound(f"no region {region}") from None
                raise
            region_id = str(found["region"]["id"])
        params = {"service_id": service_id, "interface": config.endpoint_interface}
        if region_id is not None:
            params["region_id"] = region_id
        endpoints = [
            e
            for e in _list(await self.client.get_json("/endpoints", params), "endpoints")
            if e.get("interface") == config.endpoint_interface
            and (region_id is None or e.get("region_id") == region_id)
        ]
        if len(endpoints) != 1:
            raise EndpointNotFound(
                f"{'no' if not endpoints else 'more than one'} {config.endpoint_interface} "
                f"endpoint of service {service_id}"
                + (f" in region {region_id}" if region_id else "")
            )
        return LimitScope(service_id, endpoints[0].get("region_id"))


def _glance_limit(value: int) -> int:
    """Keystone's limit in glance-tx's terms: negative is unlimited (-1)."""
    return -1 if value < 0 else value


def _mapping(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _list(document: Any, key: str) -> list[dict[str, Any]]:
    items = document.get(key) if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise KeystoneUnavailable(f"Keystone sent a {key} document glance-tx cannot read")
    return [item for item in items if isinstance(item, dict)]


def _named(document: Any, key: str, value: str) -> dict[str, int]:
    """C{resource_name -> value} of Keystone's limits list C{key}."""
    found: dict[str, int] = {}
    for item in _list(document, key):
        name, limit = item.get("resource_name"), item.get(value)
        if isinstance(name, str) and isinstance(limit, int):
            found[name] = limit
    return found
