"""The mount lifecycle: key -> manifest -> mount -> ready -> signals -> unmount.

``serve`` runs in the daemon process: it disables core dumps before the key
exists, clears a stale mount, obtains the key, opens and authenticates the
manifest (a wrong key or damaged manifest refuses the mount before anything is
mounted), mounts, reports readiness, and unmounts on SIGTERM/SIGINT.
``spawn`` is the parent side of a background mount: it starts the daemon and
returns once the mount is ready, or raises with the daemon's reason.
"""

import ctypes
import functools
import hmac
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from cmlfs.errors import CmlfsError, IntegrityError, KeySourceError, MountError
from cmlfs.fs import ModelFs
from cmlfs.keys import KeySettings, KeySource, key_source_from_uri
from cmlfs.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_LEN,
    Manifest,
    manifest_digest,
    open_manifest,
    read_envelope,
)
from cmlfs.mountpoint import FS_TYPE, clear_stale_mount, mount_entry
from cmlfs.reader import ModelReader
from cmlfs.reader.reader import DEFAULT_RUN_BYTES
from cmlfs.stores import LocalStore, Store, StoreSettings, open_store
from cmlfs.stores.diskcache import DiskCache
from cmlfs.workers import WorkerBoard, WorkerSet, answer_init, fork_worker

if TYPE_CHECKING:  # prometheus-client is imported only by mounts that serve --http
    from cmlfs.status import StatusServer, StatusSettings

log = logging.getLogger("cmlfs.daemon")

# 1 MiB FUSE requests, several in flight: an 8 MiB window also sizes the read-around of
# page faults on an mmapped model (safetensors), which cut a cold all-mpnet-base-v2 load
# from 1.56x to 1.32x plaintext (benchmarks/RESULTS.md) without slowing other reads.
READAHEAD_KB = 8192
MAX_BACKGROUND = 64
_PR_SET_DUMPABLE = 4
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4
_CAP_IPC_LOCK = 14
# Beyond the chunk cache, locked address space holds the interpreter, libraries, thread
# stacks and malloc arenas (mostly reserved, not resident: MCL_ONFAULT locks pages only
# when touched, but the kernel charges whole mappings against RLIMIT_MEMLOCK).
LOCK_HEADROOM = 2 << 30
REMOTE_RUN_BYTES = 4 * 1024 * 1024  # one request per 4 MiB amortizes network latency
REMOTE_THREADS = 8  # fetches in flight at once from a network store
# Sequential reads from a network store fetch ahead one run per fetch thread.
REMOTE_PREFETCH_BYTES = REMOTE_THREADS * REMOTE_RUN_BYTES

Notify = Callable[[str | None], None]


