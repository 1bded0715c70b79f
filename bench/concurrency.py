#!/usr/bin/env python3
"""
Many clients at once: concurrent downloads of one image from glance-tx and
from nginx (sendfile) in the same run, then concurrent uploads to
glance-tx; aggregate throughput, glance-tx's peak RSS, and how long a
metadata GET waits meanwhile.

One run of this script:

1. writes a ``--size`` test file (default 128 MiB) and a ``--upload-size``
   one (default 32 MiB), starts glance-tx (``twistd -n glance``, SQLite and
   the filesystem store) and nginx (one worker, sendfile) on loopback, and
   uploads the test file to glance-tx once;
2. for ``--rounds`` rounds (default 2), nginx then glance-tx: one ``curl
   --parallel --parallel-max N`` fetching the image ``--downloads`` times
   (default 50), every transfer checked (200, every byte); the aggregate
   MiB/s is all the bytes over curl's wall time. During glance-tx's, its
   summed VmRSS is sampled every 50 ms and a thread GETs the image's
   metadata every 20 ms (its p99 and worst latency);
3. then, in each round, everything at once (issue 14's "in flight"):
   the ``--downloads`` downloads and ``--uploads`` (default 20) concurrent
   uploads of the upload file (a second ``curl --parallel``, v1 ``POST
   /v1/images`` with the data, each checked 201) started together, with
   glance-tx's peak RSS and the metadata GET's latencies over the whole
   of it, and those of a ``GET /versions`` beside it (no registry call:
   what the reactor alone makes a request wait);
4. with ``--clients-nice N``, runs every ``curl --parallel`` N nicer (in a
   session and autogroup of its own as nice), not the metadata GETs'
   client: the clients of a deployment are other machines, and here
   they take the server's two CPUs (bench/RESULTS.md, "A metadata GET
   under load: the clients' share of the CPUs");
5. prints the table, the ratios last, and writes its section of
   ``RESULTS.md`` (``--no-write`` to only print).

    .venv/bin/python bench/concurrency.py
    .venv/bin/python bench/concurrency.py --size 64M --downloads 20 --no-write
    .venv/bin/python bench/concurrency.py --clients-nice 10 --no-write
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

# This directory is on sys.path when the script runs.
import transfer
from metadata import commit, cpu_model
from transfer import BenchError, MiB, Server

#: The issue's targets (issue 14).
DOWNLOAD_RATIO_TARGET = 0.90
RSS_TARGET_MIB = 200
METADATA_TARGET_MS = 100


#: How much nicer than this script the load-generating curls run
#: (C{--clients-nice}); the metadata GETs' client never is.
CLIENTS_NICE = 0


def parallel_curl(count: int, per_transfer: list[str], url: str) -> tuple[float, list[str]]:
    """
    One C{curl --parallel} of C{count} transfers of C{url}, each with the
    arguments C{per_transfer}: its wall time and each transfer's
    "code size" line.

    With L{CLIENTS_NICE} it runs that much nicer, in a session of its own
    whose autogroup is as nice: where the kernel groups tasks by session
    (C{/proc/sys/kernel/sched_autogroup_enabled}), a task's niceness only
    counts against its own group's, and the servers run in sessions of
    their own (L{transfer.start_server}), so only the group's niceness
    makes curl give way to them.
    """
    argv = ["curl", "-sS", "--parallel", "--parallel-max", str(count),
            "-w", "%{http_code} %{size_download} %{size_upload}\\n"]
    if CLIENTS_NICE:
        argv = ["sh", "-c", f'echo {CLIENTS_NICE} 2>/dev/null >/proc/self/autogroup; '
                f'exec nice -n {CLIENTS_NICE} "$@"', "sh", *argv]
    for _ in range(count):
        argv += [*per_transfer, url]
    began = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=900, start_new_session=bool(CLIENTS_NICE)
    )
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise BenchError(f"curl --parallel failed: {done.stderr.strip()[:2000]}")
    return wall, done.stdout.split("\n")[:-1]


def downloads(server: Server, path: str, count: int, size: int) -> float:
    """C{count} parallel downloads of C{path}; aggregate MiB/s."""
    return downloads_timed(server, path, count, size)[0]


def downloads_timed(server: Server, path: str, count: int, size: int) -> tuple[float, float]:
    """C{count} parallel downloads of C{path}; aggregate MiB/s and wall time."""
    wall, lines = parallel_curl(count, ["-o", "/dev/null"], server.base_url + path)
    bad = [line for line in lines if line.split()[:2] != ["200", str(size)]]
    if len(lines) != count or bad:
        raise BenchError(f"{server.name}: {len(lines)} transfers, unexpected: {bad[:5]}")
    return count * size / MiB / wall, wall


def uploads(server: Server, upload_args: list[str], count: int, size: int) -> float:
    """C{count} parallel v1 uploads, each checked 201; aggregate MiB/s."""
    wall, lines = parallel_curl(count, upload_args, server.base_url + "/v1/images")
    bad = [line for line in lines if not line.startswith("201 ")]
    if len(lines) != count or bad:
        raise BenchError(f"uploads: {len(lines)} transfers, unexpected: {bad[:5]}")
    return count * size / MiB / wall


@dataclass
class Together:
    """One round of downloads and uploads in flight at once."""

    down_rate: float
    up_rate: float
    peak_kib: int
    probe: MetadataProbe
    #: GET /versions meanwhile: the reactor's part alone (no registry call).
    versions: MetadataProbe


def together(
    server: Server, meta: str, args: argparse.Namespace, upload_args: list[str]
) -> Together:
    """
    The downloads (in a thread) and the uploads started at once; the peak
    RSS and the metadata GET's latencies while any of them runs.
    """
    down: list[float] = []
    errors: list[BaseException] = []

    def download() -> None:
        try:
            down.append(downloads(server, f"{meta}/file", args.downloads, args.size))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    with (
        transfer.rss_sampler(server) as peak,
        MetadataProbe(server, meta) as probe,
        MetadataProbe(server, "/versions", status=300) as versions,
    ):
        thread = threading.Thread(target=download, name="downloads", daemon=True)
        thread.start()
        try:
            up = uploads(server, upload_args, args.uploads, args.upload_size)
        finally:
            thread.join()
    if errors:
        raise errors[0]
    return Together(down[0], up, peak(), probe, versions)


class Sampling:
    """Calls C{sample} every C{interval} s in a thread, inside a C{with}."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError


