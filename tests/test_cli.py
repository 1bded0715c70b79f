"""
The C{glance-tx} command line through its console script, as a
subprocess of the test, against a real glance-tx on a real socket (the
server runs on trial's reactor in this process, so the commands run in
worker threads and the reactor keeps serving them).

JSON output (C{--format json}) is parsed and checked against what the
server holds; errors are checked for their exit status and their one line
on stderr; the progress bar is read from a pseudo-terminal given to the
command as its stderr.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
from typing import Any

from attrs import frozen
from click.testing import CliRunner
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from glance_tx.cli import cli
from glance_tx.cli.commands import CommandFailed, _await_import
from glance_tx.cli.output import human_size, render_fields, render_table
from glance_tx.cli.progress import TransferBar, clock_text
from glance_tx.client import ImageInfo
from tests.live_server import (
    MEMBER_PROJECT,
    MEMBER_TOKEN,
    OWNER_TOKEN,
    LiveServerTestCase,
    MiB,
    pattern_bytes,
)
from tests.test_imports_live import _ImportServer
from tests.twistd_process import REPO, free_port

#: The console script pip generated beside the Python running the tests.
SCRIPT = os.path.join(os.path.dirname(sys.executable), "glance-tx")

#: How long one command may take before it is killed.
COMMAND_TIMEOUT = 90.0

#: What the bar shows beside itself while a transfer runs: so far, the
#: rate, the time left.
BAR_RE = re.compile(
    r"\d+% +[\d.]+ [KMG]?i?B/[\d.]+ [KMG]?i?B +[\d.]+ [KMG]?i?B/s +ETA \d\d:\d\d:\d\d"
)


def command() -> list[str]:
    """
    The console script when pip has installed it (C{tools/run-tests}
    does); otherwise the same C{main} run as C{python -m glance_tx.cli}
    (another work tree's install of the shared virtualenv may have
    removed the script). L{EntryPointTests} pins that both are one.
    """
    if os.access(SCRIPT, os.X_OK):
        return [SCRIPT]
    return [sys.executable, "-m", "glance_tx.cli"]


def with_default_sigint(argv: list[str]) -> list[str]:
    """
    C{argv} exec'd with SIGINT back to its default disposition.

    A process started in the background by a non-interactive shell
    (C{tools/run-tests ... &}, as CI and batch runs do) starts with SIGINT
    ignored, POSIX's rule for jobs without job control; trial's reactor
    then leaves it so, and every child inherits the ignored signal through
    C{exec}. Python honours that (it installs no C{KeyboardInterrupt}
    handler for an ignored SIGINT), so the command would never see the
    test's Ctrl-C: it uploaded to the pipe's end and exited 0, or waited
    its 60 s timeout. A shell would reset SIGINT for a foreground command;
    so does this, and C{exec} keeps the default for the command.
    """
    reset = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", reset, *argv]


def command_env(url: str, token: str | None, **extra: str) -> dict[str, str]:
    """The environment of a command: this tree importable, the service's URL and token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLANCE_TX_")}
    env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [env.get("PYTHONPATH")])])
    env["GLANCE_TX_URL"] = url
    if token is not None:
        env["GLANCE_TX_TOKEN"] = token
    env.update(extra)
    return env


@frozen
class Ran:
    """How a command ended."""

    args: tuple[str, ...]
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"glance-tx {' '.join(self.args)} exited {self.code}\n"
            f"stdout: {self.out[-2000:]}\nstderr: {self.err[-2000:]}"
        )


