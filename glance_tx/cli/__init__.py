"""
The C{glance-tx} command line: the Images API v2 from a shell, built on
L{glance_tx.client.blocking.BlockingClient} (no HTTP code of its own).
See the CLI reference in C{doc/client.rst}.
"""

from glance_tx.cli.commands import cli, main

__all__ = ["cli", "main"]
