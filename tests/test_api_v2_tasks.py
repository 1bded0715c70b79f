"""
Glance's tasks in memory: C{/v2/tasks} (the import type, list, show, the
schemas, the policy) and C{/v2/images/{id}/tasks}, the task every
interoperable import records.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredList

from glance_tx.policy import Policy
from tests.test_api_v2 import ADMIN, ALICE, BOB, OCTET
from tests.test_imports import DATA, ImportTestCase


def import_task(url: str, **properties: Any) -> dict[str, Any]:
    """A tasks API import of C{url} (as Tempest's test_image_task makes one)."""
    return {
        "type": "import",
        "input": {
            "import_from": url,
            "import_from_format": "raw",
            "image_properties": {"name": "from-task", "disk_format": "raw", "container_format": "bare", **properties},
        },
    }


class TasksTestCase(ImportTestCase):
    def settle(self) -> None:
        """Let every background task and import this site runs end."""
        self.successResultOf(DeferredList(list(self.site.v2.tasks_api.running.values())))
        self.successResultOf(self.site.importer.idle())

    def create_task(self, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> Any:
        answer = self.send_json("POST", "/v2/tasks", body, headers)
        self.settle()
        return answer

    def task(self, task_id: str, headers: dict[str, str] = ADMIN) -> dict[str, Any]:
        answer = self.request("GET", f"/v2/tasks/{task_id}", headers)
        self.assertEqual(answer.code, 200, answer.body)
        result: dict[str, Any] = answer.json()
        return result


class TasksAPITests(TasksTestCase):
    def test_import_task_makes_an_active_image(self) -> None:
        """
        POST /v2/tasks of type import answers 201 with the task pending,
        its Location and Glance's fields; in the background an image of
        image_properties is made and imported from import_from (the
        web-download path): the task ends in success, its result the
        image's id, with an expiry, and the image is active with the data.
        """
        url = self.web.add(DATA)
        answer = self.send_json("POST", "/v2/tasks", import_task(url), ADMIN)
        self.assertEqual(answer.code, 201, answer.body)
        created = answer.json()
        self.assertEqual(created["status"], "pending")
        self.assertEqual(created["type"], "import")
        self.assertEqual(created["owner"], "ops")
        self.assertEqual(created["input"]["import_from"], url)
        self.assertEqual((created["self"], created["schema"]), (f"/v2/tasks/{created['id']}", "/v2/schemas/task"))
        self.assertTrue(answer.header("Location").endswith(f"/v2/tasks/{created['id']}"))
        self.assertNotIn("expires_at", created)
        self.settle()
        done = self.task(created["id"])
        self.assertEqual(done["status"], "success", done)
        self.assertIn("expires_at", done)
        image_id = done["result"]["image_id"]
        shown = self.show(image_id, ADMIN)
        self.assertEqual((shown["status"], shown["name"], shown["disk_format"]), ("active", "from-task", "raw"))
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file", ADMIN).body, DATA)

    def test_import_task_failures(self) -> None:
        """
        Input without import_from_format, or a URL that answers 404, fails
        the task with a message saying why; the image made for a failed
        fetch is left queued with the failure recorded, as any web-download.
        """
        body = import_task(self.web.add(DATA))
        del body["input"]["import_from_format"]
        failed = self.task(self.create_task(body).json()["id"])
        self.assertEqual(failed["status"], "failure")
        self.assertEqual(failed["message"], "Input does not contain 'import_from_format' field")
        self.assertIn("expires_at", failed)

        missing = self.task(self.create_task(import_task("http://images.example/missing")).json()["id"])
        self.assertEqual(missing["status"], "failure")
        self.assertIn("404", missing["message"])
        [image] = self.request("GET", "/v2/images?name=from-task", ADMIN).json()["images"]
        self.assertEqual((image["status"], image["os_glance_failed_import"]), ("queued", "file"))

    def test_create_refusals(self) -> None:
        """
        A create without type or input, of an unknown type, or whose
        import_from is not an http(s) URL with a host (file:// included) is
        a 400, and no task is made.
        """
        url = self.web.add(DATA)
        for body in (
            {"input": import_task(url)["input"]},
            {"type": "import"},
            {"type": "convert", "input": {}},
            {"type": "import", "input": "x"},
            import_task("file:///etc/passwd"),
            import_task("http://"),
            import_task("http://["),
            {**import_task(url), "extra": 1},
        ):
            self.assertError(self.send_json("POST", "/v2/tasks", body, ADMIN), 400)
        self.assertEqual(self.request("GET", "/v2/tasks", ADMIN).json()["tasks"], [])

    def test_tasks_api_is_admin_only(self) -> None:
        """
        Glance's default tasks_api_access is admin: a project member gets
        403 on every tasks route; an image's tasks are not the tasks API.
        """
        url = self.web.add(DATA)
        task_id = self.create_task(import_task(url)).json()["id"]
        self.assertError(self.request("GET", "/v2/tasks", ALICE), 403)
        self.assertError(self.request("GET", f"/v2/tasks/{task_id}", ALICE), 403)
        self.assertError(self.send_json("POST", "/v2/tasks", import_task(url), ALICE), 403)

    def test_delete_is_not_allowed(self) -> None:
        """DELETE of a task is Glance's 405 with Allow: GET."""
        task_id = self.create_task(import_task(self.web.add(DATA))).json()["id"]
        answer = self.request("DELETE", f"/v2/tasks/{task_id}", ADMIN)
        self.assertError(answer, 405)
        self.assertEqual(answer.header("Allow"), "GET")
        self.assertEqual(self.task(task_id)["id"], task_id)

    def test_unknown_task(self) -> None:
        """A task id that names no task is a 404."""
        self.assertError(self.request("GET", "/v2/tasks/4f4d9c1c-0000-4000-8000-000000000000", ADMIN), 404)

    def test_list_filters_and_pages(self) -> None:
        """
        The listing is Glance's: stubs without input, result or message,
        newest first, filters type and status, limit/marker with first and
        next links; bad parameters are 400s.
        """
        url = self.web.add(DATA)
        ids = [self.create_task(import_task(url)).json()["id"] for _ in range(3)]
        broken = import_task(url)
        del broken["input"]["image_properties"]
        failed = self.create_task(broken).json()["id"]
        listing = self.request("GET", "/v2/tasks", ADMIN).json()
        self.assertEqual([t["id"] for t in listing["tasks"]], [failed, *reversed(ids)])
        self.assertEqual((listing["first"], listing["schema"]), ("/v2/tasks", "/v2/schemas/tasks"))
        self.assertNotIn("input", listing["tasks"][0])
        self.assertNotIn("message", listing["tasks"][0])
        self.assertEqual(
            [t["id"] for t in self.request("GET", "/v2/tasks?status=failure", ADMIN).json()["tasks"]], [failed]
        )
        self.assertEqual(self.request("GET", "/v2/tasks?type=api_image_import", ADMIN).json()["tasks"], [])
        page = self.request("GET", "/v2/tasks?limit=2&sort_dir=asc", ADMIN).json()
        self.assertEqual([t["id"] for t in page["tasks"]], ids[:2])
        self.assertEqual(page["next"], f"/v2/tasks?limit=2&sort_dir=asc&marker={ids[1]}")
        rest = self.request("GET", page["next"], ADMIN).json()
        self.assertEqual([t["id"] for t in rest["tasks"]], [ids[2], failed])
        for bad in ("status=done", "type=copy", "sort_dir=up", "marker=nope", "limit=x", "sort_key=message"):
            self.assertError(self.request("GET", f"/v2/tasks?{bad}", ADMIN), 400)

    def test_schemas(self) -> None:
        """/v2/schemas/task and /v2/schemas/tasks are Glance's, and tasks served fit them."""
        import jsonschema

        task = self.request("GET", "/v2/schemas/task", ADMIN).json()
        tasks = self.request("GET", "/v2/schemas/tasks", ADMIN).json()
        self.assertEqual(task["properties"]["status"]["enum"], ["pending", "processing", "success", "failure"])
        self.assertNotIn("input", tasks["properties"]["tasks"]["items"]["properties"])
        task_id = self.create_task(import_task(self.web.add(DATA))).json()["id"]
        jsonschema.validate(self.task(task_id), task)
        jsonschema.validate(self.request("GET", "/v2/tasks", ADMIN).json(), tasks)


class OpenTasksAPITests(TasksTestCase):
    """With tasks_api_access opened to everyone (an operator's policy)."""

    site_options = {"policy": Policy.with_rules({"tasks_api_access": ""})}

    def test_a_project_sees_its_own_tasks(self) -> None:
        """
        A non-admin lists and shows only its own project's tasks (another's
        is a 404); an admin sees all.
        """
        url = self.web.add(DATA)
        answer = self.create_task(import_task(url), ALICE)
        self.assertEqual(answer.code, 201, answer.body)
        mine = answer.json()["id"]
        theirs = self.create_task(import_task(url), BOB).json()["id"]
        self.assertEqual([t["id"] for t in self.request("GET", "/v2/tasks", ALICE).json()["tasks"]], [mine])
        self.assertError(self.request("GET", f"/v2/tasks/{theirs}", ALICE), 404)
        self.assertEqual(self.task(mine, ALICE)["status"], "success")
        self.assertEqual(len(self.request("GET", "/v2/tasks", ADMIN).json()["tasks"]), 2)
        self.assertError(self.request("GET", f"/v2/tasks?marker={theirs}", ALICE), 400)


class ImageTasksTests(TasksTestCase):
    def test_glance_direct_import_task(self) -> None:
        """
        A glance-direct import records one api_image_import task: the
        image's id, the import request's x-openstack-request-id, the user,
        the request body as input; success once the image is active (what
        Tempest's test_image_glance_direct_import checks).
        """
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        answer = self.import_(image["id"], {"method": {"name": "glance-direct"}}, ALICE)
        self.assertEqual(answer.code, 202, answer.body)
        listing = self.request("GET", f"/v2/images/{image['id']}/tasks", ALICE)
        self.assertEqual(listing.code, 200, listing.body)
        [task] = listing.json()["tasks"]
        self.assertEqual(task["type"], "api_image_import")
        self.assertEqual(task["status"], "success")
        self.assertEqual(task["image_id"], image["id"])
        self.assertEqual(task["request_id"], answer.header("x-openstack-request-id"))
        self.assertEqual(task["user_id"], "user-of-alice")
        self.assertEqual(task["owner"], "alice")
        self.assertEqual(task["input"]["import_req"]["method"]["name"], "glance-direct")
        self.assertEqual(task["input"]["backend"], ["file"])
        self.assertEqual(task["result"], {"image_id": image["id"]})
        self.assertIsNotNone(task["expires_at"])

    def test_failed_import_task(self) -> None:
        """A web-download that fails ends its task in failure, saying why."""
        image = self.create(ALICE)
        self.import_(image["id"], {"method": {"name": "web-download", "uri": "http://images.example/gone"}}, ALICE)
        [task] = self.request("GET", f"/v2/images/{image['id']}/tasks", ALICE).json()["tasks"]
        self.assertEqual(task["status"], "failure")
        self.assertIn("Import into file failed", task["message"])

    def test_copy_image_task_and_order(self) -> None:
        """
        Each import adds a task; the list is oldest first. An admin's
        copy-image task is not shown to the owner (another project's
        task), but is to an admin.
        """
        image = self.create(ALICE)
        self.request("PUT", f"/v2/images/{image['id']}/file", {**ALICE, **OCTET}, data=DATA)
        self.import_(image["id"], {"method": {"name": "copy-image"}, "stores": ["second"]}, ADMIN)
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/tasks", ALICE).json()["tasks"], [])
        [task] = self.request("GET", f"/v2/images/{image['id']}/tasks", ADMIN).json()["tasks"]
        self.assertEqual((task["status"], task["owner"]), ("success", "ops"))

    def test_unseen_image(self) -> None:
        """Another project's private image's tasks are a 404, as the image is."""
        image = self.create(ALICE)
        self.assertError(self.request("GET", f"/v2/images/{image['id']}/tasks", BOB), 404)
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/tasks", ALICE).json(), {"tasks": []})
