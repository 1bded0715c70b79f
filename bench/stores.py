#!/usr/bin/env python3
"""
Image data through glance-tx to each kind of store, beside a direct client
of the same store moving the same bytes, in one run.

One run of this script:

1. writes an incompressible test file (``--size``, 1 GiB by default) in a
   fresh temporary directory (``transfer.workdir_with_test_file``);
2. starts the stores' servers on free loopback ports: moto_server for S3
   (signature checks on; ``tests/s3_server.py`` makes its key), a one-node
   Swift (``tools/swift-one-node``, memcached, tempauth) and nginx serving
   the test file for the read-only HTTP store;
3. starts ``twistd -n glance`` with five stores enabled (``file:file``,
   ``s3:s3``, ``s3put:s3``, ``swift:swift``, ``web:http``; ``s3put`` is
   the same moto bucket with a 5 GiB ``s3_store_large_object_size``);
4. for each writable store: uploads the file through the API with curl
   (``POST /v1/images`` with ``x-image-meta-store``, Content-Length) and
   downloads it back; then moves the same bytes with curl straight to and
   from the store (``--aws-sigv4`` for S3, an ``X-Auth-Token`` for Swift,
   ``dd ... conv=fsync`` and nginx for the filesystem); to S3 twice, each
   beside a direct client making the same requests of moto: through
   ``s3put`` (one PUT) beside curl's one PUT, through ``s3`` (10 MiB
   parts past glance_store's 100 MiB default) beside boto3's parts;
5. for the HTTP store: registers the nginx URL as an image location and
   downloads it through glance-tx, beside curl from nginx and curl through
   a second nginx that relays the first (``proxy_pass``, unbuffered, 1 MiB
   reads, as glance-tx relays): a relay in C, which tells the cost of one
   more hop on this machine from glance-tx's own;
   (steps 4 and 5 are one round; ``--rounds`` of them, 3 by default, each
   image and direct object deleted before the next, so every transfer runs
   beside its direct client in every round, whatever the machine's load);
6. uploads ``--concurrent`` (20) images of ``--concurrent-size`` (32 MiB)
   at once to each writable store and samples glance-tx's RSS meanwhile;
7. prints, per transfer, the median MiB/s through glance-tx and of the
   direct client, their ratio and each round's, glance-tx's CPU seconds per
   GiB and peak RSS, the concurrent uploads' peak RSS, with this machine's
   md5 and sha512 speeds (before and after) and its load average, and
   writes them to its section of ``RESULTS.md``.

Every transfer's byte count is checked, and every upload's md5.
Targets (issue 8): through glance-tx at least 80% of the direct client's
throughput for each store; peak RSS under 150 MiB for every store.

    .venv/bin/python bench/stores.py
    .venv/bin/python bench/stores.py --size 256M --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

# This directory is on sys.path when the script runs: reuse the transfer
# benchmark's processes, files and measurements.
import transfer
from transfer import BenchError, Sample, Server

REPO = transfer.REPO
BUCKET = "glance-bench"
CONTAINER = "glance-bench"
REGION = "us-east-1"
STORES = ("file", "s3", "swift", "http")
#: A load average above this (on the 2 vCPUs) marks the run noisy.
NOISY_LOAD = 1.0


@dataclass
class Row:
    store: str
    direction: str
    through: Sample
    direct: Sample | None
    direct_label: str


def start_moto(workdir: Path, stack: ExitStack) -> tuple[Server, str]:
    """moto_server with signature checks; returns it and its keyed URL."""
    port = transfer.free_port()
    moto = Path(sys.executable).with_name("moto_server")
    env = dict(os.environ, TMPDIR=str(workdir))
    server = transfer.start_server(
        "moto", [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}", "/moto-api/", workdir, stack, env=env,
    )
    keyed = subprocess.run(
        [sys.executable, "-m", "tests.s3_server", server.base_url],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    if keyed.returncode != 0:
        raise BenchError(f"could not set up moto: {keyed.stderr.strip()}")
    return server, keyed.stdout.strip()


def start_swift(workdir: Path, stack: ExitStack) -> tuple[Server, dict[str, str]]:
    """A one-node Swift; returns its proxy (all its processes) and settings."""
    root = workdir / "swift"
    root.mkdir()
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "swift-one-node"), str(root)], check=True
    )
    # Shell assignments, one per variable; a value may span lines in quotes.
    settings = dict(
        token.partition("=")[::2] for token in shlex.split((root / "cluster.env").read_text())
    )
    memcached = shutil.which("memcached")
    if memcached is None:
        raise BenchError("memcached is not installed (Debian package memcached)")
    log = (root / "servers.log").open("wb")
    stack.callback(log.close)
    helpers = [
        subprocess.Popen(
            [memcached, "-l", "127.0.0.1", "-p", settings["SWIFT_MEMCACHED_PORT"],
             "-U", "0", "-m", "16", "-u", "root"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    ]
    commands = settings["SWIFT_SERVER_COMMANDS"].splitlines()
    for command in commands[:-1]:  # account, container, object
        helpers.append(
            subprocess.Popen(shlex.split(command), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        )
    for helper in helpers:
        stack.callback(Server(f"swift {helper.pid}", helper, "", root / "servers.log").stop)
    proxy = transfer.start_server(
        "swift-proxy", shlex.split(commands[-1]),
        f"http://127.0.0.1:{settings['SWIFT_PROXY_PORT']}", "/info", root, stack,
    )
    return proxy, settings


def swift_token(proxy: Server, settings: dict[str, str]) -> tuple[str, str]:
    request = urllib.request.Request(
        proxy.base_url + "/auth/v1.0",
        headers={"X-Auth-User": settings["SWIFT_USER"], "X-Auth-Key": settings["SWIFT_KEY"]},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]


def start_nginx_proxy(
    workdir: Path, upstream: Server, ready_path: str, stack: ExitStack
) -> Server:
    """
    nginx with one worker relaying C{upstream} as glance-tx relays the HTTP
    store: unbuffered (C{proxy_buffering off}: each read is sent on at
    once, nothing spooled to disk) in reads of up to 1 MiB, glance-tx's
    block. The reference for what one more hop costs on this machine.
    """
    prefix = workdir / "nginx-proxy"
    prefix.mkdir()
    port = transfer.free_port()
    conf = prefix / "nginx.conf"
    temp = " ".join(
        f"{name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
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
                {temp}
                server {{
                    listen 127.0.0.1:{port};
                    location / {{
                        proxy_pass {upstream.base_url};
                        proxy_http_version 1.1;
                        proxy_buffering off;
                        proxy_buffer_size 1m;
                        # Unused unbuffered, but nginx checks them against 1m.
                        proxy_buffers 4 1m;
                        proxy_busy_buffers_size 2m;
                    }}
                }}
            }}
            """
        )
    )
    argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return transfer.start_server(
        "nginx-proxy", argv, f"http://127.0.0.1:{port}", ready_path, prefix, stack
    )


