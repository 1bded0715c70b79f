"""
The real ``glance`` command (python-glanceclient 4.x) against a real
glance-tx over a real socket, with no Keystone: ``glance --os-image-url URL
--os-auth-token T ...``, as issue 3's acceptance asks.

Each command runs as a subprocess of the test (the server runs on trial's
reactor in this process, so nothing here may block it) with C{--debug}: the
client then logs its requests to stderr (all but the discovery ones, which
it makes before it sets up logging), and a failing assertion shows the
command, its exit code, the requests it made and what it printed.
A fresh C{HOME} per test gives every test a cold schema cache
(C{~/.glanceclient}), so the first command of each test does the client's
discovery (C{GET /versions}, C{GET /v2/schemas/image}, the metadefs
schemas) and later ones build their options from the schema it cached.

The client prints tables, not JSON; L{table_rows} reads them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from typing import Any

from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from tests.live_server import (
    EXTERNAL_URL,
    MEMBER_PROJECT,
    MEMBER_TOKEN,
    OWNER_PROJECT,
    OWNER_TOKEN,
    LiveServerTestCase,
    MiB,
    file_digests,
    pattern_bytes,
)

log = Logger()

#: The console script installed beside the Python running the tests.
GLANCE = os.path.join(os.path.dirname(sys.executable), "glance")

#: How long one command may take before it is killed.
COMMAND_TIMEOUT = 90.0

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _skip_reason() -> str | None:
    try:
        import glanceclient  # noqa: F401
    except ImportError:
        reason = "python-glanceclient is not installed (pip install -e '.[test]')"
    else:
        if os.access(GLANCE, os.X_OK):
            return None
        reason = f"the glance command is not at {GLANCE}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        # In CI a missing client is a broken install, not a reason to skip.
        return None
    return reason


# -- reading what the client prints ------------------------------------------


def table_rows(text: str) -> list[list[str]]:
    """
    The rows of the first prettytable in C{text}, header row first, each a
    list of stripped cells. A row whose first cell is empty continues the
    row before it (prettytable wraps long values, at 80 columns in
    C{image-show}): its cells are joined on to that row's without a space,
    which is right for the long values here (hashes, ids).
    """
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            if rows and not line.startswith("+"):
                break  # the end of the first table
            continue
        cells = [cell.strip() for cell in line.strip()[1:-1].split("|")]
        if len(rows) > 1 and cells[0] == "":
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def show_table(text: str) -> dict[str, str]:
    """A C{Property | Value} table (image-show, image-create, image-update)."""
    rows = table_rows(text)
    if not rows or rows[0] != ["Property", "Value"]:
        raise AssertionError(f"no Property/Value table in:\n{text}")
    return {key: value for key, value in rows[1:]}


def list_table(text: str) -> list[dict[str, str]]:
    """A list table (image-list, member-list, ...): one dict per row."""
    rows = table_rows(text)
    if not rows:
        raise AssertionError(f"no table in:\n{text}")
    header = rows[0]
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]


#: urllib3 logs each request with its status once the client has set up
#: logging: after discovery, so C{GET /versions} and the schema requests of
#: discovery are not in the log (the identity proxy's log has them).
_URLLIB3 = re.compile(
    r'^DEBUG:urllib3\.connectionpool:https?://\S+ "(?P<method>[A-Z]+) (?P<target>\S+) '
    r'HTTP/[\d.]+" (?P<code>\d{3})'
)


@frozen
class GlanceRun:
    """One finished C{glance} command."""

    args: tuple[str, ...]
    code: int | None
    out: str
    err: str

    def requests(self) -> list[str]:
        """The requests the client logged (C{--debug}), as C{"GET
        /path?query 200"}, in order."""
        return [
            f"{m['method']} {m['target']} {m['code']}"
            for m in map(_URLLIB3.match, self.err.splitlines()) if m
        ]

    def paths(self, method: str | None = None) -> list[str]:
        """The paths (no query) of the requests made, optionally by method."""
        out = []
        for request in self.requests():
            m, target, _ = request.split(" ")
            if method is None or m == method:
                out.append(target.split("?")[0])
        return out

    def __str__(self) -> str:
        # The debug log says everything twice (glanceclient's own handler and
        # the root logger's); the root logger's lines are enough.
        err = "\n".join(
            line for line in self.err.splitlines()
            if not line.startswith("curl ") and not line.startswith("HTTP/")
        )
        tail = err if len(err) < 6000 else "...\n" + err[-6000:]
        requests = "\n  ".join(self.requests()) or "(none)"
        return (
            f"\n$ glance {' '.join(self.args)}\n"
            f"exit status: {self.code}\n"
            f"requests made:\n  {requests}\n"
            f"stdout:\n{self.out}\n"
            f"stderr (debug log):\n{tail}\n"
        )


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes | None, done: Deferred[int | None]) -> None:
        self.stdin = stdin
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
            self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        (self.out if childFD == 1 else self.err).append(data)

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.done.callback(0)
        elif reason.check(ProcessTerminated):
            self.done.callback(reason.value.exitCode)
        else:
            self.done.callback(None)


