#!/usr/bin/env python3
"""
Image-data throughput of glance-tx, beside nginx serving the same file.

One run of this script:

1. writes a page-cache-warm test file of incompressible data (a random
   16 MiB pattern, every MiB stamped with its index so no two MiB are
   equal) in a fresh temporary directory, and takes its md5;
2. starts glance-tx (``twistd -n glance``, SQLite and the filesystem store
   in the temporary directory) on a free loopback port and waits for
   ``GET /healthcheck`` to answer 200;
3. starts nginx (the Debian package) with a generated minimal config that
   serves the same file with sendfile, on another free loopback port;
4. optionally (``--with-glance``) starts OpenStack Glance under uwsgi from a
   separate virtualenv, the benchmark peer named in the issue;
5. ``--runs`` times: uploads the file to glance-tx with curl, chunked (as
   glanceclient does) and with Content-Length (odd runs chunked first, even
   runs Content-Length first), downloads it back, and
   downloads the file from nginx; each transfer is timed by curl itself
   (``%{time_total}``) while the server's CPU time (utime + stime from
   ``/proc/PID/stat``, all its processes) is read before and after and its
   resident memory (``VmRSS``, summed over its processes) is sampled every
   50 ms;
6. prints the median (or, with ``--stat best``, the best) of the runs for
   throughput and CPU, the largest peak RSS seen in any run, the per-run
   figures, and how fast this machine hashes md5 and sha512 (or the
   ``--hashing-algorithm`` given to both servers) right now (the ceiling
   for any upload that computes both);
7. stops every process it started and removes the temporary directory
   (unless ``--keep``), whatever happened.

With ``--inspection`` it measures instead what the format inspector costs
an upload: each of ``--runs`` rounds uploads the file to glance-tx (v1,
chunked) as a ``bare`` image, which the inspector reads, and as an ``ovf``
one, which it does not (nothing else differs), in turns (odd rounds start
with one, even rounds with the other); it prints the medians, the median
of the rounds' throughput ratios, the hash speeds, and the inspector's own
speed in memory.

Every byte count is checked (curl's ``size_upload`` / ``size_download``
against the file size) and every upload's md5 against the file's, so a
broken transfer fails the benchmark instead of producing a fast number.

Caveats that the numbers carry:

- The machine may be shared: before each transfer the script waits (up to
  ``--quiet-wait`` seconds) for fewer than 0.3 cores to be busy, and each
  transfer reports how many cores something other than the server and curl
  kept busy ("others"). Treat a run with others near 1 as noise.
- curl runs on the same 2 cores as the server; its own CPU per GiB is
  printed beside the server's. "busy" is how many of the cores were busy
  on average during the transfer (from ``/proc/stat``).
- glance-tx fsyncs every image before it answers an upload (as the issue
  asks), so upload time includes flushing the data to the disk under
  ``--tmpdir``. ``--tmpdir /dev/shm`` (tmpfs: fsync is free) shows the
  server's cost without the disk.
- curl sends a file given with ``-T`` in 64 KiB pieces; with
  ``Transfer-Encoding: chunked`` each is one HTTP chunk (glanceclient sends
  1 MiB chunks), which is the harder case for the server.

Run it with the development virtualenv's Python, so that ``twistd`` and
glance-tx are found next to it::

    .venv/bin/python bench/transfer.py                  # 2 GiB, 3 runs
    .venv/bin/python bench/transfer.py --size 256M --runs 1
    .venv/bin/python bench/transfer.py --limit-rate 60M --size 512M  # a slower client
    .venv/bin/python bench/transfer.py --inspection --size 1G --runs 7
    .venv/bin/python bench/transfer.py --with-glance \\
        --glance-venv /work/glance-peer-venv

``--with-glance`` needs a virtualenv of its own with OpenStack Glance and
uwsgi (never the development one)::

    python3.11 -m venv /work/glance-peer-venv
    /work/glance-peer-venv/bin/pip install 'glance>=33,<34' uwsgi
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[1]
CURL_FORMAT = "%{size_upload} %{size_download} %{time_total} %{http_code}"
#: How often the server's resident memory is sampled during a transfer.
RSS_INTERVAL = 0.05
#: At most this many seconds are spent waiting for a quiet machine before
#: each transfer (set from --quiet-wait).
QUIET_WAIT = 60.0
#: curl's --limit-rate for every upload (set from --limit-rate); None: none.
UPLOAD_RATE: str | None = None


class BenchError(RuntimeError):
    """A server would not start or a transfer went wrong: no number to give."""


# -- sizes ---------------------------------------------------------------

_UNITS = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}


def parse_size(text: str) -> int:
    """C{"2G"}, C{"2GiB"}, C{"512M"}, C{"1048576"}: binary units."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2G or 512M)")
    size = int(float(found.group(1)) * _UNITS[found.group(2)])
    if size < MiB:
        raise argparse.ArgumentTypeError("the size must be at least 1 MiB")
    return size


def human(size: int) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


# -- processes -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """C{pid} and all its descendants that are alive now."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def _stat_fields(pid: int) -> list[str] | None:
    """C{/proc/PID/stat} from field 3 on, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces and parentheses.
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of C{pids} (every thread included), in seconds."""
    ticks = 0
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat
    return ticks / CLK_TCK


def minor_faults(pids: list[int]) -> int:
    """The minor page faults of C{pids} (field 10 of stat, every thread)."""
    return sum(int(f[7]) for pid in pids if (f := _stat_fields(pid)) is not None)


