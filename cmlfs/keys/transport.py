"""HTTP for key sources: verified TLS, explicit timeouts, bounded bodies, one-line failures.

Sessions ignore requests' environment (no proxy variables, no REQUESTS_CA_BUNDLE)
and keep no cookies: the KBS client carries its session cookie explicitly. A
broker's certificate is checked against ``--kbs-ca`` when given, else against
the system trust store (``cmlfs.tls``), never the certifi bundle requests would
use by itself.
Every transport failure becomes a KeySourceError naming the broker and the
cause; a response body is read in pieces and refused once past its cap.
"""

from collections.abc import Mapping
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import urlsplit

import requests

from cmlfs.errors import KeySourceError
from cmlfs.keys.base import KeySettings
from cmlfs.tls import missing_store_text, system_ca_location

_CONNECT_TIMEOUT = 5.0


class UnreachableError(KeySourceError):
    """The peer could not be reached or did not answer in time: worth another try."""


def new_session(settings: KeySettings) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(settings.kbs_ca) if settings.kbs_ca is not None else system_trust_store()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


def system_trust_store() -> str:
    """The system's CA bundle (file, else folder) for ``verify``; KeySourceError when absent."""
    location = system_ca_location()
    if location is None:
        raise KeySourceError(f"{missing_store_text()}: install ca-certificates or give --kbs-ca")
    return location


def send(
    session: requests.Session,
    method: str,
    url: str,
    settings: KeySettings,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    """One request with connect/read timeouts; the body is left unread (streamed)."""
    if settings.kbs_ca is not None and not settings.kbs_ca.is_file():
        raise KeySourceError(f"CA file {settings.kbs_ca} does not exist")
    try:
        return session.request(
            method,
            url,
            data=body,
            headers=dict(headers or {}),
            timeout=(min(_CONNECT_TIMEOUT, settings.timeout), settings.timeout),
            stream=True,
            allow_redirects=False,
        )
    except requests.exceptions.SSLError as exc:
        raise KeySourceError(
            f"TLS failure talking to {_origin(url)}: {_reason(exc)} (a private CA goes in "
            "--kbs-ca; a broker without TLS needs --insecure-kbs-http and --key-id)"
        ) from None
    except requests.exceptions.ConnectTimeout:
        raise UnreachableError(f"cannot reach {_origin(url)}: connection timed out") from None
    except requests.exceptions.Timeout:
        raise UnreachableError(
            f"{_origin(url)} did not answer within {settings.timeout:g}s"
        ) from None
    except requests.exceptions.ConnectionError as exc:
        raise UnreachableError(f"cannot reach {_origin(url)}: {_reason(exc)}") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise KeySourceError(f"request to {_origin(url)} failed: {_reason(exc)}") from None


def read_capped(response: requests.Response, cap: int, what: str) -> bytes:
    """The whole body, or KeySourceError once it exceeds ``cap`` bytes (decoded)."""
    data = bytearray()
    try:
        for piece in response.iter_content(chunk_size=16384):
            data += piece
            if len(data) > cap:
                raise KeySourceError(f"{what} is larger than {cap} bytes")
    except requests.exceptions.RequestException as exc:
        raise KeySourceError(f"reading {what} failed: {_reason(exc)}") from None
    finally:
        response.close()
    return bytes(data)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, on one line."""
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if inner is None or inner is exc:
            break
        exc = inner
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]