def start_glance_tx(
    workdir: Path, size: int, s3_url: str, swift: Server | None, settings: dict[str, str],
    twistd: str, stack: ExitStack, s3_options: Sequence[str] = (),
) -> Server:
    """
    glance-tx with the file, S3 and HTTP stores, and Swift's when C{swift}
    runs; C{s3_options} (C{name=value}) go into the S3 stores' sections.
    Two S3 stores on the same moto: C{s3} with glance_store's default
    large-object size (100 MiB: an image of the benchmark's size goes up
    in parts, as boto3's does), and C{s3put} with S3's largest single PUT
    (5 GiB: one PUT, as curl's).
    """
    s3 = urlsplit(s3_url)
    data = workdir / "glance-tx"
    data.mkdir()
    config = data / "glance-tx.conf"
    s3_section = textwrap.indent(
        textwrap.dedent(
            f"""\
            s3_store_host = http://{s3.hostname}:{s3.port}
            s3_store_access_key = {unquote(s3.username or "")}
            s3_store_secret_key = {unquote(s3.password or "")}
            s3_store_bucket = {BUCKET}
            s3_store_create_bucket_on_put = true
            s3_store_bucket_url_format = path
            s3_store_region_name = {REGION}
            """
        ) + "".join(f"{option}\n" for option in s3_options),
        " " * 12,
    ).strip()
    config.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            image_size_cap = {max(size * 2, 1 << 40)}
            enabled_backends = file:file, s3:s3, s3put:s3, web:http{", swift:swift" if swift else ""}
            default_backend = file
            recover_on_start = false

            [file]
            filesystem_store_datadir = {data / "images"}

            [s3]
            {s3_section}

            [s3put]
            {s3_section}
            s3_store_large_object_size = 5120

            [web]
            http_store_allowed_networks = 127.0.0.0/8
            """
        )
    )
    if swift is not None:
        with config.open("a") as f:
            f.write(
                textwrap.dedent(
                    f"""
                    [swift]
                    swift_store_auth_address = {swift.base_url}/auth/v1.0
                    swift_store_auth_version = 1
                    swift_store_user = {settings["SWIFT_USER"]}
                    swift_store_key = {settings["SWIFT_KEY"]}
                    swift_store_container = {CONTAINER}
                    swift_store_create_container_on_put = true
                    """
                )
            )
    port = transfer.free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    argv = [
        twistd, "-n", "--pidfile=", "glance",
        "--port", f"tcp:{port}:interface=127.0.0.1",
        "--data-dir", str(data), "--config", str(config),
    ]
    return transfer.start_server(
        "glance-tx", argv, f"http://127.0.0.1:{port}", "/healthcheck", data, stack, env=env,
    )


def upload_through(
    glance: Server, path: Path, size: int, md5: str, store: str
) -> tuple[Sample, str]:
    response = path.parent / f"upload-{store}.json"
    args = transfer.upload_args(path, chunked=False) + [
        "-X", "POST", "-o", str(response),
        "-H", f"x-image-meta-name: bench-{store}",
        "-H", "x-image-meta-disk_format: raw",
        "-H", "x-image-meta-container_format: bare",
        "-H", f"x-image-meta-store: {store}",
        f"{glance.base_url}/v1/images",
    ]
    sample = transfer.measure(f"{store} up", glance, args, "up", size, ok_codes=(201,))
    image = json.loads(response.read_text())["image"]
    if image["size"] != size or image["checksum"] != md5:
        raise BenchError(f"{store}: stored {image['size']} bytes, md5 {image['checksum']}")
    return sample, image["id"]


def download_through(glance: Server, image_id: str, size: int, store: str) -> Sample:
    args = ["-o", "/dev/null", f"{glance.base_url}/v1/images/{image_id}"]
    return transfer.measure(f"{store} down", glance, args, "down", size)


def register_http_image(glance: Server, url: str, size: int) -> str:
    request = urllib.request.Request(
        f"{glance.base_url}/v1/images", method="POST",
        headers={
            "x-image-meta-name": "bench-web",
            "x-image-meta-disk_format": "raw",
            "x-image-meta-container_format": "bare",
            "x-image-meta-location": url,
            "x-image-meta-store": "web",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        image = json.loads(r.read())["image"]
    if image["size"] != size:
        raise BenchError(f"web: the HTTP location reports {image['size']} bytes")
    return image["id"]


def s3_sigv4(s3_url: str) -> list[str]:
    s3 = urlsplit(s3_url)
    return [
        "--aws-sigv4", f"aws:amz:{REGION}:s3",
        "--user", f"{unquote(s3.username or '')}:{unquote(s3.password or '')}",
        "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
    ]


#: boto3 uploading one file as the S3 store does past its large-object size:
#: a multipart upload of the store's part size, here with boto3's own
#: default of 10 parts in flight. Prints the seconds it took.
_BOTO3_UPLOAD = """
import sys, time
from urllib.parse import unquote, urlsplit
import boto3
from boto3.s3.transfer import TransferConfig
url, bucket, key, path, part = sys.argv[1:6]
s3 = urlsplit(url)
client = boto3.client(
    "s3", endpoint_url=f"http://{s3.hostname}:{s3.port}", region_name=sys.argv[6],
    aws_access_key_id=unquote(s3.username), aws_secret_access_key=unquote(s3.password),
)
config = TransferConfig(multipart_threshold=int(part), multipart_chunksize=int(part))
began = time.perf_counter()
client.upload_file(path, bucket, key, Config=config)
print(time.perf_counter() - began)
"""


def boto3_sample(moto: Server, s3_url: str, key: str, path: Path, size: int) -> Sample:
    """boto3's managed upload of C{path} in 10 MiB parts (the store's default)."""
    quiet = transfer.wait_for_quiet(transfer.QUIET_WAIT) if transfer.QUIET_WAIT > 0 else ""
    part = str(10 * transfer.MiB)
    with transfer.rss_sampler(moto):
        cpu0 = transfer.cpu_seconds(moto.pids)
        done = subprocess.run(
            [sys.executable, "-c", _BOTO3_UPLOAD, s3_url, BUCKET, key, str(path), part, REGION],
            capture_output=True, text=True, check=False,
        )
        cpu1 = transfer.cpu_seconds(moto.pids)
    if done.returncode != 0:
        raise BenchError(f"boto3 upload failed: {done.stderr.strip()[-500:]}")
    seconds = float(done.stdout.split()[-1])
    return Sample("s3 direct up (boto3)", size, seconds, cpu1 - cpu0, 0.0, 0, 0.0, 0.0, quiet)


def dd_sample(path: Path, target: Path, size: int) -> Sample:
    """The filesystem's own write speed: dd with fsync, as the store does."""
    began = time.perf_counter()
    subprocess.run(
        ["dd", f"if={path}", f"of={target}", "bs=1M", "conv=fsync", "status=none"], check=True
    )
    seconds = time.perf_counter() - began
    target.unlink()
    return Sample("file up (dd)", size, seconds, 0.0, 0.0, 0, 0.0, 0.0)


