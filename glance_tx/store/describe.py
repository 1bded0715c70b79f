"""What a user may be told of a store's error."""

from __future__ import annotations


def describe(error: BaseException | None) -> str:
    """
    What went wrong, for a message a client sees: an L{OSError}'s
    C{strerror} without the file names it may carry, else the error's text
    (a store's own errors are written to be shown), else its class name.
    """
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error or "") or type(error).__name__