class GlanceCLITestCase(LiveServerTestCase):
    skip = _skip_reason()

    def setUp(self) -> Deferred[None]:
        # A fresh HOME: no schema cache from another test, no clouds.yaml.
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.runs: list[GlanceRun] = []
        self.addCleanup(self._log_runs)
        return super().setUp()

    def _log_runs(self) -> None:
        for run in self.runs:
            log.info(
                "glance {args} -> {code}: {requests}",
                args=" ".join(run.args), code=run.code, requests="; ".join(run.requests()),
            )

    def _environment(self) -> dict[str, str]:
        env = {
            name: value for name, value in os.environ.items()
            if not name.startswith("OS_")
            and name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
            # The client needs nothing from the server's source tree.
            and name != "PYTHONPATH"
        }
        env["HOME"] = self.home
        env["NO_PROXY"] = "127.0.0.1,localhost"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def glance(
        self,
        *args: str,
        token: str = OWNER_TOKEN,
        stdin: bytes | None = None,
        api_version: str | None = None,
        fails: bool = False,
        via_proxy: bool = False,
    ) -> GlanceRun:
        """
        Run C{glance --debug --os-image-url ... --os-auth-token TOKEN ARGS}
        and return what it did. Standard input is closed unless C{stdin} is
        given (then it is a pipe carrying those bytes): glanceclient uploads
        whatever a non-terminal stdin holds, as it would from a shell pipe.
        The command must succeed (or, with C{fails}, must fail). With
        C{via_proxy} it goes through the identity proxy even when its token
        needs no identity headers, so that the proxy logs all it asks.
        """
        url = (await self.proxy()).url if via_proxy else await self.endpoint(token)
        argv = [GLANCE, "--debug", "--os-image-url", url, "--os-auth-token", token]
        if api_version is not None:
            argv += ["--os-image-api-version", api_version]
        argv += list(args)
        done: Deferred[int | None] = Deferred()
        protocol = _Collect(stdin, done)
        child_fds: dict[int, str] = {1: "r", 2: "r"}
        if stdin is not None:
            child_fds[0] = "w"
        transport = reactor.spawnProcess(
            protocol, GLANCE, argv, env=self._environment(), path=self.home,
            childFDs=child_fds,
        )
        killer = reactor.callLater(COMMAND_TIMEOUT, transport.signalProcess, "KILL")
        code = await done
        if killer.active():
            killer.cancel()
        run = GlanceRun(
            args=tuple(argv[1:]),
            code=code,
            out=b"".join(protocol.out).decode("utf-8", "replace"),
            err=b"".join(protocol.err).decode("utf-8", "replace"),
        )
        self.runs.append(run)
        self.assertNotIn("falling back to v1", run.err, f"the client gave up on v2:{run}")
        if fails:
            self.assertNotEqual(run.code, 0, f"expected this command to fail:{run}")
        else:
            self.assertEqual(run.code, 0, f"the command failed:{run}")
        return run

    async def show(self, image_id: str, token: str = OWNER_TOKEN) -> dict[str, str]:
        run = await self.glance("image-show", "--max-column-width", "200", image_id, token=token)
        return show_table(run.out)

    async def names(self, *args: str, token: str = OWNER_TOKEN) -> list[str]:
        """The names image-list prints, in order."""
        run = await self.glance("image-list", *args, token=token)
        return [row["Name"] for row in list_table(run.out)]

    def assertImage(self, shown: dict[str, str], run: Any = "", **expected: str) -> None:
        """Each C{expected} field is shown with that (string) value."""
        for key, value in expected.items():
            self.assertEqual(
                shown.get(key), value, f"field {key!r} of {json.dumps(shown, indent=1)}{run}"
            )


