"""
An L{IRegistry} over HTTP: what an API node uses when its registry is a
C{glance-registry} server shared with other nodes.

Every call is bounded in time: a registry that is down, unreachable or
slow fails the call with L{glance_tx.errors.ServiceUnavailable} after at
most C{(1 + retries) * (timeout + retry_delay)} seconds, never a hang, and
the next call tries again, so the node recovers by itself when the registry
is back.

Errors name no address: they reach the API's clients, and a URL may carry
credentials.

Every request carries the x-openstack-request-id of the API request it is
made for (L{glance_tx.request_ids}), which the registry's log line shows.

Retries: only an idempotent request (GET, PUT, DELETE) whose connection
failed before any response (refused, or lost, as a pooled connection the
registry closed is) is sent again; a POST never is. A request that timed
out is not retried either: the registry may be applying it, and the wait
is already as long as the deployment allows.

A connection lost after the registry applied a write but before its answer
arrived is the case a repeat must get right: an image update or delete
made conditional on what was read (C{expected_version}, C{expected_status})
would fail its own condition the second time, a delete would find nothing
to delete. So each update and delete carries a C{write_id}, random and the
same on its repeat, and the registry answers a repeat of the image's last
identified write with the record as it is (L{IRegistry.update}). The other
removals of a tag or a membership carry one too, so the repeat of one is
answered as the first was rather than NotFound. The other PUTs and
DELETEs are idempotent as they are: a tag added again, leases and claims
renewed again, a membership set to the same status again.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import (
    URI,
    HTTPConnectionPool,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from glance_tx.bodies import BytesBody
from glance_tx.errors import GlanceError, ServiceUnavailable
from glance_tx.images import Image, ImageQuery, ImageUpdate, Member, ProjectUsage
from glance_tx.metadefs.interface import IMetadefRegistry
from glance_tx.metadefs.model import (
    Association,
    Definition,
    Namespace,
    NamespaceContent,
    NamespaceQuery,
    ResourceType,
)
from glance_tx.registry import wire
from glance_tx.registry.interface import HeldClaim, IRegistry
from glance_tx.registry.kept import Kept
from glance_tx.request_ids import HEADER as REQUEST_ID_HEADER
from glance_tx.request_ids import current_request_id
from glance_tx.tasks import Task, TaskChange, TaskQuery

#: Methods that may be sent again after a connection failure.
IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})

#: Failures that mean no response came (the request may not have arrived).
_UNREACHABLE = (ConnectError, ConnectingCancelledError, ResponseNeverReceived)


def registry_http_client(
    reactor: Any,
    *,
    connect_timeout: float,
    persistent: int = 8,
    idle_timeout: float = 240.0,
    ca_certificate: bytes | None = None,
    tls_policy: IPolicyForHTTPS | None = None,
) -> tuple[IAgent, HTTPConnectionPool]:
    """
    An agent for one registry (or another internal peer: Keystone) with a
    persistent connection pool, and the pool (for C{closeCachedConnections}
    at shutdown). The pool keeps at most C{persistent} idle connections,
    each for C{idle_timeout} seconds. For C{https} peers,
    C{ca_certificate} (PEM) is the only authority trusted, or C{tls_policy}
    says what is; without either, the system's authorities are.

    A bare L{Agent}, not treq: treq's URL handling (hyperlink), cookie jar
    and content decoder, built anew for every request, were a quarter of
    an API node's CPU per single-image GET through the registry (py-spy).
    """
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = persistent
    pool.cachedConnectionTimeout = idle_timeout  # type: ignore[assignment]
    policy: IPolicyForHTTPS = tls_policy or BrowserLikePolicyForHTTPS()
    if ca_certificate is not None:
        from twisted.internet.ssl import Certificate

        policy = BrowserLikePolicyForHTTPS(
            trustRoot=Certificate.loadPEM(ca_certificate)
        )
    agent = Agent.usingEndpointFactory(
        reactor, KeptEndpoints(reactor, policy, connect_timeout), pool=pool
    )
    return agent, pool


@implementer(IAgentEndpointFactory)
@define
class KeptEndpoints:
    """
    The endpoints of an internal peer's agent, one made per scheme, host
    and port and used again for every request: Agent's own factory makes
    a HostnameEndpoint (and for https a TLS connection creator) per
    request, 175 us of an API node's CPU per request to glance-registry
    (timeit, load 8), most of a GET's pooled-connection path.
    """

    reactor: Any
    policy: IPolicyForHTTPS
    connect_timeout: float
    _kept: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = field(
        factory=dict, init=False
    )

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._kept.get(key)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
            endpoint = HostnameEndpoint(
                self.reactor, uri.host.decode("ascii"), uri.port,
                timeout=self.connect_timeout,
            )
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(
                    self.policy.creatorForNetloc(uri.host, uri.port), endpoint
                )
            self._kept[key] = endpoint
        return endpoint


def open_http_registry(
    reactor: Any,
    url: str,
    *,
    token: str | None = None,
    timeout: float = 5.0,
    retries: int = 1,
    ca_certificate: bytes | None = None,
    pool_maxsize: int = 8,
    pool_unused_timeout: float = 240.0,
) -> HTTPRegistryClient:
    """
    The client an API node uses for C{registry_url}: pooled connections
    (at most C{pool_maxsize} kept idle, each for C{pool_unused_timeout}
    seconds), connecting bounded by the same timeout as a whole call.
    """
    agent, pool = registry_http_client(
        reactor,
        connect_timeout=timeout,
        persistent=pool_maxsize,
        idle_timeout=pool_unused_timeout,
        ca_certificate=ca_certificate,
    )
    return HTTPRegistryClient(
        agent=agent,
        url=url,
        clock=reactor,
        token=token,
        timeout=timeout,
        retries=retries,
        pool=pool,
    )


@implementer(IRegistry, IMetadefRegistry)
@define
class HTTPRegistryClient:
    """
    The Registry API's client. C{agent} sends the requests (a pooled
    L{Agent}; in tests, treq's C{RequestTraversalAgent}); C{clock} times
    the calls out.
    """

    agent: IAgent
    url: str
    clock: IReactorTime
    token: str | None = None
    #: Seconds a call may take, the response body included.
    timeout: float = 5.0
    #: How many times an idempotent call is repeated after a connection
    #: failure, and how long to wait first.
    retries: int = 1
    retry_delay: float = 0.2
    #: The connection pool behind C{agent}, closed by L{close}.
    pool: HTTPConnectionPool | None = None
    #: By the hash of each image form read (L{wire.FORMS_HEADER}), the form
    #: and the image decoded from it (see L{_images}).
    _decoded: Kept[bytes, Image] = field(factory=Kept, init=False)

    def __attrs_post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def _images(self, answer: tuple[Headers, bytes], key: str) -> builtins.list[Image]:
        """
        The images of a read's answer: for each form the registry placed in
        the body, the image decoded before from equal bytes, the same object
        (which the API's documents, kept per record, check first), and only
        new forms parsed. Parsing a 25-image page and comparing its decoded
        forms was most of what a listing through glance-registry added on
        the API node's CPU. (The registry encodes a record one way only, so
        equal bytes are the same record.)
        """
        headers, raw = answer
        given = headers.getRawHeaders(wire.FORMS_HEADER)
        forms = wire.split_forms(given[-1] if given else None, raw)
        if forms is None:
            value = json.loads(raw)[key]
            values = value if isinstance(value, builtins.list) else [value]
            return [wire.decode_image(v) for v in values]
        return [self._decoded.made(str(hash(form)), form, _decode_form) for form in forms]

    def close(self) -> Deferred[None]:
        """Drop the pooled connections (as SQLRegistry.close drops its engine)."""
        if self.pool is None:
            return succeed(None)
        return self.pool.closeCachedConnections()

    # -- transport -----------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        raw: bool = False,
    ) -> Any:
        """
        The JSON answer to one request (with C{raw}, its headers and body
        unparsed), or the error it stands for.
        """
        attempts = 1 + (self.retries if method in IDEMPOTENT else 0)
        for attempt in range(attempts):
            try:
                return await self._bounded(method, path, params, body, raw)
            except _UNREACHABLE as e:
                if attempt + 1 < attempts:
                    await deferLater(self.clock, self.retry_delay, lambda: None)
                    continue
                raise ServiceUnavailable(
                    f"The registry is unreachable: {_reason(e)}"
                ) from None
            except GlanceError:
                raise
            except Exception as e:
                # Anything else on the way (a TLS handshake refused, a
                # malformed response) is the registry not being usable,
                # never the caller's error or a 500.
                raise ServiceUnavailable(f"The registry failed: {_reason(e)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _bounded(
        self, method: str, path: str, params: dict[str, str] | None, body: Any, raw: bool
    ) -> Any:
        """
        The exchange, or ServiceUnavailable at the deadline: the caller is
        answered then even if cancelling the request takes longer.
        """
        exchange = Deferred.fromCoroutine(self._exchange(method, path, params, body, raw))
        answer: Deferred[Any] = Deferred()

        def settle(result: Any) -> None:
            # After the deadline the exchange's end (cancelled, most
            # likely) has no one left to hear it.
            if not answer.called:
                answer.callback(result)

        exchange.addBoth(settle)

        def deadline() -> None:
            answer.errback(
                ServiceUnavailable(
                    f"The registry did not answer within {self.timeout:g}s"
                )
            )
            exchange.cancel()

        timer = self.clock.callLater(self.timeout, deadline)
        try:
            return await answer
        finally:
            if timer.active():
                timer.cancel()

    async def _exchange(
        self, method: str, path: str, params: dict[str, str] | None, body: Any, raw: bool
    ) -> Any:
        headers = Headers({b"Accept": [b"application/json"]})
        request_id = current_request_id()
        if request_id is not None:
            headers.setRawHeaders(REQUEST_ID_HEADER, [request_id.encode("ascii")])
        if self.token is not None:
            headers.setRawHeaders(
                wire.TOKEN_HEADER, [wire.TOKEN_SCHEME + self.token.encode("utf-8")]
            )
        producer = None
        if body is not None:
            producer = BytesBody(json.dumps(body, separators=(",", ":")).encode("utf-8"))
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
        url = self.url + path
        if params:
            url += "?" + urlencode(params, quote_via=quote)
        response = await self.agent.request(
            method.encode("ascii"), url.encode("ascii"), headers, producer
        )
        content = await readBody(response)
        if raw and 200 <= response.code < 300:
            return response.headers, content
        try:
            value = json.loads(content) if content else None
        except ValueError:
            value = None
        if 200 <= response.code < 300:
            return value
        if response.code == 401:
            raise ServiceUnavailable("The registry refused this node's registry_token")
        raise wire.decode_error(response.code, value)

    # -- IRegistry -------------------------------------------------------------------

    def _image_path(self, image_id: str) -> str:
        return "/images/" + wire.path_segment(image_id, "image id")

    def _run(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coroutine)

    def create(self, image: Image) -> Deferred[Image]:
        async def create() -> Image:
            answer = await self._call(
                "POST", "/images", body={"image": wire.encode_image(image)}
            )
            return wire.decode_image(answer["image"])

        return self._run(create())

    def get(self, image_id: str, include_deleted: bool = False) -> Deferred[Image]:
        async def get() -> Image:
            params = {"include_deleted": "true"} if include_deleted else None
            answer = await self._call(
                "GET", self._image_path(image_id), params=params, raw=True
            )
            [image] = self._images(answer, "image")
            return image

        return self._run(get())

    def list(self, query: ImageQuery) -> Deferred[builtins.list[Image]]:
        async def list_() -> builtins.list[Image]:
            params = {"query": json.dumps(wire.encode_query(query), separators=(",", ":"))}
            answer = await self._call("GET", "/images/detail", params=params, raw=True)
            return self._images(answer, "images")

        return self._run(list_())

    def update(
        self,
        image_id: str,
        update: ImageUpdate,
        expected_status: frozenset[str] | None = None,
        expected_version: int | None = None,
        write_id: str | None = None,
    ) -> Deferred[Image]:
        async def update_() -> Image:
            body = {
                "update": wire.encode_update(update),
                "expected_status": wire.encode_statuses(expected_status),
                "expected_version": expected_version,
                # The same on a repeat (see the module docstring).
                "write_id": _new_write_id() if write_id is None else write_id,
            }
            answer = await self._call("PUT", self._image_path(image_id), body=body)
            return wire.decode_image(answer["image"])

        return self._run(update_())

    def delete(
        self, image_id: str, expected_version: int | None = None, write_id: str | None = None
    ) -> Deferred[Image]:
        async def delete() -> Image:
            params = _write_params(write_id)
            if expected_version is not None:
                params["expected_version"] = str(expected_version)
            answer = await self._call("DELETE", self._image_path(image_id), params=params)
            return wire.decode_image(answer["image"])

        return self._run(delete())

    def all_locations(self) -> Deferred[frozenset[str]]:
        async def all_locations() -> frozenset[str]:
            answer = await self._call("GET", "/locations")
            return frozenset(answer["locations"])

        return self._run(all_locations())

    def pending_deletes(self, older_than: float) -> Deferred[builtins.list[Image]]:
        async def pending_deletes() -> builtins.list[Image]:
            answer = await self._call(
                "GET", "/pending-deletes", params={"older_than": repr(float(older_than))}
            )
            return [wire.decode_image(value) for value in answer["images"]]

        return self._run(pending_deletes())

    def _tag_path(self, image_id: str, tag: str) -> str:
        return self._image_path(image_id) + "/tags/" + wire.path_segment(tag, "tag")

    def add_tag(self, image_id: str, tag: str) -> Deferred[Image]:
        async def add_tag() -> Image:
            answer = await self._call("PUT", self._tag_path(image_id, tag))
            return wire.decode_image(answer["image"])

        return self._run(add_tag())

    def remove_tag(
        self, image_id: str, tag: str, write_id: str | None = None
    ) -> Deferred[Image]:
        async def remove_tag() -> Image:
            answer = await self._call(
                "DELETE", self._tag_path(image_id, tag), params=_write_params(write_id)
            )
            return wire.decode_image(answer["image"])

        return self._run(remove_tag())

    def _member_path(self, image_id: str, member_id: str) -> str:
        return (
            self._image_path(image_id)
            + "/members/"
            + wire.path_segment(member_id, "member id")
        )

    def add_member(self, image_id: str, member_id: str) -> Deferred[Member]:
        async def add_member() -> Member:
            answer = await self._call(
                "POST",
                self._image_path(image_id) + "/members",
                body={"member_id": member_id},
            )
            return wire.decode_member(answer["member"])

        return self._run(add_member())

    def get_member(self, image_id: str, member_id: str) -> Deferred[Member]:
        async def get_member() -> Member:
            answer = await self._call("GET", self._member_path(image_id, member_id))
            return wire.decode_member(answer["member"])

        return self._run(get_member())

    def list_members(self, image_id: str) -> Deferred[builtins.list[Member]]:
        async def list_members() -> builtins.list[Member]:
            answer = await self._call("GET", self._image_path(image_id) + "/members")
            return [wire.decode_member(value) for value in answer["members"]]

        return self._run(list_members())

    def update_member(
        self, image_id: str, member_id: str, status: str
    ) -> Deferred[Member]:
        async def update_member() -> Member:
            answer = await self._call(
                "PUT", self._member_path(image_id, member_id), body={"status": status}
            )
            return wire.decode_member(answer["member"])

        return self._run(update_member())

    def remove_member(
        self, image_id: str, member_id: str, write_id: str | None = None
    ) -> Deferred[None]:
        async def remove_member() -> None:
            await self._call(
                "DELETE",
                self._member_path(image_id, member_id),
                params=_write_params(write_id),
            )

        return self._run(remove_member())

    def _lease_path(self, node_id: str) -> str:
        return "/leases/" + wire.path_segment(node_id, "node id")

    def hold_uploads(
        self, node_id: str, uploads: Mapping[str, str], seconds: float
    ) -> Deferred[None]:
        async def hold_uploads() -> None:
            await self._call(
                "PUT", self._lease_path(node_id), body=wire.encode_leases(uploads, seconds)
            )

        return self._run(hold_uploads())

    def release_upload(self, image_id: str, node_id: str) -> Deferred[None]:
        async def release_upload() -> None:
            path = self._lease_path(node_id) + "/" + wire.path_segment(image_id, "image id")
            await self._call("DELETE", path)

        return self._run(release_upload())

    def reclaim_uploads(
        self, dead_node_id: str | None = None
    ) -> Deferred[builtins.list[Image]]:
        async def reclaim_uploads() -> builtins.list[Image]:
            # POST: not repeated after a lost answer, though a repeat would
            # only find nothing left to reclaim.
            answer = await self._call(
                "POST", "/leases/reclaim", body={"dead_node_id": dead_node_id}
            )
            return [wire.decode_image(value) for value in answer["images"]]

        return self._run(reclaim_uploads())

    def _node_path(self, node_id: str) -> str:
        return "/nodes/" + wire.path_segment(node_id, "node id")

    def claim_node(
        self, node_id: str, instance: str, seconds: float, replacing: str | None = None
    ) -> Deferred[HeldClaim | None]:
        async def claim_node() -> HeldClaim | None:
            # PUT: repeated after a lost answer, it finds its own claim and
            # renews it.
            answer = await self._call(
                "PUT",
                self._node_path(node_id),
                body=wire.encode_claim(instance, seconds, replacing),
            )
            return wire.decode_claim_answer(answer)

        return self._run(claim_node())

    def release_node(self, node_id: str, instance: str) -> Deferred[None]:
        async def release_node() -> None:
            path = self._node_path(node_id) + "/" + wire.path_segment(instance, "instance")
            await self._call("DELETE", path)

        return self._run(release_node())

    def project_usage(self, project_id: str) -> Deferred[ProjectUsage]:
        async def project_usage() -> ProjectUsage:
            path = "/projects/" + wire.path_segment(project_id, "project id") + "/usage"
            answer = await self._call("GET", path)
            return wire.decode_usage(answer["usage"])

        return self._run(project_usage())

    def _task_path(self, task_id: str) -> str:
        return "/tasks/" + wire.path_segment(task_id, "task id")

    def create_task(self, task: Task) -> Deferred[Task]:
        async def create_task() -> Task:
            # POST: not repeated; a repeat would be a Conflict on the id.
            answer = await self._call("POST", "/tasks", body={"task": wire.encode_task(task)})
            return wire.decode_task(answer["task"])

        return self._run(create_task())

    def get_task(self, task_id: str) -> Deferred[Task]:
        async def get_task() -> Task:
            answer = await self._call("GET", self._task_path(task_id))
            return wire.decode_task(answer["task"])

        return self._run(get_task())

    def list_tasks(self, query: TaskQuery) -> Deferred[builtins.list[Task]]:
        async def list_tasks() -> builtins.list[Task]:
            params = {"query": json.dumps(wire.encode_task_query(query))}
            answer = await self._call("GET", "/tasks", params=params)
            return [wire.decode_task(value) for value in answer["tasks"]]

        return self._run(list_tasks())

    def update_task(self, task_id: str, change: TaskChange) -> Deferred[Task]:
        async def update_task() -> Task:
            # PUT, repeated after a lost answer: the repeat of a move to an
            # ended status is refused (ended already), which the callers,
            # who only log a task not moved, take as they take any refusal.
            answer = await self._call(
                "PUT", self._task_path(task_id), body={"change": wire.encode_task_change(change)}
            )
            return wire.decode_task(answer["task"])

        return self._run(update_task())

    def delete_expired_tasks(self) -> Deferred[int]:
        async def delete_expired_tasks() -> int:
            # DELETE, repeated after a lost answer: it then finds fewer.
            answer = await self._call("DELETE", "/tasks/expired")
            return int(answer["deleted"])

        return self._run(delete_expired_tasks())

    def ping(self) -> Deferred[None]:
        async def ping() -> None:
            await self._call("GET", "/healthcheck")

        return self._run(ping())

    # -- IMetadefRegistry --------------------------------------------------------------

    def _namespace_path(self, namespace: str) -> str:
        return "/metadefs/namespaces/" + wire.path_segment(namespace, "namespace")

    def _kind_path(self, namespace: str, kind: str) -> str:
        return f"{self._namespace_path(namespace)}/definitions/{wire.path_segment(kind, 'kind')}"

    def _definition_path(self, namespace: str, kind: str, name: str) -> str:
        return f"{self._kind_path(namespace, kind)}/{wire.path_segment(name, 'name')}"

    async def _namespace_call(self, method: str, path: str, body: Any = None) -> Namespace:
        answer = await self._call(method, path, body=body)
        return wire.decode_namespace(answer["namespace"])

    async def _definition_call(self, method: str, path: str, body: Any = None) -> Definition:
        answer = await self._call(method, path, body=body)
        return wire.decode_definition(answer["definition"])

    async def _no_answer(self, method: str, path: str) -> None:
        await self._call(method, path)

    def create_namespace(
        self, content: NamespaceContent, replace: bool = False
    ) -> Deferred[Namespace]:
        body = {"content": wire.encode_content(content), "replace": replace}
        return self._run(self._namespace_call("POST", "/metadefs/namespaces", body))

    def get_namespace(self, name: str) -> Deferred[Namespace]:
        return self._run(self._namespace_call("GET", self._namespace_path(name)))

    def list_namespaces(self, query: NamespaceQuery) -> Deferred[builtins.list[Namespace]]:
        async def list_namespaces() -> builtins.list[Namespace]:
            params = {"query": json.dumps(wire.encode_namespace_query(query))}
            answer = await self._call("GET", "/metadefs/namespaces", params=params)
            return [wire.decode_namespace(value) for value in answer["namespaces"]]

        return self._run(list_namespaces())

    def update_namespace(self, name: str, namespace: Namespace) -> Deferred[Namespace]:
        body = {"namespace": wire.encode_record(namespace)}
        return self._run(self._namespace_call("PUT", self._namespace_path(name), body))

    def delete_namespace(self, name: str) -> Deferred[None]:
        return self._run(self._no_answer("DELETE", self._namespace_path(name)))

    def list_definitions(self, namespace: str, kind: str) -> Deferred[builtins.list[Definition]]:
        async def list_definitions() -> builtins.list[Definition]:
            answer = await self._call("GET", self._kind_path(namespace, kind))
            return [wire.decode_definition(value) for value in answer["definitions"]]

        return self._run(list_definitions())

    def get_definition(self, namespace: str, kind: str, name: str) -> Deferred[Definition]:
        return self._run(
            self._definition_call("GET", self._definition_path(namespace, kind, name))
        )

    def create_definition(self, namespace: str, definition: Definition) -> Deferred[Definition]:
        path = self._kind_path(namespace, definition.kind)
        body = {"definition": wire.encode_record(definition)}
        return self._run(self._definition_call("POST", path, body))

    def update_definition(
        self, namespace: str, name: str, definition: Definition
    ) -> Deferred[Definition]:
        path = self._definition_path(namespace, definition.kind, name)
        body = {"definition": wire.encode_record(definition)}
        return self._run(self._definition_call("PUT", path, body))

    def delete_definition(self, namespace: str, kind: str, name: str) -> Deferred[None]:
        return self._run(self._no_answer("DELETE", self._definition_path(namespace, kind, name)))

    def replace_definitions(
        self, namespace: str, kind: str, definitions: Sequence[Definition], append: bool = False
    ) -> Deferred[builtins.list[Definition]]:
        async def replace_definitions() -> builtins.list[Definition]:
            body = {"definitions": [wire.encode_record(d) for d in definitions], "append": append}
            answer = await self._call("PUT", self._kind_path(namespace, kind), body=body)
            return [wire.decode_definition(value) for value in answer["definitions"]]

        return self._run(replace_definitions())

    def list_resource_types(self) -> Deferred[builtins.list[ResourceType]]:
        async def list_resource_types() -> builtins.list[ResourceType]:
            answer = await self._call("GET", "/metadefs/resource_types")
            return [wire.decode_resource_type(value) for value in answer["resource_types"]]

        return self._run(list_resource_types())

    def list_associations(
        self, namespaces: Sequence[str]
    ) -> Deferred[Mapping[str, builtins.list[Association]]]:
        async def list_associations() -> Mapping[str, builtins.list[Association]]:
            if not namespaces:
                return {}
            query = urlencode([("namespace", name) for name in namespaces], quote_via=quote)
            answer = await self._call("GET", "/metadefs/associations?" + query)
            found = answer["associations"]
            return {
                name: [wire.decode_association(value) for value in found.get(name, [])]
                for name in namespaces
            }

        return self._run(list_associations())

    def create_association(
        self, namespace: str, association: Association
    ) -> Deferred[Association]:
        async def create_association() -> Association:
            answer = await self._call(
                "POST",
                self._namespace_path(namespace) + "/associations",
                body={"association": wire.encode_record(association)},
            )
            return wire.decode_association(answer["association"])

        return self._run(create_association())

    def delete_association(self, namespace: str, resource_type: str) -> Deferred[None]:
        path = (
            self._namespace_path(namespace)
            + "/associations/"
            + wire.path_segment(resource_type, "resource type")
        )
        return self._run(self._no_answer("DELETE", path))


def _decode_form(form: bytes) -> Image:
    return wire.decode_image(json.loads(form))


def _new_write_id() -> str:
    return uuid.uuid4().hex


def _write_params(write_id: str | None) -> dict[str, str]:
    """The query of an identified DELETE: the caller's write_id, or a new one."""
    return {"write_id": _new_write_id() if write_id is None else write_id}


def _reason(error: Exception) -> str:
    """What went wrong with a connection, without a traceback."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(str(getattr(r, "value", r)) for r in reasons)
    return str(error) or type(error).__name__
