#!/usr/bin/env python3
"""
A public image downloaded through Varnish, beside the same downloads
straight from glance-tx.

One run of this script:

1. writes a page-cache-warm test file of incompressible data (as
   ``bench/transfer.py`` does) in a fresh temporary directory;
2. starts glance-tx (``twistd -n glance``, SQLite and the filesystem store
   in that directory) on a free loopback port, and uploads the file as a
   *public* image (v2), checking the stored size and md5;
3. starts ``varnishd`` (the Debian package) with ``doc/varnish.vcl``
   rendered for glance-tx's port, malloc storage (``--storage``, twice the
   image by default) and ``send_timeout`` raised for large objects;
4. downloads the image ``--downloads`` times straight from glance-tx and as
   many times through Varnish, alternating (so slow drifts in the machine's
   state hit both alike); the first download through Varnish is the only
   miss, which Varnish fetches from glance-tx while streaming it on;
5. times each download with curl's own ``time_total``, checks curl's byte
   count, and reads the CPU seconds (utime + stime from ``/proc``) of
   glance-tx and of varnishd (manager and cache worker) before and after;
6. downloads the image once more through Varnish into md5, so a cache that
   served wrong bytes fails the benchmark;
7. prints the figures and, unless ``--no-write``, puts them in
   ``bench/RESULTS.md`` in a section of their own (replaced on every run);
8. stops everything it started and removes the directory (unless
   ``--keep``).

Throughput of a set is its bytes over the sum of its downloads' times;
the median download is printed as well. "glance-tx CPU s" is the total
over the set: through Varnish it should be about one download's worth.

With ``--keystone`` the same runs happen with ``auth_strategy = keystone``
against a real Keystone (``GLANCE_TX_TEST_KEYSTONE_URL`` and
``GLANCE_TX_TEST_KEYSTONE_PASSWORD``, as ``tools/run-tests`` exports them,
with the users of ``tests/keystone_server.py``) and Varnish loading
``doc/varnish-keystone.vcl``: every download through Varnish is revalidated
with the caller's token, glance-tx answers 304 after the first, and Varnish
sends the bytes. The image is uploaded as the admin and downloaded as
``alpha-member``; the section goes to RESULTS.md beside today's
(``proxy.py --keystone``).

Run it with the development virtualenv's Python, on a quiet machine::

    .venv/bin/python bench/proxy.py                 # 1 GiB, 10 + 10
    .venv/bin/python bench/proxy.py --size 256M --no-write

Needs curl and varnish (Debian packages); run as root or as a user allowed
to start varnishd.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

# This directory is on sys.path when the script runs: reuse the transfer
# benchmark's process, measuring and test-file helpers.
import transfer
from transfer import BenchError, GiB, MiB, Server

REPO = Path(__file__).resolve().parents[1]
VCL = REPO / "doc" / "varnish.vcl"
KEYSTONE_VCL = REPO / "doc" / "varnish-keystone.vcl"
sys.path.insert(0, str(REPO))
from tests.keystone_server import PASSWORD_ENV, URL_ENV, KeystoneServer  # noqa: E402


@dataclass
class Download:
    """One timed download: what curl saw and what it cost each server."""

    via: str  # "direct" or "varnish"
    number: int
    bytes: int
    seconds: float
    glance_cpu: float
    varnish_cpu: float
    curl_cpu: float
    others_busy: float
    note: str

    @property
    def mib_s(self) -> float:
        return self.bytes / MiB / self.seconds


def render_vcl(backend_port: int) -> str:
    values = {
        "BACKEND_HOST": "127.0.0.1",
        "BACKEND_PORT": str(backend_port),
        "API_NODE": "127.0.0.1",
        "RANGE_PREFETCH_LIMIT": str(64 * MiB),
    }
    text = VCL.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    left = set(re.findall(r"@[A-Z][A-Z0-9_]*@", text))
    if left:
        raise BenchError(f"{VCL}: no value for {', '.join(sorted(left))}")
    return text


def start_varnish(
    workdir: Path, backend: Server, storage: int, params: list[str], stack: ExitStack,
    keystone: bool = False,
) -> Server:
    varnishd = shutil.which("varnishd") or shutil.which("varnishd", path="/usr/sbin:/sbin")
    if varnishd is None:
        raise BenchError("varnishd is not installed (apt-get install varnish)")
    directory = workdir / "varnish"
    directory.mkdir()
    # varnishd drops to its own users, which must read the VCL.
    for d in (workdir, directory):
        d.chmod(0o755)
    vcl = directory / ("varnish.vcl" if keystone else "glance.vcl")
    vcl.write_text(render_vcl(int(backend.base_url.rsplit(":", 1)[1])))
    vcl.chmod(0o644)
    if keystone:
        # It includes ./varnish.vcl, rendered above.
        vcl = directory / "glance.vcl"
        vcl.write_text(KEYSTONE_VCL.read_text())
        vcl.chmod(0o644)
    port = transfer.free_port()
    argv = [
        varnishd, "-F",
        "-n", str(directory / "work"),
        "-a", f"127.0.0.1:{port}",
        "-f", str(vcl),
        "-s", f"malloc,{storage // MiB}m",
        "-p", "send_timeout=86400",
        "-T", "none",
    ]
    for param in params:
        argv += ["-p", param]
    return transfer.start_server(
        "varnishd", argv, f"http://127.0.0.1:{port}", "/healthcheck", directory, stack
    )


def token_args(token: str | None) -> list[str]:
    return ["-H", f"X-Auth-Token: {token}"] if token else []


def upload_public(
    glance_tx: Server, path: Path, size: int, md5: str, token: str | None = None
) -> str:
    headers = {"X-Auth-Token": token} if token else {}
    image = transfer.json_request(
        "POST",
        f"{glance_tx.base_url}/v2/images",
        {"name": "bench-proxy", "disk_format": "raw", "container_format": "bare",
         "visibility": "public"},
        headers,
    )
    assert isinstance(image, dict)
    image_id: str = image["id"]
    _, _, _, code, _ = transfer.curl(
        transfer.upload_args(path, chunked=False)
        + token_args(token)
        + ["-o", "/dev/null", f"{glance_tx.base_url}/v2/images/{image_id}/file"]
    )
    if code != 204:
        raise BenchError(f"upload: HTTP {code}")
    shown = transfer.json_request(
        "GET", f"{glance_tx.base_url}/v2/images/{image_id}", None, headers
    )
    assert isinstance(shown, dict)
    if shown["size"] != size or shown["checksum"] != md5:
        raise BenchError(f"upload: stored {shown['size']} bytes, md5 {shown['checksum']}")
    return image_id


def download(
    via: str, number: int, url: str, size: int, glance_tx: Server, varnish: Server,
    quiet_wait: float, token: str | None = None,
) -> Download:
    glance_tx.check_alive()
    varnish.check_alive()
    note = transfer.wait_for_quiet(quiet_wait) if quiet_wait > 0 else ""
    glance_pids, varnish_pids = glance_tx.pids, varnish.pids
    busy0, total0 = transfer.machine_jiffies()
    g0, v0 = transfer.cpu_seconds(glance_pids), transfer.cpu_seconds(varnish_pids)
    _, moved, seconds, code, curl_cpu = transfer.curl(token_args(token) + ["-o", "/dev/null", url])
    g1, v1 = transfer.cpu_seconds(glance_pids), transfer.cpu_seconds(varnish_pids)
    busy1, total1 = transfer.machine_jiffies()
    if code != 200 or moved != size:
        raise BenchError(f"{via} download {number}: HTTP {code}, {moved} bytes of {size}")
    ncpu = os.cpu_count() or 1
    busy = ncpu * (busy1 - busy0) / max(1, total1 - total0)
    own = (g1 - g0) + (v1 - v0) + curl_cpu
    return Download(
        via=via, number=number, bytes=moved, seconds=seconds,
        glance_cpu=g1 - g0, varnish_cpu=v1 - v0, curl_cpu=curl_cpu,
        others_busy=max(0.0, busy - own / seconds), note=note,
    )


def check_bytes(url: str, md5: str, token: str | None = None) -> None:
    """One more download through the cache, hashed: the bytes are right."""
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"X-Auth-Token": token} if token else {})
    with urllib.request.urlopen(request, timeout=300) as response:
        cache = response.headers.get("X-Cache")
        while block := response.read(4 * MiB):
            digest.update(block)
    if digest.hexdigest() != md5:
        raise BenchError(f"through Varnish ({cache}): md5 {digest.hexdigest()}, not {md5}")


@dataclass
class SetFigures:
    label: str
    downloads: list[Download]

    @property
    def total_bytes(self) -> int:
        return sum(d.bytes for d in self.downloads)

    @property
    def mib_s(self) -> float:
        return self.total_bytes / MiB / sum(d.seconds for d in self.downloads)

    @property
    def median_mib_s(self) -> float:
        return statistics.median(d.mib_s for d in self.downloads)

    @property
    def glance_cpu(self) -> float:
        return sum(d.glance_cpu for d in self.downloads)

    @property
    def varnish_cpu(self) -> float:
        return sum(d.varnish_cpu for d in self.downloads)

    @property
    def curl_cpu_per_gib(self) -> float:
        return sum(d.curl_cpu for d in self.downloads) / (self.total_bytes / GiB)


def versions() -> str:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except OSError:
            return "?"
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "?"

    import twisted

    varnishd = shutil.which("varnishd") or "/usr/sbin/varnishd"
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True,
    ).stdout.strip()
    return (
        f"Python {platform.python_version()}, Twisted {twisted.__version__}, "
        f"{first_line([varnishd, '-V'])}, "
        f"{' '.join(first_line(['curl', '--version']).split()[:2])}; "
        f"glance-tx commit {commit}"
        + (" with uncommitted changes in the working tree" if dirty else "")
    )


def report(args: argparse.Namespace, direct: SetFigures, cached: SetFigures, machine: str) -> str:
    cold, warm = cached.downloads[0], cached.downloads[1:]
    warm_set = SetFigures("varnish warm", warm)
    hits = "revalidated (304)" if args.keystone else "hits"
    lines = [
        "## Through Varnish, revalidating every download (auth_strategy = keystone): "
        "`bench/proxy.py --keystone`"
        if args.keystone else "## Through Varnish: `bench/proxy.py`",
        "",
        textwrap.fill(
            f"A {transfer.human(args.size)} public image downloaded {args.downloads} times "
            f"through Varnish (`doc/{'varnish-keystone.vcl' if args.keystone else 'varnish.vcl'}`, "
            f"`-s malloc,{args.storage // MiB}m`) and "
            f"{args.downloads} times straight from glance-tx, alternating, one at a time, "
            "with curl over loopback. Throughput: bytes over the summed curl `time_total` "
            "of the set (median download in brackets). CPU: utime + stime of the "
            "processes (`/proc`, 10 ms ticks), summed over the set."
            + (" Every request carries an alpha-member Keystone token; glance-tx "
               "validates it (then from its token cache) and answers Varnish's "
               "conditional GETs 304." if args.keystone else ""),
            width=78,
        ),
        "",
        f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}; {machine}",
        f"- {versions()}",
        "- Command: `.venv/bin/python bench/proxy.py"
        + (f" --size {args.size_text}" if args.size_text != "1G" else "")
        + (f" --downloads {args.downloads}" if args.downloads != 10 else "")
        + (" --keystone" if args.keystone else "")
        + "".join(f" --param {p}" for p in args.param)
        + "`",
        "",
        "| downloads | MiB/s (median) | glance-tx CPU s | varnishd CPU s | curl CPU s/GiB |",
        "|---|---:|---:|---:|---:|",
        f"| {len(direct.downloads)} × direct | {direct.mib_s:.0f} ({direct.median_mib_s:.0f}) "
        f"| {direct.glance_cpu:.2f} | – | {direct.curl_cpu_per_gib:.2f} |",
        f"| {len(cached.downloads)} × through Varnish | {cached.mib_s:.0f} "
        f"({cached.median_mib_s:.0f}) | {cached.glance_cpu:.2f} | {cached.varnish_cpu:.2f} "
        f"| {cached.curl_cpu_per_gib:.2f} |",
        f"| of which the 1st (miss) | {cold.mib_s:.0f} | {cold.glance_cpu:.2f} "
        f"| {cold.varnish_cpu:.2f} | |",
        f"| of which {len(warm)} {hits} | {warm_set.mib_s:.0f} ({warm_set.median_mib_s:.0f}) "
        f"| {warm_set.glance_cpu:.2f} | {warm_set.varnish_cpu:.2f} | |",
        "",
        textwrap.fill(
            f"Ratio, through Varnish / direct: {cached.mib_s / direct.mib_s:.2f}× for the "
            f"whole set ({warm_set.mib_s / direct.mib_s:.2f}× for the {hits} alone, "
            f"{cold.mib_s / direct.mib_s:.2f}× for the miss). glance-tx spent "
            f"{cached.glance_cpu:.2f} CPU s serving the {len(cached.downloads)} downloads "
            f"through Varnish against {direct.glance_cpu:.2f} s serving them directly "
            f"({direct.glance_cpu / max(cached.glance_cpu, 0.01):.1f}× less).",
            width=78,
        ),
        "",
        "Per download:",
        "",
        "```",
    ]
    for d in sorted(direct.downloads + cached.downloads, key=lambda d: (d.number, d.via)):
        lines.append(
            f"  {d.via:<8} {d.number:2d}  {d.mib_s:8.1f} MiB/s  glance-tx {d.glance_cpu:5.2f} s  "
            f"varnishd {d.varnish_cpu:5.2f} s  curl {d.curl_cpu:5.2f} s  "
            f"others {d.others_busy:4.2f} cores" + (f"  [{d.note}]" if d.note else "")
        )
    lines += ["```"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A public image downloaded through Varnish and straight from glance-tx.",
    )
    parser.add_argument("--size", default="1G", help="image size, e.g. 1G, 256M [default: 1G]")
    parser.add_argument("--downloads", type=int, default=10,
                        help="downloads each way [default: 10]")
    parser.add_argument("--storage", default=None,
                        help="Varnish malloc storage [default: twice the image, at least 2G]")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a varnishd parameter (-p), e.g. fetch_chunksize=1M; repeatable")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each download, wait up to this many seconds for the "
                             "machine to be quiet; 0 to not wait [default: %(default)s]")
    parser.add_argument("--keystone", action="store_true",
                        help="auth_strategy = keystone and doc/varnish-keystone.vcl: every "
                             f"download revalidated (needs {URL_ENV} and {PASSWORD_ENV})")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures only; leave bench/RESULTS.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--tmpdir", default=None, help="where the temporary directory goes")
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")),
                        help="twistd to run glance-tx with [default: next to this Python]")
    args = parser.parse_args(argv)
    args.size_text = args.size
    args.size = transfer.parse_size(args.size)
    args.storage = (
        transfer.parse_size(args.storage) if args.storage else max(2 * GiB, 2 * args.size)
    )
    if args.downloads < 2:
        parser.error("--downloads must be at least 2 (one miss, then hits)")
    if shutil.which("curl") is None:
        parser.error("curl is not installed")
    args.keystone_server = None
    if args.keystone:
        url, password = os.environ.get(URL_ENV), os.environ.get(PASSWORD_ENV)
        if not url or not password:
            parser.error(f"--keystone needs {URL_ENV} and {PASSWORD_ENV} (tools/run-tests' Keystone)")
        args.keystone_server = KeystoneServer(url.rstrip("/"), password)
    return args


def keystone_token(keystone: KeystoneServer, user: str) -> str:
    request = urllib.request.Request(
        keystone.url + "/v3/auth/tokens", data=keystone.login_body(user),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(response.headers["X-Subject-Token"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        try:
            workdir, path, md5 = transfer.workdir_with_test_file(
                "glance-tx-bench-proxy-", args.size, args.tmpdir, args.keep, stack
            )
            keystone = args.keystone_server
            extra, admin, token = "", None, None
            if keystone is not None:
                extra = "auth_strategy = keystone\n\n" + keystone.authtoken_section()
                admin = keystone_token(keystone, "admin")
                token = keystone_token(keystone, "alpha-member")
            glance_tx = transfer.start_glance_tx(
                workdir, args.size, args.twistd, stack, extra_config=extra
            )
            image_id = upload_public(glance_tx, path, args.size, md5, admin)
            varnish = start_varnish(
                workdir, glance_tx, args.storage, args.param, stack, keystone=keystone is not None
            )
            print(
                f"glance-tx {glance_tx.base_url} (pid {glance_tx.popen.pid}), "
                f"varnishd {varnish.base_url} (pid {varnish.popen.pid}), image {image_id}",
                flush=True,
            )
            data_path = f"/v2/images/{image_id}/file"
            direct, cached = SetFigures("direct", []), SetFigures("varnish", [])
            for number in range(1, args.downloads + 1):
                for figures, server in ((cached, varnish), (direct, glance_tx)):
                    d = download(
                        figures.label, number, server.base_url + data_path, args.size,
                        glance_tx, varnish, args.quiet_wait, token,
                    )
                    figures.downloads.append(d)
                    print(
                        f"  {d.via:<8} {d.number:2d}  {d.mib_s:8.1f} MiB/s  "
                        f"glance-tx {d.glance_cpu:5.2f} CPU s  varnishd {d.varnish_cpu:5.2f} "
                        f"CPU s  others {d.others_busy:4.2f} cores"
                        + (f"  [{d.note}]" if d.note else ""),
                        flush=True,
                    )
            check_bytes(varnish.base_url + data_path, md5, token)
            machine = (
                f"{os.cpu_count()} vCPUs, load average {os.getloadavg()[0]:.2f} at the end"
            )
            section = report(args, direct, cached, machine)
            transfer.publish_section(
                "proxy.py --keystone" if args.keystone else "proxy.py", section,
                write=not args.no_write,
            )
        except BenchError as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
