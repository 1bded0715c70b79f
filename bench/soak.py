#!/usr/bin/env python3
"""
Mixed load against one glance-tx for minutes, watching whether its memory,
open file descriptors and threads stay flat.

One run of this script:

1. starts glance-tx (``twistd -n glance``, SQLite and the filesystem store
   in a fresh temporary directory, otherwise its defaults) on a free
   loopback port, as ``bench/metadata.py`` does, and creates ``--images``
   images and one ``--size`` image with data to download;
2. for ``--minutes``, all at once:

   - ``wrk`` (Debian package) GETs ``/v2/images/{id}`` and
     ``/v2/images?limit=25`` (one wrk each, ``--connections`` connections);
   - ``--uploaders`` threads each create an image, upload ``--size`` bytes
     to it, download it whole and delete it, over and over;
   - ``--downloaders`` threads each download the stored image whole;
   - one thread hangs up: it creates an image, sends part of its data and
     closes the socket, then starts a download and closes the socket after
     its first MiB, and deletes the image it left half-uploaded;

3. samples the server's resident memory (``VmRSS``), threads (``Threads``,
   both from ``/proc/PID/status``) and open descriptors (``/proc/PID/fd``)
   every second;
4. prints each curve's start and end (the median of its first and of its
   last minute, or of a quarter of the run if that is shorter) and their
   ratio against the target, flat within 10%, with the count of each kind
   of request, and writes its section of ``RESULTS.md`` (``--no-write`` to
   only print).

    .venv/bin/python bench/soak.py                 # 10 minutes
    .venv/bin/python bench/soak.py --minutes 1 --no-write
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# This directory is on sys.path when the script runs: reuse the other
# benchmarks' process handling and record keeping.
import metadata
import transfer
from transfer import BenchError, MiB, Server

#: How far the end of a curve may be from its start (either way).
TARGET = 0.10


# -- the clients -----------------------------------------------------------------


@dataclass
class Tally:
    """What the load threads did, and the first unexpected answers they saw."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    #: Each wrk's rate and p99 over the run.
    wrk: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def error(self, what: str) -> None:
        with self.lock:
            self.counts["unexpected answers"] += 1
            if len(self.errors) < 20:
                self.errors.append(what)


