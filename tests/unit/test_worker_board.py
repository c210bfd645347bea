"""The counters worker processes share: every counter of a reader, its cache and its store."""

from dataclasses import dataclass, fields

from cmlfs.daemon.workers import CacheCounters, WorkerBoard
from cmlfs.reader import ReaderStats
from cmlfs.stores.base import StoreStats


@dataclass
class Counters:
    """What WorkerBoard.publish reads of a reader."""

    stats: ReaderStats
    cache: CacheCounters
    store_stats: StoreStats


COUNTER_CLASSES = (ReaderStats, CacheCounters, StoreStats)


def numbered(cls: type, start: int):
    """An instance of counter class ``cls`` with a different count in every field."""
    return cls(**{f.name: start + i for i, f in enumerate(fields(cls)) if f.name != "read_seconds"})


def test_every_counter_of_every_worker_and_the_supervisor_is_added_up():
    before_fork = StoreStats(retries=5)
    board = WorkerBoard(2, before_fork)
    workers = []
    for slot, start in enumerate((1, 100)):
        counters = Counters(*(numbered(cls, start) for cls in COUNTER_CLASSES))
        counters.stats.read_seconds.observe(0.001 * start)
        board.publish(slot, counters)
        workers.append(counters)
    for total, part in ((board.stats, "stats"), (board.cache, "cache")):
        for f in fields(total):
            if f.name != "read_seconds":
                expected = sum(getattr(getattr(w, part), f.name) for w in workers)
                assert getattr(total, f.name) == expected, f.name
    assert board.store_stats.retries == 5 + 1 + 100
    latency = board.stats.read_seconds
    assert sum(latency.counts) == 2 and abs(latency.total_seconds - 0.101) < 1e-9
