"""The parent side of a background mount: fork the daemon, wait for its readiness line.

``fork_daemon`` forks a child in its own session that serves the mount and writes one
line to a pipe: ``ready`` or ``error: REASON``. ``await_ready`` turns that line (or
its absence) into success or a MountError with the daemon's reason, so ``cmlfs mount``
exits 0 only once the mount answers, and ``cmlfs run`` starts its server only then.
"""

import logging
import os
import select
import signal
import sys
import time
from pathlib import Path

from cmlfs.daemon.mount import serve_reporting
from cmlfs.daemon.settings import MountSettings, Notify
from cmlfs.errors import CmlfsError, MountError

log = logging.getLogger(__name__)


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