def status_kib(pids: list[int], key: str) -> int:
    """The sum of one C{/proc/PID/status} figure (VmRSS, VmHWM) in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Server:
    """A server process this script started, in a session of its own."""

    name: str
    popen: subprocess.Popen[bytes]
    base_url: str
    log: Path

    @property
    def pids(self) -> list[int]:
        return process_tree(self.popen.pid)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.popen.returncode}; "
                f"last lines of {self.log}:\n{tail(self.log)}"
            )

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it lingers."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # Whatever it left behind in its group (workers) goes too.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout=15)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


def start_server(
    name: str,
    argv: list[str],
    base_url: str,
    ready_path: str,
    workdir: Path,
    stack: ExitStack,
    env: dict[str, str] | None = None,
    timeout: float = 90.0,
) -> Server:
    """Start C{argv} and wait until C{base_url + ready_path} answers 200."""
    log = workdir / f"{name}.out"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, stopped as one
        )
    server = Server(name, popen, base_url, log)
    stack.callback(server.stop)
    deadline = time.monotonic() + timeout
    while True:
        server.check_alive()
        try:
            with urllib.request.urlopen(base_url + ready_path, timeout=5) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{name} did not answer {ready_path} in {timeout:.0f}s")
        time.sleep(0.1)


# -- the test file ---------------------------------------------------------


def make_test_file(path: Path, size: int) -> str:
    """
    Write C{size} bytes of incompressible data to C{path}; return its md5.

    Having just been written, the file is in the page cache (the machine has
    memory to spare); it is read once more anyway so that it is warm even if
    writeback dropped some of it.
    """
    pattern = bytearray(os.urandom(16 * MiB))
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "wb") as f:
        offset = 0
        while offset < size:
            start = offset % len(pattern)
            block = bytearray(pattern[start : start + min(MiB, size - offset)])
            block[:8] = (offset // MiB).to_bytes(8, "big")[: len(block)]
            f.write(block)
            md5.update(block)
            offset += len(block)
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass
    return md5.hexdigest()


def workdir_with_test_file(
    prefix: str, size: int, tmpdir: str | None, keep: bool, stack: ExitStack
) -> tuple[Path, Path, str]:
    """
    A fresh temporary directory (removed when C{stack} closes, unless
    C{keep}) holding C{www/image.raw}, a test file of C{size} bytes written
    by L{make_test_file}: the directory, the file and its md5.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))
    if keep:
        stack.callback(print, f"kept {workdir}")
    else:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    www = workdir / "www"
    www.mkdir()
    path = www / "image.raw"
    print(f"writing {human(size)} test file in {workdir} ...", flush=True)
    return workdir, path, make_test_file(path, size)


# -- the record ------------------------------------------------------------


def publish_section(script: str, section: str, write: bool) -> None:
    """Print a script's RESULTS.md section, and with C{write} record it there."""
    print()
    print(section)
    if write:
        write_results_section(script, section)
        print(f"\nwritten to {REPO / 'bench' / 'RESULTS.md'}")


def write_results_section(script: str, section: str) -> None:
    """
    Put C{section} into C{bench/RESULTS.md} between the markers of
    C{script} (C{"proxy.py"}), replacing what the last run of it wrote
    there, or at the end the first time.
    """
    results = REPO / "bench" / "RESULTS.md"
    begin = f"<!-- bench/{script}: begin (this section is rewritten by every run) -->"
    end = f"<!-- bench/{script}: end -->"
    text = results.read_text() if results.exists() else ""
    if text.count(begin) > 1 or text.count(begin) != text.count(end):
        # A stray marker would make the split below replace hand-written
        # sections lying between it and the real block.
        raise SystemExit(f"{results}: the markers of bench/{script} are not one begin and one end")
    block = f"{begin}\n\n{section}\n\n{end}"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(text)


# -- measuring -------------------------------------------------------------


def hash_speeds(size: int = 256 * MiB) -> str:
    """This machine's hash speeds now, as every figure in RESULTS.md gives them."""
    md5, sha512, both = hash_ceiling(size)
    sha256 = hash_rate("sha256", size)
    return (
        f"md5 {md5:.0f} MiB/s, sha512 {sha512:.0f} MiB/s, both on two threads {both:.0f}; "
        f"sha256 {sha256:.0f} MiB/s"
    )


