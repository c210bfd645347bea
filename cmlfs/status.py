"""Health, readiness and Prometheus metrics of a running mount, and where to find them.

The daemon serves three paths on the address given with ``--http``:
``/healthz`` (200 while its event loop answers), ``/readyz`` (200 only once the
mount is up and a statvfs on it returns within a timeout) and ``/metrics``
(counters of the reader, its cache and its store, in the Prometheus text
format). The server runs in the daemon's trio loop; ``statvfs`` runs in a
worker thread, so a hung mount makes ``/readyz`` fail instead of hanging it.

It must never expose key material, plaintext, paths, file names or the model's
name: metrics are counts, sizes and durations only, and readiness reasons name
no path. HTTP is parsed by h11 (sans-I/O, so it runs in the trio loop) with a
bounded head, only GET and HEAD are served, one request per connection. Probes
must keep answering while other clients misbehave: each connection has a
deadline, and when the connection limit is reached the oldest connection that
has not finished its request head is closed to make room, so idle or trickling
clients can never lock a probe out.

The daemon records the address in a small non-secret runtime file (one per
mountpoint), so ``cmlfs status MOUNTPOINT`` finds it.
"""

import hashlib
import json
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from cmlfs import __version__
from cmlfs.errors import MountError
from cmlfs.logfmt import quote
from cmlfs.mountpoint import FS_TYPE, mount_entry
from cmlfs.reader import ModelReader
from cmlfs.units import format_size

if TYPE_CHECKING:  # the status command imports this module without the FUSE stack
    from cmlfs.daemon.workers import WorkerBoard

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0  # seconds a statvfs on the mount may take before /readyz says no
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its request head
CONNECTION_TIMEOUT = 10.0  # seconds a connection may stay open in all
MAX_REQUEST_HEAD = 8192
MAX_CONNECTIONS = 128  # open at once; beyond it the oldest one still sending its head is closed


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) to a (host, port) pair; port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:9100, not {text!r}")
    return host, int(port)


def bind_status_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the mount so a busy port refuses the mount early."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=MAX_CONNECTIONS)
    except OSError as exc:
        raise MountError(f"cannot serve status on {host}:{port}: {exc.strerror}") from None


def address_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- runtime records: where a mountpoint's daemon serves its status --------------------------


SYSTEM_RUNTIME_DIR = Path("/run/cmlfs")


def default_runtime_dir(environ: dict[str, str], euid: int) -> Path | None:
    """Where status records live: ``/run/cmlfs`` for root or when this user may write it (the
    image prepares it for its user), else ``$XDG_RUNTIME_DIR/cmlfs``, else None (no record)."""
    if euid == 0 or os.access(SYSTEM_RUNTIME_DIR, os.W_OK):
        return SYSTEM_RUNTIME_DIR
    runtime = environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "cmlfs" if runtime else None


def _record_path(runtime_dir: Path, mountpoint: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:32]
    return runtime_dir / f"{digest}.json"


def write_record(runtime_dir: Path, mountpoint: Path, url: str) -> Path:
    """Atomically record (mountpoint, pid, status URL); nothing in it is secret."""
    runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = _record_path(runtime_dir, mountpoint)
    record = {"mountpoint": os.path.abspath(mountpoint), "pid": os.getpid(), "url": url}
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record) + "\n")
    temporary.replace(path)
    return path


def read_record(runtime_dir: Path, mountpoint: Path) -> dict | None:
    """The record of a live daemon for ``mountpoint``, or None (none, stale or unreadable)."""
    try:
        record = json.loads(_record_path(runtime_dir, mountpoint).read_text()[:4096])
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("mountpoint") != os.path.abspath(mountpoint):
        return None
    return record


# --- metrics -------------------------------------------------------------------------------