class DiscoveryTests(GlanceCLITestCase):
    async def test_versions_and_schemas(self) -> None:
        """
        With no API version given the client asks C{GET /versions}, finds
        v2 there, and caches the image schema that C{GET /v2/schemas/image}
        serves (the metadefs schemas may be 404); then it lists with v2.
        """
        suite = uuid.uuid4().hex
        run = await self.glance("image-list", "--property-filter", f"suite={suite}", via_proxy=True)
        seen = (await self.proxy()).log_lines
        self.assertEqual(
            [line.split(" as ")[0] for line in seen if "/metadefs/" not in line],
            ["GET /versions",
             "GET /v2/schemas/image",
             f"GET /v2/images?suite={suite}&limit=200&sort_key=name&sort_dir=asc"],
            f"{seen}{run}",
        )
        self.assertTrue(all(line.endswith(("-> 200", "-> 300")) or "/metadefs/" in line
                            for line in seen), f"{seen}{run}")
        self.assertEqual(list_table(run.out), [], run)

        with open(os.path.join(self.home, ".glanceclient", "image_schema.json")) as f:
            cached = json.load(f)
        code, served = await self.api("GET", "/v2/schemas/image")
        self.assertEqual(code, 200)
        self.assertEqual(cached, served)
        for name in ("id", "name", "status", "visibility", "protected", "os_hidden",
                     "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size",
                     "min_disk", "min_ram", "disk_format", "container_format", "owner",
                     "tags", "created_at", "updated_at", "self", "file", "schema"):
            self.assertIn(name, cached["properties"])

    async def test_explicit_api_version(self) -> None:
        """
        With C{--os-image-api-version 2} the client skips discovery and
        talks v2 at once.
        """
        run = await self.glance(
            "image-list", "--property-filter", f"suite={uuid.uuid4().hex}", api_version="2"
        )
        self.assertNotIn("/versions", run.paths(), run)
        self.assertEqual(list_table(run.out), [], run)


    async def test_stores_info(self) -> None:
        """
        C{glance stores-info} reads C{GET /v2/info/stores} and prints the
        server's one store as the default; C{--detail} (an admin's) adds
        its type and data directory.
        """
        run = await self.glance("stores-info")
        self.assertEqual(run.paths()[-1:], ["/v2/info/stores"], run)
        self.assertEqual(
            json.loads(show_table(run.out)["stores"]), [{"id": "file", "default": "true"}], run
        )
        run = await self.glance("stores-info", "--detail")
        self.assertEqual(run.paths()[-1:], ["/v2/info/stores/detail"], run)
        [detail] = json.loads(show_table(run.out)["stores"])
        self.assertEqual(detail["type"], "file", run)
        self.assertIn("data_dir", detail["properties"], run)


    async def test_image_tasks_need_several_stores(self) -> None:
        """
        With one store Images API 2.12 is not listed (Glance lists it only
        with C{enabled_backends}), so C{glance image-tasks} refuses before
        it asks for the tasks, as it does against such a Glance.
        """
        body = {"name": "tasks", "disk_format": "raw", "container_format": "bare"}
        code, image = await self.api("POST", "/v2/images", json_body=body)
        self.assertEqual(code, 201, image)
        run = await self.glance("image-tasks", image["id"], fails=True)
        self.assertIn("v2.12", run.err, run)
        self.assertNotIn(f"/v2/images/{image['id']}/tasks", run.paths(), run)


