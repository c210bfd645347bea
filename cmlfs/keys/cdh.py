"""The Confidential Containers data hub: a key already released to this CoCo pod.

Inside a CoCo pod the attestation agent and the confidential data hub (CDH) do
the attestation; any container reads a released resource as plain bytes from
``GET http://127.0.0.1:8006/cdh/resource/<repo>/<type>/<tag>`` (200 and the
bytes; 500 and a text reason on any failure). ``cdh:///REPO/TYPE/TAG`` uses
the configured address (``--cdh-address``, default 127.0.0.1:8006), and so does
``kbs:///REPO/TYPE/TAG``, the resource ID as CoCo and KServe write it ("the broker
this guest is configured for", which the data hub reaches);
``cdh://HOST:PORT/REPO/TYPE/TAG`` names another address. The data hub speaks plain
HTTP, so a host other than loopback needs ``--insecure-kbs-http``, and a key read
from it is not authenticated (the daemon then needs ``--key-id``). The real data hub
answers 403 to any peer that is not on loopback.
"""

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from cmlfs.errors import KeySourceError
from cmlfs.keys.base import MAX_RESOURCE_LEN, KeySettings, ReleasedKey
from cmlfs.keys.bundle import parse_resource
from cmlfs.keys.rcar import resource_path
from cmlfs.keys.transport import new_session, read_capped, send


@dataclass(frozen=True)
class CdhKeySource:
    address: str  # HOST:PORT
    path: str  # repo/type/tag
    settings: KeySettings
    authenticated: bool  # on loopback: inside this pod, no one on a network path in between

    def describe(self) -> str:
        return f"data hub cdh://{self.address}/{self.path}"

    def fetch_release(self) -> ReleasedKey:
        return parse_resource(self.fetch_resource())

    def fetch_resource(self) -> bytes:
        url = f"http://{self.address}/cdh/resource/{self.path}"
        with new_session(self.settings) as http:
            response = send(http, "GET", url, self.settings)
            status = response.status_code
            body = read_capped(response, MAX_RESOURCE_LEN, "the data hub's answer")
        if status != 200:
            reason = " ".join(body.decode("utf-8", "replace").split())[:300] or "no reason given"
            raise KeySourceError(
                f"data hub at {self.address} could not release {self.path}: HTTP {status}: {reason}"
            )
        return body


def cdh_key_source(uri: str, settings: KeySettings) -> CdhKeySource:
    """The source of ``cdh://[HOST:PORT]/REPO/TYPE/TAG`` or ``kbs:///REPO/TYPE/TAG``."""
    parts = urlsplit(uri)
    segments = parts.path.split("/")
    if len(segments) != 4 or segments[0] or parts.query or parts.fragment:
        raise KeySourceError(f"a data hub key URI is {parts.scheme}:///REPO/TYPE/TAG, not {uri!r}")
    address = parts.netloc or settings.cdh_address
    try:
        located = urlsplit(f"//{address}")
        host, port = located.hostname, located.port
    except ValueError:
        raise KeySourceError(f"invalid data hub address in {uri!r}") from None
    if port is None or not host or located.username or located.password:
        raise KeySourceError(f"a data hub address is HOST:PORT, not {address!r}")
    loopback = _is_loopback(host)
    if not (loopback or settings.insecure_kbs_http):
        raise KeySourceError(
            f"the data hub speaks plain HTTP; {host} is not loopback (give --insecure-kbs-http)"
        )
    path = resource_path(*segments[1:], error=KeySourceError)
    return CdhKeySource(address, path, settings, authenticated=loopback)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
