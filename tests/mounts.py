"""
Small file systems a test mounts for itself, to make real faults: a tmpfs
that fills up, remounted read-only, or a read-only bind mount.

The tests run as root, where permission bits stop nothing, so the faults
have to come from the kernel. Where mounting is not allowed (no root, no
CAP_SYS_ADMIN in a container) the tests skip, except under C{CI=true},
where that is a failure (as for the servers of L{tests.swift_cluster}).
"""

from __future__ import annotations

import subprocess

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.swift_cluster import in_ci


def _mount(*arguments: str) -> str | None:
    """Run mount; None on success, else why it failed."""
    try:
        result = subprocess.run(
            ["mount", *arguments], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"mount could not run: {e}"
    if result.returncode != 0:
        return f"mount {' '.join(arguments)} failed: {result.stderr.strip()}"
    return None


def _unmount(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=30, check=True)


def _mounted_or_skip(case: SynchronousTestCase, problem: str | None) -> None:
    if problem is None:
        return
    if in_ci():
        case.fail(f"Fault tests cannot run under CI: {problem}")
    raise SkipTest(f"Fault tests not run (they mount file systems, as root): {problem}")


def tmpfs(case: SynchronousTestCase, size: str = "2m") -> FilePath[str]:
    """A fresh tmpfs of C{size} bytes (mount's notation), unmounted at cleanup."""
    directory: FilePath[str] = FilePath(case.mktemp())
    directory.makedirs()
    _mounted_or_skip(
        case, _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", directory.path)
    )
    case.addCleanup(_unmount, directory.path)
    return directory


def remount(case: SynchronousTestCase, directory: FilePath[str], mode: str) -> None:
    """Remount the tmpfs at C{directory} C{ro} or C{rw}."""
    _mounted_or_skip(case, _mount("-o", f"remount,{mode}", directory.path))
