"""Read-only stores behind a plain HTTP(S) base URL, and the HTTP transport the OCI store shares.

``https://host/prefix`` (a static server, a public bucket, or a prefix with a
query-string credential such as a SAS token) serves ``prefix/manifest.cmlfs``
and ``prefix/blobs/<sha256>``. Reads are Range GETs through one pooled
``requests`` session with timeouts and bounded retries, handed straight to its
adapter until an object redirects. Every answer is
checked strictly: the status, ``Content-Range`` (exactly the bytes asked, of an
object of the size first seen), the body length, and the ETag, so an object
replaced under a running mount fails its reads instead of mixing versions.

Never puts a header value, a query string or a credential in a message or log.
"""

import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from cmlfs.errors import StoreError
from cmlfs.stores.base import (
    Identity,
    ListingUnsupported,
    ObjectChanged,
    ObjectMissing,
    Progress,
    RangedStore,
    StoreSettings,
    check_name,
    system_trust,
)
from cmlfs.stores.retry import RetryPolicy, TransientStoreError

POOL_SIZE = 16
MAX_OBJECT_SIZE = 1 << 50  # refuse absurd sizes a hostile server might announce
MAX_PREPARED = 4096  # URLs whose prepared GET is kept: one per blob of a model
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,16})-([0-9]{1,16})/([0-9]{1,16})")
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_LENGTH = re.compile(r"[0-9]{1,16}")


def _is_length(value: str) -> bool:
    """A Content-Length of ASCII digits only: ``str.isdigit`` also accepts characters such
    as superscript two (``\xb2``, valid ISO-8859-1 in a header) that ``int`` refuses."""
    return _LENGTH.fullmatch(value) is not None


def tls_error(exc: BaseException) -> StoreError:
    """A failed TLS handshake, on one line: not retried, since trying again cannot help."""
    return StoreError(f"TLS handshake failed: {_tls_reason(exc)} (a private CA goes in --store-ca)")


def _tls_reason(exc: BaseException | None) -> str:
    """The certificate check that failed, from the innermost ``ssl`` error in the chain.

    Only the ``ssl`` module's own text is used: outer errors quote the URL, which may
    carry a query-string credential."""
    seen: set[int] = set()
    reason = "untrusted certificate?"
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
            return f"certificate verify failed: {exc.verify_message}"
        if isinstance(exc, ssl.SSLError) and exc.reason:
            reason = str(exc.reason).lower().replace("_", " ")
        inner = exc.__cause__ or exc.__context__
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if inner is None:
            inner = getattr(exc, "reason", None)
        exc = inner if isinstance(inner, BaseException) else None
    return reason


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment, for messages."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a bad IPv6 literal or port
        return "(an invalid URL)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_content_range(value: str | None, offset: int, length: int, size: int | None) -> int:
    """Check a ``Content-Range`` names exactly ``offset``..``offset+length-1``; return the total.

    ``size``, when known, is the object size first seen: a different total means
    the object changed.
    """
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        raise StoreError("the server answered a range request without a valid Content-Range")
    first, last, total = (int(g) for g in match.groups())
    if first != offset or last != offset + length - 1 or total <= last:
        raise StoreError("the server answered with a different byte range than asked")
    if size is not None and total != size:
        raise ObjectChanged("object size changed since it was first read")
    return total


