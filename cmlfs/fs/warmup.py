"""Page-cache warm-up: once a file is opened, its plaintext is pushed into the kernel's page
cache ahead of the server.

A model server that mmaps its weights waits for one FUSE round trip per fault that
misses the page cache, while the daemon idles whenever the server computes between
faults (llama.cpp sets up its context after mapping the file, before touching a
weight). From a file's first open on, a background task reads it in file order (from
the end of the server's furthest read of it; the pages before that last) through the
reader, so only authenticated plaintext (a piece that fails is skipped and never
stored: the server's own read of it fails with EIO), and hands each piece to the kernel
with ``FUSE_NOTIFY_STORE``. The server's faults on those pages are then minor faults
that never reach the daemon. A piece starts only once the kernel has sent
no read for ``QUIET`` (the server's own reads go first), and is chosen then, among the
blocks the kernel has not read. The page cache stays the kernel's: reclaimable, and a
reclaimed page is read through the daemon again. At most ``limit`` bytes are pushed per
mount (benchmarks/RESULTS.md, "Figures behind code choices", has what it gains).

A push runs in a worker thread: the kernel locks each page it stores into, and a page
the kernel is reading through this daemon stays locked until the event loop answers
that read, so a push on the event loop could wait for itself. For the same reason the
daemon stops the warm-up (``stop``) before it stops answering requests.
"""

import errno
import functools
import logging

import pyfuse3
import trio

from cmlfs.errors import CmlfsError
from cmlfs.logfmt import quote
from cmlfs.reader import ModelReader
from cmlfs.reader.reader import run_in_thread

log = logging.getLogger(__name__)

BLOCK = 64 * 1024  # what is tracked: a whole block the kernel has read is not pushed again
PIECE = 1024 * 1024  # read and pushed this much at a time (a FUSE read's size)
QUIET = 0.002  # a piece is started only once the kernel has sent no read for this long


class Warmer:
    """Pushes opened files into the page cache in the background, in the order opened."""

    def __init__(self, reader: ModelReader, limit: int) -> None:
        self.reader = reader
        self.limit = limit
        self._send, self._receive = trio.open_memory_channel[tuple[int, int, int]](float("inf"))
        self._seen: dict[int, bytearray] = {}  # file index -> per block: 1 once read or pushed
        self._front: dict[int, int] = {}  # file index -> the block after the kernel's furthest read
        self._pushing = trio.Lock()  # held while a push is in the kernel
        self._limiter = trio.CapacityLimiter(1)
        self._stopped = False
        self._last_read = 0.0

    def opened(self, inode: int, file_index: int, size: int) -> None:
        """File ``file_index`` (``inode`` to the kernel) was opened: queue it, the first time."""
        if file_index in self._seen or self._stopped or size == 0:
            return
        self._seen[file_index] = bytearray(-(-size // BLOCK))
        self._send.send_nowait((inode, file_index, size))

    def served(self, file_index: int, offset: int, size: int) -> None:
        """The kernel read ``size`` bytes at ``offset`` of file ``file_index``: the whole
        blocks among them are in its page cache."""
        self._last_read = trio.current_time()
        seen = self._seen.get(file_index)
        if seen is not None:
            first, end = -(-offset // BLOCK), (offset + size) // BLOCK
            if end > first:
                seen[first:end] = b"\x01" * (end - first)
            self._front[file_index] = max(end, self._front.get(file_index, 0))

    async def run(self) -> None:
        """Warm the files opened, one after the other, until stopped or the limit is reached."""
        async for inode, file_index, size in self._receive:
            pushed = await self._warm(inode, file_index)
            log.debug("event=warmed inode=%d bytes=%d size=%d", inode, pushed, size)

    async def stop(self) -> None:
        """Push no more; return once no push is left in the kernel."""
        self._stopped = True
        self._send.close()
        async with self._pushing:
            pass

    async def _quiet(self) -> None:
        """Return once the kernel has sent no read for ``QUIET`` seconds: the server's reads
        go first (a piece holds the event loop while it is opened)."""
        while (wait := self._last_read + QUIET - trio.current_time()) > 0:
            await trio.sleep(wait)

    async def _warm(self, inode: int, file_index: int) -> int:
        """Push the blocks of one file the kernel has not read; the bytes pushed.

        A piece is chosen once the kernel is quiet, so a block it read meanwhile is not
        pushed as well. Pieces go on from the end of the kernel's furthest read of the file
        when that is ahead (a server reading the file in order, from one thread or several,
        has its next pages pushed, not those it has passed), and the blocks passed over are
        pushed last.
        """
        seen, stats, pushed = self._seen[file_index], self.reader.stats, 0
        block = 0
        while True:
            await self._quiet()
            if self._stopped or stats.bytes_warmed >= self.limit:
                break
            first = _unseen(seen, max(block, self._front.get(file_index, 0)))
            if first < 0:
                break
            end = seen.find(1, first, first + PIECE // BLOCK)
            end = first + PIECE // BLOCK if end < 0 else end
            end = min(end, len(seen))
            block = end
            seen[first:end] = b"\x01" * (end - first)  # pushed now, or failed: not again
            offset = first * BLOCK
            try:
                data = await self.reader.plaintext(file_index, offset, (end - first) * BLOCK)
            except CmlfsError:  # the server's read of it fails with EIO; nothing is stored
                continue
            async with self._pushing:
                if self._stopped:
                    break
                try:
                    await run_in_thread(
                        functools.partial(pyfuse3.notify_store, inode, offset, data),
                        self._limiter,
                    )
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # else the kernel has forgotten the file
                        log.info("event=warm_up_stopped reason=%s", quote(exc.strerror))
                        self._stopped = True
                    break
            stats.bytes_warmed += len(data)
            pushed += len(data)
        return pushed


def _unseen(seen: bytearray, start: int) -> int:
    """The first block not yet read or pushed from ``start`` on, else from the file's
    start; -1 once there is none."""
    found = seen.find(0, start)
    return seen.find(0, 0, start) if found < 0 else found
