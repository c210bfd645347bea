"""A store that is an OCI artifact in a registry: ``oci://REGISTRY/REPO:TAG`` or ``@sha256:DIGEST``.

The model is one OCI image manifest with artifact type ``ARTIFACT_TYPE``, the
empty config, and one layer per object: the sealed ``manifest.cmlfs``
(``MANIFEST_MEDIA_TYPE``), each blob (``BLOB_MEDIA_TYPE``, whose digest is
its store name) and, when the model is signed, ``model.sig`` (a Sigstore bundle,
``SIGNATURE_MEDIA_TYPE``). With ``files`` the artifact is a folder of plain files,
as ``oras push`` makes one (a KServe JWE model's): each layer is one file, named by
its ``org.opencontainers.image.title``. A tag is resolved once, when the store is
first read; from then on everything is addressed by digest, so a tag moved under a running
mount changes nothing, and a digest reference is checked against the bytes.

The registry is reached over HTTPS with verification, or plain HTTP only with
``insecure_http``; anonymous, bearer-token (WWW-Authenticate challenge, token
from the realm, with or without credentials) and basic auth. Credentials come
from a docker/podman ``auth.json`` and never appear in a message or log.
The image manifest is parsed strictly with a size limit: it is hostile input.
"""

import base64
import binascii
import hashlib
import io
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urljoin, urlsplit

from cmlfs.errors import StoreError
from cmlfs.format.strictjson import loads_strict
from cmlfs.manifest import MAX_MANIFEST_LEN
from cmlfs.signature import MAX_SIGNATURE_LEN, SIGNATURE_MEDIA_TYPE, SIGNATURE_NAME
from cmlfs.stores.base import (
    MAX_WHOLE_READ,
    Identity,
    ObjectMissing,
    Progress,
    RangedStore,
    StoreSettings,
    check_file_name,
    check_name,
    content_addressed,
)
from cmlfs.stores.http import (
    MAX_OBJECT_SIZE,
    HttpTransport,
    Unauthorized,
    safe_url,
    status_error,
)

T = TypeVar("T")

ARTIFACT_TYPE = "application/vnd.cmlfs.model.v1"
MANIFEST_MEDIA_TYPE = "application/vnd.cmlfs.manifest.v1"
BLOB_MEDIA_TYPE = "application/vnd.cmlfs.blob.v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
TITLE = "org.opencontainers.image.title"
MAX_IMAGE_MANIFEST = 4 * 1024 * 1024
MAX_LAYERS = 1_000_001
MAX_TOKEN_ANSWER = 64 * 1024
MAX_AUTH_FILE = 1024 * 1024

_REGISTRY = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:]+\](:[0-9]{1,5})?")
_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHALLENGE = re.compile(r"\s*([A-Za-z]+)\s+(.*)")
_PARAM = re.compile(r'\s*([A-Za-z_]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        where = f"oci://{self.registry}/{self.repository}"
        return f"{where}@{self.digest}" if self.digest else f"{where}:{self.tag}"


def parse_reference(url: str) -> Reference:
    """``oci://REGISTRY/REPO[:TAG][@sha256:DIGEST]``, strictly (default tag ``latest``)."""
    rest = url.removeprefix("oci://")
    registry, slash, path = rest.partition("/")
    if not slash or not _REGISTRY.fullmatch(registry):
        raise StoreError("an OCI store URL looks like oci://REGISTRY/REPO:TAG or @sha256:DIGEST")
    path, at, digest = path.partition("@")
    name, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if not _REPOSITORY.fullmatch(name) or len(name) > 255:
        raise StoreError(f"invalid OCI repository name {name!r}")
    if colon and not _TAG.fullmatch(tag):
        raise StoreError(f"invalid OCI tag {tag!r}")
    if at and not _DIGEST.fullmatch(digest):
        raise StoreError("an OCI digest looks like sha256:<64 hex digits>")
    if at:
        return Reference(registry, name, tag or None, digest)
    return Reference(registry, name, tag or "latest", None)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self, title: str | None = None) -> dict:
        value: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if title is not None:
            value["annotations"] = {TITLE: title}
        return value


