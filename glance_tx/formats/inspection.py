"""
Format inspection: what an upload's bytes are, as they stream in.

A disk image can attack the host that boots it: a qcow2 backing file or
external data file (CVE-2024-32498), or a VMDK descriptor naming host files
(CVE-2022-47951), makes qemu read whatever file it names. So every upload
of a bare image passes an L{InspectionStage}: the inspector OpenStack itself
maintains (C{oslo_utils.imageutils.format_inspector}), fed the upload's
batches on a worker thread like the hashes, keeping only the few regions
of the image it needs (headers, a VMDK descriptor, the last bytes). After
the last byte it says which format the content is and its virtual size,
and runs that format's safety checks. The upload is refused
(L{InvalidImageData}) when the image is unsafe, when its content
contradicts its declared C{disk_format} (with C{require_image_format_match},
Glance's option, on by default), or when it is a format never allowed
(QED; VMDK create types outside C{vmdk_allowed_types}). A GPT disk whose
only failed checks are named in C{gpt_safety_checks_nonfatal} passes with
a warning, as in Glance 33.

Glance 33 takes the same decisions after storing the data (and, unlike
here, lets a C{raw} image be anything); here the refusal comes before the
commit, so the data is removed and never served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any, cast

from attrs import define, field
from oslo_utils.imageutils import format_inspector
from twisted.logger import Logger
from zope.interface import implementer

from glance_tx.config import ImageFormatConfig
from glance_tx.errors import InvalidImageData
from glance_tx.stages import IUploadStage

log = Logger()

#: Formats whose content is the disk itself, so a C{raw} image may carry
#: them: a partition table (GPT, or an MBR), or an ISO 9660 filesystem.
RAW_CONTENT = frozenset({"gpt", "iso"})


def wants_inspection(container_format: str | None) -> bool:
    """
    Whether to inspect data in C{container_format}, as Glance: a bare image
    is the disk itself (C{None}, a v1 image that does not say, is taken for
    one); an ova, ovf or docker container is not a disk.
    """
    return container_format in (None, "bare")


class _Handoff:
    """The one chunk the inspector's C{read} is to see next."""

    data = b""

    def read(self, size: int) -> bytes:
        data, self.data = self.data, b""
        return data


