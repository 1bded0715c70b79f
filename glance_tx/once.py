"""
An outcome that arrives once and is handed to every caller who waits for it,
each with a Deferred of its own (so one caller's cancellation or callbacks
cannot disturb another's). The service ready protocol uses it, and so do
the identity provider's coalesced Keystone calls (N requests with one new
token cause one validation).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")


@define
class Once(Generic[T]):
    """An outcome that arrives once and is handed to every observer."""

    _waiting: list[Deferred[T]] = field(factory=list)
    _outcome: list[T | Failure] = field(factory=list)

    @property
    def done(self) -> bool:
        return bool(self._outcome)

    def observe(self) -> Deferred[T]:
        if not self._outcome:
            waiter: Deferred[T] = Deferred()
            self._waiting.append(waiter)
            return waiter
        outcome = self._outcome[0]
        if isinstance(outcome, Failure):
            return fail(outcome)
        return succeed(outcome)

    def fire(self, outcome: T | Failure) -> None:
        self._outcome.append(outcome)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)


def run_once(coroutine: Coroutine[Any, Any, T]) -> Once[T]:
    """Start C{coroutine}; its outcome, for every observer."""
    once: Once[T] = Once()
    Deferred.fromCoroutine(coroutine).addBoth(once.fire)
    return once