def parse_image_manifest(body: bytes) -> dict[str, Descriptor]:
    """Store name -> descriptor of a cmlfs artifact's image manifest, refusing anything else."""
    doc = _image_manifest(body)
    if doc.get("mediaType") != OCI_MANIFEST or doc.get("artifactType") != ARTIFACT_TYPE:
        # As a missing manifest.cmlfs: the reference may hold a JWE model's files instead.
        raise ObjectMissing(
            f"the OCI reference is not a cmlfs model (artifactType {ARTIFACT_TYPE})"
        )
    objects: dict[str, Descriptor] = {}
    for layer in _layers(doc):
        descriptor = _descriptor(layer)
        if descriptor.media_type == MANIFEST_MEDIA_TYPE:
            name = "manifest.cmlfs"
            if descriptor.size > MAX_MANIFEST_LEN:
                raise StoreError("the OCI manifest names an oversized model manifest")
        elif descriptor.media_type == BLOB_MEDIA_TYPE:
            name = "blobs/" + descriptor.digest.removeprefix("sha256:")
        elif descriptor.media_type == SIGNATURE_MEDIA_TYPE:
            name = SIGNATURE_NAME
            if descriptor.size > MAX_SIGNATURE_LEN:
                raise StoreError("the OCI manifest names an oversized signature")
        else:
            raise StoreError(f"unexpected layer media type {descriptor.media_type!r}")
        if objects.setdefault(name, descriptor) is not descriptor:
            raise StoreError(f"the OCI manifest lists {name} twice")
    if "manifest.cmlfs" not in objects:
        raise StoreError("the OCI artifact has no model manifest layer")
    return objects


def parse_file_artifact(body: bytes) -> dict[str, Descriptor]:
    """File name -> descriptor of an artifact of plain files, as ``oras push`` makes them:
    an image manifest whose layers each carry a file name (``org.opencontainers.image.title``)."""
    doc = _image_manifest(body)
    files: dict[str, Descriptor] = {}
    for layer in _layers(doc):
        descriptor = _descriptor(layer)
        annotations = layer.get("annotations")
        title = annotations.get(TITLE) if isinstance(annotations, dict) else None
        if not isinstance(title, str):
            raise StoreError(
                "an OCI layer carries no file name (org.opencontainers.image.title): only "
                "artifacts of files (oras push) can be read as a folder, not image layers"
            )
        if files.setdefault(check_file_name(title), descriptor) is not descriptor:
            raise StoreError(f"the OCI manifest lists {title} twice")
    return files


def _image_manifest(body: bytes) -> dict:
    if len(body) > MAX_IMAGE_MANIFEST:
        raise StoreError("the OCI manifest is too large")
    doc = loads_strict(body, "the OCI manifest", StoreError)
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise StoreError("the OCI manifest is not an image manifest (schemaVersion 2)")
    return doc


def _layers(doc: dict) -> list:
    layers = doc.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        raise StoreError("the OCI manifest has no valid layer list")
    return layers