@dataclass(frozen=True)
class MountSettings:
    """Everything a mount needs, built once by the CLI."""

    store: str
    mountpoint: Path
    key_source: KeySource | None  # None: the key URI recorded in the manifest envelope
    cache_bytes: int
    allow_other: bool = False
    store_settings: StoreSettings = field(default_factory=StoreSettings)
    fetch_bytes: int | None = None  # None: a read's missing chunks (folder, workers), else 4 MiB
    threads: int | None = None  # None: inline (0) for a folder or workers, else REMOTE_THREADS
    disk_cache: Path | None = None  # ciphertext only
    disk_cache_bytes: int = 0
    key_settings: KeySettings = field(default_factory=KeySettings)
    expected_key_id: str | None = None  # --key-id: the model must be sealed for this key
    status: "StatusSettings | None" = None  # --http: serve health, readiness and metrics
    workers: int = 1  # >1: worker processes serve the mount (cmlfs.workers)


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
            "event=memory_not_locked reason=RLIMIT_MEMLOCK is %d bytes, about %d needed; "
            "grant CAP_IPC_LOCK or raise the limit (ulimit -l) to keep the cache out of swap",
            hard,
            needed,
        )
        return False
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE | _MCL_ONFAULT) != 0:
        reason = os.strerror(ctypes.get_errno())
        log.warning("event=memory_not_locked reason=mlockall failed: %s", reason)
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
    freed, so each read pays a page fault per 4 KiB page (about 3 us each on VMs that
    return freed memory to the host). Reusing heap memory removes that cost; RSS
    stays bounded by the peak of cache plus requests in flight.
    """
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def open_model(
    store_location: str,
    key_source: KeySource | None,
    store_settings: StoreSettings | None = None,
    key_settings: KeySettings | None = None,
    expected_key_id: str | None = None,
) -> tuple[Store, Manifest, bytes]:
    """Open a store, obtain the key and authenticate the manifest with it.

    The manifest's envelope is not authenticated until the key is known, so a
    key URI recorded there is used only when the operator pinned the model's
    key id: otherwise whoever controls the store could point the daemon at a
    key of their own and have their own model mounted. A key bundle pins one
    manifest digest: any other manifest (an older version rolled back in the
    store, or another model under the same key) is refused before it is opened.
    """
    store = open_store(store_location, store_settings)
    data = store.read_all(MANIFEST_NAME, MAX_MANIFEST_LEN)  # refused before it is allocated
    envelope = read_envelope(data)
    if expected_key_id is not None and envelope.key_id != expected_key_id:
        raise IntegrityError(
            f"the model in {store.describe()} is sealed for key id {envelope.key_id}, "
            f"not the pinned {expected_key_id}"
        )
    if key_source is None:
        if envelope.key_uri is None:
            raise KeySourceError("the model records no key URI: give --key-file or --key-uri")
        if expected_key_id is None:
            raise KeySourceError(
                "the key URI recorded in the store is not authenticated: pin the model with "
                "--key-id ID (its owner publishes it; cmlfs inspect shows it) or give --key-uri"
            )
        key_source = key_source_from_uri(envelope.key_uri, key_settings)
    release = key_source.fetch_release()
    pinned = release.manifest_sha256
    if pinned is not None and not hmac.compare_digest(pinned, manifest_digest(data)):
        raise IntegrityError(
            f"the manifest in {store.describe()} is not the one the released key bundle pins "
            "(rolled back or replaced); refusing it"
        )
    return store, open_manifest(data, release.key), release.key


def serve(settings: MountSettings, notify: Notify) -> None:
    """Mount and serve until unmounted or signalled; ``notify(None)`` once ready."""
    disable_core_dumps()
    keep_large_buffers()
    lock_memory(settings.cache_bytes)
    if not settings.mountpoint.is_dir():
        raise MountError(f"mount point {settings.mountpoint} is not a folder")
    if settings.workers > 1 and settings.threads:
        raise MountError("--workers reads on each worker's event loop: leave out --threads")
    if settings.workers > 1 and settings.disk_cache is not None:
        raise MountError("--disk-cache is kept by one process: it cannot serve --workers")
    if clear_stale_mount(settings.mountpoint):
        log.warning("event=stale_mount_cleared mountpoint=%s", settings.mountpoint)
    store, manifest, key = open_model(
        settings.store,
        settings.key_source,
        settings.store_settings,
        settings.key_settings,
        settings.expected_key_id,
    )
    board = WorkerBoard(settings.workers) if settings.workers > 1 else None
    reader = _reader(settings, store, manifest, key)
    operations = ModelFs(manifest, reader)
    status = None
    if settings.status:
        from cmlfs.status import StatusServer

        status = StatusServer(settings.status, settings.mountpoint, board or reader)
    options = set(pyfuse3.default_options) | {"fsname=cmlfs", "subtype=cmlfs", "ro", "noatime"}
    if settings.allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(operations, str(settings.mountpoint), options)
    except RuntimeError as exc:
        raise MountError(f"cannot mount at {settings.mountpoint}: {exc}") from None
    log.info(
        "event=mounted mountpoint=%s store=%s files=%d",
        settings.mountpoint,
        store.describe(),
        len(manifest.files),
    )
    try:
        if board is None:
            trio.run(_serve_until_stopped, settings.mountpoint, notify, status)
        else:
            _supervise(settings, notify, status, operations, reader, board)
    except BaseException:
        log.exception("event=daemon_failed")
        raise
    finally:
        unmount = mount_entry(settings.mountpoint) is not None
        pyfuse3.close(unmount=unmount)
        store.close()
        if status is not None:
            status.close()
        log.info("event=unmounted mountpoint=%s", settings.mountpoint)


def _supervise(
    settings: MountSettings,
    notify: Notify,
    status: "StatusServer | None",
    operations: ModelFs,
    reader: ModelReader,
    board: WorkerBoard,
) -> None:
    """Answer the kernel's INIT, fork the workers, and supervise them until they are gone.

    Workers that exit while the mount stays, without a signal or an unmount asking them
    to, make the daemon fail (and unmount), so that systemd or Kubernetes restarts it.
    """
    answer_init(operations)
    budget = reader.cache.budget
    workers = WorkerSet(
        [
            fork_worker(
                lambda: lock_memory(budget),
                functools.partial(trio.run, _serve_worker, slot, board, reader),
            )
            for slot in range(board.workers)
        ]
    )
    log.info("event=workers_started pids=%s", ",".join(map(str, workers.pids)))
    try:
        trio.run(_serve_until_stopped, settings.mountpoint, notify, status, workers)
        lost = not workers.stopped and mount_entry(settings.mountpoint) is not None
    finally:
        workers.stop()
        workers.close()
    if lost:
        raise MountError("every worker process exited while mounted")


def _reader(settings: MountSettings, store: Store, manifest: Manifest, key: bytes) -> ModelReader:
    """A reader tuned for where the store is: larger runs and more fetches for network stores.

    From a local folder, reading and opening a run inline on the event loop beats
    handing it to a worker thread (measured in benchmarks/RESULTS.md): the daemon's one
    thread is the bottleneck either way, and the hand-off only adds to it. Worker
    processes always read inline (a worker whose event loop waits in a blocking FUSE
    read could not pass on a thread's result), and from a network store they fetch
    just the chunks a read misses: a longer run would be fetched again by every worker
    that reads in it.
    """
    local = isinstance(store, LocalStore)
    one_process = settings.workers == 1
    inline = local or not one_process
    threads = settings.threads
    if threads is None:
        threads = 0 if inline else REMOTE_THREADS
    disk_cache = None
    if settings.disk_cache is not None:
        disk_cache = DiskCache(settings.disk_cache, settings.disk_cache_bytes)
    return ModelReader(
        manifest,
        store,
        key,
        cache_bytes=settings.cache_bytes // settings.workers,  # each worker has its own
        run_bytes=settings.fetch_bytes
        or (REMOTE_RUN_BYTES if one_process and not local else DEFAULT_RUN_BYTES),
        threads=threads or None,
        prefetch_bytes=REMOTE_PREFETCH_BYTES,
        disk_cache=disk_cache,
        inline=threads == 0,
    )


async def _serve_until_stopped(
    mountpoint: Path,
    notify: Notify,
    status: "StatusServer | None",
    workers: WorkerSet | None = None,
) -> None:
    """Serve the mount here, or with ``workers`` supervise the processes that serve it."""
    stop = pyfuse3.terminate if workers is None else workers.stop
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, stop)
        if status is not None:
            nursery.start_soon(status.serve)
            notify = status.notifier(notify)
        nursery.start_soon(_announce_ready, mountpoint, notify, stop)
        if workers is None:
            await pyfuse3.main()
        else:
            await workers.wait()
        nursery.cancel_scope.cancel()


async def _serve_worker(slot: int, board: WorkerBoard, reader: ModelReader) -> None:
    """A worker's loop: serve FUSE requests, publishing its counters after every read."""
    reader.after_read = functools.partial(board.publish, slot, reader)
    reader.store.close()  # connections made before the fork would be shared between workers
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, pyfuse3.terminate)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(stop: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("event=signal signal=%s", signal.Signals(signum).name)
            stop()
            return


async def _announce_ready(mountpoint: Path, notify: Notify, stop: Callable[[], None]) -> None:
    """Wait until the kernel answers for the mount, tune it, then report readiness."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    entry = mount_entry(mountpoint)
    if entry is None or entry.fstype != FS_TYPE:
        notify(f"the mount at {mountpoint} did not appear")
        stop()
        return
    if os.geteuid() == 0:
        await trio.to_thread.run_sync(tune_connection, mountpoint)
    notify(None)


def tune_connection(mountpoint: Path) -> None:
    """Raise readahead and in-flight requests: sequential reads and mmap faults arrive as
    several 1 MiB requests at once.

    Only root can; a failure leaves the kernel defaults and is logged.
    """
    dev = os.stat(mountpoint).st_dev
    settings = {
        Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"): READAHEAD_KB,
    }
    connections = Path("/sys/fs/fuse/connections")
    if connections.is_dir() and not any(connections.iterdir()):
        subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", str(connections)],
            capture_output=True,
            check=False,
        )
    control = connections / str(os.minor(dev))
    settings[control / "max_background"] = MAX_BACKGROUND
    settings[control / "congestion_threshold"] = MAX_BACKGROUND * 3 // 4
    for path, value in settings.items():
        try:
            path.write_text(f"{value}\n")
        except OSError as exc:
            log.info("event=tuning_skipped path=%s reason=%s", path, exc.strerror)


# --- the parent side of a background mount -------------------------------------------------


def ready_pipe_notifier(fd: int) -> Notify:
    """A Notify that writes one line to the parent's readiness pipe, then closes it."""

    def notify(error: str | None) -> None:
        line = "ready\n" if error is None else f"error: {error}\n"
        try:
            os.write(fd, line.encode("utf-8", "replace"))
            os.close(fd)
        except OSError:
            pass

    return notify


def fork_daemon(settings: MountSettings, output: Path | None = None) -> tuple[int, int]:
    """Fork the daemon (it serves the mount, reporting readiness on a pipe): (pid, read end).

    Forking, rather than starting a new interpreter, reuses the modules the CLI already
    imported, which is most of the time to a mounted model. The daemon runs in its own
    session (a terminal's Ctrl-C does not unmount under a server); with ``output`` its
    stdin is /dev/null and its stdout and stderr go to that file, so it outlives the
    terminal that started it.
    """
    target = None
    if output is not None:
        try:
            target = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MountError(f"cannot open log file {output}: {exc.strerror}") from None
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon: never returns into the caller's code
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            if target is not None:
                null = os.open(os.devnull, os.O_RDONLY)
                for fd, source in ((0, null), (1, target), (2, target)):
                    os.dup2(source, fd)
                os.close(null)
                os.close(target)
            code = serve_reporting(settings, ready_pipe_notifier(write_fd))
        except CmlfsError:
            pass  # reported to the parent through the readiness pipe
        except BaseException:
            log.exception("event=daemon_failed")
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_fd)
    if target is not None:
        os.close(target)
    return pid, read_fd


