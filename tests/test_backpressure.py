"""Tests for L{glance_tx.backpressure}: the one pause/resume helper."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from glance_tx.backpressure import PauseGate, SharedBudget, Watermarks
from tests.store_conformance import FakeProducer


class PauseGateTests(SynchronousTestCase):
    def test_pauses_once_resumes_after_last_reason(self) -> None:
        """
        The producer is paused when the first reason appears and resumed
        only when the last one goes; repeated reasons change nothing.
        """
        gate, producer = PauseGate(), FakeProducer()
        gate.attach(producer)
        gate.pause("a")
        gate.pause("a")
        gate.pause("b")
        self.assertEqual(producer.events, ["pause"])
        self.assertTrue(gate.paused)
        gate.resume("a")
        self.assertEqual(producer.events, ["pause"])
        gate.resume("b")
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertFalse(gate.paused)

    def test_resume_unknown_reason(self) -> None:
        """Resuming for a reason that does not hold tells the producer nothing."""
        gate, producer = PauseGate(), FakeProducer()
        gate.attach(producer)
        gate.resume("never paused")
        gate.pause("a")
        gate.resume("b")
        self.assertEqual(producer.events, ["pause"])

    def test_attach_while_paused(self) -> None:
        """
        Reasons are kept with no producer attached: one attached (or the
        next, after a detach) while a reason holds starts paused, and a
        detached one hears nothing more.
        """
        gate, first, second = PauseGate(), FakeProducer(), FakeProducer()
        gate.pause("a")
        self.assertIsNone(gate.producer)
        gate.attach(first)
        self.assertIs(gate.producer, first)
        self.assertEqual(first.events, ["pause"])
        gate.detach()
        gate.resume("a")
        gate.pause("a")
        gate.attach(second)
        gate.resume("a")
        self.assertEqual(first.events, ["pause"])
        self.assertEqual(second.events, ["pause", "resume"])


class WatermarksTests(SynchronousTestCase):
    def test_hysteresis(self) -> None:
        """
        More than C{high} pauses (C{high} itself does not); between the two
        marks the last decision stands; C{low} or less resumes.
        """
        gate, producer = PauseGate(), FakeProducer()
        gate.attach(producer)
        marks = Watermarks(high=10, low=4)
        for queued, events in [
            (10, []),
            (11, ["pause"]),
            (30, ["pause"]),
            (5, ["pause"]),
            (4, ["pause", "resume"]),
            (9, ["pause", "resume"]),
            (0, ["pause", "resume"]),
        ]:
            marks.apply(gate, "queue", queued)
            self.assertEqual(producer.events, events, queued)

    def test_only_its_reason(self) -> None:
        """Falling below C{low} lifts the queue's reason, not another one."""
        gate, producer = PauseGate(), FakeProducer()
        gate.attach(producer)
        gate.pause("downstream")
        marks = Watermarks(high=10, low=4)
        marks.apply(gate, "queue", 11)
        marks.apply(gate, "queue", 0)
        self.assertEqual(producer.events, ["pause"])
        self.assertTrue(gate.paused)

    def test_bad_marks(self) -> None:
        """A high mark below 1, a negative low one or low above high is refused."""
        for high, low in [(0, 0), (10, -1), (10, 11)]:
            self.assertRaises(ValueError, Watermarks, high, low)
        self.assertEqual(Watermarks(10, 10), Watermarks(high=10, low=10))


class SharedBudgetTests(SynchronousTestCase):
    def test_one_sum_pauses_every_gate(self) -> None:
        """
        Every joined gate is paused once the sum of what was added passes
        the high mark, whoever added it, and all are resumed together at
        the low mark; a gate that leaves is let go and hears no more.
        """
        budget = SharedBudget(Watermarks(high=10, low=4))
        gates = [PauseGate(), PauseGate(), PauseGate()]
        producers = [FakeProducer() for _ in range(3)]
        for gate, producer in zip(gates, producers, strict=True):
            gate.attach(producer)
            budget.join(gate)
        budget.add(6)
        budget.add(4)
        self.assertEqual([p.events for p in producers], [[], [], []])
        budget.add(1)
        self.assertTrue(budget.spent)
        self.assertEqual([p.events for p in producers], [["pause"]] * 3)
        budget.add(-6)  # 5: between the marks, still spent
        self.assertEqual(budget.queued, 5)
        self.assertTrue(budget.spent)
        budget.leave(gates[2])
        self.assertEqual(producers[2].events, ["pause", "resume"])
        budget.add(-1)
        self.assertFalse(budget.spent)
        self.assertEqual([p.events for p in producers], [["pause", "resume"]] * 3)
        budget.add(20)
        self.assertEqual(producers[2].events, ["pause", "resume"])

    def test_join_while_spent(self) -> None:
        """A gate that joins a spent budget starts paused; its other reasons stand."""
        budget = SharedBudget(Watermarks(high=10, low=4))
        budget.add(11)
        gate, producer = PauseGate(), FakeProducer()
        gate.attach(producer)
        gate.pause("stages")
        budget.join(gate)
        budget.add(-11)
        self.assertEqual(producer.events, ["pause"])
        self.assertTrue(gate.paused)