def delete_image(glance: Server, image_id: str) -> None:
    """Delete a measured image (and its data in its store) before the next round."""
    request = urllib.request.Request(f"{glance.base_url}/v1/images/{image_id}", method="DELETE")
    urllib.request.urlopen(request, timeout=120).close()


def curl_delete(url: str, extra: list[str]) -> None:
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-X", "DELETE", *extra, url], check=True)


@dataclass
class Memory:
    store: str
    count: int
    size: int
    baseline_kib: int
    peak_kib: int
    seconds: float


def concurrent_uploads(
    glance: Server, store: str, path: Path, size: int, count: int
) -> Memory:
    """
    C{count} uploads of C{path} to C{store} at once (curl, v1, Content-Length):
    glance-tx's summed VmRSS before, and its peak while they run.
    """
    baseline = transfer.status_kib(glance.pids, "VmRSS")
    responses = [path.parent / f"concurrent-{store}-{n}.json" for n in range(count)]
    with transfer.rss_sampler(glance) as peak:
        began = time.perf_counter()
        curls = [
            subprocess.Popen(
                ["curl", "-sS", "-T", str(path), "-H", "Expect:",
                 "-H", "Content-Type: application/octet-stream",
                 "-X", "POST", "-o", str(response), "-w", "%{http_code}",
                 "-H", f"x-image-meta-name: concurrent-{store}",
                 "-H", "x-image-meta-disk_format: raw",
                 "-H", "x-image-meta-container_format: bare",
                 "-H", f"x-image-meta-store: {store}",
                 f"{glance.base_url}/v1/images"],
                stdout=subprocess.PIPE, text=True,
            )
            for response in responses
        ]
        codes = [c.communicate()[0].strip() for c in curls]
        seconds = time.perf_counter() - began
    if codes != ["201"] * count:
        raise BenchError(f"{store}: concurrent uploads answered {codes}")
    for response in responses:
        image = json.loads(response.read_text())["image"]
        if image["size"] != size:
            raise BenchError(f"{store}: a concurrent upload stored {image['size']} bytes")
        delete_image(glance, image["id"])
        response.unlink()
    return Memory(store, count, size, baseline, peak(), seconds)