def hash_rate(name: str, size: int, block: bytes | None = None) -> float:
    """MiB/s of the C{hashlib} algorithm C{name} on one thread, in memory."""
    block = block or os.urandom(MiB)
    h = hashlib.new(name)
    started = time.perf_counter()
    for _ in range(size // MiB):
        h.update(block)
    return size / MiB / (time.perf_counter() - started)


def inspection_rate(size: int = 512 * MiB, batch: int = MiB) -> float:
    """
    MiB/s of glance-tx's format inspector alone, in memory, on one thread,
    fed C{batch}-sized pieces of incompressible data as an upload feeds it
    (it runs on a worker thread beside the hashes).
    """
    sys.path.insert(0, str(REPO))
    from glance_tx.formats.inspection import InspectionStage

    block = os.urandom(batch)
    stage = InspectionStage("raw")
    started = time.perf_counter()
    for _ in range(size // batch):
        stage.feed(block)
    stage.result()
    return size / MiB / (time.perf_counter() - started)


def hash_ceiling(
    size: int = 512 * MiB, algorithm: str = "sha512"
) -> tuple[float, float, float]:
    """
    MiB/s of md5 alone, C{algorithm} (glance-tx's hashing_algorithm) alone
    (one thread each, in memory), and of both at once on two threads
    (C{hashlib} releases the GIL): the most an upload that computes both
    can reach on this machine, right now, before receiving, parsing,
    writing or curl take their share of the cores.
    """
    block = os.urandom(MiB)

    def feed(h: Any) -> None:
        for _ in range(size // MiB):
            h.update(block)

    rates = [hash_rate(name, size, block) for name in ("md5", algorithm)]
    threads = [
        threading.Thread(target=feed, args=(hashlib.new(name),))
        for name in ("md5", algorithm)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rates.append(size / MiB / (time.perf_counter() - started))
    return rates[0], rates[1], rates[2]


#: How many times each part of the upload floor is measured: the least
#: is kept, since another process on the machine only ever adds to a
#: thread's CPU time (cache and core contention), never takes from it.
FLOOR_REPEATS = 3


def least(measure: Callable[..., float], *args: Any) -> float:
    """The least of L{FLOOR_REPEATS} measurements of one part of the floor."""
    return min(measure(*args) for _ in range(FLOOR_REPEATS))


def hash_cpu(name: str, size: int = 256 * MiB) -> float:
    """
    CPU seconds per GiB of the C{hashlib} algorithm C{name} on one thread,
    in memory: its part of the upload floor. CPU time, not the inverse of
    L{hash_rate}, so that on a busy machine the floor counts what the hash
    costs and not how long it waited for a core.
    """
    block = os.urandom(MiB)
    h = hashlib.new(name)
    started = time.thread_time()
    for _ in range(size // MiB):
        h.update(block)
    return (time.thread_time() - started) / (size // MiB * MiB / GiB)


def receive_cpu(path: Path, read_size: int = 256 * 1024) -> float:
    """
    CPU seconds per GiB that a bare Python loop spends receiving C{path}
    over loopback, C{read_size} bytes per C{recv}; the sender is another
    process using sendfile. glance-tx reads 1 MiB per C{recv} during an
    upload body; 256 KiB, 1 MiB and 64 KiB cost the same within noise here
    (0.35-0.54 s/GiB each, in turns at load 9, 2026-12-04).
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        sender = subprocess.Popen([
            sys.executable, "-c",
            "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])));"
            " s.sendfile(open(sys.argv[2], 'rb')); s.close()",
            str(port), str(path),
        ])
        connection, _ = server.accept()
        with connection:
            started, received = time.thread_time(), 0
            while data := connection.recv(read_size):
                received += len(data)
            spent = time.thread_time() - started
        sender.wait()
    return spent / (received / GiB)


def write_cpu(directory: Path, size: int) -> tuple[float, float]:
    """
    CPU seconds per GiB of writing C{size} bytes into the page cache (1 MiB
    writes), and of the C{fsync} after it that makes them durable (the
    writeback the calling thread does: glance-tx fsyncs every image before
    it answers, as C{dd conv=fsync} does).
    """
    block = os.urandom(MiB)
    target = directory / "write-floor"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        started = time.thread_time()
        for _ in range(size // MiB):
            os.write(fd, block)
        written = time.thread_time()
        os.fsync(fd)
        synced = time.thread_time()
    finally:
        os.close(fd)
        target.unlink()
    gib = size // MiB * MiB / GiB
    return (written - started) / gib, (synced - written) / gib


@dataclass
class Sample:
    """One transfer: what curl saw, and what it cost the server."""

    label: str
    bytes: int
    seconds: float
    server_cpu: float
    curl_cpu: float
    peak_rss_kib: int
    machine_busy: float  # cores busy on average (2.0 = both, all the time)
    others_busy: float  # of which neither the server nor curl: other load
    note: str = ""
    faults: int = 0  # the server's minor page faults (fresh pages of memory)

    @property
    def mib_s(self) -> float:
        return self.bytes / MiB / self.seconds

    @property
    def cpu_per_gib(self) -> float:
        return self.server_cpu / (self.bytes / GiB)

    @property
    def faults_per_gib(self) -> float:
        return self.faults / (self.bytes / GiB)

    @property
    def curl_cpu_per_gib(self) -> float:
        return self.curl_cpu / (self.bytes / GiB)


@contextmanager
def rss_sampler(server: Server) -> Iterator[Callable[[], int]]:
    """Sample the server's summed VmRSS every 50 ms; yield a peak getter."""
    peak = [status_kib(server.pids, "VmRSS")]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(RSS_INTERVAL):
            peak[0] = max(peak[0], status_kib(server.pids, "VmRSS"))

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], status_kib(server.pids, "VmRSS"))


def curl(args: list[str]) -> tuple[int, int, float, int, float]:
    """
    Run curl; return (size_upload, size_download, time_total, http_code,
    curl's CPU seconds).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["curl", "-sS", "-w", CURL_FORMAT, *args],
        capture_output=True,
        text=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"curl {' '.join(args)} failed: {done.stderr.strip()}")
    up, down, total, code = done.stdout.split()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int(float(up)), int(float(down)), float(total), int(code), cpu


def wait_for_quiet(max_wait: float, threshold: float = 0.3, window: float = 1.0) -> str:
    """
    Wait until the machine has been quiet (fewer than C{threshold} cores
    busy) for C{window} seconds, at most C{max_wait} seconds; say how it went.
    Other people's builds and tests on the same 2 cores otherwise decide the
    numbers.
    """
    started = time.monotonic()
    ncpu = os.cpu_count() or 1
    while True:
        busy0, total0 = machine_jiffies()
        time.sleep(window)
        busy1, total1 = machine_jiffies()
        busy = ncpu * (busy1 - busy0) / max(1, total1 - total0)
        waited = time.monotonic() - started
        if busy < threshold:
            return f"waited {waited - window:.0f}s for quiet" if waited > 2 * window else ""
        if waited >= max_wait:
            return f"NOT QUIET after {waited:.0f}s ({busy:.2f} cores busy)"


def measure(
    label: str,
    server: Server,
    curl_args: list[str],
    direction: str,
    expected: int,
    ok_codes: tuple[int, ...] = (200,),
) -> Sample:
    """One timed curl transfer of C{expected} bytes C{direction} ("up"/"down")."""
    server.check_alive()
    quiet = wait_for_quiet(QUIET_WAIT) if QUIET_WAIT > 0 else ""
    pids = server.pids
    with rss_sampler(server) as peak:
        busy0, total0 = machine_jiffies()
        cpu0, faults0 = cpu_seconds(pids), minor_faults(pids)
        up, down, seconds, code, curl_cpu = curl(curl_args)
        cpu1, faults1 = cpu_seconds(pids), minor_faults(pids)
        busy1, total1 = machine_jiffies()
    if code not in ok_codes:
        raise BenchError(f"{label}: HTTP {code} (expected {ok_codes})")
    moved = up if direction == "up" else down
    # A chunked upload's size_upload counts the chunk framing too (about 8
    # bytes per 64 KiB chunk); the payload is checked by the server's size
    # and md5 instead, and the payload is what the throughput counts.
    framing = expected // 4096 + 1024 if "Transfer-Encoding: chunked" in curl_args else 0
    if not expected <= moved <= expected + framing:
        raise BenchError(f"{label}: curl moved {moved} bytes, not {expected}")
    moved = expected
    ncpu = os.cpu_count() or 1
    busy = ncpu * (busy1 - busy0) / max(1, total1 - total0)
    return Sample(
        label=label,
        bytes=moved,
        seconds=seconds,
        server_cpu=cpu1 - cpu0,
        curl_cpu=curl_cpu,
        peak_rss_kib=peak(),
        faults=faults1 - faults0,
        machine_busy=busy,
        others_busy=max(0.0, busy - (cpu1 - cpu0 + curl_cpu) / seconds),
        note=quiet,
    )


def json_request(
    method: str, url: str, body: object | None = None, headers: dict[str, str] | None = None
) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def upload_args(path: Path, chunked: bool) -> list[str]:
    """curl arguments that stream C{path} as the body (never read whole)."""
    args = [
        "-T", str(path),
        "-H", "Content-Type: application/octet-stream",
        # glanceclient (requests) sends no Expect: 100-continue; neither do we.
        "-H", "Expect:",
    ]
    if chunked:
        args += ["-H", "Transfer-Encoding: chunked"]
    if UPLOAD_RATE is not None:
        args += ["--limit-rate", UPLOAD_RATE]
    return args


# -- the servers -----------------------------------------------------------


def start_glance_tx(
    workdir: Path, size: int, twistd: str, stack: ExitStack,
    hashing_algorithm: str = "sha512", extra_config: str = "",
) -> Server:
    """
    glance-tx on a free loopback port; C{extra_config} is more of its file
    (C{[DEFAULT]} lines first, then sections).
    """
    data = workdir / "glance-tx"
    data.mkdir()
    config = data / "glance-tx.conf"
    config.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            image_size_cap = {max(size * 2, 1 << 40)}
            hashing_algorithm = {hashing_algorithm}
            enabled_backends = file:file
            default_backend = file
            """
        )
        + extra_config
        + f"\n[file]\nfilesystem_store_datadir = {data / 'images'}\n"
    )
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    argv = [
        twistd, "-n", "--pidfile=",  # -n: the log goes to stdout, glance-tx.out
        "glance",
        "--port", f"tcp:{port}:interface=127.0.0.1",
        "--data-dir", str(data),
        "--config", str(config),
    ]
    return start_server(
        "glance-tx", argv, f"http://127.0.0.1:{port}", "/healthcheck",
        data, stack, env=env,
    )


def start_nginx(workdir: Path, www: Path, stack: ExitStack) -> Server:
    """
    nginx with one worker process: glance-tx is one reactor process and the
    benchmark is one connection at a time, so one worker is the like-for-like
    peer (and with sendfile one worker is far from busy). ``daemon off`` keeps
    the master in the foreground as our child; ``user root`` lets the worker
    read the 0700 temporary directory.
    """
    prefix = workdir / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            user root;
            worker_processes 1;
            daemon off;
            pid {prefix / "nginx.pid"};
            error_log {prefix / "error.log"} warn;
            events {{ worker_connections 64; }}
            http {{
                access_log off;
                sendfile on;
                tcp_nopush on;
                default_type application/octet-stream;
                client_body_temp_path {prefix / "client_body"};
                proxy_temp_path {prefix / "proxy"};
                fastcgi_temp_path {prefix / "fastcgi"};
                uwsgi_temp_path {prefix / "uwsgi"};
                scgi_temp_path {prefix / "scgi"};
                server {{
                    listen 127.0.0.1:{port};
                    root {www};
                }}
            }}
            """
        )
    )
    argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return start_server(
        "nginx", argv, f"http://127.0.0.1:{port}", "/image.raw", prefix, stack
    )


def start_openstack_glance(
    workdir: Path, size: int, venv: Path, stack: ExitStack,
    hashing_algorithm: str = "sha512",
) -> Server:
    """
    OpenStack Glance (PyPI ``glance``) under uwsgi, as DevStack runs it but
    with uwsgi's own HTTP socket in front instead of Apache: no Keystone
    (``[paste_deploy] flavor =`` empty), SQLite, the filesystem store.
    """
    base = workdir / "openstack-glance"
    etc = base / "etc"
    etc.mkdir(parents=True)
    for name in ("glance-api-paste.ini",):
        source = _find_glance_etc(venv, name)
        shutil.copy(source, etc / name)
    port = free_port()
    (etc / "glance-api.conf").write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            enabled_backends = file:file
            image_size_cap = {max(size * 2, 1 << 40)}
            hashing_algorithm = {hashing_algorithm}
            log_file = {base / "glance-api.log"}
            use_stderr = false
            show_image_direct_url = false

            [database]
            connection = sqlite:///{base / "glance.sqlite"}

            [glance_store]
            default_backend = file

            [file]
            filesystem_store_datadir = {base / "images"}

            [os_glance_staging_store]
            filesystem_store_datadir = {base / "staging"}

            [os_glance_tasks_store]
            filesystem_store_datadir = {base / "tasks"}

            [paste_deploy]
            flavor =
            config_file = {etc / "glance-api-paste.ini"}

            [oslo_policy]
            enforce_new_defaults = false
            enforce_scope = false

            [oslo_concurrency]
            lock_path = {base / "locks"}
            """
        )
    )
    (base / "uwsgi.ini").write_text(
        textwrap.dedent(
            f"""\
            [uwsgi]
            http-socket = 127.0.0.1:{port}
            module = glance.wsgi.api:application
            master = true
            processes = 2
            threads = 1
            lazy-apps = true
            enable-threads = true
            buffer-size = 65535
            http-auto-chunked = true
            http-raw-body = true
            chunked-input-limit = 16777216
            die-on-term = true
            need-app = true
            """
        )
    )
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["OS_GLANCE_CONFIG_DIR"] = str(etc)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    manage = subprocess.run(
        [str(venv / "bin" / "glance-manage"), "--config-dir", str(etc), "db_sync"],
        capture_output=True, text=True, env=env, cwd=base,
    )
    if manage.returncode != 0:
        raise BenchError(f"glance-manage db_sync failed:\n{manage.stderr[-2000:]}")
    argv = [str(venv / "bin" / "uwsgi"), "--ini", str(base / "uwsgi.ini")]
    return start_server(
        "openstack-glance", argv, f"http://127.0.0.1:{port}", "/versions",
        base, stack, env=env, timeout=120,
    )