def _run(args: list[str], env: dict[str, str], stdin: bytes | None, pty: bool) -> Ran:
    """Run a command to its end (blocking: in a thread), its stderr on a pty if asked."""
    if not pty:
        done = subprocess.run(
            [*command(), *args], env=env, input=stdin if stdin is not None else b"",
            capture_output=True, timeout=COMMAND_TIMEOUT, check=False,
        )
        return Ran(tuple(args), done.returncode, done.stdout, done.stderr)
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(
            [*command(), *args], env={**env, "COLUMNS": "120"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
        )
    finally:
        os.close(slave)
    terminal = bytearray()
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not data:
                break
            terminal += data
    finally:
        os.close(master)
    assert process.stdout is not None
    stdout = process.stdout.read()
    process.stdout.close()
    return Ran(tuple(args), process.wait(COMMAND_TIMEOUT), stdout, bytes(terminal))


class _Failing(Resource):
    """A server that fails: 503 (JSON) for the stores, 500 (HTML) for the rest."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.path == b"/v2/info/stores":
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Retry-After", b"30")
            return b'{"error": {"code": 503, "message": "The store is away"}}'
        if request.path == b"/v2/images/garbled":
            return b"this is not JSON"
        request.setResponseCode(500)
        request.setHeader(b"Content-Type", b"text/html")
        return b"<html><body><h1>500 Internal Server Error</h1>Something broke</body></html>"


class CLITestCase(LiveServerTestCase):
    """Runs C{glance-tx} against the test's server."""

    async def glance(
        self,
        *args: str,
        token: str | None = OWNER_TOKEN,
        url: str | None = None,
        stdin: bytes | None = None,
        pty: bool = False,
        code: int = 0,
        **env: str,
    ) -> Ran:
        """Run C{glance-tx ARGS}; fail unless it exits with C{code}."""
        if url is None:
            url = await self.endpoint(token or OWNER_TOKEN)
        ran: Ran = await deferToThread(
            _run, list(args), command_env(url, token, **env), stdin, pty
        )
        self.assertEqual(ran.code, code, str(ran))
        return ran

    async def glance_json(self, *args: str, **kwargs: Any) -> Any:
        return (await self.glance(*args, "--format", "json", **kwargs)).json()

    def assertOneLine(self, ran: Ran, *fragments: str) -> None:
        """stderr is one line, no traceback, with every fragment in it."""
        lines = ran.err.strip().splitlines()
        self.assertEqual(len(lines), 1, str(ran))
        self.assertNotIn("Traceback", ran.err)
        for fragment in fragments:
            self.assertIn(fragment, lines[0], str(ran))

    def stored_file(self, image_id: str) -> str:
        """The file the filesystem store keeps C{image_id}'s data in."""
        # mktemp() is TEST_DIR/RANDOM/temp: the server's data dir is another RANDOM.
        test_dir = os.path.dirname(os.path.dirname(os.path.abspath(self.mktemp())))
        for directory, _, files in os.walk(test_dir):
            if image_id in files:
                return os.path.join(directory, image_id)
        raise AssertionError(f"no stored file for {image_id}")

    async def create(self, *args: str) -> dict[str, Any]:
        image: dict[str, Any] = await self.glance_json(
            "image-create", "--disk-format", "raw", "--container-format", "bare", *args
        )
        return image


class ImageTests(CLITestCase):
    def test_create_with_file_and_show(self) -> Deferred[None]:
        """
        C{image-create --file} creates the image and streams its data in:
        the JSON shows it active with the data's md5, sha512 and size, the
        fields, properties and tags given; C{image-show} shows the same.
        """

        async def go() -> None:
            path, md5, sha512 = await self.make_file("disk.raw", 3 * MiB + 7)
            image = await self.create(
                "--name", "cli-create", "--visibility", "private", "--min-ram", "512",
                "--protected", "--property", "os_distro=cirros", "--property", "note=a=b",
                "--tag", "one", "--tag", "two", "--file", path,
            )
            self.assertEqual(image["status"], "active")
            self.assertEqual(
                (image["checksum"], image["os_hash_value"], image["size"]),
                (md5, sha512, 3 * MiB + 7),
            )
            self.assertEqual(
                (image["name"], image["visibility"], image["min_ram"], image["protected"]),
                ("cli-create", "private", 512, True),
            )
            self.assertEqual(image["properties"], {"os_distro": "cirros", "note": "a=b"})
            self.assertEqual(image["tags"], ["one", "two"])
            self.assertRegex(image["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            stored = await self.image(image["id"])
            assert stored is not None
            self.assertEqual((stored["os_distro"], stored["protected"]), ("cirros", True))
            self.assertEqual(await self.glance_json("image-show", image["id"]), image)
            table = (await self.glance("image-show", image["id"])).out
            self.assertRegex(table, r"\| os_distro +\| cirros +\|")
            self.assertRegex(table, rf"\| checksum +\| {md5} +\|")

        return Deferred.fromCoroutine(go())

    def test_list_every_page_with_filters(self) -> Deferred[None]:
        """
        C{image-list} returns every image the filters select, across pages
        (C{--page-size 2} for five images), stops at C{--limit}, and
        filters on tags and properties; the table has a row per image.
        """

        async def go() -> None:
            ids = set()
            for n in range(5):
                tags = ["cli-even"] if n % 2 == 0 else []
                image = await self.create(
                    "--name", f"cli-list-{n}", "--property", "cli_batch=list",
                    *[arg for tag in tags for arg in ("--tag", tag)],
                )
                ids.add(image["id"])
            await self.create("--name", "cli-other", "--property", "cli_batch=other")
            listed = await self.glance_json(
                "image-list", "--property", "cli_batch=list", "--page-size", "2"
            )
            self.assertEqual({image["id"] for image in listed}, ids)
            self.assertEqual(len(listed), 5)
            even = await self.glance_json(
                "image-list", "--property", "cli_batch=list", "--tag", "cli-even",
                "--sort-key", "name", "--sort-dir", "asc",
            )
            self.assertEqual(
                [image["name"] for image in even], ["cli-list-0", "cli-list-2", "cli-list-4"]
            )
            limited = await self.glance_json(
                "image-list", "--property", "cli_batch=list", "--page-size", "2", "--limit", "3"
            )
            self.assertEqual(len(limited), 3)
            table = (await self.glance("image-list", "--property", "cli_batch=list")).out
            self.assertRegex(table, r"\| ID +\| Name +\| Status +\|")
            for image_id in ids:
                self.assertIn(image_id, table)
            self.assertNotIn("cli-other", table)

        return Deferred.fromCoroutine(go())

    def test_update(self) -> Deferred[None]:
        """
        C{image-update} sets fields and properties and removes properties
        in one patch; with nothing to change it is a usage error (2).
        """

        async def go() -> None:
            image = await self.create("--name", "before", "--property", "gone=soon")
            updated = await self.glance_json(
                "image-update", image["id"], "--name", "after", "--min-disk", "3",
                "--property", "os_type=linux", "--remove-property", "gone",
            )
            self.assertEqual((updated["name"], updated["min_disk"]), ("after", 3))
            self.assertEqual(updated["properties"], {"os_type": "linux"})
            stored = await self.image(image["id"])
            assert stored is not None
            self.assertNotIn("gone", stored)
            self.assertEqual(stored["os_type"], "linux")
            ran = await self.glance("image-update", image["id"], code=2)
            self.assertIn("nothing to change", ran.err)

        return Deferred.fromCoroutine(go())

    def test_upload_download_delete(self) -> Deferred[None]:
        """
        C{image-upload} streams a file (or stdin) into a queued image;
        C{image-download --file} writes it verified and says how (JSON),
        and to stdout when redirected; C{image-delete} deletes it, after
        which C{image-show} fails with the server's 404 in one line.
        """

        async def go() -> None:
            path, md5, sha512 = await self.make_file("up.raw", 2 * MiB + 1)
            image = await self.create("--name", "cli-up")
            self.assertEqual(image["status"], "queued")
            ran = await self.glance("image-upload", image["id"], "--file", path)
            self.assertEqual((ran.out, ran.err), ("", ""))
            stored = await self.image(image["id"])
            assert stored is not None
            self.assertEqual((stored["status"], stored["checksum"]), ("active", md5))

            copy = os.path.join(os.path.dirname(path), "copy.raw")
            result = await self.glance_json("image-download", image["id"], "--file", copy)
            self.assertEqual(
                result,
                {"image_id": image["id"], "file": copy, "size": 2 * MiB + 1,
                 "algorithm": "sha512", "hexdigest": sha512, "resumed": 0},
            )
            with open(copy, "rb") as f, open(path, "rb") as g:
                self.assertEqual(f.read(), g.read())
            ran = await self.glance("image-download", image["id"])
            self.assertEqual(hashlib.md5(ran.stdout).hexdigest(), md5)
            text = (await self.glance("image-download", image["id"], "--file", copy)).out
            self.assertEqual(text.strip(), f"{copy}: 2.0 MiB, sha512 verified")

            piped = await self.create("--name", "cli-pipe")
            data = pattern_bytes(MiB + 3)
            await self.glance("image-upload", piped["id"], stdin=data)
            shown = await self.glance_json("image-show", piped["id"])
            self.assertEqual(shown["checksum"], hashlib.md5(data).hexdigest())

            await self.glance("image-delete", image["id"], piped["id"])
            self.assertIsNone(await self.image(image["id"]))
            self.assertIsNone(await self.image(piped["id"]))
            ran = await self.glance("image-show", image["id"], code=1)
            self.assertOneLine(ran, "404", f"No image found with ID {image['id']}")
            ran = await self.glance("image-delete", image["id"], code=1)
            self.assertOneLine(ran, "404")

        return Deferred.fromCoroutine(go())

    def test_tags(self) -> Deferred[None]:
        """C{image-tag-add} and C{image-tag-remove} change the image's tags."""

        async def go() -> None:
            image = await self.create("--name", "cli-tags", "--tag", "kept")
            await self.glance("image-tag-add", image["id"], "added")
            shown = await self.glance_json("image-show", image["id"])
            self.assertEqual(shown["tags"], ["added", "kept"])
            await self.glance("image-tag-remove", image["id"], "kept")
            stored = await self.image(image["id"])
            assert stored is not None
            self.assertEqual(stored["tags"], ["added"])

        return Deferred.fromCoroutine(go())

    def test_stores(self) -> Deferred[None]:
        """C{stores} lists the server's stores, the default one marked."""

        async def go() -> None:
            stores = await self.glance_json("stores")
            self.assertEqual(
                stores, [{"id": "file", "description": None, "default": True, "read_only": False}]
            )
            self.assertRegex((await self.glance("stores")).out, r"\| file +\| +\| True +\| False +\|")

        return Deferred.fromCoroutine(go())


class MemberTests(CLITestCase):
    def test_share_accept_unshare(self) -> Deferred[None]:
        """
        C{member-create} shares an image with a project, C{member-list}
        lists it pending; the member, with its token in GLANCE_TX_TOKEN,
        accepts with C{member-update}; C{member-delete} ends the share. A
        token the identity service refuses is one line with the 401.
        """

        async def go() -> None:
            image = await self.create("--name", "cli-shared", "--visibility", "shared")
            created = await self.glance_json("member-create", image["id"], MEMBER_PROJECT)
            self.assertEqual(
                [(m["image_id"], m["member_id"], m["status"]) for m in created],
                [(image["id"], MEMBER_PROJECT, "pending")],
            )
            members = await self.glance_json("member-list", image["id"])
            self.assertEqual([m["status"] for m in members], ["pending"])
            accepted = await self.glance_json(
                "member-update", image["id"], MEMBER_PROJECT, "accepted", token=MEMBER_TOKEN
            )
            self.assertEqual(accepted[0]["status"], "accepted")
            theirs = await self.glance_json(
                "image-list", "--member-status", "accepted", token=MEMBER_TOKEN
            )
            self.assertEqual([i["id"] for i in theirs], [image["id"]])
            table = (await self.glance("member-list", image["id"])).out
            self.assertRegex(table, rf"\| {image['id']} +\| {MEMBER_PROJECT} +\| accepted +\|")
            await self.glance("member-delete", image["id"], MEMBER_PROJECT)
            self.assertEqual(await self.glance_json("member-list", image["id"]), [])

            proxy = await self.proxy()
            ran = await self.glance("image-list", url=proxy.url, token="nobody", code=1)
            self.assertOneLine(ran, "401", "unknown token")

        return Deferred.fromCoroutine(go())


class ErrorTests(CLITestCase):
    def test_connection_refused(self) -> Deferred[None]:
        """
        Nothing listening: exit 1, one line naming the address, no
        traceback; after the retries (0.5 + 1 + 2 s by default), or at once
        with C{--retries 0}.
        """

        async def go() -> None:
            port = free_port()
            started = reactor.seconds()
            ran = await self.glance("stores", url=f"http://127.0.0.1:{port}", code=1)
            self.assertOneLine(ran, f"Could not reach http://127.0.0.1:{port}", "refused")
            self.assertGreaterEqual(reactor.seconds() - started, 3.5)
            ran = await self.glance("--retries", "0", "stores", url=f"http://127.0.0.1:{port}", code=1)
            self.assertOneLine(ran, f"Could not reach http://127.0.0.1:{port}", "refused")

        return Deferred.fromCoroutine(go())

    def test_server_errors(self) -> Deferred[None]:
        """
        A 5xx is one line with the status and the server's own message,
        from a JSON error (a 503, with its Retry-After) or an HTML page
        (a 500 from a proxy or a WSGI server). An answer the client cannot
        read is one line too; with C{--debug}, the traceback.
        """

        async def go() -> None:
            port = reactor.listenTCP(0, Site(_Failing()), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            url = f"http://127.0.0.1:{port.getHost().port}"
            ran = await self.glance("stores", url=url, code=1)
            self.assertOneLine(ran, "503 Service Unavailable", "The store is away")
            ran = await self.glance("image-list", url=url, code=1)
            self.assertOneLine(ran, "500 Internal Server Error", "Something broke")
            self.assertNotIn("<", ran.err)
            ran = await self.glance("image-show", "garbled", url=url, code=1)
            self.assertOneLine(ran, "unexpected JSONDecodeError", "--debug")
            ran = await self.glance("--debug", "image-show", "garbled", url=url, code=1)
            self.assertIn("Traceback", ran.err)

        return Deferred.fromCoroutine(go())

    def test_corrupt_download(self) -> Deferred[None]:
        """
        Data changed in the store behind the server's back: exit 1, one
        line with the hash expected and found, and no file left.
        """

        async def go() -> None:
            path, _, sha512 = await self.make_file("rot.raw", MiB)
            image = await self.create("--name", "cli-rot", "--file", path)
            stored = self.stored_file(image["id"])
            with open(stored, "r+b") as f:
                f.seek(MiB // 2)
                f.write(b"rot")
            copy = path + ".copy"
            ran = await self.glance("image-download", image["id"], "--file", copy, code=1)
            self.assertOneLine(ran, f"Image {image['id']}: data sha512 is", f"expected {sha512}")
            self.assertFalse(os.path.exists(copy))

        return Deferred.fromCoroutine(go())

    def test_interrupted(self) -> Deferred[None]:
        """
        Ctrl-C (SIGINT) during an upload from a pipe that is still open:
        exit 130, one line, and the image is left queued.
        """

        async def go() -> None:
            image = await self.create("--name", "cli-interrupted")
            env = command_env(await self.endpoint(), OWNER_TOKEN)
            process = subprocess.Popen(
                with_default_sigint([*command(), "image-upload", image["id"]]), env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            self.addCleanup(lambda: process.poll() is None and process.kill())
            assert process.stdin is not None
            # Less than a pipe holds, so this never blocks the reactor.
            process.stdin.write(pattern_bytes(16 * 1024))
            process.stdin.flush()
            for _ in range(300):  # until the server is taking the upload
                stored = await self.image(image["id"])
                if stored is not None and stored["status"] == "saving":
                    break
                await deferLater(reactor, 0.1)
            else:
                self.fail(f"the upload never started: {stored}")
            process.send_signal(signal.SIGINT)
            # Its stdin stays open a while: closing it at once could end the
            # upload (EOF) before a loaded process saw the signal. The read
            # of the pipe then in flight returns only at EOF, so the pipe is
            # closed after that while, and the cancelled upload ends.
            try:
                await deferToThread(process.wait, timeout=3)
            except subprocess.TimeoutExpired:
                pass
            _, err = await deferToThread(process.communicate, timeout=COMMAND_TIMEOUT)
            self.assertEqual((process.returncode, err.decode().strip()), (130, "Interrupted"))
            # The server sees the connection drop on its own time (a loaded
            # one later than the command's exit), and then unwinds the upload.
            for _ in range(100):
                stored = await self.image(image["id"])
                assert stored is not None
                if stored["status"] != "saving":
                    break
                await deferLater(reactor, 0.1)
            self.assertEqual(stored["status"], "queued")

        return Deferred.fromCoroutine(go())

    def test_usage_errors(self) -> Deferred[None]:
        """A missing argument, a bad choice, a bad URL: exit 2 and no request."""

        async def go() -> None:
            ran = await self.glance("image-show", code=2)
            self.assertIn("Missing argument 'IMAGE_ID'", ran.err)
            ran = await self.glance("stores", "--format", "xml", code=2)
            self.assertIn("'xml' is not one of", ran.err)
            ran = await self.glance("stores", url="127.0.0.1:9292", code=2)
            self.assertIn("not an http:// or https:// URL", ran.err)
            ran = await self.glance("no-such-command", code=2)
            self.assertIn("No such command", ran.err)
            ran = await self.glance("image-download", "x", "--file", "/", code=2)
            self.assertIn("is a directory", ran.err)

        return Deferred.fromCoroutine(go())

    def test_help(self) -> Deferred[None]:
        """C{--help} lists every command, and exits 0."""

        async def go() -> None:
            ran = await self.glance("--help")
            for name in cli.list_commands(None):  # type: ignore[arg-type]
                self.assertIn(name, ran.out)
            self.assertIn("GLANCE_TX_URL", ran.out)

        return Deferred.fromCoroutine(go())


class V1Tests(CLITestCase):
    def test_v1_commands(self) -> Deferred[None]:
        """
        C{--os-image-api-version 1} (or C{OS_IMAGE_API_VERSION=1}): create
        with a file, show, list, update, download verified and delete speak
        v1's paths; what v1 lacks is one line and exit 1.
        """

        async def go() -> None:
            path, md5, _ = await self.make_file("v1.raw", MiB + 3)
            v1 = ("--os-image-api-version", "1")
            image = await self.glance_json(
                *v1, "image-create", "--name", "cli-v1", "--disk-format", "raw",
                "--container-format", "bare", "--property", "cli_v1=yes", "--property", "gone=1",
                "--file", path,
            )
            self.assertEqual(
                (image["status"], image["checksum"], image["properties"]),
                ("active", md5, {"cli_v1": "yes", "gone": "1"}),
            )
            self.assertEqual(
                await self.glance_json("image-show", image["id"], OS_IMAGE_API_VERSION="1"), image
            )
            listed = await self.glance_json(*v1, "image-list", "--property", "cli_v1=yes")
            self.assertEqual([i["id"] for i in listed], [image["id"]])
            updated = await self.glance_json(
                *v1, "image-update", image["id"], "--name", "cli-v1-after", "--remove-property", "gone",
            )
            self.assertEqual((updated["name"], updated["properties"]), ("cli-v1-after", {"cli_v1": "yes"}))
            copy = path + ".copy"
            result = await self.glance_json(*v1, "image-download", image["id"], "--file", copy)
            self.assertEqual((result["algorithm"], result["hexdigest"]), ("md5", md5))
            ran = await self.glance(*v1, "image-tag-add", image["id"], "t", code=1)
            self.assertOneLine(ran, "v1 has no tags")
            await self.glance(*v1, "image-delete", image["id"])
            self.assertIsNone(await self.image(image["id"]))
            ran = await self.glance("--os-image-api-version", "3", "stores", code=2)
            self.assertIn("'3' is not one of", ran.err)

        return Deferred.fromCoroutine(go())


class TooLargeTests(CLITestCase):
    config_text = "[DEFAULT]\nimage_size_cap = 4096\n"

    def test_upload_refused(self) -> Deferred[None]:
        """
        An upload past C{image_size_cap}: exit 1 and one line with the
        server's 413, naming the image it created.
        """

        async def go() -> None:
            path, _, _ = await self.make_file("big.raw", 64 * 1024)
            ran = await self.glance(
                "image-create", "--name", "cli-big", "--disk-format", "raw",
                "--container-format", "bare", "--file", path, code=1,
            )
            self.assertOneLine(ran, "was created, but its upload failed", "413")
            image_id = re.search(r"image (\S+) was created", ran.err)
            assert image_id is not None
            stored = await self.image(image_id.group(1))
            assert stored is not None
            self.assertEqual(stored["status"], "queued")

        return Deferred.fromCoroutine(go())


class _ImportCLICase(_ImportServer, CLITestCase):
    """A server with two stores and web-download (as L{tests.test_imports_live})."""

    def setUp(self) -> Deferred[None]:
        self.config_text = self.import_config()
        return super().setUp()


class ImportTests(_ImportCLICase):
    """Interoperable import, web-download allowed to reach loopback."""

    def test_stage_then_glance_direct(self) -> None:
        """
        C{image-stage} leaves the image uploading; C{image-import --wait}
        (glance-direct, into the second store) prints it active with the
        file's hashes; C{image-import --file} stages and imports at once.
        """

        async def go() -> None:
            self.assertEqual(
                sorted(await self.glance_json("import-methods")),
                ["copy-image", "glance-direct", "web-download"],
            )
            path, md5, sha512 = await self.make_file("staged.raw", 2 * MiB + 3)
            image = await self.create("--name", "cli-stage")
            ran = await self.glance("image-stage", image["id"], "--file", path)
            self.assertEqual((ran.out, ran.err), ("", ""))
            staged = await self.image(image["id"])
            assert staged is not None
            self.assertEqual(staged["status"], "uploading")
            done = await self.glance_json("image-import", image["id"], "--store", "second", "--wait")
            self.assertEqual(
                (done["status"], done["checksum"], done["os_hash_value"], done["stores"]),
                ("active", md5, sha512, ["second"]),
            )

            other = await self.create("--name", "cli-stage-file")
            done = await self.glance_json("image-import", other["id"], "--file", path, "--wait")
            self.assertEqual((done["status"], done["checksum"]), ("active", md5))

        return Deferred.fromCoroutine(go())

    def test_web_download(self) -> None:
        """C{--method web-download --uri} from an allowed loopback server,
        into every store: active with the served bytes everywhere."""

        async def go() -> None:
            body = pattern_bytes(MiB + 9, seed=3)
            url = self.serve(body)
            image = await self.create("--name", "cli-web")
            done = await self.glance_json(
                "image-import", image["id"], "--method", "web-download", "--uri", url,
                "--all-stores", "--wait",
            )
            self.assertEqual(
                (done["status"], done["checksum"], sorted(done["stores"])),
                ("active", hashlib.md5(body).hexdigest(), ["file", "second"]),
            )

        return Deferred.fromCoroutine(go())

    def test_copy_image(self) -> None:
        """C{--method copy-image --store second --wait} (the owner is admin
        here): the active image ends in both stores, its hash unchanged."""

        async def go() -> None:
            path, md5, _ = await self.make_file("copied.raw", MiB + 1)
            image = await self.create("--name", "cli-copy", "--file", path)
            self.assertEqual(image["stores"], ["file"])
            done = await self.glance_json(
                "image-import", image["id"], "--method", "copy-image", "--store", "second", "--wait",
            )
            self.assertEqual(
                (done["status"], done["checksum"], done["stores"]), ("active", md5, ["file", "second"]),
            )
            self.assertNotIn("os_glance_importing_to_stores", {
                k for k, v in done["properties"].items() if v
            })

        return Deferred.fromCoroutine(go())

    def test_refused_import(self) -> None:
        """
        An import the server refuses at once (glance-direct, nothing
        staged) and usage errors: exit 1 with the server's 409 in one
        line; exit 2 for --uri missing.
        """

        async def go() -> None:
            image = await self.create("--name", "cli-refused")
            ran = await self.glance("image-import", image["id"], code=1)
            self.assertOneLine(ran, "409", "staged")
            ran = await self.glance("image-import", image["id"], "--method", "web-download", code=2)
            self.assertIn("--uri", ran.err)

        return Deferred.fromCoroutine(go())


class GuardedImportTests(_ImportCLICase):
    """The same server, with web-download kept off loopback."""

    allow_loopback = False

    def test_web_download_refused(self) -> None:
        """
        The import is accepted, then fails in the background (the address
        guard): C{--wait} exits 1 with one line naming the failed store
        and the status the image fell back to.
        """

        async def go() -> None:
            url = self.serve(b"never read")
            image = await self.create("--name", "cli-guarded")
            ran = await self.glance(
                "image-import", image["id"], "--method", "web-download", "--uri", url,
                "--wait", code=1,
            )
            self.assertOneLine(ran, f"import of image {image['id']} failed", "file", "queued")

        return Deferred.fromCoroutine(go())


class ProgressTests(CLITestCase):
    def test_bar_on_a_terminal(self) -> Deferred[None]:
        """
        With stderr on a pseudo-terminal, an upload and a download draw a
        bar with the bytes so far, the rate and the time left, ending on
        100% and the average rate; stdout still has the JSON alone.
        """

        async def go() -> None:
            path, md5, _ = await self.make_file("bar.raw", 8 * MiB)
            image = await self.create("--name", "cli-bar")
            ran = await self.glance("image-upload", image["id"], "--file", path, pty=True)
            self.assertRegex(ran.err, BAR_RE)
            self.assertIn("Uploading", ran.err)
            self.assertRegex(ran.err, r"100% +8\.0 MiB +[\d.]+ [KMG]?i?B/s +in \d\d:\d\d:\d\d")
            copy = path + ".copy"
            ran = await self.glance(
                "image-download", image["id"], "--file", copy, "--format", "json", pty=True
            )
            self.assertRegex(ran.err, BAR_RE)
            self.assertIn("Downloading", ran.err)
            self.assertEqual(ran.json()["size"], 8 * MiB)
            ran = await self.glance(
                "image-download", image["id"], "--file", copy, "--no-progress", pty=True
            )
            self.assertNotIn("Downloading", ran.err)

        return Deferred.fromCoroutine(go())

    def test_no_bar_off_a_terminal(self) -> Deferred[None]:
        """With stderr a pipe, a transfer writes nothing to it."""

        async def go() -> None:
            path, _, _ = await self.make_file("quiet.raw", 4 * MiB)
            image = await self.create("--name", "cli-quiet")
            ran = await self.glance("image-upload", image["id"], "--file", path)
            self.assertEqual(ran.err, "")
            ran = await self.glance("image-download", image["id"], "--file", path + ".copy")
            self.assertEqual(ran.err, "")

        return Deferred.fromCoroutine(go())


class EntryPointTests(SynchronousTestCase):
    def test_declared(self) -> None:
        """setup.py declares the console script on L{glance_tx.cli.main}."""
        with open(os.path.join(REPO, "setup.py")) as f:
            self.assertIn('"glance-tx = glance_tx.cli:main"', f.read())

    def test_installed(self) -> None:
        """Where pip installed it, the script runs that same C{main}."""
        if not os.access(SCRIPT, os.X_OK):
            message = f"no console script at {SCRIPT}: pip install -e ."
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                # In CI a missing script is a broken install, not a reason to skip.
                self.fail(message)
            self.skipTest(message)
        points = importlib.metadata.entry_points(group="console_scripts", name="glance-tx")
        self.assertEqual([p.value for p in points], ["glance_tx.cli:main"])

    def test_every_command_has_help(self) -> None:
        """C{COMMAND --help} works for every command, and says what it does."""
        runner = CliRunner()
        names = cli.list_commands(None)  # type: ignore[arg-type]
        self.assertEqual(set(names), {
            "image-list", "image-show", "image-create", "image-update", "image-upload",
            "image-download", "image-delete", "image-tag-add", "image-tag-remove",
            "member-list", "member-create", "member-update", "member-delete", "stores",
            "image-stage", "image-import", "import-methods",
        })
        for name in names:
            result = runner.invoke(cli, [name, "--help"], prog_name="glance-tx")
            self.assertEqual(result.exit_code, 0, result.output)
            self.assertIn(f"Usage: glance-tx {name}", result.output)
            command = cli.get_command(None, name)  # type: ignore[arg-type]
            assert command is not None and command.help
            self.assertIn(command.help.split("\n")[0].strip(), result.output)


class SigintTests(SynchronousTestCase):
    def test_default_sigint_restored(self) -> None:
        """
        Under a shell that ignores SIGINT (a background job's lot), a
        child keeps it ignored and Python raises no C{KeyboardInterrupt};
        L{with_default_sigint} gives the command Python's handler back.
        """
        probe = [
            sys.executable, "-c",
            "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)",
        ]
        ignoring = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]
        ran = [
            subprocess.run(argv, capture_output=True, check=True, timeout=30).stdout.strip()
            for argv in ([*ignoring, *probe], [*ignoring, *with_default_sigint(probe)])
        ]
        self.assertEqual(ran, [b"False", b"True"])


class OutputTests(SynchronousTestCase):
    def test_bar_text(self) -> None:
        """The bar's text: so far of all, the rate, the time left; then the average."""
        now = [100.0]
        bar = TransferBar("Up", sys.stderr, clock=lambda: now[0])
        bar.done, bar.total = 0, 10 * MiB
        self.assertEqual(bar.info(), "0 B/10.0 MiB")
        now[0] = 102.0
        bar.done = 4 * MiB
        self.assertEqual(bar.info(), "4.0 MiB/10.0 MiB  2.0 MiB/s  ETA 00:00:03")
        bar.total = None
        self.assertEqual(bar.info(), "4.0 MiB  2.0 MiB/s")
        bar.finished = True
        self.assertEqual(bar.info(), "4.0 MiB  2.0 MiB/s  in 00:00:02")

    def test_sizes_and_clock(self) -> None:
        self.assertEqual(
            [human_size(n) for n in (0, 1023, 1024, 3 * MiB // 2, 5 << 40)],
            ["0 B", "1023 B", "1.0 KiB", "1.5 MiB", "5.0 TiB"],
        )
        self.assertEqual(clock_text(3723.4), "01:02:03")

    def test_tables(self) -> None:
        """Columns as wide as their widest cell; properties spread into rows."""
        self.assertEqual(
            render_table(["A", "Bee"], [["xyz", None], ["", ["p", "q"]]]),
            "+-----+------+\n| A   | Bee  |\n+-----+------+\n"
            "| xyz |      |\n|     | p, q |\n+-----+------+",
        )
        self.assertIn(
            "| k        | v     |",
            render_fields({"id": "1", "properties": {"k": "v"}, "name": "n"}),
        )


class _Importing:
    """A client whose image shows each of C{states} in turn, then the last."""

    def __init__(self, *states: tuple[str, dict[str, str]]) -> None:
        self.states = list(states)
        self.shown = 0

    def show(self, image_id: str) -> ImageInfo:
        status, properties = self.states[min(self.shown, len(self.states) - 1)]
        self.shown += 1
        return ImageInfo.from_document({"id": image_id, "status": status, **properties})


class AwaitImportTests(SynchronousTestCase):
    """C{image-import --wait}'s loop, on a fake client and clock."""

    def wait(self, client: _Importing, timeout: float | None = 60.0) -> ImageInfo:
        self.now = 0.0

        def sleep(seconds: float) -> None:
            self.now += seconds

        return _await_import(client, "i", timeout, clock=lambda: self.now, sleep=sleep)  # type: ignore[arg-type]

    def test_until_active(self) -> None:
        """Polls while stores remain to import, returns the active image."""
        client = _Importing(
            ("importing", {"os_glance_importing_to_stores": "a,b"}),
            ("importing", {"os_glance_importing_to_stores": "b"}),
            ("active", {"os_glance_importing_to_stores": "", "os_glance_failed_import": ""}),
        )
        self.assertEqual(self.wait(client).status, "active")
        self.assertEqual(client.shown, 3)

    def test_failed_stores_named(self) -> None:
        """A failed store: CommandFailed naming it and the status left in."""
        client = _Importing(("queued", {"os_glance_failed_import": "a,b"}))
        with self.assertRaises(CommandFailed) as raised:
            self.wait(client)
        self.assertEqual(
            raised.exception.message, "import of image i failed for store(s) a, b (the image is queued)"
        )

    def test_gives_up_after_timeout(self) -> None:
        """An import that never ends: CommandFailed once the time is up."""
        client = _Importing(("importing", {"os_glance_importing_to_stores": "a"}))
        with self.assertRaises(CommandFailed) as raised:
            self.wait(client, timeout=2.0)
        self.assertEqual(
            raised.exception.message, "image i is still importing after 2 seconds, importing to a"
        )
        self.assertEqual(client.shown, 5)