class MetadataProbe(Sampling):
    """GETs one image's metadata every C{interval} s in a thread; its latencies (ms)."""

    def __init__(
        self, server: Server, path: str, interval: float = 0.02, status: int = 200
    ) -> None:
        super().__init__(interval)
        self.status = status
        self.netloc = urlsplit(server.base_url).netloc
        self.path = path
        self.latencies: list[float] = []
        self.errors = 0

    def sample(self) -> None:
        began = time.monotonic()
        try:
            connection = http.client.HTTPConnection(self.netloc, timeout=30)
            connection.request("GET", self.path)
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status != self.status:
                self.errors += 1
        except OSError:
            self.errors += 1
        self.latencies.append((time.monotonic() - began) * 1000)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

    def p99(self) -> float:
        return self.quantile(0.99)

    def worst(self) -> float:
        return max(self.latencies, default=0.0)


def each(values: object) -> str:
    """Figures, one per round, as a table cell."""
    return ", ".join(f"{v:.0f}" for v in values)  # type: ignore[attr-defined]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size", type=transfer.parse_size, default=128 * MiB)
    parser.add_argument("--downloads", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--upload-size", type=transfer.parse_size, default=32 * MiB)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--clients-nice", type=int, default=0, choices=range(20), metavar="N",
        help="run the load-generating curls N nicer than this script (not the metadata "
        "GETs' client), for nginx and glance-tx alike: a model of clients on other "
        "machines (default 0: they compete with the server as equals)",
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global CLIENTS_NICE
    CLIENTS_NICE = args.clients_nice
    hashes = transfer.hash_speeds()
    print(hashes, flush=True)
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {"nginx": [], "glance-tx": []}
    rss_down: list[int] = []
    probes: list[MetadataProbe] = []
    mixed: list[Together] = []
    try:
        with ExitStack() as stack:
            workdir, path, md5 = transfer.workdir_with_test_file(
                "glance-tx-bench-concurrency-", args.size, args.tmpdir, args.keep, stack
            )
            upload_file = workdir / "upload.raw"
            transfer.make_test_file(upload_file, args.upload_size)
            glance = transfer.start_glance_tx(workdir, args.size, args.twistd, stack)
            nginx = transfer.start_nginx(workdir, path.parent, stack)
            _, image_id = transfer.upload_glance_tx(glance, path, args.size, md5, False, "one")
            meta = f"/v2/images/{image_id}"
            upload_args = transfer.upload_args(upload_file, False) + [
                "-X", "POST", "-o", "/dev/null",
                "-H", "x-image-meta-name: bench-concurrent",
                "-H", "x-image-meta-disk_format: raw",
                "-H", "x-image-meta-container_format: bare",
            ]
            for round_ in range(1, args.rounds + 1):
                rates["nginx"].append(downloads(nginx, "/image.raw", args.downloads, args.size))
                with transfer.rss_sampler(glance) as peak, MetadataProbe(glance, meta) as probe:
                    rates["glance-tx"].append(
                        downloads(glance, f"{meta}/file", args.downloads, args.size)
                    )
                rss_down.append(peak())
                probes.append(probe)
                print(f"  round {round_}: nginx {rates['nginx'][-1]:.0f} MiB/s, glance-tx "
                      f"{rates['glance-tx'][-1]:.0f} MiB/s, peak RSS {peak() // 1024} MiB, "
                      f"metadata GET p99 {probe.p99():.0f} ms", flush=True)
                mixed.append(together(glance, meta, args, upload_args))
                m = mixed[-1]
                print(f"  round {round_}, {args.downloads} downloads and {args.uploads} "
                      f"uploads at once: down {m.down_rate:.0f} MiB/s, up {m.up_rate:.0f} "
                      f"MiB/s, peak RSS {m.peak_kib // 1024} MiB, metadata GET p99 "
                      f"{m.probe.p99():.0f} ms, worst {m.probe.worst():.0f} ms; GET /versions "
                      f"p99 {m.versions.p99():.0f} ms, worst {m.versions.worst():.0f} ms",
                      flush=True)
            glance.check_alive()
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    load = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    ratio = statistics.median(rates["glance-tx"]) / statistics.median(rates["nginx"])
    latencies = [x for p in probes for x in p.latencies]
    worst = max(latencies, default=0.0)
    p99 = sorted(latencies)[int(len(latencies) * 0.99)] if latencies else 0.0
    mixed_latencies = sorted(x for m in mixed for x in m.probe.latencies)
    mixed_worst = max(mixed_latencies, default=0.0)
    mixed_p99 = (
        mixed_latencies[int(len(mixed_latencies) * 0.99)] if mixed_latencies else 0.0
    )
    mixed_peak = max(m.peak_kib for m in mixed) // 1024
    versions = sorted(x for m in mixed for x in m.versions.latencies)
    versions_worst = max(versions, default=0.0)
    versions_p99 = versions[int(len(versions) * 0.99)] if versions else 0.0
    size = transfer.human(args.size)
    lines_out = [
        "## Many clients: `bench/concurrency.py`",
        "",
        f"{args.downloads} concurrent downloads of one {size} image (one `curl --parallel "
        f"--parallel-max {args.downloads}`) from nginx (one worker, sendfile) and from "
        f"glance-tx, {args.rounds} rounds, nginx first in each; then, in each round, "
        f"the same {args.downloads} downloads and {args.uploads} concurrent "
        f"{transfer.human(args.upload_size)} uploads (v1 POST, a second `curl --parallel`) "
        "started at once. Peak RSS: glance-tx's VmRSS sampled every 50 ms. Metadata GET: "
        "one `GET /v2/images/{id}` every 20 ms meanwhile, each on a new connection; "
        "all at once, also one `GET /versions` every 20 ms (no registry call: the "
        "reactor's part of the wait alone). "
        + (
            f"The load-generating curls ran {args.clients_nice} nicer than the metadata "
            "GETs' client, in sessions (autogroups) of their own as nice "
            "(`--clients-nice`): a model of clients on other machines (they give way to "
            "every other process on the machine too)."
            if args.clients_nice else
            "The load-generating curls ran as nice as the server and the metadata GETs' "
            "client (`--clients-nice 0`), on the same CPUs: clients in a deployment are "
            "other machines (`--clients-nice 10` makes them give way)."
        ),
        "",
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; "
        f"`nproc` {os.cpu_count()}, {cpu_model()}; {hashes}; load average {load}; "
        f"glance-tx commit {commit()}",
        f"- Command: `.venv/bin/python bench/concurrency.py --size {args.size // MiB}M "
        f"--downloads {args.downloads} --uploads {args.uploads} --upload-size "
        f"{args.upload_size // MiB}M --rounds {args.rounds}"
        + (f" --clients-nice {args.clients_nice}" if args.clients_nice else "") + "`",
        "",
        "| what | nginx | glance-tx |",
        "|---|---:|---:|",
        f"| downloads alone, aggregate MiB/s (each round) | {each(rates['nginx'])} | "
        f"{each(rates['glance-tx'])} |",
        f"| glance-tx peak RSS during the downloads alone | | {max(rss_down) // 1024} MiB |",
        f"| metadata GET during the downloads alone: p99, worst ({len(latencies)} GETs, "
        f"{sum(p.errors for p in probes)} errors) | | {p99:.0f} ms, {worst:.0f} ms |",
        f"| all at once: downloads MiB/s (each round) | | {each(m.down_rate for m in mixed)} |",
        f"| all at once: uploads MiB/s (each round) | | {each(m.up_rate for m in mixed)} |",
        f"| all at once: peak RSS MiB (each round) | | "
        f"{each(m.peak_kib / 1024 for m in mixed)} |",
        f"| all at once: metadata GET p99, worst ({len(mixed_latencies)} GETs, "
        f"{sum(m.probe.errors for m in mixed)} errors) | | {mixed_p99:.0f} ms, "
        f"{mixed_worst:.0f} ms |",
        f"| all at once: GET /versions p99, worst ({len(versions)} GETs, "
        f"{sum(m.versions.errors for m in mixed)} errors) | | {versions_p99:.0f} ms, "
        f"{versions_worst:.0f} ms |",
        "",
        "Ratios and targets (issue 14):",
        "",
        f"- downloads alone, glance-tx / nginx (median of rounds): {ratio:.0%} "
        f"(target at least {DOWNLOAD_RATIO_TARGET:.0%})",
        f"- peak RSS with {args.downloads} downloads and {args.uploads} uploads in flight: "
        f"{mixed_peak} MiB (target under {RSS_TARGET_MIB} MiB)",
        f"- metadata GET meanwhile: worst {mixed_worst:.0f} ms, p99 {mixed_p99:.0f} ms "
        f"(target within {METADATA_TARGET_MS} ms); GET /versions, which asks no registry, "
        f"worst {versions_worst:.0f} ms, p99 {versions_p99:.0f} ms",
    ]
    transfer.publish_section("concurrency.py", "\n".join(lines_out), not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
