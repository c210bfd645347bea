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
# A folder's sequential reads are fetched this far ahead: reading 1 GiB, a 32 MiB window
# raised the daemon's peak RSS from 109 to 228 MiB, 8 MiB to 149 MiB, and read as fast
# (benchmarks/RESULTS.md; measured before the daemon kept one malloc arena).
LOCAL_PREFETCH_BYTES = 8 * 1024 * 1024


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

    From a local folder, a read is fetched and opened inline on the event loop: a thread
    hand-off adds to a random read's latency (rand-4k 14% slower with 2 fetch threads,
    benchmarks/RESULTS.md). A sequential stream is fetched ahead by worker threads
    (``threaded_prefetch``), so the disk works while the event loop opens and replies:
    with O_DIRECT reads that cost the threads almost no CPU, that read 9-14% faster. Worker
    processes always read inline (a worker whose event loop waits in a blocking FUSE
    read could not pass on a thread's result), and from a network store they fetch
    just the chunks a read misses: a longer run would be fetched again by every worker
    that reads in it. ``cache_bytes`` is the whole mount's budget, split among
    ``workers``; ``fetch_bytes`` and ``threads`` of None pick the defaults above.
    """
    local = isinstance(store, LocalStore)
    one_process = workers == 1
    inline = local or not one_process
    explicit_inline = threads == 0
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
        prefetch_bytes=LOCAL_PREFETCH_BYTES if local else REMOTE_PREFETCH_BYTES,
        disk_cache=disk_cache,
        inline=threads == 0,
        threaded_prefetch=local and one_process and not explicit_inline,
    )
