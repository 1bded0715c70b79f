#!/usr/bin/env python3
"""
The reactor thread's cost of a chunked upload body, in process: Twisted's
chunked decoder beside glance-tx's (L{glance_tx.api.chunked}), each feeding
the upload's 1 MiB batches (C{b"".join}, as L{glance_tx.streaming} does).

The body is curl's: 64 KiB chunks, read 256 KiB at a time (glance-tx's read
size during an upload). Each decoder decodes C{--size} bytes C{--runs}
times, in turns; the figure is the least thread CPU (user + system, page
faults included) per GiB, and the minor page faults per GiB of that run.
Run it with the development virtualenv's Python from the repository root::

    .venv/bin/python bench/chunked.py
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glance_tx.api.chunked import ChunkedDecoder  # noqa: E402
from glance_tx.twisted_private import ChunkedTransferDecoder  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def one(decoder: type, reads: list[bytes], repeat: int) -> tuple[float, int]:
    """Thread CPU seconds and minor faults to decode C{reads} C{repeat} times."""
    batch: list[bytes] = []
    held = 0

    def take(data: bytes) -> None:
        nonlocal held
        batch.append(data)
        held += len(data)
        if held >= MiB:
            b"".join(batch)
            batch.clear()
            held = 0

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.thread_time()
    for _ in range(repeat):
        d = decoder(take, lambda rest: None)
        for read in reads:
            d.dataReceived(read)
    return (
        time.thread_time() - started,
        resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per run [default: 256]")
    parser.add_argument("--runs", type=int, default=5, help="runs of each [default: 5]")
    args = parser.parse_args()
    chunk = os.urandom(64 * 1024)
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 64  # 4 MiB of body
    reads = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
    repeat = max(1, args.size // 4)
    gib = repeat * 4 * MiB / GiB
    best: dict[str, tuple[float, int]] = {}
    for _ in range(args.runs):
        for name, decoder in (("twisted", ChunkedTransferDecoder), ("glance-tx", ChunkedDecoder)):
            cpu, faults = one(decoder, reads, repeat)
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, faults)
    for name, (cpu, faults) in best.items():
        print(f"{name:10s} {cpu / gib:.3f} CPU s/GiB, {faults / gib:.0f} minor faults/GiB")
    print(
        f"load average {os.getloadavg()[0]:.2f}; glance-tx's decoder over Twisted's: "
        f"{best['glance-tx'][0] / best['twisted'][0]:.2f}x the reactor CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