def _find_glance_etc(venv: Path, name: str) -> Path:
    for candidate in [venv / "etc" / "glance" / name, *venv.glob(f"lib/*/site-packages/**/{name}")]:
        if candidate.is_file():
            return candidate
    raise BenchError(f"{name} not found under {venv}")


# -- one run ---------------------------------------------------------------


@dataclass
class Run:
    samples: dict[str, Sample] = field(default_factory=dict)


def upload_glance_tx(
    server: Server, path: Path, size: int, md5: str, chunked: bool, label: str,
    container_format: str = "bare",
) -> tuple[Sample, str]:
    """
    A v1 upload; a C{bare} image passes the format inspector, any other
    container format (C{ovf}) does not, and is otherwise handled alike.
    """
    response = path.parent.parent / "upload-response.json"
    args = upload_args(path, chunked) + [
        "-X", "POST",
        "-o", str(response),
        "-H", f"x-image-meta-name: bench-{label}",
        "-H", "x-image-meta-disk_format: raw",
        "-H", f"x-image-meta-container_format: {container_format}",
        f"{server.base_url}/v1/images",
    ]
    sample = measure(label, server, args, "up", size, ok_codes=(201,))
    image = json.loads(response.read_text())["image"]
    if image["size"] != size or image["checksum"] != md5:
        raise BenchError(
            f"{label}: stored {image['size']} bytes with md5 {image['checksum']}, "
            f"sent {size} with md5 {md5}"
        )
    # The inspector's one visible trace: a raw image's virtual size.
    inspected = image["virtual_size"] is not None
    if inspected != (container_format == "bare"):
        raise BenchError(
            f"{label}: a {container_format} image with virtual_size {image['virtual_size']}"
        )
    return sample, image["id"]


