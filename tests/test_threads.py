"""
The serial runner that upload hashes and writes go through, on a real
thread pool and the real reactor.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any
from unittest import mock

from twisted.internet import reactor
from twisted.internet.defer import AlreadyCalledError, gatherResults
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from glance_tx import threads
from glance_tx.threads import (
    MAX_NICE,
    SerialPoolRunner,
    SynchronousRunner,
    ThreadPoolRunner,
    nicer_threads,
)


class SerialPoolRunnerTests(TestCase):
    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="test-serial")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.runner = ThreadPoolRunner(reactor, self.pool).serial()

    async def test_calls_run_in_order_one_at_a_time(self) -> None:
        """Many calls queued at once run in the order made, never two at a
        time, although the pool has several threads."""
        seen: list[int] = []
        running = threading.Semaphore(1)

        def step(i: int) -> int:
            if not running.acquire(blocking=False):
                raise AssertionError("two calls ran at once")
            try:
                seen.append(i)
                return i * 2
            finally:
                running.release()

        results = await gatherResults([self.runner.run(step, i) for i in range(200)])
        self.assertEqual(seen, list(range(200)))
        self.assertEqual(results, [i * 2 for i in range(200)])

    async def test_calls_run_off_the_reactor_thread(self) -> None:
        threads = await gatherResults(
            [self.runner.run(threading.current_thread) for _ in range(3)]
        )
        self.assertNotIn(threading.main_thread(), threads)

    async def test_a_failure_fails_only_its_call(self) -> None:
        def broken() -> None:
            raise ValueError("disk on fire")

        failed = self.runner.run(broken)
        after = self.runner.run(lambda: "still runs")
        with self.assertRaises(ValueError):
            await failed
        self.assertEqual(await after, "still runs")

    async def test_a_busy_stream_yields_its_thread(self) -> None:
        """With one pool thread, work submitted to the pool after a long
        stream of serial calls runs before the stream ends: the stream goes
        back to the pool's queue after fair_share calls."""
        pool = ThreadPool(minthreads=1, maxthreads=1, name="test-fair")
        pool.start()
        self.addCleanup(pool.stop)
        runner = ThreadPoolRunner(reactor, pool)
        serial = runner.serial()
        assert isinstance(serial, SerialPoolRunner)
        order: list[str] = []
        gate = threading.Event()

        def first() -> None:
            gate.wait(5)  # hold the only thread until everything is queued
            order.append("serial")

        calls = [serial.run(first)]
        calls += [serial.run(order.append, "serial") for _ in range(3 * serial.fair_share)]
        calls.append(runner.run(order.append, "other"))
        gate.set()
        await gatherResults(calls)
        self.assertLess(order.index("other"), serial.fair_share + 1)
        self.assertEqual(order.count("serial"), 3 * serial.fair_share + 1)

    def test_serial_of_serial_is_itself(self) -> None:
        self.assertIs(self.runner.serial(), self.runner)
        synchronous = SynchronousRunner()
        self.assertIs(synchronous.serial(), synchronous)