class ImageDataTests(GlanceCLITestCase):
    async def test_create_with_file_64mib_and_download(self) -> None:
        """
        C{image-create --file} uploads 64 MiB (chunked, 1 MiB chunks); the
        image is active with the file's size, md5 checksum and sha512
        os_hash_value; C{image-download} gets the same bytes back, the client
        checking them against os_hash_value.
        """
        path, md5, sha512 = await self.make_file("disk.raw", 64 * MiB)
        run = await self.glance(
            "image-create", "--name", "big", "--disk-format", "raw",
            "--container-format", "bare", "--file", path,
        )
        shown = show_table(run.out)
        self.assertImage(
            shown, run, name="big", status="active", size=str(64 * MiB), checksum=md5,
            os_hash_algo="sha512", os_hash_value=sha512, disk_format="raw",
            container_format="bare", owner=OWNER_PROJECT,
        )
        self.assertRegex(shown["id"], UUID_RE)
        self.assertEqual(
            [r for r in run.requests() if "/schemas/" not in r],
            ["POST /v2/images 201", f"PUT /v2/images/{shown['id']}/file 204",
             f"GET /v2/images/{shown['id']} 200"],
            run,
        )

        image = await self.image(shown["id"])
        assert image is not None
        self.assertEqual(
            (image["status"], image["size"], image["checksum"], image["os_hash_value"]),
            ("active", 64 * MiB, md5, sha512),
        )

        out = os.path.join(self.home, "downloaded.raw")
        run = await self.glance("image-download", "--file", out, shown["id"])
        self.assertEqual(await deferToThread(file_digests, out), (64 * MiB, md5, sha512))
        self.assertIn(f"/v2/images/{shown['id']}/file", run.paths("GET"), run)

    async def test_create_from_stdin(self) -> None:
        """
        C{image-create} without C{--file}, its standard input a pipe (not a
        terminal), uploads what the pipe carries, of a size the client
        cannot know beforehand.
        """
        data = pattern_bytes(10 * MiB + 12345)
        run = await self.glance(
            "image-create", "--name", "piped", "--disk-format", "raw",
            "--container-format", "bare", stdin=data, api_version="2",
        )
        shown = show_table(run.out)
        self.assertImage(shown, run, name="piped", status="active", size=str(len(data)))
        self.assertIn(f"/v2/images/{shown['id']}/file", run.paths("PUT"), run)
        image = await self.image(shown["id"])
        assert image is not None
        self.assertEqual(image["checksum"], hashlib.md5(data).hexdigest())
        self.assertEqual(image["os_hash_value"], hashlib.sha512(data).hexdigest())
        code, body = await self.api("GET", f"/v2/images/{shown['id']}/file")
        self.assertEqual((code, body), (200, data))

    async def test_lifecycle_deactivate_reactivate_protect_delete(self) -> None:
        """
        image-deactivate and image-reactivate move an active image to
        deactivated and back; a protected image refuses image-delete; once
        unprotected it is deleted, and image-show then fails.
        """
        path, md5, sha512 = await self.make_file("small.img", MiB + 5)
        created = show_table((await self.glance(
            "image-create", "--name", "cycle", "--disk-format", "raw",
            "--container-format", "bare", "--file", path,
        )).out)
        image_id = created["id"]
        self.assertEqual(created["status"], "active")

        run = await self.glance("image-deactivate", image_id)
        self.assertIn(f"/v2/images/{image_id}/actions/deactivate", run.paths("POST"), run)
        self.assertEqual((await self.show(image_id))["status"], "deactivated")

        await self.glance("image-reactivate", image_id)
        self.assertEqual((await self.show(image_id))["status"], "active")
        out = os.path.join(self.home, "cycle.img")
        await self.glance("image-download", "--file", out, image_id)
        self.assertEqual(await deferToThread(file_digests, out), (MiB + 5, md5, sha512))

        shown = show_table((await self.glance("image-update", "--protected", "True", image_id)).out)
        self.assertEqual(shown["protected"], "True")
        run = await self.glance("image-delete", image_id, fails=True)
        self.assertIn("not permitted to delete", run.err, run)
        self.assertEqual((await self.image(image_id) or {}).get("status"), "active")

        await self.glance("image-update", "--protected", "False", image_id)
        run = await self.glance("image-delete", image_id)
        self.assertIn(f"/v2/images/{image_id}", run.paths("DELETE"), run)
        run = await self.glance("image-show", image_id, fails=True)
        self.assertIn("404", run.err, run)
        self.assertIsNone(await self.image(image_id))


