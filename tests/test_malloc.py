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

    def test_the_operators_tunable_stands(self) -> None:
        """
        glibc.malloc.arena_max in GLIBC_TUNABLES is the operator's choice
        too: no mallopt call (a fake glibc records them); another tunable
        alone does not count.
        """
        calls: list[tuple[int, int]] = []

        class FakeGlibc:
            def mallopt(self, number: int, value: int) -> int:
                calls.append((number, value))
                return 1

        self.patch(malloc, "_glibc", FakeGlibc)
        tunables = "glibc.malloc.trim_threshold=1:glibc.malloc.arena_max=4"
        self.assertFalse(malloc.limit_arenas(environ={"GLIBC_TUNABLES": tunables}))
        self.assertEqual(calls, [])
        self.assertTrue(
            malloc.limit_arenas(environ={"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
        )
        self.assertEqual(calls, [(malloc._M_ARENA_MAX, malloc.ARENAS)])

    def test_tap_limits_before_the_pool(self) -> None:
        """
        makeService sets the limit before it makes the thread pool: fails
        if the call moves after the threads could have allocated.
        """
        import inspect

        from glance_tx import tap

        source = inspect.getsource(tap.makeService)
        self.assertLess(source.index("malloc.limit_arenas()"), source.index("ThreadPool("))


class TuneThresholdsTests(SynchronousTestCase):
    def setUp(self) -> None:
        if malloc._glibc() is None:
            raise self.skipTest("not glibc")

    def test_sets_both(self) -> None:
        """On glibc both thresholds are set (mallopt accepted them)."""
        self.assertEqual(
            in_fresh_process("print(malloc.tune_thresholds(environ={}))"),
            "['mmap_threshold', 'trim_threshold']",
        )

    def test_they_take_effect(self) -> None:
        """
        A 1 MiB block comes from the heap, not mmap (the reactor's batches):
        with glibc's default its first allocation is mmap'd, far from the
        heap, and with the threshold fixed it sits next to small blocks.
        """
        probe = (
            "import ctypes\n"
            "libc = ctypes.CDLL(None)\n"
            "libc.malloc.restype = ctypes.c_void_p\n"
            "libc.sbrk.restype = ctypes.c_void_p\n"
            "{tune}\n"
            "big = libc.malloc(1 << 20)\n"
            "print(abs(big - libc.sbrk(0)) < (64 << 20))\n"
        )
        self.assertEqual(in_fresh_process(probe.format(tune="")), "False")
        self.assertEqual(
            in_fresh_process(probe.format(tune="malloc.tune_thresholds(environ={})")), "True"
        )

    def test_the_operators_choice_stands(self) -> None:
        """Each parameter the operator set, by variable or tunable, is left alone."""
        calls: list[tuple[int, int]] = []

        class FakeGlibc:
            def mallopt(self, number: int, value: int) -> int:
                calls.append((number, value))
                return 1

        self.patch(malloc, "_glibc", FakeGlibc)
        self.assertEqual(
            malloc.tune_thresholds(environ={"MALLOC_MMAP_THRESHOLD_": "131072"}),
            ["trim_threshold"],
        )
        self.assertEqual(calls, [(malloc._M_TRIM_THRESHOLD, malloc.TRIM_THRESHOLD)])
        del calls[:]
        self.assertEqual(
            malloc.tune_thresholds(
                environ={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=1"}
            ),
            ["mmap_threshold"],
        )
        self.assertEqual(calls, [(malloc._M_MMAP_THRESHOLD, malloc.MMAP_THRESHOLD)])
        del calls[:]
        self.assertEqual(
            malloc.tune_thresholds(
                environ={"MALLOC_MMAP_THRESHOLD_": "1", "MALLOC_TRIM_THRESHOLD_": "1"}
            ),
            [],
        )
        self.assertEqual(calls, [])

    def test_tap_tunes(self) -> None:
        """makeService fixes the thresholds (fails if the call goes)."""
        import inspect

        from glance_tx import tap

        self.assertIn("malloc.tune_thresholds()", inspect.getsource(tap.makeService))


class NoGlibcTests(SynchronousTestCase):
    def test_nothing_to_ask(self) -> None:
        """Where the C library is not glibc, nothing is set and nothing fails."""
        self.patch(malloc, "_glibc", lambda: None)
        self.assertEqual(malloc.tune_thresholds(environ={}), [])
        self.assertFalse(malloc.limit_arenas(environ={}))
        self.assertFalse(malloc.trim())
