"""Process hardening for processes that hold a model key or plaintext.

No core dumps and no ptrace-style dumping (``disable_core_dumps``, also used by
``inspect`` and ``verify``), the key and the plaintext cache kept out of swap
(``lock_memory``), and malloc tuned for the daemon's large request buffers
(``keep_large_buffers``). It must never weaken a limit the process was given.
"""

import ctypes
import logging
import os
import resource
from pathlib import Path

from cmlfs.errors import MountError
from cmlfs.logfmt import quote

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)
_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4
_CAP_IPC_LOCK = 14
# Beyond the chunk cache, locked address space holds the interpreter, libraries, thread
# stacks and malloc arenas (mostly reserved, not resident: MCL_ONFAULT locks pages only
# when touched, but the kernel charges whole mappings against RLIMIT_MEMLOCK).
LOCK_HEADROOM = 2 << 30


def disable_core_dumps() -> None:
    """No core file and no ptrace-style dumping of a process that will hold keys and plaintext."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise MountError(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")


def lock_memory(cache_bytes: int) -> bool:
    """Keep the key and the plaintext cache out of swap: mlockall(CURRENT|FUTURE|ONFAULT).

    Only within RLIMIT_MEMLOCK: without CAP_IPC_LOCK the soft limit is raised to the
    hard limit at most, and if that cannot cover the daemon's address space, nothing
    is locked (MCL_FUTURE under a small limit would make later allocations fail).
    Either way the outcome is one log line, and the daemon continues unlocked when it
    must. Returns whether memory is locked.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    needed = _address_space_bytes() + cache_bytes + LOCK_HEADROOM
    if not _has_capability(_CAP_IPC_LOCK) and hard != resource.RLIM_INFINITY and hard < needed:
        log.warning(
            'event=memory_not_locked reason="RLIMIT_MEMLOCK is %d bytes, about %d needed; '
            'grant CAP_IPC_LOCK or raise the limit (ulimit -l) to keep the cache out of swap"',
            hard,
            needed,
        )
        return False
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE | _MCL_ONFAULT) != 0:
        reason = os.strerror(ctypes.get_errno())
        log.warning("event=memory_not_locked reason=%s", quote(f"mlockall failed: {reason}"))
        return False
    log.info("event=memory_locked flags=MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT")
    return True


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _address_space_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def keep_large_buffers() -> None:
    """Serve 1-4 MiB request buffers from the heap and keep freed memory for reuse.

    By default glibc maps every allocation above 128 KiB afresh and unmaps it when
    freed, so each read pays a page fault per 4 KiB page (dearest on VMs that return
    freed memory to the host: benchmarks/RESULTS.md). Reusing heap memory removes that
    cost; RSS stays bounded by the peak of cache plus requests in flight. One arena for
    all threads: each thread's arena would keep its own peak of freed buffers, and with
    the fetch threads and the warm-up the sum grew with the length of a stream (the
    daemon's peak PSS serving a 4 GiB model: 161 MiB, 142 MiB with one arena;
    benchmarks/RESULTS.md, "Figures behind code choices").
    """
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    libc.mallopt(_M_ARENA_MAX, 1)
