#!/usr/bin/env python3
"""
Does a download of an image that is not in the page cache stall the
reactor? glance-tx sends filesystem-store data with ``os.sendfile`` on the
reactor thread, and sendfile waits for the disk when the pages are not
cached; every other request then waits too.

One run of this script writes a ``--size`` test file (default 1 GiB),
starts glance-tx (SQLite, the filesystem store) and nginx (sendfile) on
loopback, uploads the file once, then for ``--rounds`` rounds downloads it
(one curl to /dev/null) warm (the stored file in the page cache) and cold
(its pages dropped first with ``fsync`` + ``POSIX_FADV_DONTNEED``, which
needs no root and leaves the rest of the machine's cache alone), while a
thread GETs the image's metadata every 10 ms: that GET's p50, p99 and worst
latency, and the download's MiB/s. Latency on a shared machine is mostly
the scheduler's, so another thread also samples the state of glance-tx's
reactor thread every 2 ms: the share of samples in which it waits for the
disk (``D`` in ``/proc/PID/task/PID/stat``) does not depend on the load. nginx's cold download of its copy is
the disk's speed on this machine (nginx blocks on the disk too; it is not
a latency reference). Ratios last: cold / warm of the metadata GET's p99
and worst, per round.

    .venv/bin/python bench/coldcache.py
    .venv/bin/python bench/coldcache.py --size 256M --rounds 1 --no-write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

# This directory is on sys.path when the script runs.
import transfer
from concurrency import MetadataProbe, Sampling
from metadata import commit, cpu_model
from transfer import BenchError, MiB, Server


class DiskWait(Sampling):
    """Samples a thread's state every C{interval} s; the share spent in D."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        super().__init__(interval)
        self.path = f"/proc/{pid}/task/{pid}/stat"
        self.samples = 0
        self.waiting = 0

    def sample(self) -> None:
        try:
            with open(self.path) as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            return
        self.samples += 1
        self.waiting += state == "D"

    def share(self) -> float:
        return self.waiting / self.samples if self.samples else 0.0


def drop_from_cache(path: Path) -> None:
    """Evict C{path}'s pages from the page cache (flushed first, so they can go)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


def stored_file(workdir: Path, image_id: str) -> Path:
    found = [p for p in (workdir / "glance-tx" / "images").rglob(f"*{image_id}*") if p.is_file()]
    if len(found) != 1:
        raise BenchError(f"the stored file of {image_id}: found {found}")
    return found[0]


def download(server: Server, path: str, size: int) -> float:
    _, down, seconds, code, _ = transfer.curl(["-o", "/dev/null", server.base_url + path])
    if code != 200 or down != size:
        raise BenchError(f"{server.name} {path}: HTTP {code}, {down} bytes")
    return size / MiB / seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size", type=transfer.parse_size, default=1024 * MiB)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--tmpdir", default=None, help="on a real disk, not tmpfs")
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transfer.QUIET_WAIT = 0  # the upload is not measured; latency is, under any load
    hashes = transfer.hash_speeds()
    print(hashes, flush=True)
    load_before = os.getloadavg()[0]
    rows: list[tuple[int, str, float, float, float, float, int, int, float]] = []
    nginx_cold: list[float] = []
    try:
        with ExitStack() as stack:
            workdir, path, md5 = transfer.workdir_with_test_file(
                "glance-tx-bench-coldcache-", args.size, args.tmpdir, args.keep, stack
            )
            glance = transfer.start_glance_tx(workdir, args.size, args.twistd, stack)
            nginx = transfer.start_nginx(workdir, path.parent, stack)
            _, image_id = transfer.upload_glance_tx(glance, path, args.size, md5, False, "one")
            stored = stored_file(workdir, image_id)
            meta = f"/v2/images/{image_id}"
            for round_ in range(1, args.rounds + 1):
                drop_from_cache(path)
                nginx_cold.append(download(nginx, "/image.raw", args.size))
                for cache in ("warm", "cold"):
                    if cache == "warm":
                        warm(stored)
                    else:
                        drop_from_cache(stored)
                    with MetadataProbe(glance, meta, interval=0.01) as probe, DiskWait(glance.popen.pid) as wait:
                        rate = download(glance, f"{meta}/file", args.size)
                    rows.append((round_, cache, rate, probe.quantile(0.5), probe.quantile(0.99),
                                 max(probe.latencies, default=0.0), len(probe.latencies),
                                 probe.errors, wait.share()))
                    print(f"  round {round_} {cache}: {rate:.0f} MiB/s, metadata GET p50 "
                          f"{rows[-1][3]:.1f} p99 {rows[-1][4]:.1f} worst {rows[-1][5]:.1f} ms, "
                          f"reactor thread in disk wait {wait.share():.0%} of "
                          f"{wait.samples} samples", flush=True)
                glance.check_alive()
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    load = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    lines = [
        "## Cold-cache downloads: `bench/coldcache.py`",
        "",
        f"One {transfer.human(args.size)} image downloaded from glance-tx (sendfile, "
        "filesystem store) with its file in the page cache (warm) and evicted "
        "(cold), while `GET /v2/images/{id}` runs every 10 ms; nginx's cold "
        "download of the same bytes is the disk's speed.",
        "",
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; "
        f"`nproc` {os.cpu_count()}, {cpu_model()}; {hashes}; load average {load}; "
        f"glance-tx commit {commit()}",
        f"- Command: `.venv/bin/python bench/coldcache.py --size {args.size // MiB}M "
        f"--rounds {args.rounds}`",
        "- nginx cold download (the disk): "
        + ", ".join(f"{r:.0f}" for r in nginx_cold) + " MiB/s",
        "",
        "| round | cache | download MiB/s | metadata GET p50 ms | p99 ms | worst ms "
        "| GETs (errors) | reactor thread in disk wait |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for round_, cache, rate, p50, p99, worst, count, errors, share in rows:
        lines.append(f"| {round_} | {cache} | {rate:.0f} | {p50:.1f} | {p99:.1f} | "
                     f"{worst:.1f} | {count} ({errors}) | {share:.0%} |")
    lines += ["", "Ratios, cold / warm in the same round:", ""]
    for round_ in range(1, args.rounds + 1):
        w, c = (r for r in rows if r[0] == round_)
        lines.append(f"- round {round_}: metadata GET p99 {c[4] / max(w[4], 0.01):.2f}x, "
                     f"worst {c[5] / max(w[5], 0.01):.2f}x; download {c[2] / w[2]:.2f}x")
    p99s = [r[4] for r in rows if r[1] == "cold"]
    shares = [r[8] for r in rows if r[1] == "cold"]
    lines.append(f"- cold: metadata GET p99 {statistics.median(p99s):.1f} ms, reactor thread "
                 f"in disk wait {statistics.median(shares):.0%} of the download (medians of "
                 "rounds; target 0%)")
    transfer.publish_section("coldcache.py", "\n".join(lines), not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
