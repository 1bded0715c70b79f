"""
The process's text log, written in batches.

twistd's own observer (C{textFileLogObserver}) writes and flushes every
event at once: one C{write} system call per request line, and the line's
time formatted with C{strftime} each time. Under a metadata load of a few
thousand requests a second that was a fifth of a GET's CPU
(bench/metadata.py, py-spy). L{BufferedLogObserver} formats each event the
same way (the same text, the same time format, so nothing that reads the
log changes), but keeps the lines in memory and writes them together:
every L{FLUSH_SECONDS}, once L{MAX_BUFFERED} characters wait, at once for a
warning or worse, at once while the reactor is not running (start-up and
the last lines), and at shutdown.

``twistd glance`` uses it where twistd would log to standard output
(C{-n} without C{--logfile}, or C{--logfile=-}: containers, systemd, the
workers of C{--workers}); with a log file, syslog or C{--logger}, twistd's
own observer stays (see L{twistd_observer}).
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, LogLevel, eventAsText, formatTime
from zope.interface import implementer

#: How long a line may wait in memory before it is written.
FLUSH_SECONDS = 0.2
#: How many characters may wait before they are written at once.
MAX_BUFFERED = 64 * 1024


#: The levels written at once. A set, not C{level >= LogLevel.warn}:
#: constantly's comparison is a Python call at every event.
_AT_ONCE = frozenset(level for level in LogLevel.iterconstants() if level >= LogLevel.warn)

_ONE_FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")


@functools.lru_cache(maxsize=256)
def _single_field(log_format: str) -> str | None:
    """The field name of a format that is only C{{name}}, else None."""
    match = _ONE_FIELD.fullmatch(log_format)
    return match.group(1) if match else None


@implementer(ILogObserver)
class BufferedLogObserver:
    """
    Writes events as twistd's text observer does (C{formatEventAsClassicLogText}:
    time, C{[system]}, the text, continuation lines indented), in batches.
    C{reactor} gives the timer and whether it is running; make it on the
    reactor's thread (events from other threads are written at once).
    """

    def __init__(
        self,
        out: IO[str],
        reactor: Any,
        flush_seconds: float = FLUSH_SECONDS,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self._out = out
        self._reactor = reactor
        self._flush_seconds = flush_seconds
        self._max_buffered = max_buffered
        self._lines: list[str] = []
        self._size = 0
        self._timer: Any = None
        # The time text of the last second seen: the format has seconds.
        self._second: int | None = None
        self._second_text = ""
        # Events may come from any thread; the timer only from the reactor's,
        # the one that makes the observer (twistd's main thread).
        self._lock = threading.Lock()
        self._reactor_thread = threading.get_ident()

    def _format_time(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._second, self._second_text = second, formatTime(second)
        return self._second_text

    def _text(self, event: LogEvent) -> str:
        """
        What C{eventAsText} gives (time, C{[system]}, the text). An event
        whose format is one field holding a string (a request's line:
        L{glance_tx.api.site.GlanceSite.log_request}) is put together here
        without C{string.Formatter}: that was half a request line's cost.
        """
        log_format = event.get("log_format")
        field = _single_field(log_format) if type(log_format) is str else None
        text = event.get(field) if field is not None else None
        if type(text) is not str or not text or "log_failure" in event:
            return eventAsText(event, formatTime=self._format_time)
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        else:
            try:
                system = str(system)
            except Exception:
                system = "UNFORMATTABLE"
        return f"{self._format_time(event.get('log_time'))} [{system}] {text}"

    def __call__(self, event: LogEvent) -> None:
        text = self._text(event)
        if not text:
            return
        text = text.replace("\n", "\n\t") + "\n"
        with self._lock:
            self._lines.append(text)
            self._size += len(text)
            full = self._size >= self._max_buffered
        if (
            full
            or event.get("log_level") in _AT_ONCE
            or not self._reactor.running
            or threading.get_ident() != self._reactor_thread
        ):
            self.flush()
        elif self._timer is None:
            self._timer = self._reactor.callLater(self._flush_seconds, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write what waits, now."""
        if threading.get_ident() == self._reactor_thread and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        with self._lock:
            if not self._lines:
                return
            text = "".join(self._lines)
            self._lines, self._size = [], 0
            try:
                self._out.write(text)
                self._out.flush()
            except (OSError, ValueError):
                # Nowhere to write (a closed pipe): as with twistd's
                # observer, the log cannot report its own failure.
                pass


def twistd_observer(twistd_options: Any, reactor: Any) -> BufferedLogObserver | None:
    """
    The buffered observer to use instead of twistd's, from twistd's own
    options (C{ServerOptions}: the parent of a plugin's options), or None
    to keep twistd's: it is used only where twistd would write to standard
    output, and never when C{--logger} or C{--syslog} chose otherwise.
    """
    if twistd_options is None:
        return None
    get = twistd_options.get
    if get("logger") or get("syslog"):
        return None
    logfile = get("logfile") or ""
    if logfile == "-" or (get("nodaemon") and not logfile):
        observer = BufferedLogObserver(sys.stdout, reactor)
        reactor.addSystemEventTrigger("after", "shutdown", observer.flush)
        return observer
    return None