class MetadataTests(GlanceCLITestCase):
    async def test_create_with_properties_list_and_show(self) -> None:
        """
        image-create with core fields and --property extra properties and no
        data leaves a queued image showing them; image-list filters by
        property and visibility, sorts by key and direction, stops at
        --limit and pages with --page-size through the next links.
        """
        suite = uuid.uuid4().hex
        # First a command that caches the server's schema, so the creates
        # below parse their options from it.
        self.assertEqual(await self.names("--property-filter", f"suite={suite}"), [])

        creates = [
            ("tx-alpha", "qcow2", "private", "debian", ["--min-disk", "2", "--min-ram", "512"]),
            ("tx-beta", "raw", "public", "fedora", []),
            ("tx-gamma", "iso", "shared", "debian", []),
        ]
        ids = {}
        for name, disk_format, visibility, distro, extra in creates:
            run = await self.glance(
                "image-create", "--name", name, "--disk-format", disk_format,
                "--container-format", "bare", "--visibility", visibility,
                "--property", f"suite={suite}", "--property", f"os_distro={distro}",
                *extra,
            )
            shown = show_table(run.out)
            self.assertImage(
                shown, run, name=name, status="queued", disk_format=disk_format,
                container_format="bare", visibility=visibility, os_distro=distro,
                suite=suite, owner=OWNER_PROJECT, tags="[]", protected="False",
            )
            self.assertRegex(shown["id"], UUID_RE)
            self.assertEqual(run.paths("PUT"), [], f"no data, so no upload:{run}")
            ids[name] = shown["id"]

        shown = await self.show(ids["tx-alpha"])
        self.assertImage(
            shown, self.runs[-1], id=ids["tx-alpha"], name="tx-alpha", min_disk="2",
            min_ram="512", visibility="private", os_distro="debian", os_hidden="False",
        )
        image = await self.image(ids["tx-alpha"])
        assert image is not None
        self.assertEqual((image["suite"], image["min_ram"], image["size"]), (suite, 512, None))

        mine = ("--property-filter", f"suite={suite}")
        self.assertEqual(await self.names(*mine), ["tx-alpha", "tx-beta", "tx-gamma"])
        self.assertEqual(
            await self.names(*mine, "--sort-key", "name", "--sort-dir", "desc"),
            ["tx-gamma", "tx-beta", "tx-alpha"],
        )
        self.assertEqual(
            await self.names(*mine, "--sort-key", "disk_format", "--sort-dir", "asc"),
            ["tx-gamma", "tx-alpha", "tx-beta"],
        )
        self.assertEqual(await self.names(*mine, "--visibility", "private"), ["tx-alpha"])
        self.assertEqual(await self.names(*mine, "--visibility", "public"), ["tx-beta"])
        self.assertEqual(
            await self.names(*mine, "--property-filter", "os_distro=debian"),
            ["tx-alpha", "tx-gamma"],
        )
        self.assertEqual(await self.names(*mine, "--limit", "2"), ["tx-alpha", "tx-beta"])

        self.assertEqual(
            await self.names(*mine, "--page-size", "1"), ["tx-alpha", "tx-beta", "tx-gamma"]
        )
        pages = [r for r in self.runs[-1].requests() if r.startswith("GET /v2/images?")]
        self.assertGreaterEqual(len(pages), 3, self.runs[-1])
        self.assertTrue(all(p.endswith(" 200") for p in pages), self.runs[-1])
        self.assertIn("marker=", pages[1], self.runs[-1])

    async def test_update_properties_and_tags(self) -> None:
        """
        image-update renames, changes, adds (--property) and removes
        (--remove-property) properties with a JSON patch; image-tag-update
        adds tags and image-tag-delete removes one; image-list --tag finds
        the image by the tag it still has.
        """
        suite = uuid.uuid4().hex
        image_id = show_table((await self.glance(
            "image-create", "--name", "before", "--disk-format", "raw",
            "--container-format", "bare", "--property", f"suite={suite}",
            "--property", "keep=1", "--property", "drop=1", "--property", "change=old",
        )).out)["id"]

        run = await self.glance(
            "image-update", "--name", "after", "--property", "change=new",
            "--property", "added=yes", "--remove-property", "drop", image_id,
        )
        self.assertIn(f"/v2/images/{image_id}", run.paths("PATCH"), run)
        shown = show_table(run.out)
        self.assertImage(shown, run, name="after", change="new", added="yes", keep="1")
        self.assertNotIn("drop", shown, run)
        image = await self.image(image_id)
        assert image is not None
        self.assertEqual(
            {k: image.get(k) for k in ("name", "change", "added", "keep", "drop", "suite")},
            {"name": "after", "change": "new", "added": "yes", "keep": "1", "drop": None,
             "suite": suite},
        )

        run = await self.glance("image-tag-update", image_id, "alpha")
        self.assertIn(f"/v2/images/{image_id}/tags/alpha", run.paths("PUT"), run)
        self.assertIn("alpha", list_table(run.out)[0]["Tags"], run)
        await self.glance("image-tag-update", image_id, "beta")
        run = await self.glance("image-tag-delete", image_id, "alpha")
        self.assertIn(f"/v2/images/{image_id}/tags/alpha", run.paths("DELETE"), run)

        self.assertEqual(json.loads((await self.show(image_id))["tags"]), ["beta"])
        image = await self.image(image_id)
        assert image is not None
        self.assertEqual(image["tags"], ["beta"])
        mine = ("--property-filter", f"suite={suite}")
        self.assertEqual(await self.names(*mine, "--tag", "beta"), ["after"])
        self.assertEqual(await self.names(*mine, "--tag", "alpha"), [])


