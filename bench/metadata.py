#!/usr/bin/env python3
"""
Cheap metadata requests of glance-tx, beside a bare twisted.web resource
answering the same bytes, in one run.

One run of this script:

1. starts glance-tx (``twistd -n glance``, SQLite and the filesystem store
   in a fresh temporary directory, ``recover_on_start = false``) on a free
   loopback port and waits for ``GET /healthcheck``;
2. creates ``--images`` images through the API (``POST /v2/images``, each
   with a few properties and tags), as a client would;
3. fetches each measured path once from glance-tx -- one image
   ``/v2/images/{id}``, the page ``/v2/images?limit=25``, ``/versions``,
   ``/healthcheck`` -- and keeps the exact response bodies;
4. starts the reference: ``twistd -n web --class metadata.ReferenceResource``,
   a leaf resource that answers each of those paths with the body glance-tx
   sent for it (same bytes, same Content-Type), under the same twistd, the
   same reactor and the same per-request log line (twisted.web's access log);
5. for each path, runs ``wrk`` (Debian package: ``apt-get install wrk``) for
   ``--seconds`` against the reference and then against glance-tx, back to
   back, with ``--connections`` connections on one wrk thread, and reads
   requests/s, the p99 latency and the CPU the server spent per request
   (utime + stime from ``/proc``);
6. with ``--with-glance``, also starts OpenStack Glance 33 as
   ``bench/transfer.py --with-glance`` does (uwsgi, no Keystone, SQLite,
   from ``--glance-venv``), creates the same images through its API, and
   runs wrk on each path against it right after glance-tx;
7. prints the table, then the ratios to the reference (and to Glance) last,
   and writes its section of ``RESULTS.md`` (``--no-write`` to only print).

Each pair of figures comes from one run on one machine, a few seconds apart,
so the ratios hold where the absolute rates do not. wrk runs on the same
cores as the server: on a 2-core machine it takes a share of them, the same
share for both servers. On a machine shared with other work, compare the
ratios, and the CPU per request (less disturbed than the rate).

    .venv/bin/python bench/metadata.py
    .venv/bin/python bench/metadata.py --seconds 5 --no-write

With ``--in-process`` it measures the same requests without sockets, threads
or wrk (see L{in_process}): the Python each request costs, a figure that a
shared machine barely disturbs.

    .venv/bin/python bench/metadata.py --in-process
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# This directory is on sys.path when the script runs: reuse the other
# benchmarks' process handling and record keeping.
import transfer
from transfer import BenchError, Server
from twisted.web.resource import Resource

#: The environment variable naming the directory of the reference's bodies
#: (twistd web's --class takes no arguments).
BODIES_ENV = "GLANCE_TX_BENCH_BODIES"

#: name -> (path, fraction of the reference's rate the issue asks for).
#: The image path is filled in once an image exists.
PATHS: dict[str, tuple[str, float]] = {
    "GET /v2/images/{id}": ("/v2/images/{id}", 0.50),
    "GET /v2/images?limit=25": ("/v2/images?limit=25", 0.25),
    "GET /versions": ("/versions", 0.70),
    "GET /healthcheck": ("/healthcheck", 0.70),
}


# -- the reference ----------------------------------------------------------


class ReferenceResource(Resource):
    """
    The bare twisted.web resource: one leaf that answers every path it
    knows with the bytes glance-tx sent for it (and its Content-Type), and
    404 for anything else. twistd web's C{--class} makes it with no
    arguments, so it finds its bodies through L{BODIES_ENV}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        directory = Path(os.environ[BODIES_ENV])
        index = json.loads((directory / "index.json").read_text())
        self.bodies = {
            entry["path"].encode("ascii"): (
                entry["status"],
                entry["content_type"].encode("ascii"),
                (directory / entry["file"]).read_bytes(),
            )
            for entry in index
        }

    def render_GET(self, request: Any) -> bytes:
        found = self.bodies.get(request.uri)
        if found is None:
            request.setResponseCode(404)
            return b""
        status, content_type, body = found
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type)
        return body


@dataclass
class Captured:
    path: str
    status: int
    content_type: str
    body: bytes


def capture(server: Server, path: str) -> Captured:
    """
    One GET of C{path}: its status (a 200, or the 300 of C{/versions}),
    Content-Type and body.
    """
    connection = http.client.HTTPConnection(urlsplit(server.base_url).netloc, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status not in (200, 300):
        raise BenchError(f"GET {path} answered {response.status}: {body[:300]!r}")
    return Captured(path, response.status, response.headers["Content-Type"], body)


def write_bodies(directory: Path, captured: list[Captured]) -> None:
    directory.mkdir()
    index = []
    for n, c in enumerate(captured):
        name = f"body-{n}"
        (directory / name).write_bytes(c.body)
        index.append(
            {"path": c.path, "status": c.status, "content_type": c.content_type, "file": name}
        )
    (directory / "index.json").write_text(json.dumps(index))


# -- the servers ------------------------------------------------------------


def server_env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in paths] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


