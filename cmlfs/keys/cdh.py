"""The Confidential Containers data hub: a key already released to this CoCo pod.

Inside a CoCo pod the attestation agent and the confidential data hub (CDH) do
the attestation; any container reads a released resource as plain bytes from
``GET http://127.0.0.1:8006/cdh/resource/<repo>/<type>/<tag>`` (200 and the
bytes; 500 and a text reason on any failure). ``cdh:///REPO/TYPE/TAG`` uses
that default address; ``cdh://HOST:PORT/REPO/TYPE/TAG`` overrides it. The data
hub speaks plain HTTP, so a host other than loopback needs ``--insecure-http``.
"""

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from cmlfs.errors import KeySourceError
from cmlfs.keys.base import KeySettings, ReleasedKey
from cmlfs.keys.bundle import MAX_RESOURCE_LEN, parse_resource
from cmlfs.keys.rcar import resource_path
from cmlfs.keys.transport import new_session, read_capped, send

DEFAULT_CDH_ADDRESS = "127.0.0.1:8006"


@dataclass(frozen=True)
class CdhKeySource:
    address: str  # HOST:PORT
    path: str  # repo/type/tag
    settings: KeySettings

    def describe(self) -> str:
        return f"data hub cdh://{self.address}/{self.path}"

    def fetch_release(self) -> ReleasedKey:
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
        return parse_resource(body)


def cdh_key_source(uri: str, settings: KeySettings) -> CdhKeySource:
    parts = urlsplit(uri)
    segments = parts.path.split("/")
    if len(segments) != 4 or segments[0] or parts.query or parts.fragment:
        raise KeySourceError(f"a data hub key URI is cdh:///REPO/TYPE/TAG, not {uri!r}")
    address = parts.netloc or DEFAULT_CDH_ADDRESS
    try:
        host, port = parts.hostname or "127.0.0.1", parts.port
    except ValueError:
        raise KeySourceError(f"invalid port in {uri!r}") from None
    if parts.netloc and port is None:
        raise KeySourceError(f"a data hub address needs a port: {uri!r}")
    if not (_is_loopback(host) or settings.insecure_http):
        raise KeySourceError(
            f"the data hub speaks plain HTTP; {host} is not loopback (give --insecure-http)"
        )
    return CdhKeySource(address, resource_path(*segments[1:], error=KeySourceError), settings)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
