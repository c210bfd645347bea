"""The serving side's commands: mount, umount, run, status."""

import argparse
import logging
import os
import sys
from pathlib import Path

from cmlfs.cli.options import add_mount_options, mount_settings
from cmlfs.errors import CmlfsError
from cmlfs.logfmt import quote

log = logging.getLogger(__name__)


def add_mount(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mount",
        help="mount a stored model read-only at a folder",
        description="Obtain the key, authenticate the manifest and mount the plaintext view at "
        "MOUNTPOINT. Without --foreground, return once the mount is ready (exit 0) or has failed "
        "(non-zero, nothing mounted). A stale mount left by a killed daemon is cleared first. "
        "SIGTERM or SIGINT unmounts.",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    add_mount_options(p)
    p.add_argument(
        "--foreground", action="store_true", help="serve in this process until unmounted"
    )
    p.add_argument(
        "--log-file",
        type=Path,
        metavar="FILE",
        help="where a background daemon logs (default: nowhere)",
    )
    p.set_defaults(func=mount)


def mount(args: argparse.Namespace) -> int:
    from cmlfs.daemon.daemonize import await_ready, fork_daemon
    from cmlfs.daemon.mount import serve_reporting

    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.INFO)
    settings = mount_settings(args, args.store, args.mountpoint)
    if not args.foreground:
        pid, ready_fd = fork_daemon(settings, args.log_file or Path(os.devnull))
        await_ready(ready_fd, pid, args.ready_timeout)
        print(f"mounted {args.store} at {args.mountpoint}", flush=True)
        # As daemon(3) does, the parent leaves without tearing down its interpreter: the
        # teardown of the modules a mount imports takes time and protects nothing.
        os._exit(0)

    def notify(error: str | None) -> None:
        if error is None:
            log.info("event=ready mountpoint=%s", quote(settings.mountpoint))

    return serve_reporting(settings, notify)


def add_umount(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "umount",
        help="unmount a cmlfs mount",
        description="Unmount MOUNTPOINT; the daemon then exits.",
    )
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.set_defaults(func=umount)


def umount(args: argparse.Namespace) -> int:
    from cmlfs.errors import MountError
    from cmlfs.mountpoint import is_cmlfs_mount, unmount

    if not is_cmlfs_mount(args.mountpoint):
        raise MountError(f"{args.mountpoint} is not a cmlfs mount")
    unmount(args.mountpoint)
    print(f"unmounted {args.mountpoint}")
    return 0


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="mount, run a server until it exits, unmount (in-container mode)",
        description="Mount STORE at DIR (created if missing), wait until the mount is ready, "
        "run COMMAND as a child "
        "with signals forwarded, then unmount and exit with COMMAND's status (128+N if signal "
        "N killed it; 1 if the mount was lost). For pods where mounts do not propagate between "
        "containers, e.g. Confidential Containers.",
    )
    p.add_argument("--store", required=True, metavar="STORE", help="where the model is stored")
    p.add_argument("--mount", type=Path, required=True, metavar="DIR", help="where to mount it")
    add_mount_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmlfs.run import CommandError, run_with_mount

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CmlfsError("give the server command after --, e.g. cmlfs run ... -- vllm serve /m")
    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.INFO)
    settings = mount_settings(args, args.store, args.mount)
    try:
        return run_with_mount(settings, command, args.ready_timeout)
    except CommandError as exc:
        print(f"cmlfs: error: {exc}", file=sys.stderr)
        return exc.status


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="show readiness and counters of a mount's daemon",
        description="Ask the daemon serving MOUNTPOINT (mounted with --http) whether the mount "
        "answers, and show its counters. Exit 0 when ready, 1 otherwise.",
    )
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument(
        "--http",
        metavar="URL",
        help="the daemon's status server (default: the address the daemon recorded)",
    )
    p.set_defaults(func=status)


def status(args: argparse.Namespace) -> int:
    from cmlfs.status import default_runtime_dir, report_lines

    runtime_dir = default_runtime_dir(dict(os.environ), os.geteuid())
    lines, ready = report_lines(args.mountpoint, args.http, runtime_dir)
    print("\n".join(lines))
    return 0 if ready else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (add_mount, add_umount, add_run, add_status):
        add(sub)
