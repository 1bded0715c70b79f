"""Tests for L{glance_tx.request_ids}: the ids a request gets."""

from __future__ import annotations

import os
import uuid

from twisted.trial.unittest import SynchronousTestCase

from glance_tx import request_ids
from glance_tx.request_ids import new_request_id, parse_request_id


class NewRequestIdTests(SynchronousTestCase):
    def test_form(self) -> None:
        """
        An id is C{req-} and a version 4 UUID of RFC 4122's variant, in
        the form callers' ids are accepted in.
        """
        for _ in range(300):  # more than one batch of random bytes
            request_id = new_request_id()
            self.assertTrue(request_id.startswith("req-"))
            parsed = uuid.UUID(request_id[4:])
            self.assertEqual(str(parsed), request_id[4:])
            self.assertEqual(parsed.version, 4)
            self.assertEqual(parsed.variant, uuid.RFC_4122)
            self.assertEqual(parse_request_id([request_id.encode()]), request_id)

    def test_distinct(self) -> None:
        """Ids taken across several batches of random bytes are all different."""
        taken = [new_request_id() for _ in range(2000)]
        self.assertEqual(len(set(taken)), len(taken))

    def test_batched(self) -> None:
        """The kernel's random bytes are read once per 256 ids, not once per id."""
        reads: list[int] = []
        real = os.urandom

        def counting(n: int) -> bytes:
            reads.append(n)
            return real(n)

        self.patch(request_ids.os, "urandom", counting)
        request_ids._random.reset()
        for _ in range(512):
            new_request_id()
        self.assertEqual(reads, [request_ids._RANDOM_BATCH] * 2)

    def test_forked_child_starts_afresh(self) -> None:
        """A forked child (a worker) does not hand out its parent's next ids."""
        new_request_id()  # a batch is read, with ids left in it
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(write, new_request_id().encode())
            finally:
                os._exit(0)
        os.close(write)
        child = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
        self.assertNotEqual(child, new_request_id())
