"""
Real disk images for the format tests, made by ``qemu-img`` (Debian's
qemu-utils, which tools/run-tests installs) in a temporary directory.

What qemu-img cannot make is built here byte by byte, as small as the
format allows: an ISO 9660 primary volume descriptor, a protective MBR in
front of a GPT, a qcow2 with an incompatible feature bit no qemu knows,
and a VMDK descriptor whose extent names a host path.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

from twisted.trial.unittest import SkipTest

MiB = 1 << 20
#: Every image's virtual size, unless made otherwise.
SIZE = 10 * MiB


class DiskImages:
    """Makes images in C{directory}; each method returns the file's path."""

    def __init__(self, directory: str) -> None:
        if shutil.which("qemu-img") is None:
            raise SkipTest("qemu-img is not installed (Debian package qemu-utils)")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def qemu_img(self, *args: str) -> None:
        subprocess.run(["qemu-img", *args], check=True, capture_output=True, cwd=self.directory)

    def create(self, name: str, fmt: str, *options: str, size: int = SIZE) -> str:
        """C{qemu-img create -f fmt [-o options] name size}."""
        args = ["create", "-q", "-f", fmt]
        for option in options:
            args += ["-o", option]
        self.qemu_img(*args, name, str(size))
        return self.path(name)

    def virtual_size(self, name: str) -> int:
        """What C{qemu-img info} says the image's virtual size is."""
        out = subprocess.run(
            ["qemu-img", "info", "--output=json", self.path(name)],
            check=True,
            capture_output=True,
        ).stdout
        return int(json.loads(out)["virtual-size"])

    def data(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()

    def write(self, name: str, data: bytes) -> str:
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    # -- images qemu-img does not make --------------------------------------

    def iso(self, name: str = "disk.iso", blocks: int = 40) -> str:
        """An ISO 9660 volume of C{blocks} 2 KiB blocks: 16 system blocks,
        its primary volume descriptor and the set terminator."""
        pvd = bytearray(2048)
        pvd[0:7] = b"\x01CD001\x01"
        pvd[80:88] = struct.pack("<I", blocks) + struct.pack(">I", blocks)
        pvd[128:132] = struct.pack("<H", 2048) + struct.pack(">H", 2048)
        terminator = b"\xffCD001\x01".ljust(2048, b"\x00")
        body = bytes(16 * 2048) + bytes(pvd) + terminator
        return self.write(name, body.ljust(blocks * 2048, b"\x00"))

    def gpt(self, name: str = "gpt.raw", size: int = MiB, start_lba: int = 1) -> str:
        """
        A raw disk that starts with a protective MBR and a GPT header; a
        C{start_lba} other than 1 makes the MBR fail the inspector's C{mbr}
        safety check (as loosely made protective MBRs do).
        """
        sectors = size // 512
        mbr = bytearray(512)
        # One partition of type 0xEE from LBA 1 over the whole disk.
        mbr[446:462] = struct.pack(
            "<B3BB3BII", 0, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF, start_lba, sectors - start_lba
        )
        mbr[510:512] = b"\x55\xaa"
        header = b"EFI PART".ljust(512, b"\x00")
        return self.write(name, (bytes(mbr) + header).ljust(size, b"\x00"))

    def qcow2_unknown_feature(self, name: str = "feature.qcow2") -> str:
        """A qcow2 (version 3) with incompatible feature bit 60 set."""
        self.create(name, "qcow2")
        data = bytearray(self.data(name))
        # incompatible_features: a big-endian uint64 at offset 72.
        (features,) = struct.unpack(">Q", data[72:80])
        data[72:80] = struct.pack(">Q", features | (1 << 60))
        return self.write(name, bytes(data))

    def vmdk_path_extent(self, name: str = "path.vmdk") -> str:
        """A VMDK descriptor file of an allowed create type whose extent is a
        host path (CVE-2022-47951)."""
        descriptor = (
            "# Disk DescriptorFile\n"
            "version=1\n"
            "CID=fffffffe\n"
            "parentCID=ffffffff\n"
            'createType="monolithicSparse"\n'
            "\n"
            "# Extent description\n"
            'RW 20480 SPARSE "/etc/passwd"\n'
            "\n"
            "# The Disk Data Base\n"
            'ddb.virtualHWVersion = "4"\n'
        )
        return self.write(name, descriptor.encode("ascii"))