@implementer(IUploadStage)
@define
class InspectionStage:
    """
    Detects the upload's format, its virtual size and whether it is safe;
    C{declared} is the image's C{disk_format} (C{None}: it says none).
    """

    declared: str | None
    policy: ImageFormatConfig = field(factory=ImageFormatConfig)
    _source: _Handoff = field(factory=_Handoff, init=False)
    _wrapper: format_inspector.InspectWrapper = field(init=False)

    def __attrs_post_init__(self) -> None:
        # No expected_format: the wrapper would raise mid-stream on a
        # mismatch before it can say what the content is instead.
        self._wrapper = format_inspector.InspectWrapper(cast(IO[bytes], self._source))

    def feed(self, data: bytes) -> None:
        # Each inspector keeps only its regions; one that fails to parse
        # is dropped from consideration by the wrapper, never raised here.
        self._source.data = data
        self._wrapper.read(len(data))
        self._drop_dead_descriptor()

    def _drop_dead_descriptor(self) -> None:
        """
        Free the VMDK inspector's 1 MiB capture once it can no longer be a
        descriptor. Until the first 512 bytes are known it captures the
        start of any image (up to 1 MiB: the whole first batch), as a
        text-only descriptor; an image that is no VMDK (nearly every one)
        makes it fail there, and the wrapper feeds it no more, but the
        capture stayed until the upload ended: 20 MiB for 20 uploads in
        flight, and long-lived blocks among the batches that pinned the
        heap's top. Only C{_parse_descriptor}, on the region's completion
        while the inspector is fed, reads that region; C{format_match},
        the virtual size and the safety checks read the header and the
        parsed text, which stay. Private names read defensively, as in
        L{_release}.
        """
        for inspector in getattr(self._wrapper, "_errored_inspectors", ()):
            if str(inspector) == "vmdk" and inspector.has_region("descriptor"):
                inspector.delete_region("descriptor")

    def result(self) -> Mapping[str, Any]:
        try:
            return self._result()
        finally:
            self._release()

    def _release(self) -> None:
        """
        Drop the regions every inspector captured, once the result is known.
        Each inspector holds itself in a reference cycle (its safety checks
        are its bound methods), so without this its regions, 1 MiB for the
        VMDK descriptor alone, outlive the upload until a full garbage
        collection: 20 uploads left 22 MiB behind. oslo.utils has no public
        way to release them, hence its private C{_inspectors} and
        C{_capture_regions}, read defensively.
        """
        for inspector in getattr(self._wrapper, "_inspectors", ()):
            regions = getattr(inspector, "_capture_regions", None)
            if isinstance(regions, dict):
                regions.clear()

    def _result(self) -> Mapping[str, Any]:
        self._wrapper.close()
        inspector = self._detected()
        found = str(inspector)
        if found == "qed":
            raise InvalidImageData("Image content is qed, a format that is never allowed")
        if found == "vmdk":
            self._check_vmdk_type(inspector)
        try:
            inspector.safety_check()
        except format_inspector.SafetyCheckFailed as e:
            reasons = "; ".join(
                f"{name}: {failure}" for name, failure in sorted(e.failures.items())
            )
            if not self._fatal(found, e.failures):
                log.warn(
                    "Image content is {found} and fails safety checks ({reasons}); "
                    "accepted (gpt_safety_checks_nonfatal)",
                    found=found,
                    reasons=reasons,
                )
                return self._fields(inspector, found)
            raise InvalidImageData(
                f"Image content is {found} and fails its safety checks ({reasons})"
            ) from None
        except format_inspector.ImageFormatError as e:
            raise InvalidImageData(f"Image content could not be checked as {found}: {e}") from None
        return self._fields(inspector, found)

    def _fatal(self, found: str, failures: Mapping[str, object]) -> bool:
        """
        Whether failed safety checks refuse the image: always, unless the
        content is a GPT disk and every check that failed is named in
        C{gpt_safety_checks_nonfatal} (Glance 33's rule, in
        C{glance.location} and its image conversion: many tools write a
        protective MBR that is loosely made but boots).
        """
        nonfatal = set(self.policy.gpt_safety_checks_nonfatal)
        return found != "gpt" or bool(failures.keys() - nonfatal)

    def _detected(self) -> format_inspector.FileInspector:
        """The one format the whole content matched (raw if none)."""
        try:
            matches = self._wrapper.formats or []
            by_name = {str(i): i for i in matches}
            if by_name.keys() == {"iso", "gpt"}:
                # A bootable ISO may carry a GPT in front: it is an ISO.
                return by_name["iso"]
            detected = self._wrapper.format
        except format_inspector.ImageFormatError as e:
            # Several formats at once: one header hiding another.
            raise InvalidImageData(f"Image content is ambiguous: {e}") from None
        assert detected is not None  # decided: the wrapper was closed
        return detected

    def _check_vmdk_type(self, inspector: format_inspector.FileInspector) -> None:
        allowed = {t.lower() for t in self.policy.vmdk_allowed_types}
        create_type = str(getattr(inspector, "vmdktype", "formatnotfound"))
        if create_type not in allowed:
            raise InvalidImageData(
                f"Image content is a vmdk of create type {create_type}, which is "
                f"not allowed (vmdk_allowed_types: "
                f"{', '.join(self.policy.vmdk_allowed_types) or 'none'})"
            )

    def _fields(self, inspector: format_inspector.FileInspector, found: str) -> Mapping[str, Any]:
        """C{virtual_size} if the content is what it claims to be."""
        declared = self.declared
        if declared is None or found == declared:
            return {"virtual_size": inspector.virtual_size}
        if declared == "raw" and found in RAW_CONTENT:
            return {"virtual_size": inspector.actual_size}
        if found == "raw" and declared not in format_inspector.ALL_FORMATS:
            # ami, aki, ari, ploop: formats no inspector knows.
            return {}
        message = f"Image content is {found}, not its disk_format {declared}"
        if self.policy.require_image_format_match:
            raise InvalidImageData(message)
        log.warn("{message}; accepted (require_image_format_match is off)", message=message)
        return {}