def upload_openstack_glance(
    server: Server, path: Path, size: int, md5: str, chunked: bool, label: str
) -> tuple[Sample, str]:
    image = json_request(
        "POST",
        f"{server.base_url}/v2/images",
        {"name": f"bench-{label}", "disk_format": "raw", "container_format": "bare"},
    )
    assert isinstance(image, dict)
    image_id = image["id"]
    args = upload_args(path, chunked) + [
        "-o", "/dev/null", f"{server.base_url}/v2/images/{image_id}/file",
    ]
    sample = measure(label, server, args, "up", size, ok_codes=(204,))
    shown = json_request("GET", f"{server.base_url}/v2/images/{image_id}")
    assert isinstance(shown, dict)
    if shown["size"] != size or shown["checksum"] != md5:
        raise BenchError(f"{label}: OpenStack Glance stored {shown['size']} / {shown['checksum']}")
    return sample, image_id


def delete_images(server: Server, prefix: str, ids: list[str]) -> None:
    for image_id in ids:
        json_request("DELETE", f"{server.base_url}{prefix}/{image_id}")


def one_run(
    number: int,
    path: Path,
    size: int,
    md5: str,
    glance_tx: Server,
    nginx: Server,
    peer: Server | None,
    settle: float,
) -> Run:
    run = Run()

    def take(sample: Sample) -> None:
        run.samples[sample.label] = sample
        print(
            f"  run {number}  {sample.label:<24} {sample.mib_s:8.1f} MiB/s  "
            f"server {sample.cpu_per_gib:5.2f} CPU s/GiB  "
            f"curl {sample.curl_cpu_per_gib:5.2f} CPU s/GiB  "
            f"peak RSS {sample.peak_rss_kib / 1024:6.1f} MiB  "
            f"busy {sample.machine_busy:4.2f} cores (others {sample.others_busy:4.2f})"
            + (f"  [{sample.note}]" if sample.note else ""),
            flush=True,
        )
        time.sleep(settle)

    ids = []
    # Odd runs upload chunked first, even runs Content-Length first: the
    # second upload of a run follows the first's writeback and freed
    # memory, so a fixed order weighs on one kind of body only.
    uploads = [(True, "tx up chunked"), (False, "tx up content-length")]
    for chunked, label in uploads if number % 2 else uploads[::-1]:
        sample, image_id = upload_glance_tx(glance_tx, path, size, md5, chunked, label)
        ids.append((chunked, image_id))
        take(sample)
    ids = [image_id for _, image_id in sorted(ids, reverse=True)]  # chunked's first
    take(
        measure(
            "tx down", glance_tx,
            ["-o", "/dev/null", f"{glance_tx.base_url}/v1/images/{ids[0]}"],
            "down", size,
        )
    )
    nginx_url = f"{nginx.base_url}/image.raw"
    take(measure("nginx down", nginx, ["-o", "/dev/null", nginx_url], "down", size))
    delete_images(glance_tx, "/v1/images", ids)

    if peer is not None:
        ids = []
        for chunked, label in ((True, "glance up chunked"), (False, "glance up content-length")):
            sample, image_id = upload_openstack_glance(peer, path, size, md5, chunked, label)
            ids.append(image_id)
            take(sample)
        take(
            measure(
                "glance down", peer,
                ["-o", "/dev/null", f"{peer.base_url}/v2/images/{ids[0]}/file"],
                "down", size,
            )
        )
        delete_images(peer, "/v2/images", ids)
    return run


