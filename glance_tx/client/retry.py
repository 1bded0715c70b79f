"""
When a failed request is sent again, and after how long.

Only a request that may be repeated is: an idempotent method (RFC 9110
9.2.2: GET, HEAD, PUT, DELETE) whose body, if any, is held whole and so
can be sent again. A create (POST), a JSON patch (PATCH: a C{remove} that
succeeded once fails the second time) and an upload streamed from a file
or a pipe never are: the caller decides. The download of data resumes by
its own rules (C{Range}, C{If-Match}) in L{glance_tx.client.api}.

What is worth another try: a connection refused, reset or lost before the
answer (L{ConnectionFailed}, a server restarting or a balancer between
two backends), and a 503 that says when to come back (C{Retry-After}).
Not a timeout (the caller's bound on waiting would be multiplied) and not
any other refusal (it would say the same again).
"""

from __future__ import annotations

from attrs import frozen

from glance_tx.bodies import BytesBody
from glance_tx.client.errors import ConnectionFailed, ServiceUnavailable, TimedOut

__all__ = ["IDEMPOTENT", "RetryPolicy"]

#: The methods whose effect is the same however many times they are sent.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@frozen
class RetryPolicy:
    """
    Up to C{retries} more tries, the n-th after C{delay * 2**(n-1)}
    seconds (at most C{longest}), or after a 503's C{Retry-After} if it
    asks for C{longest} seconds or less.
    """

    retries: int = 3
    delay: float = 0.5
    longest: float = 60.0

    @staticmethod
    def repeatable(method: str, body: object) -> bool:
        """Whether a request may be sent again: idempotent, its body held whole."""
        return method.upper() in IDEMPOTENT and (body is None or isinstance(body, BytesBody))

    def wait(self, tries: int, error: Exception) -> float | None:
        """
        Seconds to wait before sending again a request that has failed
        C{tries} times, the last with C{error}; None: give up, raise it.
        """
        if tries > self.retries:
            return None
        if isinstance(error, ServiceUnavailable):
            # Without a Retry-After the server gave no reason to expect a
            # change soon; past `longest`, the caller would rather know.
            if error.retry_after is None or error.retry_after > self.longest:
                return None
            return max(error.retry_after, 0.0)
        if isinstance(error, ConnectionFailed) and not isinstance(error, TimedOut):
            return min(self.delay * 2 ** (tries - 1), self.longest)
        return None