def one_round(
    args: argparse.Namespace, glance: Server, moto: Server, s3_url: str,
    swift: Server | None, settings: dict[str, str], nginx: Server,
    relay: Server | None, path: Path, md5: str, workdir: Path,
    report: Callable[[Row], None],
) -> None:
    """Every store's transfers once, each beside its direct client."""
    stores = args.stores
    # The filesystem store, against dd (write) and nginx (read).
    if "file" in stores:
        up, image_id = upload_through(glance, path, args.size, md5, "file")
        report(Row("file", "up", up, dd_sample(path, workdir / "dd.out", args.size),
                   "dd conv=fsync"))
        down = download_through(glance, image_id, args.size, "file")
        direct = transfer.measure("nginx down", nginx, ["-o", "/dev/null",
                                  f"{nginx.base_url}/{path.name}"], "down", args.size)
        report(Row("file", "down", down, direct, "nginx"))
        delete_image(glance, image_id)

    # S3 (moto), against curl --aws-sigv4 to the same server.
    if "s3" in stores:
        s3_object = f"{moto.base_url}/{BUCKET}/direct-{int(time.time())}"
        # Each S3 upload beside the direct client that makes the same
        # requests of moto: one PUT (store s3put) beside curl's, parts
        # (store s3) beside boto3's; a multipart upload costs moto about
        # twice the CPU of one PUT (it copies the parts into one object).
        put, put_id = upload_through(glance, path, args.size, md5, "s3put")
        # curl would sign the empty "Expect:" that upload_args sends (to
        # drop 100-continue) without sending it, and S3 would refuse that.
        direct = transfer.measure("s3 direct up", moto, ["-T", str(path)]
                                + s3_sigv4(s3_url) + ["-o", "/dev/null", s3_object],
                                "up", args.size, ok_codes=(200,))
        report(Row("s3", "up, one PUT", put, direct, "curl --aws-sigv4, one PUT"))
        delete_image(glance, put_id)
        up, image_id = upload_through(glance, path, args.size, md5, "s3")
        boto3_key = f"{s3_object.rpartition('/')[2]}-boto3"
        direct = boto3_sample(moto, s3_url, boto3_key, path, args.size)
        report(Row("s3", "up, parts", up, direct, "boto3 upload_file, 10 MiB parts"))
        down = download_through(glance, image_id, args.size, "s3")
        direct = transfer.measure("s3 direct down", moto, s3_sigv4(s3_url)
                                + ["-o", "/dev/null", s3_object], "down", args.size, ok_codes=(200,))
        report(Row("s3", "down", down, direct, "curl --aws-sigv4"))
        delete_image(glance, image_id)
        for key in (s3_object, f"{moto.base_url}/{BUCKET}/{boto3_key}"):
            curl_delete(key, s3_sigv4(s3_url))

    # Swift, against curl with a token to the same proxy.
    if "swift" in stores:
        assert swift is not None
        storage_url, token = swift_token(swift, settings)
        swift_object = f"{storage_url}/{CONTAINER}/direct"
        auth = ["-H", f"X-Auth-Token: {token}"]
        up, image_id = upload_through(glance, path, args.size, md5, "swift")
        direct = transfer.measure("swift direct up", swift, transfer.upload_args(path, False)
                                + auth + ["-o", "/dev/null", swift_object],
                                "up", args.size, ok_codes=(201,))
        report(Row("swift", "up", up, direct, "curl"))
        down = download_through(glance, image_id, args.size, "swift")
        direct = transfer.measure("swift direct down", swift, auth
                                + ["-o", "/dev/null", swift_object], "down", args.size, ok_codes=(200,))
        report(Row("swift", "down", down, direct, "curl"))
        delete_image(glance, image_id)
        curl_delete(swift_object, auth)

    # The read-only HTTP store, against curl from nginx.
    if "http" in stores:
        image_id = register_http_image(glance, f"{nginx.base_url}/{path.name}", args.size)
        down = download_through(glance, image_id, args.size, "web")
        direct = transfer.measure("nginx down", nginx, ["-o", "/dev/null",
                                  f"{nginx.base_url}/{path.name}"], "down", args.size)
        report(Row("http", "down", down, direct, "nginx"))
        assert relay is not None
        relayed = transfer.measure("nginx proxy_pass down", relay, ["-o", "/dev/null",
                                   f"{relay.base_url}/{path.name}"], "down", args.size)
        report(Row("http", "down", down, relayed, "nginx proxy_pass to it (a relay in C)"))
        delete_image(glance, image_id)


