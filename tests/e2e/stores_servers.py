"""Real store servers for the e2e tier, started once per session on loopback ports.

nginx (Debian ``nginx-light``) serves a folder with Range support; the
fault proxy sits in front of it; Debian's ``docker-registry`` (distribution)
runs anonymous over plain HTTP, with htpasswd basic auth over TLS (a CA and
server certificate made here with ``cryptography``), and with bearer-token
auth over TLS from tests/oci_token_server.py; ``moto`` in
server mode is the S3-compatible object store. Each server gets its own temp
config and is stopped at the end of the session.
"""

import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.faultproxy import FaultProxy
from tests.oci_token_server import TokenServer

REGISTRY_USER = "pusher"
REGISTRY_PASSWORD = "s3cret-registry-password"
TOKEN_READER = "reader"
TOKEN_READER_PASSWORD = "s3cret-reader-password"
TOKEN_ACL = {
    REGISTRY_USER: {
        "tokens/model": frozenset({"pull", "push"}),
        "tokens/other": frozenset({"pull", "push"}),
    },
    TOKEN_READER: {"tokens/other": frozenset({"pull"})},
}
S3_BUCKET = "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}: {log.read_text()[-2000:]}")


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(command: list[str], port: int, log: Path, **kwargs) -> Server:
    out = open(log, "ab")  # noqa: SIM115 - the child writes to it until stopped
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **kwargs
        )
    finally:
        out.close()
    server = Server(process, port, log)
    try:
        wait_for_port(port, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def need(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if binary == "nginx" else None)
    if not path or not os.path.exists(path):
        pytest.fail(f"{binary} is missing: install Debian package {package} (scripts/setup.sh)")
    return path


# --- nginx and the fault proxy --------------------------------------------------------------


@dataclass
class Nginx:
    root: Path  # served folder
    port: int
    ca_file: Path | None = None  # set when it serves HTTPS: the CA that signs its certificate

    def url(self, sub: str) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{sub}"


def start_nginx(base: Path, tls: tuple[Path, Path, Path] | None = None) -> tuple[Server, Nginx]:
    """nginx from apt serving ``base/www`` on a free loopback port (Range requests included),
    and redirecting ``/moved/PATH`` to ``/PATH`` (302); over HTTPS with ``tls`` = (CA,
    certificate, key) as ``make_tls`` gives. Requests are logged to ``base/access.log``."""
    binary = need("nginx", "nginx-light")
    root = base / "www"
    root.mkdir()
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    temp = " ".join(
        f"{kind}_temp_path {base}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    ssl = f"ssl; ssl_certificate {tls[1]}; ssl_certificate_key {tls[2]}" if tls else ""
    (base / "nginx.conf").write_text(
        f"""{user}
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
  access_log {base}/access.log;
  sendfile on; tcp_nopush on;
  {temp}
  uwsgi_temp_path {base}/uwsgi; scgi_temp_path {base}/scgi;
  server {{
    listen 127.0.0.1:{port} {ssl};
    root {root};
    location / {{ }}
    location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}
  }}
}}
"""
    )
    server = start(
        [binary, "-p", str(base), "-e", str(base / "error.log"), "-c", str(base / "nginx.conf")],
        port,
        base / "server.log",
    )
    return server, Nginx(root, port, tls[0] if tls else None)


@pytest.fixture(scope="session")
def nginx(tmp_path_factory) -> Iterator[Nginx]:
    server, served = start_nginx(tmp_path_factory.mktemp("nginx"))
    try:
        yield served
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nginx_tls(tmp_path_factory) -> Iterator[Nginx]:
    """nginx over HTTPS with a certificate from its own CA (``ca_file``)."""
    base = tmp_path_factory.mktemp("nginx-tls")
    server, served = start_nginx(base, make_tls(base))
    try:
        yield served
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fault_proxy(nginx: Nginx) -> Iterator[FaultProxy]:
    """A fault proxy in front of nginx (stalls outlast a 1 s store timeout)."""
    proxy = FaultProxy(nginx.port, stall_seconds=3.0)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def proxy(fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The fault proxy, with no fault and no recorded request left from another test."""
    fault_proxy.reset()
    yield fault_proxy
    fault_proxy.reset()


# --- docker-registry (distribution) ----------------------------------------------------------


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    ca_file: Path | None = None
    auth_file: Path | None = None

    def ref(self, repo_tag: str) -> str:
        return f"oci://{self.host}/{repo_tag}"

    def blob_data(self, digest_hex: str) -> Path:
        blobs = self.storage / "docker/registry/v2/blobs/sha256"
        return blobs / digest_hex[:2] / digest_hex / "data"


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """(CA cert, server cert, server key) for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmlfs test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def start_registry(
    base: Path, tls: tuple[Path, Path] | None = None, auth: Sequence[str] = ()
) -> tuple[Server, Registry]:
    """docker-registry on a free port; ``tls``: (certificate, key) to serve HTTPS; ``auth``:
    the ``auth:`` section of its config (none: anonymous)."""
    binary = need("docker-registry", "docker-registry")
    port = free_port()
    storage = base / "storage"
    config = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if tls is not None:
        config += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    (base / "config.yml").write_text("\n".join([*config, *auth]) + "\n")
    server = start([binary, "serve", str(base / "config.yml")], port, base / "registry.log")
    return server, Registry(f"127.0.0.1:{port}", storage)


def write_auth_file(path: Path, registry: str, user: str, password: str) -> Path:
    """A docker/podman auth.json holding ``user``'s credentials for ``registry``."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": token}}}))
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[Registry]:
    """An anonymous plain-HTTP registry."""
    server, registry = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield registry
    finally:
        server.stop()


@pytest.fixture(scope="session")
def secure_registry(tmp_path_factory) -> Iterator[Registry]:
    """A registry with TLS (its own CA) and htpasswd basic auth."""
    base = tmp_path_factory.mktemp("registry-tls")
    ca, cert, key = make_tls(base)
    htpasswd = subprocess.run(
        [need("htpasswd", "apache2-utils"), "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (base / "htpasswd").write_text(htpasswd)
    auth = ["auth:", "  htpasswd:", "    realm: cmlfs-test", f"    path: {base / 'htpasswd'}"]
    server, registry = start_registry(base, (cert, key), auth)
    registry.ca_file = ca
    registry.auth_file = write_auth_file(
        base / "auth.json", registry.host, REGISTRY_USER, REGISTRY_PASSWORD
    )
    try:
        yield registry
    finally:
        server.stop()


@dataclass
class TokenRegistry:
    registry: Registry  # TLS; ca_file signs both it and the token service
    tokens: TokenServer

    def auth_file(self, folder: Path, user: str, password: str) -> Path:
        return write_auth_file(folder / f"{user}.json", self.registry.host, user, password)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory) -> Iterator[TokenRegistry]:
    """A TLS registry with ``auth: token:`` trusting a token service of tests/ (also TLS).

    ``pusher`` may pull and push ``tokens/*`` repositories listed in ``TOKEN_ACL``;
    ``reader`` may only pull ``tokens/other``; anonymous clients get no access."""
    base = tmp_path_factory.mktemp("registry-token")
    ca, cert, key = make_tls(base)
    tokens = TokenServer(
        base,
        service="cmlfs-test-registry",
        passwords={REGISTRY_USER: REGISTRY_PASSWORD, TOKEN_READER: TOKEN_READER_PASSWORD},
        acl=TOKEN_ACL,
        tls=(cert, key),
    )
    try:
        server, registry = start_registry(base, (cert, key), tokens.registry_auth_config())
        registry.ca_file = ca
        try:
            yield TokenRegistry(registry, tokens)
        finally:
            server.stop()
    finally:
        tokens.close()


# --- moto (S3) ------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]  # environment for the CLI: endpoint, region, credentials
    ca_file: Path | None = None  # set when it serves HTTPS: the CA that signs its certificate

    def client(self):
        import boto3

        return boto3.session.Session(
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        ).client(
            "s3", endpoint_url=self.endpoint, verify=str(self.ca_file) if self.ca_file else None
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    yield from run_moto(tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="session")
def s3_tls_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto over HTTPS with a certificate from its own CA (``ca_file``)."""
    base = tmp_path_factory.mktemp("moto-tls")
    yield from run_moto(base, make_tls(base))


def run_moto(base: Path, tls: tuple[Path, Path, Path] | None = None) -> Iterator[S3Server]:
    """moto in server mode with bucket ``S3_BUCKET``, until the generator is closed."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    if tls:
        command += ["--ssl-cert", str(tls[1]), "--ssl-key", str(tls[2])]
    server = start(command, port, base / "moto.log")
    endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing-access-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(base / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(base / "no-credentials"),
    }
    s3 = S3Server(endpoint, env, tls[0] if tls else None)
    try:
        s3.client().create_bucket(Bucket=S3_BUCKET)
        yield s3
    finally:
        server.stop()


# --- checks shared by the store tests -------------------------------------------------------


def blob_of(store: Path, key_file: Path, path: str) -> str:
    """The blob name (64 hex digits) holding model file ``path`` of a local store folder."""
    from cmlfs.keys import FileKeySource
    from cmlfs.manifest import MANIFEST_NAME, open_manifest

    manifest = open_manifest(
        (store / MANIFEST_NAME).read_bytes(), FileKeySource(key_file).fetch_key()
    )
    return next(f.blob for f in manifest.files if f.path == path)


def open_without_readahead(path: Path) -> BinaryIO:
    """``path`` opened unbuffered with the kernel's readahead off (``POSIX_FADV_RANDOM``):
    a read fetches its own chunks only, so later chunks are first fetched when asked for."""
    f = open(path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
    return f


def assert_reads_back(mnt: Path, src: Path, contents: dict[str, bytes], seed: int = 7) -> None:
    """Every file's digest, random ranges and an mmap of the largest file equal the source."""
    import mmap
    import random

    from tests.conftest import tree_digests

    assert tree_digests(mnt) == tree_digests(src)
    rng = random.Random(seed)
    name = max(contents, key=lambda n: len(contents[n]))
    data = contents[name]
    fd = os.open(mnt / name, os.O_RDONLY)
    try:
        for _ in range(50):
            offset = rng.randrange(len(data))
            size = rng.randrange(1, 200_000)
            assert os.pread(fd, size, offset) == data[offset : offset + size]
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as view:
            assert view[:] == data
    finally:
        os.close(fd)
