"""A fake configfs-tsm report tree over FUSE, for attester tests on machines without a TEE.

Behaves like ``/sys/kernel/config/tsm/report``: ``mkdir`` creates an entry that
already holds ``provider``, ``inblob``, ``outblob``, ``auxblob`` and
``generation``; writing ``inblob`` bumps ``generation`` and produces an
``outblob`` carrying the written bytes as report data: a TD quote v4
(``tdx_guest``) or an SNP attestation report v3 from a Genoa CPU with a VCEK
entry in ``auxblob`` (``sev_guest``). ``--empty-outblob`` makes the TEE return
nothing. Run: ``python -m tests.fake_configfs_tsm MOUNTPOINT --provider tdx_guest``.

SNP entries also hold ``privlevel`` and ``privlevel_floor`` as the kernel's
drivers/virt/coco/tsm.c has them (torvalds/linux; the floor is the guest's VMPL,
``--vmpl N``): a privlevel write below the floor or above 3 fails with EINVAL, and
every write (privlevel or inblob) bumps ``generation``, as
``try_advance_write_generation`` does. The report's VMPL is the privlevel asked
for (the floor when none was written). ``--no-privlevel`` stands for a kernel
without the attribute whose guest runs at ``--vmpl``.
"""

import argparse
import errno
import os
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyfuse3
import trio

VCEK_GUID = bytes.fromhex("63da758de6644564adc5f4b93be8accd")
FAKE_VCEK = b"fake VCEK certificate bytes"
REPO_ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = (b"provider", b"inblob", b"outblob", b"auxblob", b"generation")
PRIVLEVEL_ATTRIBUTES = (b"privlevel", b"privlevel_floor")
PRIVLEVEL_MAX = 3


def tdx_quote(report_data: bytes) -> bytes:
    """TD quote v4: 48-byte header, 584-byte TD report body (REPORTDATA last), a signature."""
    header = struct.pack("<HHI", 4, 2, 0x81).ljust(48, b"\0")
    body = bytes(range(256)) * 2 + bytes(520 - 512) + report_data.ljust(64, b"\0")
    signature = b"\x5a" * 64
    return header + body + struct.pack("<I", len(signature)) + signature


def snp_report(report_data: bytes, vmpl: int = 0) -> bytes:
    """SNP attestation report v3 (1184 bytes) from family 0x19 model 0x11 (Genoa)."""
    report = bytearray(0x4A0)
    struct.pack_into("<IIQ", report, 0, 3, 7, 0x30000)
    struct.pack_into("<II", report, 0x30, vmpl, 1)  # vmpl, sig_algo
    report[0x38:0x40] = bytes([3, 0, 0, 0, 0, 0, 20, 209])  # current TCB (legacy layout)
    struct.pack_into("<QI", report, 0x40, 0x25, 0)  # plat_info, key_info
    report[0x50:0x90] = report_data.ljust(64, b"\0")
    report[0x90:0xC0] = bytes(range(48))  # measurement
    report[0x180:0x188] = bytes([3, 0, 0, 0, 0, 0, 20, 209])  # reported TCB
    report[0x188:0x18B] = bytes([0x19, 0x11, 0x01])
    report[0x1A0:0x1E0] = bytes(range(100, 164))  # chip id
    report[0x1E0:0x1E8] = bytes([3, 0, 0, 0, 0, 0, 20, 209])  # committed TCB
    report[0x1E8:0x1EB] = bytes([21, 55, 1])  # current: build 21, minor 55, major 1
    report[0x1EC:0x1EF] = bytes([20, 54, 1])
    report[0x1F0:0x1F8] = bytes([3, 0, 0, 0, 0, 0, 20, 209])  # launch TCB
    report[0x2A0:0x2E8] = b"\x11" * 72
    report[0x2E8:0x330] = b"\x22" * 72
    return bytes(report)


def snp_cert_table() -> bytes:
    """GUID table: one VCEK entry, the terminator, then the certificate bytes."""
    offset = 2 * 24
    return VCEK_GUID + struct.pack("<II", offset, len(FAKE_VCEK)) + bytes(24) + FAKE_VCEK