def median_rows(rows: list[Row]) -> list[tuple[Row, list[float]]]:
    """
    Per transfer, the round of median throughput through glance-tx and the
    round of median direct throughput (each its own median), with every
    round's ratio, in the order of the first round.
    """
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.store, row.direction, row.direct_label), []).append(row)
    merged = []
    for group in groups.values():
        through = sorted((r.through for r in group), key=lambda s: s.mib_s)
        directs = sorted((r.direct for r in group if r.direct), key=lambda s: s.mib_s)
        ratios = [r.through.mib_s / r.direct.mib_s for r in group if r.direct]
        first = group[0]
        merged.append((
            Row(first.store, first.direction, through[(len(through) - 1) // 2],
                directs[(len(directs) - 1) // 2] if directs else None, first.direct_label),
            ratios,
        ))
    return merged


def run(args: argparse.Namespace) -> tuple[list[Row], list[Memory]]:
    rows: list[Row] = []
    memory: list[Memory] = []
    with ExitStack() as stack:
        workdir, path, md5 = transfer.workdir_with_test_file(
            "glance-tx-bench-stores-", args.size, args.tmpdir, False, stack
        )
        stores = args.stores
        # Swift, the slow one to start, only when its store is measured.
        moto, s3_url = start_moto(workdir, stack)
        swift, settings = start_swift(workdir, stack) if "swift" in stores else (None, {})
        www = path.parent
        nginx = transfer.start_nginx(workdir, www, stack)
        relay = (
            start_nginx_proxy(workdir, nginx, f"/{path.name}", stack)
            if "http" in stores else None
        )
        glance = start_glance_tx(
            workdir, args.size, s3_url, swift, settings, args.twistd, stack, args.s3_option
        )
        print(f"glance-tx {glance.base_url}, moto {moto.base_url}, "
              f"swift {swift.base_url if swift else '-'}, nginx {nginx.base_url}; "
              f"measuring {', '.join(stores)}", flush=True)

        def report(row: Row) -> None:
            rows.append(row)
            direct = row.direct
            ratio = f"{row.through.mib_s / direct.mib_s:5.2f}x" if direct else "  -  "
            print(
                f"  {row.store:<6} {row.direction:<4} through glance-tx "
                f"{row.through.mib_s:7.1f} MiB/s, {row.through.cpu_per_gib:5.2f} CPU s/GiB, "
                f"peak RSS {row.through.peak_rss_kib / 1024:5.0f} MiB; {row.direct_label} "
                + (f"{direct.mib_s:7.1f} MiB/s; ratio {ratio}" if direct else "-"),
                flush=True,
            )

        for number in range(1, args.rounds + 1):
            print(f"round {number} of {args.rounds} ({os.getloadavg()[0]:.1f} load)", flush=True)
            one_round(args, glance, moto, s3_url, swift, settings, nginx, relay, path,
                      md5, workdir, report)

        if args.concurrent:
            small = workdir / "concurrent.bin"
            with path.open("rb") as source, small.open("wb") as target:
                target.write(source.read(args.concurrent_size))
            for store in (s for s in stores if s != "http"):  # http: read-only
                figure = concurrent_uploads(
                    glance, store, small, args.concurrent_size, args.concurrent
                )
                memory.append(figure)
                print(f"  {store:<6} {figure.count} uploads of "
                      f"{transfer.human(figure.size)} at once: RSS "
                      f"{figure.baseline_kib / 1024:.0f} MiB before, peak "
                      f"{figure.peak_kib / 1024:.0f} MiB ({figure.seconds:.1f} s)", flush=True)
    return rows, memory


def section(
    args: argparse.Namespace, rows: list[Row], memory: list[Memory], hashes: str,
    loads: tuple[float, float],
) -> str:
    lines = [
        "## Stores: `bench/stores.py`",
        "",
        textwrap.fill(
            f"A {transfer.human(args.size)} image through glance-tx (v1, Content-Length, "
            "curl) to and from each store, and the same bytes moved by a direct client of "
            f"that store, {args.rounds} rounds in one run, each transfer beside its "
            "direct client in every round; the medians of the rounds, and each round's "
            "ratio. Stores on loopback: moto_server (S3, Python), "
            "a one-node Swift, nginx for the HTTP store. glance-tx CPU is utime + stime "
            "of its process per GiB moved; RSS is its peak during the transfer.",
            width=78,
        ),
        "",
        # Other sessions' work on the same cores decides MiB/s: say so
        # beside the figures (the ratios to the same run's direct client
        # are what to read then).
        *([f"- **Noisy (load {min(loads):.1f}-{max(loads):.1f})**: compare the ratios, "
           "not the MiB/s"] if max(loads) > NOISY_LOAD else []),
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; "
        f"{os.cpu_count()} vCPUs; {hashes}; load average {loads[0]:.1f} at the start, "
        f"{loads[1]:.1f} at the end",
        f"- Command: `.venv/bin/python bench/stores.py --size {args.size_text}"
        f" --rounds {args.rounds}"
        + ("" if tuple(args.stores) == STORES else f" --stores {','.join(args.stores)}")
        + "".join(f" --s3-option {option}" for option in args.s3_option)
        + "`",
        "",
        "| store | way | through glance-tx MiB/s | CPU s/GiB | peak RSS MiB "
        "| direct client | direct MiB/s | ratio of medians | ratio per round |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for row, ratios in median_rows(rows):
        direct = row.direct
        lines.append(
            f"| {row.store} | {row.direction} | {row.through.mib_s:.0f} "
            f"| {row.through.cpu_per_gib:.2f} | {row.through.peak_rss_kib / 1024:.0f} "
            f"| {row.direct_label} | "
            + (f"{direct.mib_s:.0f} | {row.through.mib_s / direct.mib_s:.2f}x | "
               + ", ".join(f"{r:.2f}" for r in ratios) + " |"
               if direct else "- | - | - |")
        )
    if memory:
        lines += [
            "",
            f"{memory[0].count} uploads of {transfer.human(memory[0].size)} at once "
            "(curl, v1, Content-Length), per store: glance-tx's VmRSS before and its "
            "peak while they ran (target: under 150 MiB).",
            "",
            "| store | RSS before MiB | peak RSS MiB | seconds |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {m.store} | {m.baseline_kib / 1024:.0f} | {m.peak_kib / 1024:.0f} "
            f"| {m.seconds:.1f} |"
            for m in memory
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size", default="1G", help="image size [default: 1G]")
    parser.add_argument("--stores", default=",".join(STORES),
                        help="comma-separated stores to measure [default: %(default)s]")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each transfer, wait up to this many seconds for a "
                             "quiet machine; 0 to not wait [default: %(default)s]")
    parser.add_argument("--s3-option", action="append", default=[], metavar="NAME=VALUE",
                        help="an option for glance-tx's S3 store section, e.g. "
                             "s3_store_thread_pools=1 (repeatable)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every transfer, interleaved; medians "
                             "reported [default: %(default)s]")
    parser.add_argument("--concurrent", type=int, default=20,
                        help="then this many uploads at once to each writable store, "
                             "for peak RSS; 0 to skip [default: %(default)s]")
    parser.add_argument("--concurrent-size", default="32M",
                        help="the size of each of those uploads [default: %(default)s]")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures only; leave bench/RESULTS.md alone")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    args = parser.parse_args(argv)
    args.size_text = args.size
    args.size = transfer.parse_size(args.size)
    args.concurrent_size = transfer.parse_size(args.concurrent_size)
    args.stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    unknown = sorted(set(args.stores) - set(STORES))
    if unknown or not args.stores:
        parser.error(f"--stores: choose from {', '.join(STORES)}, not {', '.join(unknown)}")
    for tool in ("curl", "nginx", "memcached"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} is not installed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transfer.QUIET_WAIT = args.quiet_wait
    hashes = transfer.hash_speeds()
    print(hashes, flush=True)
    load = os.getloadavg()[0]
    try:
        rows, memory = run(args)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    hashes_after = transfer.hash_speeds()
    text = section(args, rows, memory, f"{hashes}; after: {hashes_after}",
                   (load, os.getloadavg()[0]))
    transfer.publish_section("stores.py", text, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
