"""
Memory of uploads: round after round of uploads at once, over real sockets
against a whole glance-tx, leave Python's heap and its tracked objects as
they were (no leak, and nothing left in reference cycles for a full garbage
collection to find); and glibc's arenas are trimmed once the last upload
ends (L{glance_tx.malloc}).
"""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import tracemalloc

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from glance_tx import malloc
from glance_tx.uploads import UploadSlots
from tests.live_server import (
    MiB,
    listening_port,
    live_config,
    pattern_bytes,
    settled_client,
    start_glance_tx,
)

log = Logger()

ROUNDS = 6
UPLOADS_PER_ROUND = 8
IMAGE_SIZE = 4 * MiB


#: Run in a fresh interpreter: what the service's modules import.
_IMPORTS = """
import sys
import glance_tx.tap, glance_tx.services, glance_tx.api.v2_info
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] == "botocore")))
"""


class ImportCostTests(SynchronousTestCase):
    def test_botocore_only_with_an_s3_store(self) -> None:
        """The service's modules do not import the S3 store's or botocore
        (5 MiB resident): only a deployment with an S3 store pays for it,
        when its factory runs."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        done = subprocess.run(
            [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, env=env, check=True
        )
        self.assertEqual(done.stdout.strip(), "")


class MallocTests(SynchronousTestCase):
    def test_trim(self) -> None:
        """On glibc the arenas are trimmed (malloc_trim found and called);
        elsewhere trimming does nothing, without an error."""
        self.assertEqual(malloc.trim(), platform.libc_ver()[0] == "glibc")

    def test_idle_after_the_last_upload(self) -> None:
        """UploadSlots runs on_idle each time its last slot is given back,
        not before."""
        idle: list[int] = []
        slots = UploadSlots(on_idle=lambda: idle.append(slots.active))
        slots.take()
        slots.take()
        slots.give_back()
        self.assertEqual(idle, [])
        slots.give_back()
        self.assertEqual(idle, [0])
        slots.take()
        slots.give_back()
        self.assertEqual(idle, [0, 0])


class UploadRoundsTests(TestCase):
    """Rounds of complete uploads at once, against one live glance-tx."""

    timeout = 240

    async def test_rounds_leave_the_heap_flat(self) -> None:
        """
        6 rounds of 8 uploads of 4 MiB at once (v2, inspected, hashed,
        stored, then deleted): after a warm-up round, Python's heap
        (tracemalloc) and the objects the collector tracks, after a full
        collection, stay flat, so nothing is leaked; and what that
        collection frees is small, so nothing big an upload held waits in a
        reference cycle (an inspection used to leave 1 MiB each).
        """
        config = live_config(self)
        service = await start_glance_tx(config, self.addCleanup, "memory-tests")
        client = settled_client(self)
        base = f"http://127.0.0.1:{listening_port(service)}"
        body = pattern_bytes(IMAGE_SIZE)

        async def upload() -> None:
            created = await client.post(
                f"{base}/v2/images",
                json={"disk_format": "raw", "container_format": "bare"},
            )
            self.assertEqual(created.code, 201)
            image_id = (await created.json())["id"]
            put = await client.put(
                f"{base}/v2/images/{image_id}/file",
                data=body,
                headers={"Content-Type": ["application/octet-stream"]},
            )
            self.assertEqual(put.code, 204, await put.text())
            shown = await (await client.get(f"{base}/v2/images/{image_id}")).json()
            self.assertEqual((shown["status"], shown["size"]), ("active", IMAGE_SIZE))
            deleted = await client.delete(f"{base}/v2/images/{image_id}")
            self.assertEqual(deleted.code, 204)
            await deleted.content()

        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        samples = []
        for _ in range(ROUNDS):
            await gatherResults(
                [Deferred.fromCoroutine(upload()) for _ in range(UPLOADS_PER_ROUND)]
            )
            garbage = tracemalloc.get_traced_memory()[0]
            gc.collect()
            heap = tracemalloc.get_traced_memory()[0]
            samples.append((heap, garbage - heap, len(gc.get_objects())))
        log.info("upload rounds (heap, freed by gc, objects): {samples}", samples=samples)
        heap = [s[0] for s in samples[1:]]
        freed = [s[1] for s in samples]
        objects = [s[2] for s in samples[1:]]
        # Measured: +0.1 MiB and ~600 objects over the 5 rounds (the
        # request log, the registry's caches); one upload's 1 MiB inspection
        # regions, or a leaked request, would be well past these.
        self.assertLess(heap[-1] - heap[0], 2 * MiB, heap)
        self.assertLess(max(freed), 3 * MiB, freed)
        self.assertLess(objects[-1] - objects[0], 3000, objects)