class MountCollector:
    """Prometheus collector reading the counters of the reader and its store, or of every
    worker's (a ``WorkerBoard``), at scrape time (no copies kept)."""

    def __init__(
        self,
        reader: "ModelReader | WorkerBoard",
        ready: Callable[[], bool],
    ) -> None:
        self.reader = reader
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        stats, cache = self.reader.stats, self.reader.cache
        counters = [
            ("cmlfs_read_bytes", "Plaintext bytes returned to readers.", stats.bytes_read),
            ("cmlfs_decrypted_bytes", "Plaintext bytes decrypted.", stats.bytes_decrypted),
            (
                "cmlfs_warmed_bytes",
                "Plaintext bytes pushed into the page cache ahead of readers (--warm-up).",
                stats.bytes_warmed,
            ),
            (
                "cmlfs_decrypted_chunks",
                "Chunks decrypted and authenticated.",
                stats.chunks_decrypted,
            ),
            ("cmlfs_cache_hits", "Lookups that found a chunk in the cache.", cache.hits),
            ("cmlfs_cache_misses", "Lookups that had to fetch a chunk.", cache.misses),
            (
                "cmlfs_cache_evictions",
                "Spans (chunks fetched together) evicted from the cache.",
                cache.evictions,
            ),
            ("cmlfs_store_requests", "Ranged reads sent to the store.", stats.store_requests),
            (
                "cmlfs_store_retries",
                "Store requests sent again after a failure.",
                self.reader.store_stats.retries,
            ),
            (
                "cmlfs_store_errors",
                "Store reads that failed after all attempts.",
                stats.store_errors,
            ),
            (
                "cmlfs_authentication_failures",
                "Chunks or blob headers that failed authentication (read as EIO).",
                stats.integrity_failures,
            ),
        ]
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        gauges = [
            (
                "cmlfs_cache_bytes",
                "Bytes held in the chunk cache (plaintext, fetched records).",
                cache.used,
            ),
            ("cmlfs_cache_budget_bytes", "Byte budget of the chunk cache.", cache.budget),
            ("cmlfs_ready", "1 once the mount is up, else 0.", int(self.ready())),
        ]
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        info = GaugeMetricFamily("cmlfs_build_info", "cmlfs version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        latency = stats.read_seconds
        buckets = [(floatToGoString(bound), count) for bound, count in latency.cumulative()]
        yield HistogramMetricFamily(
            "cmlfs_read_duration_seconds",
            "Time to answer one read from the filesystem (cache hits included).",
            buckets=buckets,
            sum_value=latency.total_seconds,
        )


# --- the server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusSettings:
    """Where to serve status, and where to record that address (None: nowhere)."""

    host: str
    port: int
    runtime_dir: Path | None = None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class StatusServer:
    """Serves /healthz, /readyz and /metrics for one mount from the daemon's trio loop."""

    def __init__(
        self, settings: StatusSettings, mountpoint: Path, reader: "ModelReader | WorkerBoard"
    ) -> None:
        """Bind now, so a busy port refuses the mount before anything is mounted."""
        self.mountpoint = mountpoint
        self.mounted = False  # set once the daemon announced readiness
        self._runtime_dir = settings.runtime_dir
        self._record: Path | None = None
        self._sock = bind_status_socket(settings.host, settings.port)
        self.url = address_url(self._sock)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(MountCollector(reader, lambda: self.mounted))
        # One probe at a time: a hung statvfs holds it, so later probes fail fast.
        self._probe_limiter = trio.CapacityLimiter(1)
        self._open = 0  # connections being served
        # Connections still sending their request head, oldest first (a dict keeps order).
        self._unheard: dict[trio.CancelScope, None] = {}

    def notifier(self, notify: Callable[[str | None], None]) -> Callable[[str | None], None]:
        """``notify`` that first marks the mount ready and records the status address."""

        def mark_then_notify(error: str | None) -> None:
            if error is None:
                self.mounted = True
                if self._runtime_dir is not None:
                    self._record = self._write_record(self._runtime_dir)
                log.info("event=status_ready url=%s", self.url)
            notify(error)

        return mark_then_notify

    def _write_record(self, runtime_dir: Path) -> Path | None:
        """Record the address for `cmlfs status`; without it the mount still works."""
        try:
            return write_record(runtime_dir, self.mountpoint, self.url)
        except OSError as exc:
            log.warning(
                "event=status_record_failed dir=%s reason=%s",
                quote(runtime_dir),
                quote(exc.strerror),
            )
            return None

    def close(self) -> None:
        """Stop listening and forget the record."""
        self.mounted = False
        self._sock.close()
        if self._record is not None:
            self._record.unlink(missing_ok=True)

    async def serve(self) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        await trio.serve_listeners(self._handle, [listener])

    async def _handle(self, stream: trio.SocketStream) -> None:
        """Answer one request; a failure here closes that connection, never the mount."""
        async with stream:
            if not self._make_room():
                return
            self._open += 1
            try:
                with trio.move_on_after(CONNECTION_TIMEOUT):
                    await self._exchange(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            except Exception:
                log.exception("event=status_request_failed")
            finally:
                self._open -= 1

    def _make_room(self) -> bool:
        """Whether a new connection may be served; at the limit, the oldest connection that
        has not sent its request head yet is closed for it (all others are answering)."""
        if self._open < MAX_CONNECTIONS:
            return True
        if not self._unheard:
            return False
        oldest = next(iter(self._unheard))
        del self._unheard[oldest]
        oldest.cancel()
        return True

    async def _exchange(self, stream: trio.SocketStream) -> None:
        """Read one request head with h11 (within REQUEST_TIMEOUT) and send the answer."""
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        with trio.CancelScope(deadline=trio.current_time() + REQUEST_TIMEOUT) as unheard:
            self._unheard[unheard] = None
            try:
                request = await _receive_request(stream, connection)
            finally:
                self._unheard.pop(unheard, None)
        if unheard.cancelled_caught or request is None:
            return  # too slow, made room for a newer client, or closed without asking
        if isinstance(request, Response):
            response, method = request, b"GET"
        else:
            response, method = await self.respond(request.method, request.target), request.method
        await stream.send_all(_encode(connection, response, head_only=method == b"HEAD"))

    async def respond(self, method: bytes, target: bytes) -> Response:
        if method not in (b"GET", b"HEAD"):
            return Response(405, b"only GET and HEAD\n")
        path = target.partition(b"?")[0]
        if path == b"/healthz":
            return Response(200, b"ok\n")
        if path == b"/readyz":
            reason = await self.not_ready_reason()
            return (
                Response(503, f"not ready: {reason}\n".encode())
                if reason
                else Response(200, b"ready\n")
            )
        if path == b"/metrics":
            return Response(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        return Response(404, b"not found: try /healthz, /readyz or /metrics\n")

    async def not_ready_reason(self) -> str | None:
        """None when the mount answers now; otherwise why not (naming no path)."""
        if not self.mounted:
            return "the mount is not up yet"
        with trio.move_on_after(PROBE_TIMEOUT):
            return await trio.to_thread.run_sync(
                probe_mount, self.mountpoint, abandon_on_cancel=True, limiter=self._probe_limiter
            )
        return f"the mount did not answer within {PROBE_TIMEOUT:g}s"


def probe_mount(mountpoint: Path) -> str | None:
    """None if a cmlfs mount is at ``mountpoint`` and answers statvfs; else the reason, which
    names no path (/readyz may be reachable by anyone who can reach the port)."""
    entry = mount_entry(mountpoint)
    if entry is None or entry.fstype != FS_TYPE:
        return "nothing is mounted at the mountpoint"
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return f"the mount does not answer: {exc.strerror}"
    return None


async def _receive_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> h11.Request | Response | None:
    """The client's request, an error response for a malformed one, or None if it closed."""
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            return Response(status, f"bad request: {_REASONS.get(status, b'').decode()}\n".encode())
        if isinstance(event, h11.Request):
            return event
        if event is not h11.NEED_DATA:
            return None  # ConnectionClosed: nothing was asked
        connection.receive_data(await stream.receive_some(MAX_REQUEST_HEAD))


def _encode(connection: h11.Connection, response: Response, head_only: bool) -> bytes:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
    ]
    reason = _REASONS.get(response.status, b"Error")
    data = connection.send(
        h11.Response(status_code=response.status, headers=headers, reason=reason)
    )
    if not head_only:
        data += connection.send(h11.Data(data=response.body))
    return data + connection.send(h11.EndOfMessage())


# --- the client side: `cmlfs status` -------------------------------------------------------


@dataclass(frozen=True)
class StatusReport:
    url: str
    ready: bool
    reason: str  # the /readyz answer
    metrics: dict[str, float]  # unlabelled sample name -> value
    latency_buckets: list[tuple[float, float]]  # (upper bound, cumulative count)


def fetch_status(url: str, timeout: float = 5.0) -> StatusReport:
    """Ask a daemon's status server for readiness and metrics."""
    if not url.startswith(("http://", "https://")):
        raise MountError(f"not a status server URL: {url!r}")
    code, reason = _get(url + "/readyz", timeout)
    _, text = _get(url + "/metrics", timeout)
    metrics: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cmlfs_read_duration_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif not sample.labels:
                metrics[sample.name] = sample.value
    return StatusReport(url, code == 200, reason.strip(), metrics, sorted(buckets))


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096).decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as exc:
        raise MountError(f"the daemon's status server at {url} does not answer: {exc}") from None


def quantile_bound(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The smallest bucket bound at or below which a fraction ``q`` of reads finished."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    return next(bound for bound, count in buckets if count >= q * total)


def report_lines(
    mountpoint: Path, url: str | None, runtime_dir: Path | None
) -> tuple[list[str], bool]:
    """What ``cmlfs status`` prints for a person, and whether the mount is ready."""
    entry = mount_entry(mountpoint)
    state = "not mounted" if entry is None else f"mounted ({entry.fstype})"
    lines = [f"mountpoint:      {os.path.abspath(mountpoint)}: {state}"]
    record = read_record(runtime_dir, mountpoint) if runtime_dir and url is None else None
    if record is not None:
        url = record["url"]
        lines.append(f"daemon:          pid {record['pid']}, status at {url}")
    if url is None:
        lines.append(
            "status server:   none recorded for this mountpoint (mount with --http HOST:PORT, "
            "or give cmlfs status --http URL)"
        )
        return lines, False
    report = fetch_status(url.rstrip("/"))
    n = {name.removeprefix("cmlfs_"): int(value) for name, value in report.metrics.items()}
    lines.append(f"ready:           {'yes' if report.ready else 'no: ' + report.reason}")
    reads = int(report.latency_buckets[-1][1]) if report.latency_buckets else 0
    p50, p99 = (quantile_bound(report.latency_buckets, q) for q in (0.5, 0.99))
    latency = f"; latency p50 <= {_duration(p50)}, p99 <= {_duration(p99)}" if reads else ""
    lines += [
        f"read:            {format_size(n['read_bytes_total'])} in {reads} requests{latency}",
        f"decrypted:       {format_size(n['decrypted_bytes_total'])} in "
        f"{n['decrypted_chunks_total']} chunks",
        f"cache:           {format_size(n['cache_bytes'])} of "
        f"{format_size(n['cache_budget_bytes'])}; hits {n['cache_hits_total']}, "
        f"misses {n['cache_misses_total']}, evictions {n['cache_evictions_total']}",
        f"store:           {n['store_requests_total']} requests, {n['store_retries_total']} "
        f"retries, {n['store_errors_total']} errors",
        f"authentication:  {n['authentication_failures_total']} failures",
    ]
    return lines, report.ready


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds == float("inf"):
        return "more than 5 s"
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"
