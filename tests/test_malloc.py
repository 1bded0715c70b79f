"""L{glance_tx.malloc}: what glance-tx asks of glibc's allocator."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from glance_tx import malloc


def in_fresh_process(code: str) -> str:
    """Run C{code} in a new interpreter (mallopt cannot be undone here)."""
    done = subprocess.run(
        [sys.executable, "-c", f"from glance_tx import malloc\n{code}"],
        capture_output=True, text=True, check=True,
    )
    return done.stdout.strip()


class LimitArenasTests(SynchronousTestCase):
    def setUp(self) -> None:
        if malloc._glibc() is None:
            raise self.skipTest("not glibc")

    def test_sets_the_limit(self) -> None:
        """On glibc the arena limit is set (mallopt accepted it)."""
        self.assertEqual(in_fresh_process("print(malloc.limit_arenas(environ={}))"), "True")

    def test_the_operators_choice_stands(self) -> None:
        """With MALLOC_ARENA_MAX in the environment, glance-tx leaves glibc alone."""
        self.assertFalse(malloc.limit_arenas(environ={"MALLOC_ARENA_MAX": "4"}))

    def test_tap_limits_before_the_pool(self) -> None:
        """
        makeService sets the limit before it makes the thread pool: fails
        if the call moves after the threads could have allocated.
        """
        import inspect

        from glance_tx import tap

        source = inspect.getsource(tap.makeService)
        self.assertLess(source.index("malloc.limit_arenas()"), source.index("ThreadPool("))
