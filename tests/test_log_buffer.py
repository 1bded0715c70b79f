"""The buffered text log (glance_tx.log_buffer) and where twistd glance uses it."""

from __future__ import annotations

import io
import sys
import threading
from typing import Any

from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.log_buffer import (
    FLUSH_SECONDS,
    BufferedLogObserver,
    twistd_observer,
)
from glance_tx.services import ServiceChain


def event(text: str, level: LogLevel = LogLevel.info, when: float = 1_700_000_000.5) -> dict[str, Any]:
    return {
        "log_format": "{text}",
        "text": text,
        "log_level": level,
        "log_namespace": "glance_tx.api.site",
        "log_time": when,
    }


class BufferedLogObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        self.out = io.StringIO()
        self.observer = BufferedLogObserver(self.out, self.reactor)

    def test_lines_wait_for_the_timer(self) -> None:
        """
        Lines are written together once FLUSH_SECONDS have passed since the
        first, each exactly as twistd's text observer writes it.
        """
        events = [event("one"), event("two\nlines", when=1_700_000_001.25)]
        for e in events:
            self.observer(e)
        self.assertEqual(self.out.getvalue(), "")
        self.reactor.advance(FLUSH_SECONDS)
        expected = "".join(formatEventAsClassicLogText(e) or "" for e in events)
        self.assertEqual(self.out.getvalue(), expected)
        self.assertIn("two\n\tlines", expected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_every_kind_of_event_as_twistd_writes_it(self) -> None:
        """
        Events whose format is one string field (put together without
        twisted.logger's formatting) and every other kind are written
        exactly as twistd's text observer writes them: with a system, with
        none and no level, with a failure, a field that is no string, an
        empty one, one that is missing, and formats of more than a name.
        """
        failure = Failure(ZeroDivisionError("division by zero"))
        base = event("GET /v2/images/x 200")
        events = [
            base,
            {**base, "log_system": "worker-1"},
            {**base, "log_system": 7},
            {k: v for k, v in base.items() if k not in ("log_level", "log_namespace")},
            {**base, "log_failure": failure},
            {**base, "text": 42},
            {**base, "text": ""},
            {**base, "log_format": "{missing}"},
            {**base, "log_format": "{text!r}"},
            {**base, "log_format": "{text} and more"},
            {**base, "log_format": "{0}"},
            {**base, "log_format": None},
            {**base, "log_time": None},
        ]
        for e in events:
            self.observer(e)
        self.observer.flush()
        expected = "".join(formatEventAsClassicLogText(e) or "" for e in events)
        self.assertEqual(self.out.getvalue(), expected)

    def test_one_field_skips_the_formatter(self) -> None:
        """A request's line (one string field) is not formatted by twisted.logger."""
        import glance_tx.log_buffer as log_buffer

        def refuse(*args: Any, **kwargs: Any) -> str:
            raise AssertionError("formatted by twisted.logger")

        self.patch(log_buffer, "eventAsText", refuse)
        e = event("req-1 127.0.0.1 \"GET /v2/images/x HTTP/1.1\" 200 678 0.001s")
        self.observer(e)
        self.observer.flush()
        self.assertEqual(self.out.getvalue(), formatEventAsClassicLogText(e))

    def test_warnings_are_written_at_once(self) -> None:
        """A warning (or worse) is written at once, after the lines before it."""
        self.observer(event("before"))
        failure = Failure(ValueError("bad"))
        self.observer({**event("broken", LogLevel.error), "log_failure": failure})
        text = self.out.getvalue()
        self.assertLess(text.index("before"), text.index("broken"))
        self.assertIn("ValueError: bad", text)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_full_buffer_is_written_at_once(self) -> None:
        """Once max_buffered characters wait, they are written without the timer."""
        observer = BufferedLogObserver(self.out, self.reactor, max_buffered=200)
        observer(event("x" * 50))
        self.assertEqual(self.out.getvalue(), "")
        observer(event("y" * 150))
        self.assertIn("y" * 150, self.out.getvalue())

    def test_written_through_while_the_reactor_is_not_running(self) -> None:
        """
        Before the reactor runs and after it stops (start-up, "Server Shut
        Down."), nothing waits for a timer that would not fire.
        """
        self.reactor.running = False
        self.observer(event("starting"))
        self.assertIn("starting", self.out.getvalue())

    def test_written_through_from_other_threads(self) -> None:
        """An event from a thread that is not the reactor's is written at once."""
        thread = threading.Thread(target=self.observer, args=(event("from a thread"),))
        thread.start()
        thread.join()
        self.assertIn("from a thread", self.out.getvalue())

    def test_flush(self) -> None:
        """flush writes what waits and cancels the timer."""
        self.observer(event("waiting"))
        self.observer.flush()
        self.assertIn("waiting", self.out.getvalue())
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class TwistdObserverTests(SynchronousTestCase):
    def test_standard_output_is_buffered(self) -> None:
        """
        Where twistd would write to standard output (-n without --logfile,
        or --logfile=-), the buffered observer writes there instead, and is
        flushed after the reactor's shutdown.
        """
        for options in ({"nodaemon": True, "logfile": None}, {"nodaemon": True, "logfile": "-"}):
            reactor = MemoryReactorClock()
            observer = twistd_observer(options, reactor)
            assert observer is not None
            self.assertIs(observer._out, sys.stdout)
            [(flush, _, _)] = reactor.triggers["after"]["shutdown"]
            self.assertEqual(flush, observer.flush)

    def test_twistds_choice_stands(self) -> None:
        """A log file, syslog or --logger keep twistd's own observer."""
        for options in (
            {"nodaemon": True, "logfile": "glance.log"},
            {"nodaemon": False, "logfile": None},
            {"nodaemon": True, "logfile": None, "syslog": True},
            {"nodaemon": True, "logfile": None, "logger": "some.factory"},
            None,
        ):
            self.assertIsNone(twistd_observer(options, MemoryReactorClock()), options)

    def test_chain_offers_it_to_twistd(self) -> None:
        """
        A ServiceChain with a log observer sets it on the application it
        joins, where twistd's logger looks; one already set is kept.
        """
        observer = BufferedLogObserver(io.StringIO(), MemoryReactorClock())
        chain = ServiceChain()
        chain.log_observer = observer
        application = Application("glance")
        chain.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)

        other = Application("other")
        mine = BufferedLogObserver(io.StringIO(), MemoryReactorClock())
        other.setComponent(ILogObserver, mine)
        chain2 = ServiceChain()
        chain2.log_observer = observer
        chain2.setServiceParent(other)
        self.assertIs(other.getComponent(ILogObserver), mine)
