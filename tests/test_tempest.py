"""
OpenStack's own Tempest (C{tempest.api.image}, Tempest 47.0.0 from PyPI, in
its own virtualenv C{.venv-tempest}, pinned by C{constraints-tempest.txt})
against a glance-tx with C{auth_strategy = keystone} behind the real
Keystone that C{tools/run-tests} starts (L{tests.keystone_server}).

Tempest runs once per test run, as a subprocess, while glance-tx serves it
on trial's reactor; the tests below read that one run's results (see
L{tempest_run}). Tempest makes its own projects and users through the test
Keystone's admin (dynamic credentials), finds glance-tx in Keystone's
catalog (an C{image} endpoint registered for the run) and reads a
C{tempest.conf} written here whose feature flags say what glance-tx offers:
the glance-direct, web-download and copy-image imports, several stores (two
filesystem stores and an HTTP store), locations, format enforcement. Every
Tempest test it skips, and every one left out here, is listed with its
reason in C{doc/tempest.rst}, which L{TempestTests.test_skips_documented}
holds to the run.

Without C{.venv-tempest} or Keystone the tests skip, except under
C{CI=true}, where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from typing import Any

from attrs import frozen
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from twisted.web.static import File

from tests.disk_images import DiskImages
from tests.keystone_server import KeystoneServer, keystone_server
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.swift_cluster import in_ci

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_ENV = "GLANCE_TX_TEMPEST_VENV"
#: Which Tempest tests run (a regular expression on the test id); narrower
#: only while working on one of them.
TESTS_ENV = "GLANCE_TX_TEMPEST_TESTS"
DOC = os.path.join(ROOT, "doc", "tempest.rst")

#: How many Tempest tests pass, at least (see
#: L{TempestTests.test_passes_at_least}); raise it with each test that
#: comes to pass.
PASSED_AT_LEAST = 81

#: Tempest's test-run concurrency. The test Keystone keeps its records in
#: SQLite, which answers "database is locked" (a 500) when two Tempest
#: workers create their projects and users at once.
CONCURRENCY = 1


@frozen
class TempestRun:
    """
    One Tempest run's outcomes, test id -> status, reason, details. A
    class-level result (C{setUpClass (CLASS)}: a class skipped as a whole,
    or whose set-up failed) is the outcome of each of its tests, so the
    counts compare with a run that reports each test (Glance 33's 100).
    """

    results: dict[str, dict[str, str]]
    seconds: float
    #: Every image API test this Tempest has, left out or not.
    every: tuple[str, ...]

    @property
    def excluded(self) -> int:
        return len(self.every) - len([i for i in self.results if not _CLASS_RESULT.match(i)])

    def ids(self, *statuses: str) -> list[str]:
        return sorted(i for i, r in self.results.items() if r["status"] in statuses)

    def summary(self) -> str:
        counts = Counter(r["status"] for r in self.results.values())
        failed = len(self.ids(*FAILED))
        return (
            f"tempest: {counts['success']} passed, {failed} failed, {counts['skip']} skipped"
            f" in {self.seconds:.0f} s ({self.excluded} tests left out:"
            " not offered; see doc/tempest.rst)"
        )


#: Statuses that fail the run (subunit's names).
FAILED = ("fail", "uxsuccess", "missing")

_CLASS_RESULT = re.compile(r"^(?:setUpClass|tearDownClass) \((?P<cls>[\w.]+)\)$")


def outcomes(listed: list[str], results: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Each listed test's outcome (see L{TempestRun}), and class-level failures."""
    by_class: dict[str, dict[str, str]] = {}
    for test_id, result in results.items():
        match = _CLASS_RESULT.match(test_id)
        if match:
            by_class.setdefault(match["cls"], result)
    found: dict[str, dict[str, str]] = {}
    for test_id in listed:
        cls = test_id.split("[", 1)[0].rsplit(".", 1)[0]
        found[test_id] = results.get(test_id) or by_class.get(cls) or {
            "status": "missing", "reason": "", "details": "Tempest listed it but gave no result",
        }
    for test_id, result in results.items():
        if test_id not in found and result["status"] in FAILED:
            found[test_id] = result
    return found


def tempest_venv(case: TestCase) -> str:
    venv = os.environ.get(VENV_ENV) or os.path.join(ROOT, ".venv-tempest")
    if not os.access(os.path.join(venv, "bin", "tempest"), os.X_OK):
        problem = f"no Tempest in {venv} (tools/run-tests installs it)"
        if in_ci():
            case.fail(f"Tempest cannot run under CI: {problem}")
        raise SkipTest(f"Tempest not run: {problem}")
    return venv


def glance_tx_config(policy_file: str, keystone: KeystoneServer) -> str:
    """glance-tx's file: Keystone, three stores, every import method."""
    return (
        "[DEFAULT]\n"
        "auth_strategy = keystone\n"
        # Tempest expects an import to all stores to list them in the
        # image's "stores" sorted by id; Glance and glance-tx list them in
        # enabled_backends order, so that order is the sorted one.
        "enabled_backends = fast:file, file:file, web:http\n"
        "default_backend = file\n"
        "enabled_import_methods = glance-direct, web-download, copy-image\n"
        "show_multiple_locations = true\n"
        "show_image_direct_url = true\n"
        # Tempest's metadefs tests read the first resource type listed.
        "load_metadefs = true\n"
        # Tempest uploads made-up bytes as images of every format (see
        # tempest_conf); unsafe images are still refused.
        "[image_format]\n"
        "require_image_format_match = false\n"
        "[file]\n"
        "store_description = the default filesystem store\n"
        "[fast]\n"
        "store_description = a second filesystem store\n"
        "[web]\n"
        "store_description = image data on web servers (read-only)\n"
        # The source Tempest's web-download and location tests read is on
        # this host (the address guard refuses loopback by default).
        "http_store_allowed_networks = 127.0.0.1/32\n"
        "[oslo_policy]\n"
        f"policy_file = {policy_file}\n"
        + keystone.authtoken_section()
    )


#: The operator policy of the run: Glance's own default for
#: set_image_location (glance-tx's is admin-only; see glance_tx.policy),
#: which Tempest's location tests, run as a project member, assume.
POLICY = 'set_image_location: "role:admin or (role:member and project_id:%(project_id)s)"\n'


def tempest_conf(keystone: KeystoneServer, source: str) -> str:
    """What glance-tx offers, as Tempest's feature flags; the test Keystone."""
    return f"""[DEFAULT]
log_file = tempest.log
use_stderr = false
debug = true

[auth]
use_dynamic_credentials = true
admin_username = admin
admin_password = {keystone.password}
admin_project_name = admin
admin_domain_name = Default
create_isolated_networks = false

[identity]
uri_v3 = {keystone.url}/v3
auth_version = v3
region = RegionOne

[identity-feature-enabled]
api_v2 = false

[service_available]
glance = true
nova = false
cinder = false
neutron = false
swift = false
horizon = false

[enforce_scope]
glance = true

[validation]
run_validation = false

[image]
region = RegionOne
http_image = {source}/cirros.raw
http_qcow2_image = {source}/cirros.qcow2
build_timeout = 60
build_interval = 1
hashing_algorithm = sha512

[image-feature-enabled]
import_image = true
os_glance_reserved = true
manage_locations = true
http_store_enabled = true
# glance-tx enforces formats by default; this deployment does not (its
# [image_format] require_image_format_match = false), so that Tempest's
# ListUserImagesTest, which uploads made-up bytes of every format, runs.
image_format_enforcement = false
do_secure_hash = true
image_conversion = false
store_weight_enabled = false
"""


async def _register_endpoint(treq: HTTPClient, keystone: KeystoneServer, url: str) -> Any:
    """Put glance-tx in Keystone's catalog; return a coroutine function undoing it."""
    v3 = keystone.url + "/v3"
    response = await treq.post(
        v3 + "/auth/tokens",
        data=keystone.login_body("admin"),
        headers=Headers({"Content-Type": ["application/json"]}),
    )
    assert response.code == 201, response.code
    await response.content()
    headers = Headers({
        "X-Auth-Token": response.headers.getRawHeaders("X-Subject-Token", []),
        "Content-Type": ["application/json"],
    })

    async def post(path: str, body: Any) -> Any:
        answer = await treq.post(v3 + path, data=json.dumps(body).encode(), headers=headers)
        document = await answer.json()
        assert answer.code == 201, (answer.code, document)
        return document

    service = (await post("/services", {"service": {"type": "image", "name": "glance"}}))["service"]
    await post(
        "/endpoints",
        {"endpoint": {"service_id": service["id"], "interface": "public", "url": url,
                      "region_id": "RegionOne"}},
    )

    async def unregister() -> None:
        # Deleting the service deletes its endpoints.
        answer = await treq.delete(f"{v3}/services/{service['id']}", headers=headers)
        await answer.content()

    return unregister


def documented(section: str) -> dict[str, str]:
    """
    doc/tempest.rst's list under the heading C{section}: Tempest test id
    (or a class or module of them) -> why.
    """
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    start = text.index(f"\n{section}\n")
    end = text.find("\n\n\n", start)
    body = text[start:end if end != -1 else None]
    return dict(re.findall(r"^``(tempest\.api\.image\.[\w.]+)``\n\s+(.+)$", body, re.MULTILINE))


#: The headings of doc/tempest.rst's two lists.
LEFT_OUT = "Left out of the run"
SKIPPED = "Skipped by Tempest"


def covers(name: str, test_id: str) -> bool:
    """Whether the documented C{name} is C{test_id} or a class or module holding it."""
    match = _CLASS_RESULT.match(test_id)
    bare = match["cls"] if match else test_id.split("[", 1)[0]
    return bare == name or bare.startswith(name + ".")


async def _run_tempest(case: TestCase) -> TempestRun:
    keystone = keystone_server(case)
    venv = tempest_venv(case)
    work = os.path.abspath(case.mktemp())
    os.makedirs(work)

    # The images web-download and the location tests read.
    images = DiskImages(os.path.join(work, "source"))
    images.create("cirros.qcow2", "qcow2", size=1 << 20)
    images.write("cirros.raw", bytes(1 << 16))
    source = reactor.listenTCP(0, Site(File(images.directory)), interface="127.0.0.1")  # type: ignore[arg-type]
    case.addCleanup(source.stopListening)
    source_url = f"http://127.0.0.1:{source.getHost().port}"  # type: ignore[attr-defined]

    policy_file = os.path.join(work, "policy.yaml")
    with open(policy_file, "w") as f:
        f.write(POLICY)
    config = live_config(case, glance_tx_config(policy_file, keystone))
    service = await start_glance_tx(config, case.addCleanup, "tempest")
    glance_url = f"http://127.0.0.1:{listening_port(service)}"

    treq = settled_client(case)
    unregister = await _register_endpoint(treq, keystone, glance_url)
    case.addCleanup(lambda: Deferred.fromCoroutine(unregister()))

    # tempest init records its workspace in ~/.tempest: HOME is the run's.
    env = {"HOME": work, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    tempest = os.path.join(venv, "bin", "tempest")

    async def run(*args: str, where: str) -> tuple[bytes, bytes, int]:
        out, err, code = await getProcessOutputAndValue(
            tempest, args, env=env, path=where, reactor=reactor
        )
        return out, err, code

    out, err, code = await run("init", "run", where=work)
    assert code == 0, f"tempest init: {code}\n{out.decode()}\n{err.decode()}"
    run_dir = os.path.join(work, "run")
    with open(os.path.join(run_dir, "etc", "tempest.conf"), "w") as f:
        f.write(tempest_conf(keystone, source_url))
    left_out = [f"^{re.escape(name)}[.[]" for name in documented(LEFT_OUT)]
    exclude_file = os.path.join(work, "exclude.txt")
    with open(exclude_file, "w") as f:
        f.writelines(p + "\n" for p in left_out)
    selection = (
        "--regex", os.environ.get(TESTS_ENV) or r"^tempest\.api\.image\.",
        "--exclude-list", exclude_file,
    )
    every, _, _ = await run(
        "run", "--list-tests", "--regex", r"^tempest\.api\.image\.", where=run_dir
    )
    out, err, code = await run("run", "--list-tests", *selection, where=run_dir)
    assert code == 0, f"tempest run --list-tests: {code}\n{err.decode()}"
    listed = [line for line in out.decode().split() if line.startswith("tempest.")]

    started = time.monotonic()
    out, err, code = await run(
        "run", *selection, "--concurrency", str(CONCURRENCY), "--subunit", where=run_dir
    )
    seconds = time.monotonic() - started
    subunit = os.path.join(work, "results.subunit")
    with open(subunit, "wb") as stream:
        stream.write(out)
    parsed, perr, pcode = await getProcessOutputAndValue(
        os.path.join(venv, "bin", "python"),
        [os.path.join(ROOT, "tests", "tempest_results.py"), subunit],
        env=env, path=work, reactor=reactor,
    )
    assert pcode == 0, f"reading Tempest's results: {perr.decode()}"
    results = json.loads(parsed)
    assert results, f"Tempest ran no test (exit {code}):\n{err.decode()[-4000:]}"
    every_test = tuple(line for line in every.decode().split() if line.startswith("tempest."))
    run_ = TempestRun(outcomes(listed, results), seconds, every_test)
    print("\n" + run_.summary(), file=sys.stderr)
    return run_


_RUN: TempestRun | None = None


async def tempest_run(case: TestCase) -> TempestRun:
    """This test run's Tempest results: run it for the first test that asks."""
    global _RUN
    if _RUN is None:
        _RUN = await _run_tempest(case)
    return _RUN


class TempestTests(TestCase):
    #: Tempest takes one to two minutes on two busy cores.
    timeout = 900

    async def test_no_failures(self) -> None:
        """Every Tempest image test that ran passed."""
        run = await tempest_run(self)
        failed = run.ids(*FAILED)
        self.assertEqual(
            failed, [],
            run.summary() + "\n\n" + "\n\n".join(
                f"{i}:\n{run.results[i]['details']}" for i in failed
            ),
        )

    async def test_passes_at_least(self) -> None:
        """
        At least L{PASSED_AT_LEAST} pass: what passed when this test was
        last raised (a ratchet), to compare with OpenStack Glance 33's 50
        passed, 0 failed, 50 skipped.
        """
        run = await tempest_run(self)
        self.assertGreaterEqual(len(run.ids("success")), PASSED_AT_LEAST, run.summary())

    async def test_skips_documented(self) -> None:
        """
        Every test Tempest skipped is in doc/tempest.rst's list of skips,
        with why; and that list names nothing that did not skip.
        """
        run = await tempest_run(self)
        skips = documented(SKIPPED)
        skipped = run.ids("skip")
        undocumented = [i for i in skipped if not any(covers(d, i) for d in skips)]
        self.assertEqual(
            undocumented, [],
            "\n".join(f"{i}: {run.results[i]['reason']}" for i in undocumented),
        )
        stale = [d for d in skips if not any(covers(d, i) for i in skipped)]
        self.assertEqual(stale, [], "documented as skipped but did not skip")

    async def test_left_out_exist(self) -> None:
        """
        What the docs leave out of the run names Tempest tests that exist,
        and nothing else is missing from it: none of it has gone stale.
        """
        run = await tempest_run(self)
        self.assertEqual(run.excluded, len(documented(LEFT_OUT)))
        stale = [f"^{re.escape(name)}[.[]" for name in documented(LEFT_OUT)]
        stale = [p for p in stale if not any(re.search(p, test_id) for test_id in run.every)]
        self.assertEqual(stale, [])


class OutcomeTests(SynchronousTestCase):
    """How Tempest's results become the counts, without Tempest."""

    def test_class_results_expand(self) -> None:
        """
        A class skipped (or failed) as a whole counts once per test of it;
        a listed test with no result is missing (a failure); a class-level
        failure no listed test stands for is kept.
        """
        listed = ["tempest.a.T.test_one[id-1]", "tempest.a.T.test_two[id-2]",
                  "tempest.a.U.test_three[id-3]", "tempest.a.V.test_four[id-4]"]
        skip = {"status": "skip", "reason": "no Nova", "details": ""}
        ok = {"status": "success", "reason": "", "details": ""}
        down = {"status": "fail", "reason": "", "details": "boom"}
        found = outcomes(listed, {
            "setUpClass (tempest.a.T)": skip,
            "tempest.a.U.test_three[id-3]": ok,
            "tearDownClass (tempest.a.W)": down,
        })
        self.assertEqual(
            {i: r["status"] for i, r in found.items()},
            {"tempest.a.T.test_one[id-1]": "skip", "tempest.a.T.test_two[id-2]": "skip",
             "tempest.a.U.test_three[id-3]": "success", "tempest.a.V.test_four[id-4]": "missing",
             "tearDownClass (tempest.a.W)": "fail"},
        )
        run = TempestRun(found, 1.0, (*listed, "tempest.a.X.test_left_out[id-5]"))
        self.assertEqual(run.excluded, 1)
        self.assertTrue(run.summary().startswith("tempest: 1 passed, 2 failed, 2 skipped"))

    def test_documented_lists(self) -> None:
        """doc/tempest.rst's two lists parse, apart, and name Tempest ids."""
        left_out, skipped = documented(LEFT_OUT), documented(SKIPPED)
        self.assertTrue(skipped)
        self.assertFalse(set(left_out) & set(skipped))
        self.assertTrue(all(reason.strip() for reason in (*left_out.values(), *skipped.values())))
        self.assertTrue(covers("tempest.api.image.v2.a.T", "setUpClass (tempest.api.image.v2.a.T)"))
        self.assertTrue(covers("tempest.api.image.v2.a.T", "tempest.api.image.v2.a.T.test_x[id-1]"))
        self.assertFalse(covers("tempest.api.image.v2.a.T.test_x", "tempest.api.image.v2.a.T.test_xy[id-1]"))
