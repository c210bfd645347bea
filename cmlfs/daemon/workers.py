"""Worker processes: several interpreters serving one FUSE mount.

The daemon's one Python thread caps a mount at what one core decrypts and answers
(tink holds the GIL). With ``--workers N`` the daemon mounts and answers the kernel's
INIT itself, then forks N workers. Each opens its own ``/dev/fuse`` cloned from the
mount's (``FUSE_DEV_IOC_CLONE``): the kernel hands every request to whichever worker
reads it first and takes the answer from that same file, so workers share nothing but
the mount. Each worker has its own reader, chunk cache (the budget split N ways) and
store connections, and reads inline: a read fetches exactly the chunks it misses, with
no runs or prefetch that another worker's cache could not see.

The forking process stays as the supervisor: it serves status, reports readiness,
forwards SIGTERM to the workers and unmounts once they are gone. Workers publish their
counters to a shared-memory ``WorkerBoard`` the supervisor's metrics add up.
"""

import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields

import pyfuse3
import trio

from cmlfs.reader import ModelReader
from cmlfs.reader.reader import READ_SECONDS_BOUNDS, ReaderStats
from cmlfs.stores.base import StoreStats

log = logging.getLogger(__name__)

MAX_WORKERS = 16
_FUSE_DEV_IOC_CLONE = 0x8004E500  # _IOR(229, 0, uint32_t), linux/fuse.h
_PR_SET_PDEATHSIG = 1
# The counters a worker publishes: every field of the reader's, the cache's and the store's
# counter classes (a field that is not a count fails the first publish, loudly).
_STAT_FIELDS = tuple(f.name for f in fields(ReaderStats) if f.name != "read_seconds")


@dataclass
class CacheCounters:
    """The chunk-cache figures metrics report, added up over workers."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    used: int = 0
    budget: int = 0


_CACHE_FIELDS = tuple(f.name for f in fields(CacheCounters))
_STORE_FIELDS = tuple(f.name for f in fields(StoreStats))
_BUCKETS = len(READ_SECONDS_BOUNDS) + 1  # the latency histogram's counts
# One slot per worker: reader counters, latency bucket counts, cache counters, store
# counters, then the summed read seconds.
_SLOT = struct.Struct(
    f"<{len(_STAT_FIELDS)}q{_BUCKETS}q{len(_CACHE_FIELDS)}q{len(_STORE_FIELDS)}qd"
)
_CACHE_AT = len(_STAT_FIELDS) + _BUCKETS
_STORE_AT = _CACHE_AT + len(_CACHE_FIELDS)


class WorkerBoard:
    """Counters of every worker in one shared anonymous mapping made before the fork.

    Each worker writes only its own slot; the supervisor reads all of them. ``stats``,
    ``cache`` and ``store_stats`` have the shape of a reader's, so status and metrics
    serve either. The store's counters add the supervisor's own, ``before_fork``: it
    read the manifest (maybe with retries) before the workers existed, and a worker's
    store counters start from zero.
    """

    def __init__(self, workers: int, before_fork: StoreStats) -> None:
        self.workers = workers
        self.before_fork = before_fork
        self._memory = mmap.mmap(-1, _SLOT.size * workers)  # MAP_SHARED | MAP_ANONYMOUS

    def publish(self, slot: int, reader: ModelReader) -> None:
        stats, cache, store = reader.stats, reader.cache, reader.store_stats
        _SLOT.pack_into(
            self._memory,
            slot * _SLOT.size,
            *(getattr(stats, name) for name in _STAT_FIELDS),
            *stats.read_seconds.counts,
            *(getattr(cache, name) for name in _CACHE_FIELDS),
            *(getattr(store, name) for name in _STORE_FIELDS),
            stats.read_seconds.total_seconds,
        )

    @property
    def stats(self) -> ReaderStats:
        total = ReaderStats()
        counts, first = total.read_seconds.counts, len(_STAT_FIELDS)
        for values in self._slots():
            _add(total, _STAT_FIELDS, values)
            for i in range(_BUCKETS):
                counts[i] += values[first + i]
            total.read_seconds.total_seconds += values[-1]
        return total

    @property
    def cache(self) -> CacheCounters:
        total = CacheCounters()
        for values in self._slots():
            _add(total, _CACHE_FIELDS, values[_CACHE_AT:])
        return total

    @property
    def store_stats(self) -> StoreStats:
        total = StoreStats(**{name: getattr(self.before_fork, name) for name in _STORE_FIELDS})
        for values in self._slots():
            _add(total, _STORE_FIELDS, values[_STORE_AT:])
        return total

    def _slots(self) -> list[tuple]:
        return [_SLOT.unpack_from(self._memory, i * _SLOT.size) for i in range(self.workers)]


def _add(total: object, names: tuple[str, ...], values: tuple) -> None:
    for name, value in zip(names, values, strict=False):
        setattr(total, name, getattr(total, name) + value)


def answer_init(operations: pyfuse3.Operations) -> None:
    """Serve the mount until the kernel's INIT is answered, then return with no trio run
    left: a worker forked now starts a fresh trio run on an initialized session."""

    async def until_init() -> None:
        with trio.CancelScope() as scope:
            operations.init = scope.cancel  # pyfuse3 calls it while answering INIT
            await pyfuse3.main()

    try:
        trio.run(until_init)
    finally:
        del operations.init


def fuse_device_fd() -> int:
    """The descriptor of this process's ``/dev/fuse`` (pyfuse3 keeps it private)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
        except OSError:
            continue
    raise RuntimeError("this process holds no /dev/fuse descriptor")


def fork_worker(prepare: Callable[[], object], serve: Callable[[], object]) -> int:
    """Fork a worker; return its pid. The child never returns from here: it runs
    ``prepare()`` (memory locking is not inherited by a fork), switches pyfuse3's session
    to its own clone of the FUSE device, runs ``serve()`` and exits.
    """
    fuse_fd = fuse_device_fd()
    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != supervisor:  # the supervisor died before prctl took effect
            os._exit(1)
        prepare()
        clone = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(clone, _FUSE_DEV_IOC_CLONE, struct.pack("I", fuse_fd))
        os.dup2(clone, fuse_fd, inheritable=False)  # pyfuse3's session now reads the clone
        os.close(clone)
        serve()
        code = 0
    except BaseException:
        log.exception("event=worker_failed")
    finally:
        os._exit(code)  # never run the supervisor's cleanup (unmount) in a worker


class WorkerSet:
    """The supervisor's handles on its workers: pidfds, so a signal never reaches a pid the
    system has reused for another process after a worker exited."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.stopped = False  # stop() was called: the workers were asked to exit
        self._fds = {pid: os.pidfd_open(pid) for pid in pids}

    def stop(self) -> None:
        """Ask every worker still running to finish (SIGTERM)."""
        self.stopped = True
        for fd in self._fds.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGTERM)

    async def wait(self) -> None:
        """Return once every worker has exited (each exit logged and reaped)."""
        async with trio.open_nursery() as nursery:
            for pid in self.pids:
                nursery.start_soon(self._wait_for, pid)

    async def _wait_for(self, pid: int) -> None:
        await trio.lowlevel.wait_readable(self._fds[pid])
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(level, "event=worker_exited pid=%d code=%d", pid, code)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