class Client:
    """One load thread's HTTP/1.1 connection to glance-tx (http.client)."""

    def __init__(self, server: Server, tally: Tally) -> None:
        self.netloc = urlsplit(server.base_url).netloc
        self.tally = tally

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.netloc, timeout=120)

    def request(
        self, method: str, path: str, expect: int, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes | None:
        """One request on a fresh connection; its body, or None (counted) if unexpected."""
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        except OSError as e:
            self.tally.error(f"{method} {path}: {e}")
            return None
        finally:
            connection.close()
        if response.status != expect:
            self.tally.error(f"{method} {path}: {response.status} {data[:200]!r}")
            return None
        return data

    def create(self, name: str) -> str | None:
        created = self.request(
            "POST", "/v2/images", 201,
            body=(b'{"name": "%s", "disk_format": "raw", "container_format": "bare",'
                  b' "visibility": "public"}' % name.encode()),
            headers={"Content-Type": "application/json"},
        )
        if created is None:
            return None
        return str(json.loads(created)["id"])

    def upload(self, image_id: str, data: bytes) -> bool:
        done = self.request(
            "PUT", f"/v2/images/{image_id}/file", 204, body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return done is not None

    def download(self, image_id: str, size: int) -> bool:
        connection = self.connection()
        try:
            connection.request("GET", f"/v2/images/{image_id}/file")
            response = connection.getresponse()
            got = 0
            while chunk := response.read(256 * 1024):
                got += len(chunk)
        except OSError as e:
            self.tally.error(f"GET /v2/images/{image_id}/file: {e}")
            return False
        finally:
            connection.close()
        if response.status != 200 or got != size:
            self.tally.error(f"GET /v2/images/{image_id}/file: {response.status}, {got} bytes")
            return False
        return True

    def delete(self, image_id: str) -> None:
        if self.request("DELETE", f"/v2/images/{image_id}", 204) is not None:
            self.tally.count("deletes")

    def hang_up_uploading(self, image_id: str, data: bytes) -> None:
        """Announce all of C{data}, send a quarter of it, close the socket."""
        with socket.create_connection(self._address(), timeout=60) as s:
            s.sendall(
                f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: {self.netloc}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
            )
            s.sendall(data[: len(data) // 4])
        self.tally.count("uploads hung up")

    def hang_up_downloading(self, image_id: str) -> None:
        """Start a download, read its first MiB, close the socket."""
        with socket.create_connection(self._address(), timeout=60) as s:
            s.sendall(
                f"GET /v2/images/{image_id}/file HTTP/1.1\r\nHost: {self.netloc}\r\n\r\n".encode()
            )
            got = 0
            while got < MiB and (chunk := s.recv(256 * 1024)):
                got += len(chunk)
        self.tally.count("downloads hung up")

    def _address(self) -> tuple[str, int]:
        host, port = self.netloc.rsplit(":", 1)
        return host, int(port)


def uploader(client: Client, data: bytes, stop: threading.Event, n: int) -> None:
    """Create, upload, download whole, delete; again."""
    round = 0
    while not stop.is_set():
        round += 1
        image_id = client.create(f"soak-up-{n}-{round}")
        if image_id is None:
            time.sleep(1)
            continue
        if client.upload(image_id, data):
            client.tally.count("uploads")
            if client.download(image_id, len(data)):
                client.tally.count("downloads")
        client.delete(image_id)


def downloader(client: Client, image_id: str, size: int, stop: threading.Event) -> None:
    while not stop.is_set():
        if client.download(image_id, size):
            client.tally.count("downloads")
        else:
            time.sleep(1)


def hanger(client: Client, image_id: str, data: bytes, stop: threading.Event) -> None:
    """Clients that go away: mid-upload, then mid-download."""
    round = 0
    while not stop.is_set():
        round += 1
        half = client.create(f"soak-hangup-{round}")
        try:
            if half is not None:
                client.hang_up_uploading(half, data)
            client.hang_up_downloading(image_id)
        except OSError as e:
            client.tally.error(f"hanging up: {e}")
        # Give the server a moment to see the hang-up before the delete.
        stop.wait(0.5)
        if half is not None:
            client.delete(half)


# -- the curves ------------------------------------------------------------------


@dataclass
class Curves:
    seconds: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    #: (RSS MiB, fds, threads) of the idle server, before and after the load.
    idle: list[tuple[float, int, int]] = field(default_factory=list)


def idle(pid: int, curves: Curves) -> None:
    """What the server holds with no request in flight."""
    time.sleep(3)
    curves.idle.append((
        transfer.status_kib([pid], "VmRSS") / 1024,
        len(os.listdir(f"/proc/{pid}/fd")),
        transfer.status_kib([pid], "Threads"),
    ))


def sample(pid: int, curves: Curves, began: float) -> None:
    curves.seconds.append(time.monotonic() - began)
    curves.rss_kib.append(transfer.status_kib([pid], "VmRSS"))
    curves.threads.append(transfer.status_kib([pid], "Threads"))
    curves.fds.append(len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class Ends:
    name: str
    unit: str
    start: float
    end: float
    low: float
    high: float

    @property
    def ratio(self) -> float:
        return self.end / self.start if self.start else float("inf")

    @property
    def flat(self) -> bool:
        return abs(self.ratio - 1) <= TARGET


def ends(curves: Curves, window: float) -> list[Ends]:
    """Each curve's median over its first and its last C{window} seconds."""
    last = curves.seconds[-1]
    first = [i for i, s in enumerate(curves.seconds) if s <= window]
    final = [i for i, s in enumerate(curves.seconds) if s >= last - window]
    found = []
    for name, unit, values in (
        ("RSS", "MiB", [v / 1024 for v in curves.rss_kib]),
        ("open fds", "", [float(v) for v in curves.fds]),
        ("threads", "", [float(v) for v in curves.threads]),
    ):
        found.append(Ends(
            name, unit,
            statistics.median(values[i] for i in first),
            statistics.median(values[i] for i in final),
            min(values), max(values),
        ))
    return found


# -- the run ---------------------------------------------------------------------


def soak(args: argparse.Namespace, server: Server, tally: Tally) -> Curves:
    """The load and the sampling, for C{args.minutes}; the curves."""
    ids = metadata.create_images(server, args.images)
    data = os.urandom(args.size)
    client = Client(server, tally)
    stored = client.create("soak-stored")
    if stored is None or not client.upload(stored, data):
        raise BenchError(f"could not store the image to download: {tally.errors}")
    seconds = round(args.minutes * 60)
    wrks = [
        (path, subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "--latency",
             server.base_url + path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
        for path in (f"/v2/images/{ids[len(ids) // 2]}", "/v2/images?limit=25")
    ]
    stop = threading.Event()
    threads = [
        threading.Thread(target=uploader, args=(Client(server, tally), data, stop, n))
        for n in range(args.uploaders)
    ] + [
        threading.Thread(target=downloader, args=(Client(server, tally), stored, len(data), stop))
        for _ in range(args.downloaders)
    ] + [threading.Thread(target=hanger, args=(Client(server, tally), stored, data, stop))]
    curves = Curves()
    pid = server.popen.pid
    idle(pid, curves)
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        next_sample = began
        while time.monotonic() - began < seconds:
            server.check_alive()
            sample(pid, curves, began)
            next_sample += 1.0
            time.sleep(max(0.0, next_sample - time.monotonic()))
            if len(curves.seconds) % 60 == 0:
                print(f"  {curves.seconds[-1]:.0f} s: RSS {curves.rss_kib[-1] / 1024:.0f} MiB, "
                      f"{curves.fds[-1]} fds, {curves.threads[-1]} threads; "
                      f"{dict(tally.counts)}", flush=True)
        sample(pid, curves, began)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        for path, wrk in wrks:
            try:
                output, _ = wrk.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                wrk.kill()
                output, _ = wrk.communicate()
            try:
                requests, rate, p99 = metadata.parse_wrk(output)
            except BenchError as e:
                tally.error(f"wrk: {e}")
                continue
            tally.counts["metadata GETs (wrk)"] += requests
            tally.wrk.append(f"`GET {path}`: {rate:.0f}/s, p99 {p99:.0f} ms")
            if "Non-2xx" in output or "Socket errors" in output:
                tally.error(f"wrk saw errors:\n{output}")
    server.check_alive()
    idle(pid, curves)
    logged = server.log.read_text(errors="replace")
    for level in ("error", "critical"):
        tally.counts[f"server log lines at {level}"] = logged.count(f"#{level}]")
    failures = sorted({
        re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", line.strip())
        for line in logged.splitlines() if line.lstrip().startswith("Failure:")
    })
    tally.errors += [f"server log: {line}" for line in failures[:5]]
    return curves


def report(
    args: argparse.Namespace, curves: Curves, found: list[Ends], window: float, tally: Tally,
    hashes: str, load: str,
) -> str:
    lines = [
        "## Soak: `bench/soak.py`",
        "",
        textwrap.fill(
            f"One glance-tx (`twistd -n glance`, SQLite and the filesystem store, "
            f"defaults; {args.images} images created first) under "
            f"{args.minutes:g} minute{'' if args.minutes == 1 else 's'} of mixed load, all at once: two wrk "
            f"(1 thread, {args.connections} connections each) on `GET "
            f"/v2/images/{{id}}` and `GET /v2/images?limit=25`; {args.uploaders} "
            f"threads creating, uploading ({transfer.human(args.size)}), "
            f"downloading and deleting images; {args.downloaders} threads "
            "downloading a stored image; one thread hanging up a quarter into "
            "an upload and a MiB into a download. Sampled every second from "
            "`/proc/PID`: VmRSS, open fds, Threads. Start and end: the median of "
            f"the first and of the last {window:.0f} s. The machine (2 cores) was "
            "shared with other agents' builds and tests.",
            width=78,
        ),
        "",
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; "
        f"`nproc` {os.cpu_count()}, {metadata.cpu_model()}; {hashes}; load average {load}; "
        f"glance-tx commit {metadata.commit()}",
        f"- Command: `.venv/bin/python bench/soak.py --minutes {args.minutes:g}`"
        + ("" if args.minutes == 10 else " (not the default 10)"),
        "",
        "| curve | start | end | end / start | target | min | max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in found:
        unit = f" {e.unit}" if e.unit else ""
        lines.append(
            f"| {e.name} | {e.start:.0f}{unit} | {e.end:.0f}{unit} | {e.ratio:.2f} "
            f"| 1 ± {TARGET:.2f}: {'met' if e.flat else 'NOT met'} "
            f"| {e.low:.0f} | {e.high:.0f} |"
        )
    lines += ["", "The idle server (3 s after the last request), before and after the load:", ""]
    lines += [
        f"- {when}: RSS {rss:.0f} MiB, {fds} open fds, {threads} threads"
        for when, (rss, fds, threads) in zip(("before", "after"), curves.idle, strict=True)
    ]
    lines += ["", "Requests in the run:", ""]
    lines += [f"- {what}: {n}" for what, n in sorted(tally.counts.items())]
    lines += [f"- wrk on {w}" for w in tally.wrk]
    if tally.errors:
        lines += ["", "First unexpected answers:", ""]
        lines += [f"- `{e[:300]}`" for e in tally.errors[:5]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--minutes", type=float, default=10,
                        help="how long the load runs [default: 10]")
    parser.add_argument("--images", type=int, default=100,
                        help="images to create before the load [default: 100]")
    parser.add_argument("--size", type=transfer.parse_size, default=8 * MiB,
                        help="bytes of each uploaded and downloaded image [default: 8M]")
    parser.add_argument("--connections", type=int, default=4,
                        help="connections of each wrk [default: 4]")
    parser.add_argument("--uploaders", type=int, default=2,
                        help="threads uploading (and downloading) images [default: 2]")
    parser.add_argument("--downloaders", type=int, default=2,
                        help="threads downloading the stored image [default: 2]")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (config, server log) and print it")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures only; leave bench/RESULTS.md alone")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")),
                        help="twistd to run glance-tx with [default: next to this Python]")
    args = parser.parse_args(argv)
    if args.images < 25:
        parser.error("--images must be at least 25 (a full list page)")
    if args.minutes * 60 < 20:
        parser.error("--minutes must give at least 20 seconds")
    if not Path(args.twistd).exists() and shutil.which(args.twistd) is None:
        parser.error(f"no twistd at {args.twistd}; pass --twistd")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM unwinds through the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hashes = transfer.hash_speeds()
    print(hashes, flush=True)
    load_before = os.getloadavg()[0]
    tally = Tally()
    try:
        with ExitStack() as stack:
            work = Path(tempfile.mkdtemp(prefix="glance-tx-bench-soak-", dir=args.tmpdir))
            if args.keep:
                stack.callback(print, f"kept {work}")
            else:
                stack.callback(shutil.rmtree, work, ignore_errors=True)
            server = metadata.start_glance_tx(work, args.twistd, stack)
            print(f"glance-tx {server.base_url} (pid {server.popen.pid}): "
                  f"{args.minutes:g} minutes of load", flush=True)
            curves = soak(args, server, tally)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    load_after = os.getloadavg()[0]
    load = f"{load_before:.2f} before, {load_after:.2f} after"
    window = min(60.0, args.minutes * 60 / 4)
    found = ends(curves, window)
    for curve in found:
        print(f"{curve.name}: {curve.start:.1f} -> {curve.end:.1f} {curve.unit} "
              f"({curve.ratio:.2f}; {'flat' if curve.flat else 'NOT flat'} within {TARGET:.0%})")
    transfer.publish_section(
        "soak.py", report(args, curves, found, window, tally, hashes, load), not args.no_write
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