def start_glance_tx(workdir: Path, twistd: str, stack: ExitStack, workers: int = 1) -> Server:
    data = workdir / "glance-tx"
    data.mkdir()
    config = data / "glance-tx.conf"
    config.write_text("[DEFAULT]\nrecover_on_start = false\n")
    port = transfer.free_port()
    return transfer.start_server(
        "glance-tx",
        [twistd, "-n", "--pidfile=", "glance",
         "--port", f"tcp:{port}:interface=127.0.0.1",
         "--data-dir", str(data), "--config", str(config), "--workers", str(workers)],
        f"http://127.0.0.1:{port}", "/healthcheck", data, stack,
        env=server_env(transfer.REPO),
    )


def start_reference(
    workdir: Path, twistd: str, bodies: Path, stack: ExitStack
) -> Server:
    directory = workdir / "reference"
    directory.mkdir()
    port = transfer.free_port()
    env = server_env(Path(__file__).resolve().parent)
    env[BODIES_ENV] = str(bodies)
    return transfer.start_server(
        "twisted.web",
        [twistd, "-n", "--pidfile=", "web",
         "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--class", "metadata.ReferenceResource"],
        f"http://127.0.0.1:{port}", "/healthcheck", directory, stack, env=env,
    )


def image_document(n: int) -> dict[str, Any]:
    """The create request of image C{n}: a few properties and tags."""
    return {
        "name": f"bench-{n:05d}",
        "disk_format": "qcow2",
        "container_format": "bare",
        "visibility": "public",
        "min_disk": n % 20,
        "os_distro": ("debian", "ubuntu", "fedora")[n % 3],
        "os_version": str(10 + n % 4),
        "hw_disk_bus": "virtio",
        "tags": [f"tag-{n % 7}", "bench"],
    }


def create_images(server: Server, count: int, public: bool = True) -> list[str]:
    """
    C{count} images created through the API; their ids. Not C{public}: in
    Glance's default visibility (Glance without Keystone may not publicize).
    """
    ids = []
    for n in range(count):
        document = image_document(n)
        if not public:
            del document["visibility"]
        created = transfer.json_request("POST", server.base_url + "/v2/images", document)
        assert isinstance(created, dict)
        ids.append(created["id"])
    return ids


# -- wrk -----------------------------------------------------------------------


@dataclass
class Figures:
    rate: float  # requests per second
    p99_ms: float
    cpu_ms: float  # server CPU per request


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> tuple[int, float, float]:
    """wrk --latency's total requests, requests/s and p99 in milliseconds."""
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    rate = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.M)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    if total is None or rate is None or p99 is None:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    return int(total.group(1)), float(rate.group(1)), float(p99.group(1)) * _UNIT_MS[p99.group(2)]


def run_wrk(
    server: Server, path: str, seconds: int, connections: int, closes: bool = False
) -> Figures:
    """
    wrk against C{server}'s C{path}. C{closes}: the server closes every
    connection after its answer (uwsgi's http-socket, as bench/transfer.py
    runs OpenStack Glance), which wrk counts as read errors and reconnects.
    """
    pids = server.pids
    cpu_before = transfer.cpu_seconds(pids)
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         server.base_url + path],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    cpu = transfer.cpu_seconds(pids) - cpu_before
    server.check_alive()
    errors = re.search(r"Socket errors: connect (\d+), read \d+, write (\d+), timeout (\d+)",
                       done.stdout)
    refused = errors is not None and (
        not closes or any(int(n) for n in errors.groups())
    )
    if done.returncode != 0 or "Non-2xx" in done.stdout or refused:
        raise BenchError(f"wrk failed or saw errors on {server.name} {path}:\n"
                         f"{done.stdout}\n{done.stderr[:2000]}")
    total, rate, p99 = parse_wrk(done.stdout)
    return Figures(rate, p99, cpu * 1000 / total)


