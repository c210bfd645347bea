"""The daemon that serves a mount, split by job (gocryptfs's mount.go/daemonize.go, S3QL's
daemonize.py are the model):

- ``settings``: ``MountSettings``, everything a mount needs, built once by the CLI;
- ``mount``: the FUSE lifecycle in the daemon process (harden, open the model, mount,
  report readiness, serve or supervise workers, unmount on a signal);
- ``workers``: worker processes that serve one mount together, and their shared counters;
- ``daemonize``: the parent side of a background mount (fork, readiness pipe, wait).

Opening and checking the model is in ``cmlfs.model`` and process hardening in
``cmlfs.hardening``: ``inspect`` and ``verify`` use them too. Importing this package
imports nothing, so the CLI can read ``MountSettings`` without loading the FUSE stack.
"""
