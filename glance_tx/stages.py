"""
The stages an upload's bytes pass through on their way to the store.

A stage sees every byte of one upload, in order, on a worker thread (the
pipeline gives each its own serial runner, so stages run in parallel with
each other and with the store's writes). After the last byte it says what
it found as image fields -- the md5 ``checksum``, the ``os_hash_*`` pair, a
``virtual_size`` -- or refuses the upload. The pipeline
(L{glance_tx.streaming.UploadPipeline}) knows nothing of what a stage
computes: a new check on uploads is one more stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from attrs import define, field
from zope.interface import Interface, implementer

from glance_tx.errors import BadRequest


class IUploadStage(Interface):
    """One step every byte of an upload passes through, off the reactor."""

    def feed(data: bytes) -> None:
        """
        Take the next bytes. Called on a worker thread, never two at once,
        in the order the bytes arrived. May block (hashing, parsing).
        Raising a L{glance_tx.errors.GlanceError} refuses the upload.
        """

    def result() -> Mapping[str, Any]:
        """
        After the last byte (on the same thread as C{feed}): the image
        fields this stage found. Raise a L{glance_tx.errors.GlanceError} to
        refuse the upload; its data is then removed.
        """


@implementer(IUploadStage)
@define
class ChecksumStage:
    """Glance's ``checksum``: the md5 of the data, checked against a declared one."""

    expected: str | None = None
    _md5: Any = field(init=False, factory=lambda: hashlib.md5(usedforsecurity=False))

    def feed(self, data: bytes) -> None:
        self._md5.update(data)

    def result(self) -> Mapping[str, Any]:
        checksum = self._md5.hexdigest()
        if self.expected is not None and self.expected.lower() != checksum:
            raise BadRequest(
                f"Image data has checksum {checksum} but the declared "
                f"checksum is {self.expected}"
            )
        return {"checksum": checksum}


@implementer(IUploadStage)
@define
class HashStage:
    """
    Glance's multihash: ``os_hash_value`` is the hex digest of the data by
    ``os_hash_algo``, any algorithm C{hashlib} knows (Glance's
    ``hashing_algorithm`` option, sha512 by default).
    """

    algorithm: str = "sha512"
    _hash: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._hash = hashlib.new(self.algorithm)

    def feed(self, data: bytes) -> None:
        self._hash.update(data)

    def result(self) -> Mapping[str, Any]:
        return {"os_hash_algo": self.algorithm, "os_hash_value": self._hash.hexdigest()}
