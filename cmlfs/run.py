"""In-container mode: mount, run a server as a child, unmount when it exits (``cmlfs run``).

For Confidential Containers pods, where mount propagation between containers
does not work, the model server's own container runs ``cmlfs run ... -- CMD``:
the mount lives in the same mount namespace as the server.

The daemon is a forked child in its own session (so a terminal's Ctrl-C does
not unmount under the server); only it ever holds the key. The server starts
only once the mount is ready, in its own process group, and every signal this
process receives is forwarded to it exactly once. When the server exits, the
daemon is stopped (it unmounts) and the server's exit status is returned
(128+N if signal N killed it). If the daemon dies first, the server is asked to
stop and the status is 1. As PID 1 of a container it also reaps orphans.
"""

import contextlib
import logging
import os
import signal
import time
from types import FrameType

from cmlfs.daemon.daemonize import await_ready, fork_daemon, wait_exit
from cmlfs.daemon.settings import MountSettings
from cmlfs.errors import CmlfsError, MountError
from cmlfs.logfmt import quote
from cmlfs.mountpoint import mount_entry, unmount

log = logging.getLogger(__name__)

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
_HARMLESS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)  # not a reason to give up
DAEMON_STOP_SECONDS = 10.0
SERVER_STOP_SECONDS = 30.0
MOUNT_LOST_STATUS = 1


class CommandError(CmlfsError):
    """The server command could not be started; ``status`` is the shell's exit status for it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Forwarder:
    """Where signals go: to the server once it runs; before that, they stop the mount attempt."""

    def __init__(self, daemon_pid: int) -> None:
        self.daemon_pid = daemon_pid
        self.server_pid: int | None = None
        self.pending: int | None = None  # a stopping signal that came before the server

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.server_pid is not None:
            _kill(self.server_pid, signum)
        elif signum not in _HARMLESS:
            self.pending = signum
            _kill(self.daemon_pid, signal.SIGTERM)


def run_with_mount(settings: MountSettings, command: list[str], ready_timeout: float) -> int:
    """Mount, run ``command`` until it exits, unmount; return its exit status.

    The mountpoint is created if missing (in a pod it is a subdirectory of an empty volume).
    """
    settings.mountpoint.mkdir(parents=True, exist_ok=True)
    daemon_pid, ready_fd = fork_daemon(settings)
    forwarder = _Forwarder(daemon_pid)
    previous = {signum: signal.signal(signum, forwarder) for signum in FORWARDED}
    daemon_alive = True
    try:
        try:
            await_ready(ready_fd, daemon_pid, ready_timeout)
        except MountError:
            if forwarder.pending is not None:
                return 128 + forwarder.pending
            raise
        status, daemon_alive = _supervise(command, forwarder)
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop_daemon(daemon_pid if daemon_alive else None, settings)


def _supervise(command: list[str], forwarder: _Forwarder) -> tuple[int, bool]:
    """Start the server and wait for it: (its exit status, whether the daemon still runs)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        if forwarder.pending is not None:
            return 128 + forwarder.pending, True
        forwarder.server_pid = _spawn(command)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # pending signals go to the server
    log.info("event=server_started pid=%d command=%s", forwarder.server_pid, quote(command[0]))
    while True:
        pid, wait_status = os.wait()  # any child: also reaps orphans when this is PID 1
        if pid == forwarder.server_pid:
            return _shell_status(os.waitstatus_to_exitcode(wait_status)), True
        if pid == forwarder.daemon_pid:
            log.error('event=mount_lost reason="the daemon exited; stopping the server"')
            _stop_server(forwarder.server_pid)
            return MOUNT_LOST_STATUS, False


def _spawn(command: list[str]) -> int:
    """Start ``command`` in its own process group with default signal dispositions."""
    try:
        return os.posix_spawnp(
            command[0],
            command,
            os.environ,
            setpgroup=0,
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores these
        )
    except FileNotFoundError:
        raise CommandError(f"{command[0]}: command not found", 127) from None
    except OSError as exc:
        raise CommandError(f"{command[0]}: {exc.strerror}", 126) from None


def _stop_server(pid: int) -> None:
    """SIGTERM, then SIGKILL to the server's process group if it outlives the grace period."""
    _kill(pid, signal.SIGTERM)
    if wait_exit(pid, SERVER_STOP_SECONDS) is None:
        _kill(-pid, signal.SIGKILL)
        wait_exit(pid, DAEMON_STOP_SECONDS)


def _stop_daemon(pid: int | None, settings: MountSettings) -> None:
    """Stop the daemon (it unmounts on SIGTERM); clear whatever mount it left behind."""
    if pid is not None:
        _kill(pid, signal.SIGTERM)
        if wait_exit(pid, DAEMON_STOP_SECONDS) is None:
            log.error("event=daemon_stuck pid=%d action=kill", pid)
            _kill(pid, signal.SIGKILL)
            wait_exit(pid, DAEMON_STOP_SECONDS)
    deadline = time.monotonic() + DAEMON_STOP_SECONDS
    while mount_entry(settings.mountpoint) is not None and time.monotonic() < deadline:
        try:
            unmount(settings.mountpoint, lazy=True)
        except MountError as exc:
            log.warning("event=unmount_failed reason=%s", quote(exc))
            time.sleep(0.1)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _shell_status(code: int) -> int:
    """A waitstatus exit code as a shell reports it: 128+N for death by signal N."""
    return 128 - code if code < 0 else code