#: The two uploads of an --inspection round: (label, container_format).
INSPECTION_UPLOADS = (("tx up inspected", "bare"), ("tx up not inspected", "ovf"))


def inspection_run(
    number: int, path: Path, size: int, md5: str, glance_tx: Server, settle: float
) -> Run:
    """
    One round of C{--inspection}: the same chunked upload with the format
    inspector (a bare image) and without (ovf), in turn; odd rounds start
    with one, even rounds with the other, so drift in the machine's load
    weighs on both alike.
    """
    run = Run()
    order = INSPECTION_UPLOADS if number % 2 else INSPECTION_UPLOADS[::-1]
    ids = []
    for label, container_format in order:
        sample, image_id = upload_glance_tx(
            glance_tx, path, size, md5, True, label, container_format
        )
        ids.append(image_id)
        run.samples[label] = sample
        print(
            f"  run {number}  {label:<20} {sample.mib_s:8.1f} MiB/s  "
            f"server {sample.cpu_per_gib:5.2f} CPU s/GiB  "
            f"busy {sample.machine_busy:4.2f} cores (others {sample.others_busy:4.2f})",
            flush=True,
        )
        time.sleep(settle)
    delete_images(glance_tx, "/v1/images", ids)
    return run


def inspection_report(runs: list[Run]) -> str:
    """The medians of both uploads, and what inspection costs beside them."""
    on = summarize(runs, INSPECTION_UPLOADS[0][0])
    off = summarize(runs, INSPECTION_UPLOADS[1][0])
    assert on is not None and off is not None
    lines = [
        "| upload (v1, chunked) | MiB/s | server CPU s/GiB | cores busy | others busy |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in (on, off):
        lines.append(
            f"| {s.label} | {s.mib_s:.0f} | {s.cpu_per_gib:.2f} | {s.machine_busy:.2f} "
            f"| {s.others_busy:.2f} |"
        )
    ratios = [r.samples[on.label].mib_s / r.samples[off.label].mib_s for r in runs]
    lines += [
        "",
        f"Inspected / not inspected, throughput: median of the runs' ratios "
        f"{statistics.median(ratios):.3f} (each run: "
        + ", ".join(f"{x:.3f}" for x in ratios)
        + f"); of the medians {on.mib_s / off.mib_s:.3f}. Server CPU per GiB: "
        f"{on.cpu_per_gib / off.cpu_per_gib:.3f} of it.",
    ]
    return "\n".join(lines)


# -- the report ------------------------------------------------------------


def summarize(runs: list[Run], label: str, stat: str = "median") -> Sample | None:
    """
    One L{Sample} standing for every run's C{label}: with C{stat} "median",
    the median throughput, CPU and load; with "best", the fastest run's
    throughput and the lowest CPU. Peak RSS is always the largest of any run
    (the target is a ceiling).
    """
    samples = [r.samples[label] for r in runs if label in r.samples]
    if not samples:
        return None
    size = samples[0].bytes
    best = stat == "best"
    pick_high = max if best else statistics.median
    pick_low = min if best else statistics.median
    return Sample(
        label=label,
        bytes=size,
        seconds=size / MiB / pick_high(s.mib_s for s in samples),
        server_cpu=pick_low(s.server_cpu for s in samples),
        curl_cpu=pick_low(s.curl_cpu for s in samples),
        peak_rss_kib=max(s.peak_rss_kib for s in samples),
        machine_busy=statistics.median(s.machine_busy for s in samples),
        others_busy=statistics.median(s.others_busy for s in samples),
        faults=int(pick_low(s.faults for s in samples)),
    )


def report(runs: list[Run], hwm: dict[str, int], with_peer: bool, stat: str) -> str:
    nginx = summarize(runs, "nginx down", stat)
    assert nginx is not None
    servers = [("glance-tx", "tx")]
    if with_peer:
        servers.append(("OpenStack Glance 33", "glance"))
    lines = [
        "| server | up MiB/s chunked | up MiB/s Content-Length | down MiB/s "
        "| down / nginx | CPU s/GiB up (chunked / C-L) | CPU s/GiB down "
        "| peak RSS MiB up | peak RSS MiB down |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    loads = []
    for name, prefix in servers:
        up_c = summarize(runs, f"{prefix} up chunked", stat)
        up_l = summarize(runs, f"{prefix} up content-length", stat)
        down = summarize(runs, f"{prefix} down", stat)
        if up_c is None or up_l is None or down is None:
            continue
        lines.append(
            f"| {name} | {up_c.mib_s:.0f} | {up_l.mib_s:.0f} | {down.mib_s:.0f} "
            f"| {down.mib_s / nginx.mib_s:.0%} "
            f"| {up_c.cpu_per_gib:.2f} / {up_l.cpu_per_gib:.2f} | {down.cpu_per_gib:.2f} "
            f"| {max(up_c.peak_rss_kib, up_l.peak_rss_kib) / 1024:.0f} "
            f"| {down.peak_rss_kib / 1024:.0f} |"
        )
        loads += [up_c, up_l, down]
    lines.append(
        f"| nginx (sendfile) | | | {nginx.mib_s:.0f} | 100% | | {nginx.cpu_per_gib:.2f} "
        f"| | {nginx.peak_rss_kib / 1024:.0f} |"
    )
    loads.append(nginx)
    lines += [
        "",
        "| transfer | curl CPU s/GiB | server page faults K/GiB | cores busy, "
        "whole machine | cores busy, neither server nor curl |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in loads:
        lines.append(
            f"| {s.label} | {s.curl_cpu_per_gib:.2f} | {s.faults_per_gib / 1000:.1f} "
            f"| {s.machine_busy:.2f} | {s.others_busy:.2f} |"
        )
    lines += [
        "",
        f"Throughput and CPU: {stat} of the runs; load: median. Peak RSS: the largest "
        "VmRSS (summed over the server's processes) sampled every 50 ms during "
        "any run's transfers in that direction.",
        "VmHWM at the end (each process's high-water mark over its whole "
        "life, summed over its processes): "
        + ", ".join(f"{name} {kib / 1024:.0f} MiB" for name, kib in hwm.items())
        + ".",
    ]
    return "\n".join(lines)


def floor_ratios(runs: list[Run], floor: dict[str, float], stat: str) -> str:
    """
    glance-tx's CPU per GiB uploaded over the floor's server part (all of
    it but curl's), for each kind of body: issue 14's target is 1.2 at most.
    Also without the fsync, for a server that does not make uploads durable.
    """
    server = sum(cost for name, cost in floor.items() if name != "curl")
    parts = []
    for kind in ("chunked", "content-length"):
        sample = summarize(runs, f"tx up {kind}", stat)
        if sample is not None:
            parts.append(
                f"{kind} {sample.cpu_per_gib / server:.2f}x "
                f"({sample.cpu_per_gib / (server - floor['fsync']):.2f}x without the fsync)"
            )
    return (
        f"glance-tx upload CPU per GiB over the server floor ({server:.2f} s/GiB, "
        "curl's share left out): " + ", ".join(parts) + "."
    )


# -- main ------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Upload and download throughput of glance-tx beside nginx.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", type=parse_size, default=2 * GiB,
                        help="test image size, e.g. 2G, 512M [default: 2G]")
    parser.add_argument("--runs", type=int, default=3,
                        help="repetitions [default: 3]")
    parser.add_argument("--stat", choices=("median", "best"), default="median",
                        help="how runs are combined: median, or best (fastest, least "
                             "CPU; shared-machine noise only ever slows) [default: median]")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (data, configs, logs)")
    parser.add_argument("--tmpdir", default=None,
                        help="where the temporary directory goes [default: $TMPDIR or /tmp]; "
                             "/dev/shm takes the disk out of the upload")
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")),
                        help="twistd to run glance-tx with [default: next to this Python]")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to pause between transfers [default: 1]")
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT,
                        help="before each transfer, wait up to this many seconds for the "
                             "machine to be quiet (< 0.3 cores busy for 1 s); 0 to not wait "
                             "[default: %(default)s]")
    parser.add_argument("--limit-rate", default=None, metavar="RATE",
                        help="send every upload at most this fast (curl's --limit-rate, "
                             "e.g. 60M): a client slower than the server, as one across a "
                             "real network is, which the server reads as it comes")
    parser.add_argument("--hashing-algorithm", default="sha512", metavar="NAME",
                        help="glance-tx's hashing_algorithm (os_hash_algo), e.g. sha256; "
                             "the floor and hash ceiling use it too [default: %(default)s]")
    parser.add_argument("--inspection", action="store_true",
                        help="measure only glance-tx's chunked upload with the format "
                             "inspector (bare) beside without (ovf), in alternating order")
    parser.add_argument("--with-glance", action="store_true",
                        help="also measure OpenStack Glance (API v2) under uwsgi")
    parser.add_argument("--glance-venv", type=Path, default=Path("/work/glance-peer-venv"),
                        help="virtualenv with PyPI glance and uwsgi [default: %(default)s]")
    args = parser.parse_args(argv)
    try:
        hashlib.new(args.hashing_algorithm)
    except ValueError:
        parser.error(f"--hashing-algorithm {args.hashing_algorithm!r} is not a hashlib algorithm")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not Path(args.twistd).exists() and shutil.which(args.twistd) is None:
        parser.error(f"no twistd at {args.twistd}; pass --twistd")
    for tool in ("curl", "nginx"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    return args


def inspection_main(
    args: argparse.Namespace, workdir: Path, path: Path, md5: str, glance_tx: Server,
    load_before: str,
) -> int:
    """C{--inspection}: the rounds, then the report and the hash speeds."""
    print(f"glance-tx {glance_tx.base_url} (pid {glance_tx.popen.pid})", flush=True)
    runs = [
        inspection_run(n, path, args.size, md5, glance_tx, args.settle)
        for n in range(1, args.runs + 1)
    ]
    load_after = f"{os.getloadavg()[0]:.2f}"
    if QUIET_WAIT > 0:
        wait_for_quiet(QUIET_WAIT)
    md5_rate, sha_rate, both_rate = hash_ceiling(algorithm=args.hashing_algorithm)
    inspect_rate = inspection_rate()
    print()
    print(
        f"{human(args.size)}, {args.runs} round(s), median; hashing_algorithm "
        f"{args.hashing_algorithm}; tmpdir {workdir.parent}; load average "
        f"{load_before} before, {load_after} after"
    )
    print(inspection_report(runs))
    print(
        f"Hashing on this machine now, in memory: md5 {md5_rate:.0f} MiB/s, "
        f"{args.hashing_algorithm} {sha_rate:.0f} MiB/s (one thread each); both at "
        f"once on two threads {both_rate:.0f} MiB/s; the format inspector alone "
        f"{inspect_rate:.0f} MiB/s (one thread, 1 MiB batches)."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global QUIET_WAIT, UPLOAD_RATE
    QUIET_WAIT = args.quiet_wait
    UPLOAD_RATE = args.limit_rate
    # A SIGTERM unwinds through the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        try:
            workdir, path, md5 = workdir_with_test_file(
                "glance-tx-bench-", args.size, args.tmpdir, args.keep, stack
            )
            load_before = f"{os.getloadavg()[0]:.2f}"
            glance_tx = start_glance_tx(
                workdir, args.size, args.twistd, stack, args.hashing_algorithm
            )
            if args.inspection:
                return inspection_main(args, workdir, path, md5, glance_tx, load_before)
            nginx = start_nginx(workdir, path.parent, stack)
            peer = (
                start_openstack_glance(
                    workdir, args.size, args.glance_venv, stack, args.hashing_algorithm
                )
                if args.with_glance else None
            )
            print(
                f"glance-tx {glance_tx.base_url} (pid {glance_tx.popen.pid}), "
                f"nginx {nginx.base_url} (pid {nginx.popen.pid})"
                + (f", OpenStack Glance {peer.base_url} (pid {peer.popen.pid})" if peer else ""),
                flush=True,
            )
            runs = [
                one_run(n, path, args.size, md5, glance_tx, nginx, peer, args.settle)
                for n in range(1, args.runs + 1)
            ]
            hwm = {s.name: status_kib(s.pids, "VmHWM") for s in (glance_tx, nginx, peer) if s}
            if QUIET_WAIT > 0:
                wait_for_quiet(QUIET_WAIT)
            algorithm = args.hashing_algorithm
            md5_rate, sha_rate, both_rate = hash_ceiling(algorithm=algorithm)
            writes = [write_cpu(workdir, min(args.size, GiB)) for _ in range(FLOOR_REPEATS)]
            floor = {
                "md5": least(hash_cpu, "md5"),
                algorithm: least(hash_cpu, algorithm),
                "receive": least(receive_cpu, path),
                "page-cache write": min(write for write, _ in writes),
                "fsync": min(fsync for _, fsync in writes),
                "curl": statistics.median(
                    r.samples["tx up chunked"].curl_cpu_per_gib for r in runs
                ),
            }
            print()
            print(
                f"{human(args.size)}, {args.runs} run(s), {args.stat}; "
                f"hashing_algorithm {algorithm}; tmpdir {workdir.parent}; "
                + (f"uploads limited to {UPLOAD_RATE}B/s; " if UPLOAD_RATE else "")
                + f"load average {load_before} before, {os.getloadavg()[0]:.2f} after"
            )
            print(report(runs, hwm, peer is not None, args.stat))
            print(
                f"Hashing on this machine now, in memory: md5 {md5_rate:.0f} MiB/s, "
                f"{algorithm} {sha_rate:.0f} MiB/s (one thread each); both at once on "
                f"two threads {both_rate:.0f} MiB/s: the ceiling for an upload "
                "that computes both, before any network, parsing, disk or curl work."
            )
            total = sum(floor.values())
            cores = os.cpu_count() or 1
            print(
                "Upload floor, CPU s/GiB that any server on this machine pays before "
                "its own code runs: "
                + ", ".join(f"{name} {cost:.2f}" for name, cost in floor.items())
                + f"; total {total:.2f}, so {cores} cores kept busy all the "
                f"time cap a hashed upload at {cores * GiB / MiB / total:.0f} MiB/s."
            )
            print(floor_ratios(runs, floor, args.stat))
        except BenchError as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