def await_ready(read_fd: int, pid: int, timeout: float) -> None:
    """Wait for daemon ``pid``'s readiness line on ``read_fd`` (closed here); raise its reason."""
    try:
        line = _read_line(read_fd, timeout)
    finally:
        os.close(read_fd)
    if line == "ready":
        return
    if line.startswith("error: "):
        raise MountError(line.removeprefix("error: "))
    if not line:
        code = wait_exit(pid, 5)
        if code is None:
            os.kill(pid, signal.SIGKILL)
            raise MountError(f"the daemon did not become ready within {timeout:g}s")
        raise MountError(f"the daemon exited with status {code} before the mount was ready")
    raise MountError(f"unexpected readiness message from the daemon: {line!r}")


def wait_exit(pid: int, timeout: float) -> int | None:
    """Exit code of child ``pid`` (reaped; -N if killed by signal N), or None if it still
    runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").partition("\n")[0]


def serve_reporting(settings: MountSettings, notify: Notify) -> int:
    """``serve`` with errors before readiness reported through ``notify``; returns an exit code."""
    ready = False

    def notify_once(error: str | None) -> None:
        nonlocal ready
        if not ready:
            ready = error is None
            notify(error)

    try:
        serve(settings, notify_once)
    except CmlfsError as exc:
        notify_once(str(exc))
        raise
    return 0
