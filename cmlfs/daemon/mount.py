"""The FUSE lifecycle in the daemon process: key -> manifest -> mount -> ready -> signals ->
unmount.

``serve`` disables core dumps before the key exists, clears a stale mount, opens
and checks the model (a wrong key or damaged manifest refuses the mount before
anything is mounted), mounts, reports readiness, and unmounts on SIGTERM/SIGINT.
With ``--workers`` it answers the kernel's INIT, forks the worker processes and
supervises them instead of serving requests itself.
"""

import functools
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from cmlfs.daemon.settings import MountSettings, Notify
from cmlfs.daemon.workers import WorkerBoard, WorkerSet, answer_init, fork_worker
from cmlfs.errors import CmlfsError, MountError
from cmlfs.fs import ModelFs
from cmlfs.fs.warmup import Warmer
from cmlfs.hardening import disable_core_dumps, keep_large_buffers, lock_memory
from cmlfs.logfmt import quote
from cmlfs.manifest import Manifest
from cmlfs.model import holds_cmlfs_model, open_jwe_folder, open_model
from cmlfs.mountpoint import FS_TYPE, clear_stale_mount, mount_entry
from cmlfs.reader import ModelReader
from cmlfs.reader.jwe import JweListing, JweReader
from cmlfs.reader.tuning import REMOTE_THREADS, tuned_reader
from cmlfs.stores import LocalStore, Store
from cmlfs.stores.diskcache import DiskCache

if TYPE_CHECKING:  # prometheus-client is imported only by mounts that serve --http
    from cmlfs.status import StatusServer

log = logging.getLogger(__name__)

# 1 MiB FUSE requests, several in flight: an 8 MiB window also sizes the read-around of
# page faults on an mmapped model (safetensors), which loads a cold model markedly faster
# without slowing other reads (benchmarks/RESULTS.md, "Figures behind code choices").
READAHEAD_KB = 8192
MAX_BACKGROUND = 64


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
        log.warning("event=stale_mount_cleared mountpoint=%s", quote(settings.mountpoint))
    if settings.workers > 1 and settings.warm_up_bytes:
        raise MountError("--warm-up runs in one process: leave it out with --workers")
    board = background = warmer = None
    if holds_cmlfs_model(settings.store, settings.store_settings):
        store, manifest, reader = _open_model_reader(settings)
        board = WorkerBoard(settings.workers, store.stats) if settings.workers > 1 else None
        limit = warm_up_limit(settings.warm_up_bytes)
        warmer = Warmer(reader, limit) if board is None and limit else None
    else:
        store, manifest, reader = _open_jwe_reader(settings)
        background = reader.authenticate_all
    operations = ModelFs(manifest, reader, warmer)
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
        quote(settings.mountpoint),
        quote(store.describe()),
        len(manifest.files),
    )
    try:
        if board is None:
            trio.run(
                _serve_until_stopped, settings.mountpoint, notify, status, None, background, warmer
            )
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
        log.info("event=unmounted mountpoint=%s", quote(settings.mountpoint))


def warm_up_limit(asked: int | None) -> int:
    """The bytes the page-cache warm-up may push: ``asked`` (``--warm-up``), or by default
    half the memory available now, within this process's cgroup limit if it has one
    (the page cache it fills is charged there)."""
    if asked is not None:
        return asked
    meminfo = Path("/proc/meminfo").read_text()
    available = int(meminfo.split("MemAvailable:")[1].split()[0]) * 1024
    group = Path("/proc/self/cgroup").read_text().partition("0::")[2].strip()
    folder = Path("/sys/fs/cgroup") / group.lstrip("/")
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit != "max":
            used = int((folder / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):  # cgroup v1, or no memory controller here
        pass
    return max(0, available // 2)


def _open_model_reader(settings: MountSettings) -> tuple[Store, Manifest, ModelReader]:
    store, manifest, key = open_model(
        settings.store,
        settings.key_source,
        settings.store_settings,
        settings.key_settings,
        settings.expected_key_id,
        settings.publisher,
        settings.min_version,
    )
    disk_cache = None
    if settings.disk_cache is not None:
        disk_cache = DiskCache(settings.disk_cache, settings.disk_cache_bytes)
    reader = tuned_reader(
        manifest,
        store,
        key,
        cache_bytes=settings.cache_bytes,
        workers=settings.workers,
        fetch_bytes=settings.fetch_bytes,
        threads=settings.threads,
        disk_cache=disk_cache,
    )
    return store, manifest, reader


def _open_jwe_reader(settings: MountSettings) -> tuple[Store, JweListing, JweReader]:
    """A KServe-style JWE folder's reader, once at least one of its files authenticated
    (else the mount is refused)."""
    if (
        settings.workers > 1
        or settings.disk_cache is not None
        or settings.expected_key_id
        or settings.warm_up_bytes
    ):
        raise MountError(
            "a JWE model folder is served by one process, has no key id and is not warmed "
            "up: leave out --workers, --disk-cache, --key-id and --warm-up"
        )
    store, listing, key = open_jwe_folder(
        settings.store,
        settings.key_source,
        settings.store_settings,
        settings.show_plain,
        settings.publisher,
        settings.min_version,
    )
    # A folder is read inline (or as --threads says), as tuned_reader does; from a network
    # store the kernel's readahead asks for several chunks at once, each one request.
    local = isinstance(store, LocalStore)
    inline = local if settings.threads is None else settings.threads == 0
    threads = settings.threads or REMOTE_THREADS
    reader = JweReader(listing, store, key, settings.cache_bytes, inline=inline, threads=threads)
    reader.authenticate_one()
    return store, listing, reader


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


async def _serve_until_stopped(
    mountpoint: Path,
    notify: Notify,
    status: "StatusServer | None",
    workers: WorkerSet | None = None,
    background: Callable[[], Awaitable[None]] | None = None,
    warmer: Warmer | None = None,
) -> None:
    """Serve the mount here, or with ``workers`` supervise the processes that serve it;
    ``background`` (a JWE folder's authentication) and ``warmer`` run alongside."""
    stop = pyfuse3.terminate if workers is None else workers.stop
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, stop, warmer)
        if background is not None:
            nursery.start_soon(background)
        if warmer is not None:
            nursery.start_soon(warmer.run)
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
    reader.store_stats.reset()  # what the supervisor counted before the fork stays its own
    board.publish(slot, reader)  # its budget counts before its first read, not after
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, pyfuse3.terminate)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(stop: Callable[[], None], warmer: Warmer | None = None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("event=signal signal=%s", signal.Signals(signum).name)
            if warmer is not None:  # its push may wait for a read only this loop answers
                await warmer.stop()
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
            log.info("event=tuning_skipped path=%s reason=%s", quote(path), quote(exc.strerror))


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