class FakeTsm(pyfuse3.Operations):
    def __init__(
        self, provider: str, empty_outblob: bool, vmpl: int = 0, privlevel: bool = True
    ) -> None:
        super().__init__()
        self.provider = provider
        self.empty_outblob = empty_outblob
        self.vmpl = vmpl  # the guest's VMPL: privlevel_floor
        self.attributes = ATTRIBUTES
        if provider == "sev_guest" and privlevel:
            self.attributes += PRIVLEVEL_ATTRIBUTES
        self.entries: dict[bytes, int] = {}  # name -> inode
        self.files: dict[int, tuple[int, bytes]] = {}  # inode -> (entry inode, attribute)
        self.values: dict[tuple[int, bytes], bytes] = {}
        self.next_inode = pyfuse3.ROOT_INODE + 1

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if inode == pyfuse3.ROOT_INODE or inode in self.entries.values():
            attrs.st_mode = stat.S_IFDIR | 0o755
            attrs.st_nlink = 2
        elif inode in self.files:
            attrs.st_mode = stat.S_IFREG | 0o644
            attrs.st_nlink = 1
            attrs.st_size = len(self.values[self.files[inode]])
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
        attrs.entry_timeout = attrs.attr_timeout = 0
        return attrs

    def _children(self, inode: int) -> dict[bytes, int]:
        if inode == pyfuse3.ROOT_INODE:
            return dict(self.entries)
        return {name: i for i, (entry, name) in self.files.items() if entry == inode}

    async def lookup(self, parent_inode, name, ctx=None):
        child = self._children(parent_inode).get(bytes(name))
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(child)

    async def getattr(self, inode, ctx=None):
        return self._attrs(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        return self._attrs(inode)

    async def mkdir(self, parent_inode, name, mode, ctx):
        if parent_inode != pyfuse3.ROOT_INODE or bytes(name) in self.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        entry = self.next_inode
        self.entries[bytes(name)] = entry
        initial = {
            b"provider": f"{self.provider}\n".encode(),
            b"inblob": b"",
            b"outblob": b"",
            b"auxblob": b"",
            b"generation": b"0\n",
            b"privlevel": b"",
            b"privlevel_floor": f"{self.vmpl}\n".encode(),
        }
        for offset, attribute in enumerate(self.attributes, start=1):
            self.files[entry + offset] = (entry, attribute)
            self.values[(entry, attribute)] = initial[attribute]
        self.next_inode += len(self.attributes) + 1
        return self._attrs(entry)

    async def rmdir(self, parent_inode, name, ctx):
        entry = self.entries.pop(bytes(name), None)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        for inode in [i for i, (e, _) in self.files.items() if e == entry]:
            del self.values[self.files.pop(inode)]

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        names = sorted(self._children(fh).items())
        for position in range(start_id, len(names)):
            name, inode = names[position]
            if not pyfuse3.readdir_reply(token, name, self._attrs(inode), position + 1):
                break

    async def releasedir(self, fh):
        pass

    async def open(self, inode, flags, ctx):
        if inode not in self.files:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        return self.values[self.files[fh]][off : off + size]

    async def write(self, fh, off, buf):
        entry, attribute = self.files[fh]
        if attribute == b"privlevel":
            return self._write_privlevel(entry, bytes(buf))
        if attribute != b"inblob" or off != 0 or len(buf) > 64:
            raise pyfuse3.FUSEError(errno.EINVAL)
        data = bytes(buf)
        self._advance_generation(entry)
        self.values[(entry, b"inblob")] = data
        if self.empty_outblob:
            outblob, auxblob = b"", b""
        elif self.provider == "tdx_guest":
            outblob, auxblob = tdx_quote(data), b""
        else:
            vmpl = int(self.values.get((entry, b"privlevel")) or self.vmpl)
            outblob, auxblob = snp_report(data, vmpl), snp_cert_table()
        self.values[(entry, b"outblob")] = outblob
        self.values[(entry, b"auxblob")] = auxblob
        return len(buf)

    def _write_privlevel(self, entry: int, data: bytes) -> int:
        try:
            level = int(data.decode("ascii").strip(), 0)  # kstrtouint(buf, 0, ...)
        except ValueError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if not self.vmpl <= level <= PRIVLEVEL_MAX:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._advance_generation(entry)
        self.values[(entry, b"privlevel")] = str(level).encode()
        return len(data)

    def _advance_generation(self, entry: int) -> None:
        generation = int(self.values[(entry, b"generation")]) + 1
        self.values[(entry, b"generation")] = f"{generation}\n".encode()

    async def release(self, fh):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("--provider", required=True)
    parser.add_argument("--empty-outblob", action="store_true")
    parser.add_argument("--vmpl", type=int, default=0)
    parser.add_argument("--no-privlevel", action="store_true")
    args = parser.parse_args()
    operations = FakeTsm(args.provider, args.empty_outblob, args.vmpl, not args.no_privlevel)
    pyfuse3.init(operations, args.mountpoint, {"fsname=fake-tsm", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


@contextmanager
def running_fake_tsm(
    root: Path, provider: str, empty_outblob: bool = False, *options: str
) -> Iterator[Path]:
    """Mount the fake tree at ``root`` in a helper process; unmount it afterwards."""
    from cmlfs.mountpoint import mount_entry
    from tests.conftest import force_unmount

    command = [sys.executable, "-m", "tests.fake_configfs_tsm", str(root), "--provider", provider]
    command += ["--empty-outblob"] if empty_outblob else []
    command += options
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while mount_entry(root) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fake configfs-tsm did not mount")
            time.sleep(0.02)
        yield root
    finally:
        force_unmount(root)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