class MemberTests(GlanceCLITestCase):
    async def test_share_accept_and_revoke(self) -> None:
        """
        The owner shares an image (member-create: pending) and lists its
        members; the member project sees the image but not in its default
        list until it accepts (member-update, sent as the member: the
        client's token becomes X-Project-Id through the identity proxy);
        then the image is in its list and the owner sees the member
        accepted. member-delete takes the image away from the member.
        """
        suite = uuid.uuid4().hex
        image_id = show_table((await self.glance(
            "image-create", "--name", "to-share", "--disk-format", "raw",
            "--container-format", "bare", "--visibility", "shared",
            "--property", f"suite={suite}",
        )).out)["id"]
        mine = ("--property-filter", f"suite={suite}")
        # Not shared yet: the member cannot see it at all.
        await self.glance("image-show", image_id, token=MEMBER_TOKEN, fails=True)

        run = await self.glance("member-create", image_id, MEMBER_PROJECT)
        self.assertIn(f"/v2/images/{image_id}/members", run.paths("POST"), run)
        self.assertEqual(
            list_table(run.out),
            [{"Image ID": image_id, "Member ID": MEMBER_PROJECT, "Status": "pending"}], run,
        )
        run = await self.glance("member-list", "--image-id", image_id)
        self.assertEqual(
            list_table(run.out),
            [{"Image ID": image_id, "Member ID": MEMBER_PROJECT, "Status": "pending"}], run,
        )

        # Pending: visible to the member by id, not in its default list.
        shown = await self.show(image_id, token=MEMBER_TOKEN)
        self.assertImage(shown, self.runs[-1], id=image_id, owner=OWNER_PROJECT)
        self.assertEqual(await self.names(*mine, token=MEMBER_TOKEN), [])
        self.assertEqual(
            await self.names(*mine, "--member-status", "pending", token=MEMBER_TOKEN),
            ["to-share"],
        )

        run = await self.glance(
            "member-update", image_id, MEMBER_PROJECT, "accepted", token=MEMBER_TOKEN
        )
        self.assertIn(f"/v2/images/{image_id}/members/{MEMBER_PROJECT}", run.paths("PUT"), run)
        self.assertEqual(list_table(run.out)[0]["Status"], "accepted", run)
        self.assertEqual(await self.names(*mine, token=MEMBER_TOKEN), ["to-share"])
        run = await self.glance("member-list", "--image-id", image_id)
        self.assertEqual(
            list_table(run.out),
            [{"Image ID": image_id, "Member ID": MEMBER_PROJECT, "Status": "accepted"}], run,
        )

        await self.glance("member-delete", image_id, MEMBER_PROJECT)
        self.assertEqual(await self.names(*mine, token=MEMBER_TOKEN), [])
        await self.glance("image-show", image_id, token=MEMBER_TOKEN, fails=True)



