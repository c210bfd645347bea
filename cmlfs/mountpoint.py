"""Facts about mount points (from /proc/self/mountinfo) and fusermount3 calls.

Calls on a live FUSE mount wait for its daemon, so the mount table is read
from mountinfo; statfs is used only to tell a dead mount (ENOTCONN) from a
live one.
"""

import errno
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cmlfs.errors import MountError

FS_TYPE = "fuse.cmlfs"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(path: Path) -> MountEntry | None:
    """The topmost mount at ``path``, or None when nothing is mounted there."""
    target = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2 and _unescape(fields[4]) == target:
                found = MountEntry(target, tail[0], _unescape(tail[1]))
    return found


def is_cmlfs_mount(path: Path) -> bool:
    entry = mount_entry(path)
    return entry is not None and entry.fstype == FS_TYPE


def mount_is_dead(path: Path) -> bool:
    """True when the FUSE daemon behind ``path`` is gone (the kernel answers ENOTCONN).

    statfs always reaches the daemon; stat may be answered from cached attributes.
    """
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def clear_stale_mount(path: Path) -> bool:
    """Lazily unmount a cmlfs mount whose daemon died; refuse any live or foreign mount.

    Returns True if a stale mount was cleared.
    """
    entry = mount_entry(path)
    if entry is None:
        return False
    if entry.fstype != FS_TYPE:
        raise MountError(f"{path} is already a mount point ({entry.fstype}); refusing to cover it")
    if not mount_is_dead(path):
        raise MountError(f"{path} is already mounted by a running cmlfs daemon")
    unmount(path, lazy=True)
    return True


def unmount(path: Path, lazy: bool = False) -> None:
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise MountError(f"cannot unmount {path}: {reason}")
