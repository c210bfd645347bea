"""How a mount's reader is tuned for where its store is and how many processes serve it.

The numbers are measured (benchmarks/RESULTS.md): a network store wants long runs and
several fetches in flight to amortize latency; a local folder and worker processes
want a read to fetch just the chunks it misses, on the event loop.
"""

from cmlfs.manifest import Manifest
from cmlfs.reader.reader import DEFAULT_RUN_BYTES, ModelReader
from cmlfs.stores import LocalStore, Store
from cmlfs.stores.diskcache import DiskCache

REMOTE_RUN_BYTES = 4 * 1024 * 1024  # one request per 4 MiB amortizes network latency
REMOTE_THREADS = 8  # fetches in flight at once from a network store
# Sequential reads from a network store fetch ahead one run per fetch thread.
REMOTE_PREFETCH_BYTES = REMOTE_THREADS * REMOTE_RUN_BYTES


def tuned_reader(
    manifest: Manifest,
    store: Store,
    key: bytes,
    *,
    cache_bytes: int,
    workers: int = 1,
    fetch_bytes: int | None = None,
    threads: int | None = None,
    disk_cache: DiskCache | None = None,
) -> ModelReader:
    """A reader tuned for where the store is: larger runs and more fetches for network stores.

    From a local folder, reading and opening a run inline on the event loop beats
    handing it to a worker thread (measured in benchmarks/RESULTS.md): the daemon's one
    thread is the bottleneck either way, and the hand-off only adds to it. That holds for
    format 2 too, whose records are also hashed: fetch threads that hash off the event
    loop were slower on a quiet machine (benchmarks/RESULTS.md, "Format 2"). Worker
    processes always read inline (a worker whose event loop waits in a blocking FUSE
    read could not pass on a thread's result), and from a network store they fetch
    just the chunks a read misses: a longer run would be fetched again by every worker
    that reads in it. ``cache_bytes`` is the whole mount's budget, split among
    ``workers``; ``fetch_bytes`` and ``threads`` of None pick the defaults above.
    """
    local = isinstance(store, LocalStore)
    one_process = workers == 1
    inline = local or not one_process
    if threads is None:
        threads = 0 if inline else REMOTE_THREADS
    return ModelReader(
        manifest,
        store,
        key,
        cache_bytes=cache_bytes // workers,  # each worker has its own
        run_bytes=fetch_bytes
        or (REMOTE_RUN_BYTES if one_process and not local else DEFAULT_RUN_BYTES),
        threads=threads or None,
        prefetch_bytes=REMOTE_PREFETCH_BYTES,
        disk_cache=disk_cache,
        inline=threads == 0,
    )
