"""
Image conversion on import (Glance's C{[image_conversion] output_format}).

An import whose image is not already in the output format is first
streamed, through the upload stages (so an unsafe or mislabelled image is
refused before C{qemu-img} opens it), into a node-local work file; then
C{qemu-img convert} runs as a child process (C{spawnProcess}: the reactor
is never blocked), under C{prlimit} with an address-space limit, a CPU-time
limit and a file-size limit (the output cannot outgrow the size cap), and
killed if it outlasts the time limit. The output is imported as the
image, inspected again as the output format. The work files are removed
on success and failure, and the whole work directory at start-up
(L{Converter.clean}).

The work directory is a L{FilesystemStore}, so the work files are written
and read by the same crash-safe code as image data, on the thread pool.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import suppress
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from glance_tx.errors import GlanceError
from glance_tx.store.filesystem import FilesystemStore

#: The output formats Glance's option takes.
OUTPUT_FORMATS = ("raw", "qcow2", "vmdk")
#: The disk formats qemu-img reads here (by that name, C{-f}).
INPUT_FORMATS = frozenset({"raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi"})
#: qemu-img calls vhd "vpc".
_QEMU_NAMES = {"vhd": "vpc"}
#: What is kept of the child's standard error for the message.
_STDERR_KEPT = 2000


class ConversionFailed(GlanceError):
    """qemu-img could not convert the image (or was stopped)."""


class _Collect(ProcessProtocol):
    def __init__(self, done: Deferred[tuple[Any, bytes]]) -> None:
        self.done = done
        #: Fires when the child has gone, even if C{done} was cancelled.
        self.exited: Deferred[None] = Deferred()
        self.err = bytearray()

    def errReceived(self, data: bytes) -> None:
        if len(self.err) < _STDERR_KEPT:
            self.err += data[: _STDERR_KEPT - len(self.err)]

    def processEnded(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback((reason.value, bytes(self.err)))
        self.exited.callback(None)


@define
class Converter:
    """
    Converts work files in C{work} to C{output_format} with C{qemu_img}
    run under C{prlimit} on C{reactor} (an C{IReactorProcess} and
    C{IReactorTime}).
    """

    reactor: Any
    work: FilesystemStore
    output_format: str
    #: Seconds of wall-clock (and of CPU) time a conversion may take.
    timeout: float = 600.0
    #: Bytes of address space qemu-img may use.
    memory_limit: int = 1 << 30
    #: Bytes the output file may have.
    size_limit: int = 1 << 40
    qemu_img: str = field(factory=lambda: shutil.which("qemu-img") or "qemu-img")
    prlimit: str = field(factory=lambda: shutil.which("prlimit") or "prlimit")

    def wants(self, disk_format: str | None) -> bool:
        """Whether an image of C{disk_format} is converted."""
        return disk_format != self.output_format and disk_format in INPUT_FORMATS

    def work_key(self) -> str:
        """A fresh key for a work file (a UUID, as the store keys take)."""
        return str(uuid.uuid4())

    async def clean(self) -> None:
        """Remove every work file (at start-up: a crash may have left some)."""
        root = self.work.root.path

        def empty() -> None:
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root, exist_ok=True)

        await self.work.runner.run(empty)

    async def convert(self, input_key: str, input_format: str) -> str:
        """
        Convert the work file C{input_key} (of C{input_format}); return the
        key of the output, in the work store. The output is removed if the
        conversion fails.

        @raise ConversionFailed: qemu-img failed, was killed by a limit,
            or outlasted C{timeout}.
        """
        output_key = self.work_key()
        source = self.work.root.child(input_key).path
        target = self.work.root.child(output_key).path
        seconds = max(1, int(self.timeout))
        argv = [
            self.prlimit,
            f"--as={self.memory_limit}",
            f"--cpu={seconds}",
            f"--fsize={self.size_limit}",
            "--",
            self.qemu_img,
            "convert",
            "-f", _QEMU_NAMES.get(input_format, input_format),
            "-O", self.output_format,
            source,
            target,
        ]
        done: Deferred[tuple[Any, bytes]] = Deferred()
        child = _Collect(done)
        transport = self.reactor.spawnProcess(
            child, argv[0], argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        timer = self.reactor.callLater(self.timeout, transport.signalProcess, "KILL")
        try:
            ended, err = await done
        except BaseException:
            # Cancelled (a stop): the child must not outlive its import.
            with suppress(ProcessExitedAlready):
                transport.signalProcess("KILL")
            await child.exited
            await self.work.runner.run(_remove, target)
            raise
        finally:
            timed_out = not timer.active()
            if not timed_out:
                timer.cancel()
        if timed_out or not isinstance(ended, ProcessDone):
            await self.work.runner.run(_remove, target)
            if timed_out:
                raise ConversionFailed(
                    f"Conversion to {self.output_format} took longer than {self.timeout:g} seconds"
                )
            detail = err.decode("utf-8", "replace").strip().splitlines()
            raise ConversionFailed(
                f"Conversion to {self.output_format} failed"
                + (f": {detail[-1]}" if detail else f" ({ended})")
            )
        return output_key


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
