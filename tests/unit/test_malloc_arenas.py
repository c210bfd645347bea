"""keep_large_buffers keeps every thread's buffers in one malloc arena: each arena keeps its
own peak of freed buffers, so with fetch threads and the warm-up the daemon's memory grew
with the length of a stream (benchmarks/RESULTS.md). Checked in a fresh interpreter, with
glibc's own count of its heaps (malloc_info)."""

import subprocess
import sys

PROBE = """
import ctypes, sys, threading
from cmlfs.hardening import keep_large_buffers
if sys.argv[1] == "kept":
    keep_large_buffers()

def allocate():
    for _ in range(50):
        buffer = bytearray(2 << 20)
        del buffer

threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.open_memstream.restype = ctypes.c_void_p
text, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(text), ctypes.byref(size)))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(ctypes.string_at(text, size.value).decode().count("<heap nr="))
"""


def heaps(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout)


def test_threads_share_one_arena_once_large_buffers_are_kept():
    assert heaps("kept") == 1


def test_the_probe_sees_threads_arenas_by_default():
    """Without the setting the same threads get arenas of their own: the probe can fail."""
    assert max(heaps("default") for _ in range(3)) > 1