def etag_matches(a: str | None, b: str | None) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2): the same tag, ignoring a ``W/`` prefix."""
    if a is None or b is None:
        return True
    return a.removeprefix("W/") == b.removeprefix("W/")


class CachedEnvironmentSession(requests.Session):
    """A session that reads its environment settings once per origin.

    requests looks up proxies (``*_PROXY``, ``NO_PROXY``) and CA bundle variables on every
    request, walking ``os.environ`` twice: a large part of a ranged GET's CPU time (figures
    in benchmarks/RESULTS.md), and more in a pod, whose environment holds variables for
    every service. A daemon's
    environment does not change, so the answer for an origin is kept.
    """

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple, dict] = {}

    def merge_environment_settings(
        self,
        url: str,
        proxies: dict | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: object,
    ) -> dict:
        if proxies:  # never passed by cmlfs: no caching for what it does not use
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert)
        settings = self._settings.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._settings[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}


@contextmanager
def _classified(method: str) -> Iterator[None]:
    """Turn requests' exceptions into store errors, without their text (it may quote a URL
    with a query-string credential): TLS failures are final, connection failures and
    timeouts transient."""
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise tls_error(exc) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientStoreError(f"{method} failed: {type(exc).__name__}") from None
    except requests.RequestException as exc:
        raise StoreError(f"{method} failed: {type(exc).__name__}") from None


def _unless_transient(response: requests.Response) -> requests.Response:
    if response.status_code in _TRANSIENT_STATUS:
        response.close()
        raise TransientStoreError(f"server answered {response.status_code}")
    return response


class HttpTransport:
    """One pooled session: single attempts that classify failures; the caller retries.

    Exceptions from ``requests`` are turned into store errors without their text,
    which may contain a URL with a query-string credential.
    """

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.verify = settings.ca_bundle()  # --store-ca, or None: the session's below
        self.retry = RetryPolicy(attempts=settings.attempts)
        self.session = CachedEnvironmentSession()
        if self.verify is None:  # $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE when set, else this
            self.session.verify = system_trust()
        adapter = HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept-Encoding"] = "identity"
        self.session.headers["User-Agent"] = "cmlfs"
        self._prepared: dict[str, requests.PreparedRequest] = {}
        self._redirecting: set[str] = set()  # at most the objects of one model

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        **kwargs,
    ) -> requests.Response:
        """One request; transient failures raise TransientStoreError, the response is returned
        for every status except the transient ones."""
        with _classified(method):
            response = self.session.request(
                method,
                url,
                headers=headers,
                stream=stream,
                timeout=self.settings.timeout,
                verify=self.verify,
                **kwargs,
            )
        return _unless_transient(response)

    def get(self, url: str, headers: dict[str, str]) -> requests.Response:
        """A streamed GET like ``send``'s, handed straight to the session's adapter.

        The session prepares the request once per URL (its headers, cookies and netrc
        credentials as they are then) and its proxy and CA settings are the session's;
        skipping its per-request work saves about a third of a ranged GET's CPU time
        (benchmarks/RESULTS.md), and ``--workers`` make 1024 GETs per GiB. Unlike
        ``send``: cookies a GET answer sets are not kept, ``headers`` win over a netrc
        entry, and session hooks do not run (cmlfs sets none). A URL that answers with a
        redirect goes through the whole session from then on, which follows redirects and
        drops Authorization when they lead to another host.
        """
        if url in self._redirecting:
            return self.send("GET", url, headers, stream=True)
        settings = self.session.merge_environment_settings(url, {}, True, self.verify, None)
        with _classified("GET"):
            template = self._prepared.get(url)
            if template is None:
                if len(self._prepared) >= MAX_PREPARED:
                    self._prepared.clear()
                template = self.session.prepare_request(requests.Request("GET", url))
                self._prepared[url] = template
            request = template.copy()
            request.headers.update(headers)
            response = self.session.get_adapter(url).send(
                request,
                stream=True,
                timeout=self.settings.timeout,
                verify=settings["verify"],
                cert=settings["cert"],
                proxies=settings["proxies"],
            )
        if response.is_redirect:
            response.close()
            self._redirecting.add(url)
            return self.send("GET", url, headers, stream=True)
        return _unless_transient(response)

    def read_body(self, response: requests.Response, limit: int) -> bytes:
        """The whole body of a streamed response, refused beyond ``limit`` bytes.

        Read from urllib3 in one call of the announced length (or in 1 MiB pieces when
        no length is announced): requests' ``iter_content`` is several times slower
        (benchmarks/RESULTS.md).
        """
        announced = response.headers.get("Content-Length")
        if announced is not None and (not _is_length(announced) or int(announced) > limit):
            response.close()
            raise StoreError(f"the server announced a body larger than {limit} bytes")
        try:
            if announced is not None:
                return response.raw.read(int(announced))
            body = bytearray()
            while piece := response.raw.read(1 << 20):
                body += piece
                if len(body) > limit:
                    raise StoreError(f"the server sent more than {limit} bytes")
            return bytes(body)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # reset, stall, short or badly chunked body
            raise TransientStoreError(f"body interrupted: {type(exc).__name__}") from None
        finally:
            response.close()

    def get_range(
        self,
        url: str,
        offset: int,
        length: int,
        identity: Identity | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """Exactly ``length`` bytes from ``offset`` in one attempt (following redirects)."""
        request_headers = dict(headers or {})
        request_headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        if identity is not None and identity.etag and not identity.etag.startswith("W/"):
            request_headers["If-Match"] = identity.etag
        response = self.get(url, request_headers)
        status = response.status_code
        whole = (
            status == 200 and offset == 0 and response.headers.get("Content-Length") == str(length)
        )
        if status == 206:
            try:
                parse_content_range(
                    response.headers.get("Content-Range"),
                    offset,
                    length,
                    identity.size if identity else None,
                )
            except StoreError:
                response.close()
                raise
        elif not whole:  # a 200 is fine only when the whole object is exactly the range asked for
            response.close()
            raise status_error(response)
        if identity is not None and not etag_matches(identity.etag, response.headers.get("ETag")):
            response.close()
            raise ObjectChanged("object was replaced since it was first read (ETag differs)")
        body = self.read_body(response, length)
        if len(body) != length:
            raise TransientStoreError(f"short body: {len(body)} of {length} bytes")
        return body

    def close(self) -> None:
        self.session.close()


class Unauthorized(StoreError):
    """HTTP 401: ``challenge`` is the WWW-Authenticate header, for a store that can log in."""

    def __init__(self, message: str, challenge: str = "") -> None:
        super().__init__(message)
        self.challenge = challenge


def status_error(response: requests.Response) -> StoreError:
    """The store error for an unexpected final HTTP status."""
    status = response.status_code
    if status == 401:
        return Unauthorized(
            "access denied (HTTP 401)", response.headers.get("WWW-Authenticate", "")
        )
    if status == 404:
        return ObjectMissing("not found")
    if status == 412:
        return ObjectChanged("object was replaced since it was first read")
    if status == 403:
        return StoreError("access denied (HTTP 403)")
    if status == 416:
        return StoreError("range not satisfiable: the object is shorter than expected")
    return StoreError(f"unexpected HTTP status {status}")


class HttpStore(RangedStore):
    """A read-only store at an ``http(s)://`` base URL."""

    def __init__(self, base_url: str, settings: StoreSettings, file: str | None = None) -> None:
        super().__init__()
        self.file = file  # the one file of a single-file store (a JWE file's URL)
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise StoreError(f"not an http(s) store URL: {safe_url(base_url)}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"not an http(s) store URL: {safe_url(base_url)}")
        if parts.username or parts.password:
            raise StoreError("put credentials in --store-header, not in the store URL")
        if parts.scheme == "http" and settings.headers and not settings.insecure_http:
            raise StoreError(
                "refusing to send store headers over plain http:// (use https://, "
                "or --insecure-http)"
            )
        self._parts = parts._replace(path=parts.path.rstrip("/"), fragment="")
        self._headers = dict(settings.headers)
        self._transport = HttpTransport(settings)
        self.stats = self._transport.retry.stats

    def describe(self) -> str:
        return safe_url(urlunsplit(self._parts))

    def list(self) -> list[str]:
        if self.file is not None:
            return [self.file]
        raise ListingUnsupported(f"{self.describe()}: an HTTP store cannot list its objects")

    def put(self, name: str, source: Path, progress: Progress) -> bool:
        raise StoreError(f"{self.describe()}: an HTTP store is read-only; push to s3:// or oci://")

    def commit(self) -> str:
        raise StoreError(f"{self.describe()}: an HTTP store is read-only")

    def close(self) -> None:
        self._transport.close()

    def _url(self, name: str) -> str:
        if self.file is None or name != self.file:
            check_name(name)
        return urlunsplit(self._parts._replace(path=f"{self._parts.path}/{name}"))

    def _look_up(self, name: str) -> Identity:
        url = self._url(name)
        return self._transport.retry.call(name, lambda: self._head(url))

    def _read(self, name: str, offset: int, length: int, identity: Identity) -> bytes:
        url = self._url(name)
        return self._transport.retry.call(
            name,
            lambda: self._transport.get_range(url, offset, length, identity, self._headers),
        )

    def _head(self, url: str) -> Identity:
        response = self._transport.send("HEAD", url, self._headers, allow_redirects=True)
        response.close()
        if response.status_code != 200:
            raise status_error(response)
        return identity_from(response)


def identity_from(response: requests.Response) -> Identity:
    """Size and ETag from a HEAD answer, refusing a missing or absurd length."""
    length = response.headers.get("Content-Length", "")
    if not _is_length(length) or int(length) > MAX_OBJECT_SIZE:
        raise StoreError("the server gave no valid Content-Length")
    return Identity(int(length), response.headers.get("ETag"))