# -- the report --------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def commit() -> str:
    """The checkout's commit (and whether it has changes), for the record."""
    try:
        head = subprocess.run(
            ["git", "-C", str(transfer.REPO), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head or "unknown"


def report(
    args: argparse.Namespace,
    sizes: dict[str, int],
    results: dict[str, tuple[Figures, Figures]],
    hashes: str,
    load: str,
    glance: dict[str, Figures] | None = None,
) -> str:
    lines = [
        "## Metadata requests: `bench/metadata.py`",
        "",
        textwrap.fill(
            f"glance-tx (SQLite, {args.images} images created through the API first) "
            "beside a bare twisted.web leaf resource answering the same bytes "
            "under the same twistd (`twistd web --class`), one path after the "
            f"other, reference first. wrk: 1 thread, {args.connections} connections, "
            f"{args.seconds} s per path and server. CPU: the server's utime + stime "
            "per request.",
            width=78,
        ),
        "",
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; "
        f"`nproc` {os.cpu_count()}, {cpu_model()}; {hashes}; load average {load}; "
        f"glance-tx commit {commit()}",
        f"- Command: `.venv/bin/python bench/metadata.py --images {args.images} "
        f"--seconds {args.seconds} --connections {args.connections}"
        + (f" --only {args.only}" if args.only else "")
        + (f" --workers {args.workers}" if args.workers != 1 else "")
        + (" --with-glance" if glance else "") + "`",
        "",
        "| request | body bytes | twisted.web req/s | p99 ms | CPU ms/req "
        "| glance-tx req/s | p99 ms | CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (ref, tx) in results.items():
        lines.append(
            f"| {name} | {sizes[name]} | {ref.rate:.0f} | {ref.p99_ms:.1f} | {ref.cpu_ms:.2f} "
            f"| {tx.rate:.0f} | {tx.p99_ms:.1f} | {tx.cpu_ms:.2f} |"
        )
    lines += [
        "",
        "Ratios, glance-tx to twisted.web in this run (rate: higher is better; "
        "CPU: how many times the reference's CPU per request):",
        "",
        "| request | rate | target | CPU per request |",
        "|---|---:|---:|---:|",
    ]
    for name, (ref, tx) in results.items():
        target = PATHS[name][1]
        lines.append(
            f"| {name} | {tx.rate / ref.rate:.0%} | {target:.0%} "
            f"| {tx.cpu_ms / ref.cpu_ms:.1f}x |"
        )
    if glance:
        lines += [
            "",
            textwrap.fill(
                "OpenStack Glance 33 in the same run (uwsgi, 2 processes, no "
                "Keystone, SQLite, the same images created through its API, shared "
                "rather than public: Glance without Keystone may not publicize; uwsgi's "
                "http-socket closes each connection after its answer), each "
                "path right after glance-tx's; glance-tx's rate as a multiple of "
                "Glance's (the issue asks 10x for the image GET), and Glance's CPU "
                "per request over glance-tx's:",
                width=78,
            ),
            "",
            "| request | Glance req/s | p99 ms | CPU ms/req | glance-tx rate | CPU |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, theirs in glance.items():
            tx = results[name][1]
            lines.append(
                f"| {name} | {theirs.rate:.0f} | {theirs.p99_ms:.1f} | {theirs.cpu_ms:.2f} "
                f"| {tx.rate / theirs.rate:.1f}x | {theirs.cpu_ms / tx.cpu_ms:.1f}x |"
            )
    return "\n".join(lines)


# -- in process ----------------------------------------------------------------


def in_process(args: argparse.Namespace, work: Path, hashes: str) -> str:
    """
    The same requests, without sockets, threads or wrk: each is written
    as raw HTTP/1.1 bytes into a connection of the real Site over a
    L{StringTransport}, the glance-tx Site running its blocking work inline
    (L{SynchronousRunner}) on SQLite in C{work}; both sites log each
    request to a file, as twistd does. The figure is the thread CPU time
    per request, the best of three rounds: the Python each request costs,
    without the kernel's share, the thread pool's hand-off or the noise of
    a shared machine. Returns the RESULTS.md section.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.defer import Deferred
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.server import Site

    sys.path.insert(0, str(transfer.REPO))
    from glance_tx.api.app import build_site
    from glance_tx.registry.sql import open_sql_registry
    from glance_tx.store.backends import StoreMap
    from glance_tx.store.filesystem import FilesystemStore
    from glance_tx.threads import SynchronousRunner

    log = (work / "requests.log").open("w")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log)], redirectStandardIO=False)
    runner = SynchronousRunner()
    opened: list[Any] = []
    Deferred.fromCoroutine(
        open_sql_registry(f"sqlite:///{work / 'glance.sqlite'}", runner)
    ).addBoth(opened.append)
    [registry] = opened
    (work / "images").mkdir()
    store = FilesystemStore(str(work / "images"), runner)
    glance = build_site(
        registry=registry, stores=StoreMap({"file": store}, "file"), runner=runner,
        image_size_cap=1 << 40, default_project="admin", reactor=MemoryReactorClock(),
    )
    address = IPv4Address("TCP", "127.0.0.1", 9292)

    def connect(site: Any) -> tuple[Any, StringTransport]:
        protocol = site.buildProtocol(address)
        transport = StringTransport(
            hostAddress=address, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(site: Any, head: str, body: bytes = b"") -> bytes:
        """One HTTP/1.0 request (the answer is not chunked): the answer's bytes."""
        protocol, transport = connect(site)
        protocol.dataReceived(head.encode("ascii") + b"\r\n" + body)
        return transport.value()

    ids = []
    for n in range(args.images):
        body = json.dumps(image_document(n)).encode()
        answer = exchange(glance, (
            "POST /v2/images HTTP/1.0\r\nHost: 127.0.0.1:9292\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ), body)
        ids.append(json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"])

    def cpu_us(site: Any, path: str, count: int = 2000) -> float:
        protocol, transport = connect(site)
        raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:9292\r\n\r\n".encode()
        best = float("inf")
        for _ in range(3):
            began = time.thread_time()
            for _ in range(count):
                protocol.dataReceived(raw)
                transport.clear()
            best = min(best, (time.thread_time() - began) / count * 1e6)
        return best

    captured = []
    for name, (template, _) in PATHS.items():
        if args.only is not None and args.only not in name:
            continue
        path = template.format(id=ids[len(ids) // 2])
        answer = exchange(glance, f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:9292\r\n")
        head, body = answer.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ")[1])
        content_type = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:")
        )
        captured.append((name, Captured(path, status, content_type, body)))
    write_bodies(work / "bodies", [c for _, c in captured])
    os.environ[BODIES_ENV] = str(work / "bodies")
    reference = Site(ReferenceResource(), reactor=MemoryReactorClock())
    rows = []
    for name, c in captured:
        ours, theirs = cpu_us(glance, c.path), cpu_us(reference, c.path)
        print(f"  {name}: glance-tx {ours:.0f} us, twisted.web {theirs:.0f} us", flush=True)
        rows.append(
            f"| {name} | {c.status} | {len(c.body)} | {theirs:.0f} | {ours:.0f} "
            f"| {ours / theirs:.1f}x |"
        )
    log.close()
    return "\n".join([
        "## Metadata requests in process: `bench/metadata.py --in-process`",
        "",
        textwrap.fill(
            "Raw HTTP/1.1 requests written into one connection of each Site in "
            "one process (no sockets, no wrk): glance-tx with its registry's work "
            f"inline on SQLite ({args.images} images created through the API), and "
            "the bare twisted.web resource answering the same bytes; both log each "
            "request to a file. Thread CPU per request, best of three rounds of "
            "2,000: the Python a request costs, without the kernel's share or the "
            "thread pool's hand-off (about 25 to 85 us per registry call on this "
            "kind of machine), and nearly free of a shared machine's noise.",
            width=78,
        ),
        "",
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; "
        f"`nproc` {os.cpu_count()}, {cpu_model()}; {hashes}; glance-tx commit {commit()}",
        f"- Command: `.venv/bin/python bench/metadata.py --in-process --images {args.images}"
        + (f" --only {args.only}" if args.only else "") + "`",
        "",
        "| request | status | body bytes | twisted.web CPU us | glance-tx CPU us | ratio |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ])


# -- main ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--images", type=int, default=100,
                        help="images to create before measuring [default: 100]")
    parser.add_argument("--seconds", type=int, default=10,
                        help="wrk duration per path and server [default: 10]")
    parser.add_argument("--connections", type=int, default=16,
                        help="wrk connections [default: 16]")
    parser.add_argument("--only", default=None, metavar="SUBSTRING",
                        help="measure only the requests whose name contains this")
    parser.add_argument("--in-process", action="store_true",
                        help="instead of wrk over sockets: raw requests into each Site "
                             "in this process, the registry's work inline; thread CPU "
                             "per request (no sockets, no thread pool, little noise)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, logs) and print it")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures only; leave bench/RESULTS.md alone")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--workers", type=int, default=1,
                        help="glance-tx's --workers (processes on one port) [default: 1]")
    parser.add_argument("--with-glance", action="store_true",
                        help="also measure OpenStack Glance 33 (uwsgi, noauth, SQLite; "
                             "see bench/transfer.py) in the same run")
    parser.add_argument("--glance-venv", type=Path, default=Path("/work/glance-peer-venv"),
                        help="virtualenv with OpenStack Glance and uwsgi "
                             "[default: /work/glance-peer-venv]")
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")),
                        help="twistd to run both servers with [default: next to this Python]")
    args = parser.parse_args(argv)
    if args.with_glance and not (args.glance_venv / "bin" / "uwsgi").exists():
        parser.error(f"no uwsgi in {args.glance_venv}; pass --glance-venv")
    if args.images < 25:
        parser.error("--images must be at least 25 (a full list page)")
    if not Path(args.twistd).exists() and shutil.which(args.twistd) is None:
        parser.error(f"no twistd at {args.twistd}; pass --twistd")
    if shutil.which("wrk") is None and not args.in_process:
        parser.error("wrk is not installed (apt-get install wrk)")
    return args


@contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="glance-tx-bench-metadata-", dir=args.tmpdir))
    try:
        yield path
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM unwinds through the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hashes = transfer.hash_speeds()
    print(hashes, flush=True)
    if args.in_process:
        with workdir(args) as work:
            section = in_process(args, work, hashes)
        transfer.publish_section("metadata.py --in-process", section, not args.no_write)
        return 0
    load_before = os.getloadavg()[0]
    results: dict[str, tuple[Figures, Figures]] = {}
    glance_results: dict[str, Figures] = {}
    sizes: dict[str, int] = {}
    try:
        with workdir(args) as work, ExitStack() as stack:
            glance_tx = start_glance_tx(work, args.twistd, stack, args.workers)
            print(f"glance-tx {glance_tx.base_url} (pid {glance_tx.popen.pid}): "
                  f"creating {args.images} images", flush=True)
            ids = create_images(glance_tx, args.images)
            paths = {
                name: path.format(id=ids[len(ids) // 2])
                for name, (path, _) in PATHS.items()
                if args.only is None or args.only in name
            }
            captured = [capture(glance_tx, path) for path in paths.values()]
            for name, c in zip(paths, captured, strict=True):
                sizes[name] = len(c.body)
            if "/healthcheck" not in paths.values():
                # The reference answers it too: it is how its start is awaited.
                captured.append(capture(glance_tx, "/healthcheck"))
            write_bodies(work / "bodies", captured)
            reference = start_reference(work, args.twistd, work / "bodies", stack)
            print(f"twisted.web {reference.base_url} (pid {reference.popen.pid})", flush=True)
            peer = None
            peer_paths: dict[str, str] = {}
            if args.with_glance:
                peer = transfer.start_openstack_glance(
                    work, 1 << 30, args.glance_venv, stack
                )
                print(f"OpenStack Glance {peer.base_url} (pid {peer.popen.pid}): "
                      f"creating {args.images} images", flush=True)
                peer_ids = create_images(peer, args.images, public=False)
                peer_paths = {
                    name: template.format(id=peer_ids[len(peer_ids) // 2])
                    for name, (template, _) in PATHS.items()
                }
            for name, path in paths.items():
                # A short warm-up of each, then the measured runs back to back.
                for server in (reference, glance_tx):
                    run_wrk(server, path, 1, args.connections)
                ref = run_wrk(reference, path, args.seconds, args.connections)
                tx = run_wrk(glance_tx, path, args.seconds, args.connections)
                results[name] = (ref, tx)
                print(f"  {name}: twisted.web {ref.rate:.0f}/s p99 {ref.p99_ms:.1f} ms "
                      f"{ref.cpu_ms:.2f} CPU ms; glance-tx {tx.rate:.0f}/s "
                      f"p99 {tx.p99_ms:.1f} ms {tx.cpu_ms:.2f} CPU ms "
                      f"({tx.rate / ref.rate:.0%})", flush=True)
                if peer is not None:
                    run_wrk(peer, peer_paths[name], 1, args.connections, closes=True)
                    theirs = run_wrk(
                        peer, peer_paths[name], args.seconds, args.connections, closes=True
                    )
                    glance_results[name] = theirs
                    print(f"  {name}: OpenStack Glance {theirs.rate:.0f}/s "
                          f"p99 {theirs.p99_ms:.1f} ms {theirs.cpu_ms:.2f} CPU ms "
                          f"(glance-tx {tx.rate / theirs.rate:.1f}x)", flush=True)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    load_after = os.getloadavg()[0]
    load = f"{load_before:.2f} before, {load_after:.2f} after"
    if max(load_before, load_after) > (os.cpu_count() or 1):
        load += " (more than the cores: the machine was shared; trust the ratios, not the rates)"
    transfer.publish_section(
        "metadata.py",
        report(args, sizes, results, hashes, load, glance_results),
        not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