class DrainingRunnerTests(TestCase):
    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=8, name="test-draining")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.runner = ThreadPoolRunner(reactor, self.pool).draining(3)

    async def test_at_most_width_at_once_by_few_threads(self) -> None:
        """
        Many calls queued at once all run, at most C{width} at a time
        although the pool has more threads, each started in the order
        made; and they are handed to at most C{width} pool tasks (plus one
        per fair_share calls), not one each.
        """
        lock = threading.Lock()
        running = [0]
        most = [0]
        started: list[int] = []
        tasks = [0]
        call_in_thread = self.pool.callInThread

        def counted(*args: object, **kwargs: object) -> None:
            tasks[0] += 1
            call_in_thread(*args, **kwargs)  # type: ignore[arg-type]

        self.pool.callInThread = counted  # type: ignore[method-assign]
        self.addCleanup(setattr, self.pool, "callInThread", call_in_thread)

        def step(i: int) -> int:
            with lock:
                started.append(i)
                running[0] += 1
                most[0] = max(most[0], running[0])
            threading.Event().wait(0.001)
            with lock:
                running[0] -= 1
            return i

        results = await gatherResults([self.runner.run(step, i) for i in range(100)])
        self.assertEqual(results, list(range(100)))
        self.assertLessEqual(most[0], 3)
        self.assertEqual(sorted(started), list(range(100)))
        self.assertLessEqual(tasks[0], 3 + 100 // SerialPoolRunner.fair_share + 3)

    def test_serial_of_draining_is_one_at_a_time(self) -> None:
        """serial() of a draining runner is a width-1 runner, not itself."""
        serial = self.runner.serial()
        self.assertIsNot(serial, self.runner)
        self.assertIs(serial.serial(), serial)


class _ReactorLater:
    """callFromThread that keeps the calls until C{turn}: a busy reactor."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.append((f, args))

    def turn(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class _PoolAtOnce:
    """callInThread that runs the task at once, on the calling thread."""

    def callInThread(self, f: Any, *args: Any) -> None:
        f(*args)


class DeliveryTests(SynchronousTestCase):
    """Results that finish while the reactor is busy go back in one call."""

    def test_results_that_wait_share_one_wake(self) -> None:
        """
        Results finished before the reactor turns are handed back by one
        callFromThread and fired in the order they finished, a failure
        among them; the next result after the turn asks again.
        """
        later = _ReactorLater()
        runner = SerialPoolRunner(later, _PoolAtOnce(), 4)  # type: ignore[arg-type]
        fired: list[object] = []

        def broken() -> None:
            raise ValueError("disk on fire")

        for d in (runner.run(lambda: 1), runner.run(broken), runner.run(lambda: 3)):
            d.addCallbacks(fired.append, lambda f: fired.append(f.type))
        self.assertEqual(len(later.calls), 1)
        self.assertEqual(fired, [])
        later.turn()
        self.assertEqual(fired, [1, ValueError, 3])
        runner.run(lambda: 4).addCallback(fired.append)
        self.assertEqual(len(later.calls), 1)
        later.turn()
        self.assertEqual(fired, [1, ValueError, 3, 4])

    def test_one_callers_trouble_is_not_the_others(self) -> None:
        """A result whose Deferred cannot take it (already fired) is logged; the rest arrive."""
        later = _ReactorLater()
        runner = SerialPoolRunner(later, _PoolAtOnce(), 4)  # type: ignore[arg-type]
        first = runner.run(lambda: 1)
        first.callback(0)  # fired by someone else: AlreadyCalledError on delivery
        second = runner.run(lambda: 2)
        later.turn()
        self.assertEqual(self.successResultOf(second), 2)
        self.assertEqual(len(self.flushLoggedErrors(AlreadyCalledError)), 1)


def _own_nice() -> int:
    """The calling thread's niceness (Linux: each thread has its own)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class NicerThreadsTests(TestCase):
    """The bulk pool's threads give way to the reactor's (nicer_threads)."""

    if not sys.platform.startswith("linux"):
        skip = "niceness per thread is Linux's"

    def pool(self, increment: int) -> ThreadPool:
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-nicer")
        pool.threadFactory = nicer_threads(increment)
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    async def test_pool_threads_run_nicer_and_the_caller_does_not(self) -> None:
        """Each pool thread runs at its maker's niceness plus the increment
        (to at most 19); the thread that made them is unchanged."""
        before = _own_nice()
        increment = min(3, MAX_NICE - before)
        runner = ThreadPoolRunner(reactor, self.pool(increment))
        seen = await gatherResults([runner.run(_own_nice) for _ in range(6)])
        self.assertEqual(set(seen), {before + increment})
        self.assertEqual(_own_nice(), before)

    async def test_at_most_the_lowest_priority(self) -> None:
        """An increment past 19 stops at 19 instead of failing."""
        runner = ThreadPoolRunner(reactor, self.pool(MAX_NICE + 5))
        self.assertEqual(await runner.run(_own_nice), MAX_NICE)

    async def test_zero_changes_nothing(self) -> None:
        """An increment of 0 leaves the threads at their maker's niceness."""
        runner = ThreadPoolRunner(reactor, self.pool(0))
        self.assertEqual(await runner.run(_own_nice), _own_nice())

    async def test_a_refusal_is_logged_and_the_thread_works(self) -> None:
        """When the kernel refuses, the thread still runs its work."""
        refused = mock.patch.object(
            threads.os, "setpriority", side_effect=PermissionError("no")
        )
        with refused:
            runner = ThreadPoolRunner(reactor, self.pool(5))
            self.assertEqual(await runner.run(lambda: 7), 7)