class LocationTests(GlanceCLITestCase):
    """
    C{glance location-add} and C{location-delete} against a glance-tx with
    an HTTP store and C{show_multiple_locations} on, the data on a web
    server of the test's on loopback.
    """

    skip = _skip_reason() or ("needs this server's configuration" if EXTERNAL_URL else None)
    config_text = (
        "[DEFAULT]\nenabled_backends = file:file, web:http\n"
        "show_multiple_locations = true\n"
        "[web]\nhttp_store_allowed_networks = 127.0.0.1/32\n"
    )

    def setUp(self) -> Deferred[None]:
        from twisted.web import server, static

        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        self.data = pattern_bytes(300_000)
        for name in ("a.img", "b.img"):
            with open(os.path.join(root, name), "wb") as f:
                f.write(self.data)
        port = reactor.listenTCP(0, server.Site(static.File(root)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.web = f"http://127.0.0.1:{port.getHost().port}"
        return super().setUp()

    async def test_location_add_and_delete(self) -> None:
        """
        C{location-add} makes a queued image active with the web file's
        size, and shows its locations; a second copy is added; deleting
        one leaves the other (the web's file untouched), and the client
        gets a refusal for the last one.
        """
        created = show_table((await self.glance(
            "image-create", "--name", "web", "--disk-format", "raw", "--container-format", "bare",
        )).out)
        image_id = created["id"]
        first, second = f"{self.web}/a.img", f"{self.web}/b.img"
        run = await self.glance(
            "location-add", "--url", first,
            "--hash-algo", "sha512", "--hash-value", hashlib.sha512(self.data).hexdigest(),
            image_id,
        )
        self.assertIn(f"/v2/images/{image_id}", run.paths("PATCH"), run)
        shown = show_table(run.out)
        self.assertImage(shown, run, status="active", size=str(len(self.data)))
        self.assertEqual(
            json.loads(shown["locations"].replace("'", '"')),
            [{"url": first, "metadata": {"store": "web"}}],
            run,
        )
        await self.glance("location-add", "--url", second, image_id)
        await self.glance("location-delete", "--url", first, image_id)
        shown = await self.show(image_id)
        self.assertIn(second, shown["locations"])
        self.assertNotIn(first, shown["locations"])
        run = await self.glance("location-delete", "--url", second, image_id, fails=True)
        self.assertIn("last location", run.err, run)
        out = os.path.join(self.home, "web.img")
        await self.glance("image-download", "--file", out, image_id)
        self.assertEqual(
            await deferToThread(file_digests, out),
            (len(self.data), hashlib.md5(self.data).hexdigest(), hashlib.sha512(self.data).hexdigest()),
        )


class MetadefTests(GlanceCLITestCase):
    async def test_namespace_property_tag_and_association_commands(self) -> None:
        """
        python-glanceclient's md-* commands (built on the metadefs schemas
        it fetches) create, show, list and delete a namespace and what it
        holds, and refuse to delete it while it is protected.
        """
        name = f"OS::Cli::{uuid.uuid4().hex[:12]}"
        created = await self.glance(
            "md-namespace-create", name, "--display-name", "CLI test",
            "--visibility", "public", "--protected", "True",
        )
        self.assertEqual(show_table(created.out)["namespace"], name, created)
        await self.glance(
            "md-property-create", name, "--name", "cpu_policy", "--title", "CPU policy",
            "--type", "string",
            "--schema", json.dumps({"enum": ["shared", "dedicated"]}),
        )
        await self.glance("md-namespace-resource-type-list", name)
        await self.glance(
            "md-resource-type-associate", name, "--name", "OS::Glance::Image", "--prefix", "hw_"
        )
        await self.glance("md-tag-create-multiple", name, "--names", "fast,cheap")
        shown = await self.glance("md-namespace-show", name, "--max-column-width", "400")
        table = show_table(shown.out)
        self.assertIn("cpu_policy", table["properties"], shown)
        self.assertIn("OS::Glance::Image", table["resource_type_associations"], shown)
        listed = await self.glance("md-namespace-list")
        self.assertIn(name, [row["namespace"] for row in list_table(listed.out)], listed)
        types = await self.glance("md-resource-type-list")
        self.assertIn("OS::Glance::Image", [row["name"] for row in list_table(types.out)], types)
        tags = await self.glance("md-tag-list", name)
        self.assertEqual(sorted(row["name"] for row in list_table(tags.out)), ["cheap", "fast"])
        refused = await self.glance("md-namespace-delete", name, fails=True)
        self.assertIn("403", refused.err + refused.out, refused)
        await self.glance("md-namespace-update", name, "--protected", "False")
        await self.glance("md-namespace-delete", name)
        await self.glance("md-namespace-show", name, fails=True)
