"""
The tasks API (C{/v2/tasks}): a Klein app of its own, which the v2 app
mounts at C{/tasks} (L{glance_tx.api.v2.V2API.task_routes}), with the
documents and parsing of L{glance_tx.api.v2_tasks}.

Its one task type, C{import}, is Glance's deprecated import task: make an
image and import it from a URL. Here that is the interoperable import's
web-download path (L{glance_tx.imports}), address guard and all, with the
task recording it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from glance_tx import images
from glance_tx.api.errors import json_errors
from glance_tx.api.http_cache import forbid_storing
from glance_tx.api.params import json_answer, read_object
from glance_tx.api.urls import site_url
from glance_tx.api.v2_tasks import (
    ImportTaskRequest,
    parse_task,
    parse_task_query,
    task_stub_view,
    task_view,
)
from glance_tx.context import RequestContext
from glance_tx.errors import BadRequest, GlanceError, MethodNotAllowed, NotFound
from glance_tx.images import (
    FAILED_IMPORT,
    IMPORTING_TO_STORES,
    Image,
    ImageUpdate,
    Location,
)
from glance_tx.imports import WEB_DOWNLOAD, Importer, ImportJob
from glance_tx.policy import Policy
from glance_tx.registry.interface import IRegistry
from glance_tx.request_ids import HEADER as REQUEST_ID_HEADER
from glance_tx.store.backends import StoreMap
from glance_tx.task_log import TaskLog
from glance_tx.tasks import IMPORT

log = Logger()


@define
class TasksAPI:
    """C{/v2/tasks}; collaborators injected by the v2 app that mounts it."""

    app = json_errors(Klein())

    tasks: TaskLog
    registry: IRegistry
    stores: StoreMap
    policy: Policy
    #: Who asks (the v2 app's one resolution per request).
    context: Callable[[IRequest], Awaitable[RequestContext]]
    #: An image from a create's body, refused as a v2 create refuses it.
    new_image: Callable[[RequestContext, dict[str, Any]], Image]
    importer: Importer | None = None
    #: The import tasks still being set up on this node (for tests).
    running: dict[str, Deferred[None]] = field(factory=dict, init=False)

    def resource(self) -> Any:
        return self.app.resource()

    def _web_download(self) -> Importer:
        if self.importer is None or WEB_DOWNLOAD not in self.importer.offered:
            raise NotFound("The web-download import method is not enabled")
        return self.importer

    @app.route("/", methods=["GET"], strict_slashes=False)
    async def list_tasks(self, request: IRequest) -> bytes:
        forbid_storing(request)
        context = await self.context(request)
        self.policy.check_tasks(context, "get_tasks")
        owner = None if self.policy.is_admin(context) else context.project_id
        query = parse_task_query(request.args or {}, owner)
        found = await self.tasks.registry.list_tasks(query)
        params = [
            (key.decode("utf-8"), value.decode("utf-8"))
            for key, values in (request.args or {}).items()
            if key != b"marker"
            for value in values
        ]
        document: dict[str, Any] = {
            "tasks": [task_stub_view(task) for task in found],
            "first": "/v2/tasks" + (f"?{urlencode(params)}" if params else ""),
            "schema": "/v2/schemas/tasks",
        }
        if found and len(found) == query.limit:
            document["next"] = "/v2/tasks?" + urlencode([*params, ("marker", found[-1].id)])
        return json_answer(request, document)

    @app.route("/<task_id>", methods=["GET"])
    async def show_task(self, request: IRequest, task_id: str) -> bytes:
        forbid_storing(request)
        context = await self.context(request)
        self.policy.check_tasks(context, "get_task")
        task = await self.tasks.registry.get_task(task_id)
        if not (self.policy.is_admin(context) or task.owner is None or task.owner == context.project_id):
            raise NotFound(f"Task with the given ID {task_id} not found")
        return json_answer(request, task_view(task))

    @app.route("/<task_id>", methods=["DELETE"])
    async def delete_task(self, request: IRequest, task_id: str) -> bytes:
        """Glance answers 405: tasks go away when they expire."""
        self.policy.check_tasks(await self.context(request), "modify_task")
        request.setHeader(b"Allow", b"GET")
        raise MethodNotAllowed(
            "This operation is currently not permitted on Glance Tasks. They are auto "
            "deleted after reaching the time based on their expires_at property."
        )

    @app.route("/", methods=["POST"], strict_slashes=False)
    async def create_task(self, request: IRequest) -> bytes:
        """
        Glance's (deprecated) C{import} task: answer 201 with the task
        pending, then, in the background, make an image of
        C{image_properties} and import it from C{import_from} by the
        web-download path (its address guard included); the task's result
        is the image's id.
        """
        context = await self.context(request)
        self.policy.check_tasks(context, "add_task")
        asked = parse_task(read_object(request))
        tasks = self.tasks
        request_ids = request.responseHeaders.getRawHeaders(REQUEST_ID_HEADER)
        task = await tasks.new(
            IMPORT,
            owner=context.project_id,
            input=asked.input,
            user_id=context.user_id,
            request_id=request_ids[0].decode("ascii") if request_ids else None,
        )
        running = Deferred.fromCoroutine(self._run_import_task(context, task.id, asked))
        running.addErrback(lambda f: log.failure("Import task {task_id} failed", f, task_id=task.id))
        self.running[task.id] = running
        running.addBoth(lambda _: self.running.pop(task.id, None) and None)
        request.setHeader(b"Location", f"{site_url(request)}/v2/tasks/{task.id}".encode())
        return json_answer(request, task_view(task), 201)

    async def _run_import_task(
        self, context: RequestContext, task_id: str, asked: ImportTaskRequest
    ) -> None:
        """
        The import task's work (Glance's C{glance/async_/flows/base_import}
        in outline): a refusal before the import starts fails the task with
        its message; the import itself ends it (L{Importer}).
        """
        tasks = self.tasks
        try:
            for key in ("import_from", "import_from_format", "image_properties"):
                if key not in asked.input:
                    raise BadRequest(f"Input does not contain '{key}' field")
            properties = asked.input["image_properties"]
            if not isinstance(properties, dict):
                raise BadRequest("image_properties must be an object")
            importer = self._web_download()
            image = await self.registry.create(self.new_image(context, properties))
            await importer.hold(image.id, WEB_DOWNLOAD)
            try:
                if not (image.disk_format and image.container_format):
                    raise BadRequest("image_properties must set disk_format and container_format")
                image = await self.registry.update(
                    image.id,
                    ImageUpdate(
                        fields={"status": images.IMAGE_IMPORTING},
                        properties={IMPORTING_TO_STORES: self.stores.default_id, FAILED_IMPORT: ""},
                    ),
                    expected_status=frozenset({images.QUEUED}),
                    expected_version=image.version,
                )
            except BaseException:
                await importer.release(image.id)
                raise
        except GlanceError as e:
            await tasks.fail(task_id, e.message)
            return
        except Exception as e:
            await tasks.fail(task_id, str(e) or type(e).__name__)
            raise
        await importer.start(
            ImportJob(
                image=image,
                method=WEB_DOWNLOAD,
                source=Location(asked.uri),
                stores=(self.stores.default_id,),
                task_id=task_id,
            )
        )
