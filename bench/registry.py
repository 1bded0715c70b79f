#!/usr/bin/env python3
"""
Metadata requests through the API at 100,000 images, for each way of
running the registry.

For the modes asked for -- SQLite in-process, PostgreSQL in-process,
PostgreSQL behind ``twistd glance-registry`` -- this script:

1. fills a fresh database with ``--images`` images (bulk inserts with
   ``registry_pages.rows``: a few properties, tags and members each): a
   SQLite file, and one PostgreSQL database that both PostgreSQL modes
   serve;
2. starts every mode's servers at once on free loopback ports (``twistd -n
   glance``, and for the last mode ``twistd -n glance-registry`` with the
   API's ``registry_url`` pointing at it) and waits for ``/healthcheck``;
3. pages through each listing below once per mode (which also checks that
   no image comes back twice) to find a marker 90% of the way in;
4. times ``--requests`` sequential requests for the page of 25 after that
   marker, over one keep-alive connection per mode, one request to each
   mode in turn (so a machine shared with other work loads every mode
   alike), and reports p50 and p99;
5. runs ``wrk`` (Debian package) for ``--seconds`` against single-image
   ``GET /v2/images/{id}`` of random ids, mode after mode, and reports
   requests per second and the CPU the servers spent per 1,000 requests.

The figures of the three modes come from one run on one machine, so their
ratios hold even where the machine's speed does not. The machine's md5 and
sha512 speeds are printed beside them, as for every figure in RESULTS.md.

    .venv/bin/python bench/registry.py --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/registry.py --images 10000 --modes sqlite --no-write
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

# This directory is on sys.path when the script runs: reuse the other
# benchmarks' process handling and database filling.
import registry_pages
import transfer
from transfer import BenchError, Server

MODES = ("sqlite", "postgresql", "registry")
MODE_LABELS = {
    "sqlite": "SQLite, in-process",
    "postgresql": "PostgreSQL, in-process",
    "registry": "PostgreSQL via glance-registry",
}

#: name -> (query string without marker/limit, identity headers). Both are
#: filtered and sorted; the second is a member project's default view
#: (public, own, and accepted shared images: a membership probe per row).
LISTINGS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "admin, status=active, name asc": (
        {"status": "active", "sort": "name:asc"},
        {},
    ),
    "project-07, os_distro=debian, created_at desc": (
        {"os_distro": "debian", "sort": "created_at:desc"},
        {"X-Project-Id": registry_pages.VIEWER_PROJECT, "X-Roles": "member"},
    ),
}
PAGE = 25


@dataclass
class ModeFigures:
    mode: str
    listing_ms: dict[str, tuple[float, float]]  # name -> (p50, p99)
    listing_cpu_ms: dict[str, float]  # name -> servers' CPU ms per page
    gets_per_second: float
    cpu_ms_per_get: float


def api_get(
    connection: http.client.HTTPConnection, path: str, headers: dict[str, str]
) -> dict:
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise BenchError(f"GET {path} answered {response.status}: {body[:300]!r}")
    return json.loads(body)


def listing_ids(
    connection: http.client.HTTPConnection, query: dict[str, str], headers: dict[str, str]
) -> list[str]:
    """Every id of a listing, page by page, following the C{next} links."""
    ids: list[str] = []
    path = "/v2/images?" + urlencode({**query, "limit": "1000"})
    while path:
        page = api_get(connection, path, headers)
        ids.extend(image["id"] for image in page["images"])
        path = page.get("next") or ""
    if len(ids) != len(set(ids)):
        raise BenchError("the listing returned an image twice")
    return ids


def listing_path(
    server: Server, query: dict[str, str], headers: dict[str, str]
) -> tuple[http.client.HTTPConnection, str, list[str]]:
    """
    A keep-alive connection to C{server}, the path of the page of 25 after
    a marker 90% deep in the listing, and the ids that page must hold.
    """
    connection = http.client.HTTPConnection(urlsplit(server.base_url).netloc, timeout=60)
    ids = listing_ids(connection, query, headers)
    if len(ids) < PAGE * 2:
        raise BenchError(f"the listing {query} has only {len(ids)} images")
    at = int(len(ids) * 0.9)
    path = "/v2/images?" + urlencode({**query, "limit": str(PAGE), "marker": ids[at]})
    return connection, path, ids[at + 1 : at + 1 + PAGE]


def time_listings(
    servers: dict[str, list[Server]],
    query: dict[str, str],
    headers: dict[str, str],
    requests: int,
) -> dict[str, tuple[float, float, float]]:
    """
    p50 and p99 milliseconds of the page of 25 after a marker 90% deep,
    for each mode's API (the last of its servers), and the CPU
    milliseconds all the mode's servers spent per page: one request to
    each in turn, so that every mode sees the same load on a machine
    shared with other work.
    """
    targets = {mode: listing_path(chain[-1], query, headers) for mode, chain in servers.items()}
    for connection, _, _ in targets.values():
        # Idle while the other modes paged through their listings (minutes
        # on a loaded machine): the server may have closed it. The next
        # request opens it again.
        connection.close()
    timings: dict[str, list[float]] = {mode: [] for mode in servers}
    pids = {mode: [pid for server in chain for pid in server.pids] for mode, chain in servers.items()}
    cpu: dict[str, float] = {}
    try:
        for n in range(requests + 20):
            if n == 20:
                cpu = {mode: transfer.cpu_seconds(pids[mode]) for mode in servers}
            for mode, (connection, path, expected) in targets.items():
                began = time.perf_counter()
                page = api_get(connection, path, headers)
                elapsed = time.perf_counter() - began
                if n >= 20:  # the first ones warm the caches
                    timings[mode].append(elapsed)
                if [image["id"] for image in page["images"]] != expected:
                    raise BenchError("the page after the marker is not the expected one")
        cpu = {
            mode: (transfer.cpu_seconds(pids[mode]) - before) * 1000 / requests
            for mode, before in cpu.items()
        }
    finally:
        for connection, _, _ in targets.values():
            connection.close()
    figures = {}
    for mode, values in timings.items():
        values.sort()
        figures[mode] = (
            statistics.median(values) * 1000,
            values[min(len(values) - 1, int(len(values) * 0.99))] * 1000,
            cpu[mode],
        )
    return figures


WRK_SCRIPT = """\
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
math.randomseed(7)
request = function()
  return wrk.format("GET", "/v2/images/" .. ids[math.random(#ids)])
end
response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\\n")
  end
end
"""


def get_rate(
    workdir: Path, servers: list[Server], ids: list[str], seconds: int
) -> tuple[float, float]:
    """wrk against single-image GETs: requests/s and server CPU ms per GET."""
    id_file = workdir / "ids.txt"
    id_file.write_text("\n".join(ids) + "\n")
    script = workdir / "get.lua"
    script.write_text(WRK_SCRIPT % {"ids": id_file})
    pids = [pid for server in servers for pid in server.pids]
    cpu_before = transfer.cpu_seconds(pids)
    done = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", str(script),
         servers[-1].base_url],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    cpu = transfer.cpu_seconds(pids) - cpu_before
    if done.returncode != 0 or done.stderr.strip():
        raise BenchError(f"wrk failed or saw errors:\n{done.stdout}\n{done.stderr[:2000]}")
    total = next(
        int(line.split()[0])
        for line in done.stdout.splitlines()
        if "requests in" in line
    )
    rate = next(
        float(line.split()[1])
        for line in done.stdout.splitlines()
        if line.startswith("Requests/sec:")
    )
    return rate, cpu * 1000 / total


@contextmanager
def databases(
    modes: list[str], workdir: Path, postgres_url: str | None, count: int, keep: Path | None
) -> Iterator[dict[str, str]]:
    """
    A filled database for each mode, as SQLAlchemy URLs: a SQLite file,
    and one PostgreSQL database that both PostgreSQL modes serve (the same
    rows, so their figures differ only by the registry's hop). With
    C{keep}, a fill made there (and a PostgreSQL database named for the
    count) is kept after the run and the next run with the same count
    reuses it: the runs only read.
    """
    urls = {}
    with ExitStack() as stack:
        if "sqlite" in modes:
            path = (keep or workdir) / f"registry-{count}.sqlite"
            urls["sqlite"] = f"sqlite:///{path}"
            if keep is not None and (keep / f"registry-{count}.filled").exists():
                print(f"  reusing the SQLite fill in {path}", flush=True)
            else:
                for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    stale.unlink(missing_ok=True)
                fill(urls["sqlite"], count)
                if keep is not None:
                    (keep / f"registry-{count}.filled").touch()
        postgres_modes = [mode for mode in modes if mode != "sqlite"]
        if postgres_modes:
            if postgres_url is None:
                raise BenchError(f"mode {postgres_modes[0]} needs --postgres-url")
            if keep is not None:
                shared = kept_postgresql(postgres_url, count)
            else:
                registry = stack.enter_context(
                    registry_pages.postgresql_registry(postgres_url, count)
                )
                print(f"  filling {count} images (PostgreSQL)", flush=True)
                registry_pages.fill(registry, count)
                shared = registry.engine.url.render_as_string(hide_password=False)
            urls.update({mode: shared for mode in postgres_modes})
        yield urls


def kept_postgresql(admin_url: str, count: int) -> str:
    """
    The URL of the kept PostgreSQL fill of C{count} images, made now if
    there is none (a database left half-filled by an interrupted run is
    made again: the fill's last step records that it is complete).
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"glance_tx_bench_registry_{count}"
    url = make_url(admin_url).set(database=name)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists is not None:
                engine = create_engine(url)
                try:
                    with engine.connect() as kept:
                        done = kept.execute(
                            text("SELECT 1 FROM pg_tables WHERE tablename = 'bench_filled'")
                        ).first()
                finally:
                    engine.dispose()
                if done is not None:
                    print(f"  reusing the PostgreSQL fill in {name}", flush=True)
                    return url.render_as_string(hide_password=False)
                connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        admin.dispose()
    with registry_pages.opened_registry(url) as registry:
        print(f"  filling {count} images (PostgreSQL, kept as {name})", flush=True)
        registry_pages.fill(registry, count)
        with registry.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE bench_filled ()")
    return url.render_as_string(hide_password=False)


def fill(url: str, count: int) -> None:
    with registry_pages.opened_registry(url) as registry:
        print(f"  filling {count} images", flush=True)
        registry_pages.fill(registry, count)


def start_servers(
    mode: str, workdir: Path, sql_url: str, twistd: str, stack: ExitStack
) -> list[Server]:
    """The servers of C{mode}, the API last."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(transfer.REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    servers = []
    data = workdir / f"api-{mode}"
    data.mkdir()
    options = f"sql_connection = {sql_url}\n"
    if mode == "registry":
        port = transfer.free_port()
        registry_config = workdir / "registry.conf"
        registry_config.write_text(f"[DEFAULT]\nsql_connection = {sql_url}\n")
        servers.append(
            transfer.start_server(
                "glance-registry",
                [twistd, "-n", "--pidfile=", "glance-registry",
                 "--port", f"tcp:{port}:interface=127.0.0.1",
                 "--config", str(registry_config)],
                f"http://127.0.0.1:{port}", "/healthcheck", workdir, stack, env=env,
            )
        )
        options = f"registry_url = http://127.0.0.1:{port}\n"
    config = data / "glance.conf"
    config.write_text("[DEFAULT]\nrecover_on_start = false\n" + options)
    port = transfer.free_port()
    servers.append(
        transfer.start_server(
            f"glance-tx-{mode}",
            [twistd, "-n", "--pidfile=", "glance",
             "--port", f"tcp:{port}:interface=127.0.0.1",
             "--data-dir", str(data), "--config", str(config)],
            f"http://127.0.0.1:{port}", "/healthcheck", data, stack, env=env,
        )
    )
    return servers


def measure(args: argparse.Namespace, workdir: Path) -> list[ModeFigures]:
    """Every mode's servers up at once; listings interleaved, then GETs per mode."""
    with ExitStack() as stack:
        urls = stack.enter_context(
            databases(args.modes, workdir, args.postgres_url, args.images, args.keep_fill)
        )
        servers = {
            mode: start_servers(mode, workdir, urls[mode], args.twistd, stack)
            for mode in args.modes
        }
        apis = {mode: chain[-1] for mode, chain in servers.items()}
        listing_ms: dict[str, dict[str, tuple[float, float]]] = {m: {} for m in args.modes}
        listing_cpu: dict[str, dict[str, float]] = {m: {} for m in args.modes}
        for name, (query, headers) in LISTINGS.items():
            for mode, figures in time_listings(servers, query, headers, args.requests).items():
                listing_ms[mode][name] = figures[:2]
                listing_cpu[mode][name] = figures[2]
                print(f"  {MODE_LABELS[mode]}, {name}: p50 {figures[0]:.2f} ms, "
                      f"p99 {figures[1]:.2f} ms, {figures[2]:.2f} CPU ms per page",
                      flush=True)
        results = []
        for mode in args.modes:
            connection = http.client.HTTPConnection(
                urlsplit(apis[mode].base_url).netloc, timeout=60
            )
            try:
                ids = listing_ids(connection, {"sort": "created_at:desc"}, {})
            finally:
                connection.close()
            sample = random.Random(1).sample(ids, min(len(ids), 5000))
            rate, cpu_ms = get_rate(workdir, servers[mode], sample, args.seconds)
            print(f"  {MODE_LABELS[mode]}, single-image GETs: {rate:.0f}/s, "
                  f"{cpu_ms:.2f} CPU ms each", flush=True)
            results.append(
                ModeFigures(mode, listing_ms[mode], listing_cpu[mode], rate, cpu_ms)
            )
    return results


def report(
    args: argparse.Namespace, figures: list[ModeFigures], hashes: str, load: str
) -> str:
    by_mode = {f.mode: f for f in figures}
    lines = [
        "## Metadata through the API: `bench/registry.py`",
        "",
        textwrap.fill(
            f"{args.images:,} images with a few properties, tags and members each. "
            f"Listing: {args.requests} sequential requests over one keep-alive "
            "connection for the page of 25 after a marker 90% deep, the modes' "
            "servers up at once and one request to each in turn (both PostgreSQL "
            "modes over one database). GETs: wrk, "
            f"1 thread, 8 connections, {args.seconds} s, random ids; server CPU "
            "is every server process of the mode (the API, and glance-registry), "
            "per page and per GET.",
            width=78,
        ),
        "",
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; "
        f"{os.cpu_count()} vCPUs; {hashes}; {load}",
        f"- Command: `.venv/bin/python bench/registry.py --images {args.images}"
        f" --modes {','.join(args.modes)} --requests {args.requests} --seconds {args.seconds}"
        + (" --postgres-url URL`" if args.postgres_url else "`"),
        "",
        "| mode | "
        + " | ".join(f"{name} p50 / p99 ms, CPU ms" for name in LISTINGS)
        + " | GET /v2/images/{id} per s | CPU ms per GET |",
        "|---|" + "---:|" * (len(LISTINGS) + 2),
    ]
    for f in figures:
        cells = [
            f"{f.listing_ms[name][0]:.1f} / {f.listing_ms[name][1]:.1f}, "
            f"{f.listing_cpu_ms[name]:.2f}"
            for name in LISTINGS
        ]
        lines.append(
            f"| {MODE_LABELS[f.mode]} | " + " | ".join(cells)
            + f" | {f.gets_per_second:.0f} | {f.cpu_ms_per_get:.2f} |"
        )
    if "registry" in by_mode and "postgresql" in by_mode:
        inproc, remote = by_mode["postgresql"], by_mode["registry"]
        lines += [
            "",
            textwrap.fill(
                "Through glance-registry against PostgreSQL in-process: GET rate "
                f"{inproc.gets_per_second / remote.gets_per_second:.2f}x lower, listing p99 "
                + ", ".join(
                    f"{remote.listing_ms[n][1] / inproc.listing_ms[n][1]:.2f}x"
                    for n in LISTINGS
                )
                + "; p50 "
                + ", ".join(
                    f"{remote.listing_ms[n][0] / inproc.listing_ms[n][0]:.2f}x"
                    for n in LISTINGS
                )
                + " (target: at most 1.5x; p99 under 50 ms in every mode).",
                width=78,
            ),
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=500,
                        help="timed listing requests per listing [default: 500]")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration [default: 10]")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)} [default: all]")
    parser.add_argument("--postgres-url", default=os.environ.get("GLANCE_TX_TEST_POSTGRES_URL"),
                        help="an admin URL of a PostgreSQL server to make databases in "
                             "[default: $GLANCE_TX_TEST_POSTGRES_URL]")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures only; leave bench/RESULTS.md alone")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--keep-fill", type=Path, default=None, metavar="DIR",
                        help="keep the filled databases (the SQLite file in DIR, the "
                             "PostgreSQL database by the count's name) and reuse them "
                             "on the next run with the same --images")
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hashes = transfer.hash_speeds()
    print(hashes, flush=True)
    load_before = os.getloadavg()[0]
    figures = []
    try:
        with transfer_workdir(args) as workdir:
            figures = measure(args, workdir)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    section = report(args, figures, hashes, load)
    transfer.publish_section("registry.py", section, not args.no_write)
    return 0


@contextmanager
def transfer_workdir(args: argparse.Namespace) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="glance-tx-bench-registry-", dir=args.tmpdir) as d:
        yield Path(d)


if __name__ == "__main__":
    sys.exit(main())