def _descriptor(value: object) -> Descriptor:
    if not isinstance(value, dict):
        raise StoreError("an OCI layer descriptor is not an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise StoreError("an OCI layer descriptor lacks mediaType or digest")
    if not _DIGEST.fullmatch(digest):
        raise StoreError("an OCI layer descriptor has an unsupported digest")
    if type(size) is not int or not 0 <= size <= MAX_OBJECT_SIZE:
        raise StoreError("an OCI layer descriptor has an invalid size")
    return Descriptor(media_type, digest, size)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Scheme and parameters of a ``WWW-Authenticate`` header (one challenge)."""
    match = _CHALLENGE.fullmatch(header or "")
    if not match:
        raise StoreError("the registry asked for authentication without a usable challenge")
    scheme, rest = match.group(1).lower(), match.group(2)
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        param = _PARAM.match(rest, position)
        if not param or param.end() == position:
            raise StoreError("the registry sent a malformed WWW-Authenticate challenge")
        params[param.group(1).lower()] = param.group(2)
        position = param.end()
    return scheme, params


def load_credentials(auth_file: Path | None, registry: str) -> tuple[str, str] | None:
    """(user, password) for ``registry`` from a docker/podman ``auth.json``, if it has them."""
    if auth_file is None or not auth_file.is_file():
        return None
    try:
        with open(auth_file, "rb") as f:
            raw = f.read(MAX_AUTH_FILE + 1)
        doc = json.loads(raw) if len(raw) <= MAX_AUTH_FILE else None
    except (OSError, ValueError):
        raise StoreError(f"cannot read registry credentials from {auth_file}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        try:
            host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
        except ValueError:  # an entry such as "https://[x" names no registry
            continue
        if host != registry or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
        try:
            user, sep, password = (
                base64.b64decode(entry.get("auth", ""), validate=True)
                .decode("utf-8")
                .partition(":")
            )
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise StoreError(f"registry credentials for {registry} are malformed") from None
        if sep:
            return user, password
    return None


class _ProgressReader:
    """A file wrapper reporting bytes as ``requests`` streams an upload body."""

    def __init__(self, f: BinaryIO, size: int, progress: Progress) -> None:
        self._f, self._progress, self.len = f, progress, size

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._progress(len(data))
        return data


class OciStore(RangedStore):
    """Objects of one cmlfs artifact in an OCI registry (read; and push to a tag)."""

    def __init__(self, url: str, settings: StoreSettings, files: bool = False) -> None:
        super().__init__()
        self.ref = parse_reference(url)
        self.files = files  # an artifact of plain files (a JWE model's), read-only
        self._settings = settings
        scheme = "http" if settings.insecure_http else "https"
        self._base = f"{scheme}://{self.ref.registry}/v2/{self.ref.repository}"
        self._transport = HttpTransport(settings)
        self.stats = self._transport.retry.stats
        self._auth: str | None = None
        self._auth_lock = threading.Lock()
        self._objects: dict[str, Descriptor] | None = None
        self._objects_lock = threading.Lock()
        self._pushed: dict[str, Descriptor] = {}
        self._actions = "pull"
        self.digest = self.ref.digest

    def describe(self) -> str:
        return str(self.ref)

    def read_all(self, name: str, limit: int = MAX_WHOLE_READ) -> bytes:
        data = super().read_all(name, limit)
        if "sha256:" + hashlib.sha256(data).hexdigest() != self._descriptor(name).digest:
            raise StoreError(f"{name}: the registry returned bytes that do not match the digest")
        return data

    def list(self) -> list[str]:
        return sorted(self._artifact())

    def put(self, name: str, source: Path, progress: Progress) -> bool:
        if self.ref.digest:
            raise StoreError("push to an OCI tag (oci://REGISTRY/REPO:TAG), not to a digest")
        self._actions = "pull,push"
        size = source.stat().st_size
        if self.files:
            raise StoreError(f"{self.describe()} is read as an artifact of files; push a store")
        if content_addressed(check_name(name)):
            digest = "sha256:" + name.removeprefix("blobs/")
            media_type = BLOB_MEDIA_TYPE
        else:
            digest = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
            media_type = SIGNATURE_MEDIA_TYPE if name == SIGNATURE_NAME else MANIFEST_MEDIA_TYPE
        self._pushed[name] = Descriptor(media_type, digest, size)
        if self._blob_present(digest, size):
            progress(size)
            return False
        self._upload(name, digest, size, lambda: source.open("rb"), progress)
        return True

    def commit(self) -> str:
        """Upload the empty config and the image manifest to the tag; return the digest ref."""
        if "manifest.cmlfs" not in self._pushed:
            raise StoreError("nothing to commit: the model manifest was not pushed")
        config = Descriptor(
            EMPTY_CONFIG_TYPE, "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest(), 2
        )
        if not self._blob_present(config.digest, config.size):
            self._upload("config", config.digest, config.size, _bytes_opener(EMPTY_CONFIG), _none)
        names = ["manifest.cmlfs", *sorted(n for n in self._pushed if n != "manifest.cmlfs")]
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": config.to_json(),
                "layers": [self._pushed[n].to_json(title=n) for n in names],
            },
            separators=(",", ":"),
        ).encode()
        url = f"{self._base}/manifests/{self.ref.tag}"
        headers = {"Content-Type": OCI_MANIFEST}

        def send(auth: dict[str, str]) -> None:
            response = self._transport.send("PUT", url, {**auth, **headers}, data=body)
            response.close()
            if response.status_code not in (200, 201):
                raise status_error(response)

        self._call("OCI manifest", send)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return f"oci://{self.ref.registry}/{self.ref.repository}@{digest}"

    def close(self) -> None:
        self._transport.close()

    # --- reading the artifact -------------------------------------------------------------

    def _look_up(self, name: str) -> Identity:
        return Identity(self._descriptor(name).size, None)  # the digest pins the content

    def _read(self, name: str, offset: int, length: int, identity: Identity) -> bytes:
        url = f"{self._base}/blobs/{self._descriptor(name).digest}"
        return self._call(
            name,
            lambda auth: self._transport.get_range(url, offset, length, identity, auth),
        )

    def _descriptor(self, name: str) -> Descriptor:
        (check_file_name if self.files else check_name)(name)  # before the registry is asked
        descriptor = self._artifact().get(name)
        if descriptor is None:
            raise ObjectMissing(f"{name}: not part of {self.describe()}")
        return descriptor

    def _artifact(self) -> dict[str, Descriptor]:
        with self._objects_lock:
            if self._objects is None:
                body = self._call("OCI manifest", self._fetch_image_manifest)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                if self.ref.digest and digest != self.ref.digest:
                    raise StoreError("the registry returned a manifest with a different digest")
                parse = parse_file_artifact if self.files else parse_image_manifest
                self._objects = parse(body)
                self.digest = digest
            return self._objects

    def _fetch_image_manifest(self, auth: dict[str, str]) -> bytes:
        url = f"{self._base}/manifests/{self.ref.digest or self.ref.tag}"
        response = self._transport.send("GET", url, {**auth, "Accept": OCI_MANIFEST}, stream=True)
        if response.status_code != 200:
            response.close()
            raise status_error(response)
        return self._transport.read_body(response, MAX_IMAGE_MANIFEST)

    # --- pushing --------------------------------------------------------------------------

    def _blob_present(self, digest: str, size: int) -> bool:
        url = f"{self._base}/blobs/{digest}"

        def head(auth: dict[str, str]) -> bool:
            response = self._transport.send("HEAD", url, auth)
            response.close()
            if response.status_code == 404:
                return False
            if response.status_code != 200:
                raise status_error(response)
            return response.headers.get("Content-Length") == str(size)

        return self._call(digest, head)

    def _upload(
        self,
        name: str,
        digest: str,
        size: int,
        open_body: Callable[[], BinaryIO],
        progress: Progress,
    ) -> None:
        """One monolithic upload (POST, then PUT with the digest), retried from the start."""

        def upload(auth: dict[str, str]) -> None:
            response = self._transport.send("POST", f"{self._base}/blobs/uploads/", auth)
            response.close()
            location = response.headers.get("Location")
            if response.status_code != 202 or not location:
                raise status_error(response)
            try:  # the registry chose it: "https://[x" raises ValueError
                target = urljoin(f"{self._base}/", location)
                host = urlsplit(target).netloc
            except ValueError:
                raise StoreError("the registry answered an invalid upload location") from None
            if host != urlsplit(self._base).netloc:
                raise StoreError("the registry redirected an upload to another host")
            sent = 0

            def counted(n: int) -> None:
                nonlocal sent
                sent += n
                progress(n)

            try:
                with open_body() as f:
                    response = self._transport.send(
                        "PUT",
                        target,
                        {**auth, "Content-Type": "application/octet-stream"},
                        params={"digest": digest},
                        data=_ProgressReader(f, size, counted),
                    )
                    response.close()
            except StoreError:
                progress(-sent)
                raise
            if response.status_code != 201:
                progress(-sent)
                raise status_error(response)

        self._call(name, upload)

    # --- authentication -------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[dict[str, str]], T]) -> T:
        """``operation(auth headers)`` with retries, logging in once when the registry asks."""

        def attempt() -> T:
            try:
                return operation(self._auth_headers())
            except Unauthorized as exc:
                self._login(exc.challenge)
            try:
                return operation(self._auth_headers())
            except Unauthorized:
                raise self._refused() from None

        return self._transport.retry.call(what, attempt)

    def _refused(self) -> StoreError:
        """Still 401 after a fresh login: these credentials (or none) lack the access asked."""
        if load_credentials(self._settings.registry_auth_file, self.ref.registry):
            who = "for these credentials"
        else:
            who = "without credentials (registry auth file)"
        return StoreError(
            f"{self.ref.registry} refused {self._actions} access to {self.ref.repository} "
            f"{who} (HTTP 401)"
        )

    def _auth_headers(self) -> dict[str, str]:
        auth = self._auth
        return {"Authorization": auth} if auth else {}

    def _login(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        credentials = load_credentials(self._settings.registry_auth_file, self.ref.registry)
        if scheme == "basic":
            if credentials is None:
                raise StoreError(f"{self.ref.registry} needs credentials (registry auth file)")
            auth = _basic(*credentials)
        elif scheme == "bearer":
            auth = "Bearer " + self._fetch_token(params, credentials)
        else:
            raise StoreError(f"unsupported registry authentication scheme {scheme!r}")
        with self._auth_lock:
            self._auth = auth

    def _fetch_token(self, params: dict[str, str], credentials: tuple[str, str] | None) -> str:
        """A bearer token from the challenge's realm for this repository (and push if pushing)."""
        realm = params.get("realm", "")
        try:
            parts = urlsplit(realm)  # the registry chose it: "https://[x" raises ValueError
        except ValueError:
            raise StoreError("the registry's token realm is not a URL") from None
        if parts.scheme != "https" and not (
            parts.scheme == "http" and self._settings.insecure_http
        ):
            raise StoreError("the registry's token realm is not an https:// URL")
        if not parts.hostname:
            raise StoreError("the registry's token realm is not a URL")
        query = {"scope": f"repository:{self.ref.repository}:{self._actions}"}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Authorization": _basic(*credentials)} if credentials else {}
        response = self._transport.send("GET", realm, headers, stream=True, params=query)
        if response.status_code != 200:
            response.close()
            raise StoreError(f"{safe_url(realm)} refused a token (HTTP {response.status_code})")
        return parse_token_answer(self._transport.read_body(response, MAX_TOKEN_ANSWER))


def parse_token_answer(body: bytes) -> str:
    """The bearer token in a token service's JSON answer (``token`` or ``access_token``).

    Hostile input: deeply nested JSON raises RecursionError in ``json``, so it is
    refused like any other invalid answer instead of escaping as a traceback.
    """
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise StoreError("the token service answered with invalid JSON") from None
    token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token or not token.isprintable():
        raise StoreError("the token service answered without a token")
    return token


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _bytes_opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def _none(_: int) -> None:
    return None
