"""Publisher signatures (cmlfs.signature) and model version order (cmlfs.manifest).

Bundles are made by cmlfs.signature.sign_folder and by model_signing's own API, and checked
by each; tampered and hostile bundles are built from a good one field by field.
"""

import base64
import datetime
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key as generate_rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID
from model_signing import hashing, signing, verifying

from cmlfs.errors import FormatError, IntegrityError
from cmlfs.keys import FileKeySource
from cmlfs.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_LEN,
    SealedManifest,
    open_manifest,
    version_order,
)
from cmlfs.model import check_min_version, check_publisher, open_model
from cmlfs.publish import EncryptSettings, encrypt_model
from cmlfs.push import sign_store
from cmlfs.signature import (
    MAX_SIGNATURE_LEN,
    SIGNATURE_NAME,
    SignatureError,
    SigningError,
    load_publisher_key,
    sign_folder,
    signed_digests,
    signer_of,
    signing_key_fingerprint,
)
from cmlfs.stores import LocalStore
from cmlfs.stores.base import check_name, content_addressed, read_whole
from tests.signing_helpers import der_fingerprint, ec_pair


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "blobs").mkdir(parents=True)
    (root / "manifest.cmlfs").write_bytes(b"sealed manifest bytes")
    (root / "blobs" / ("ab" * 32)).write_bytes(b"blob " * 1000)
    return root


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: ec_pair(tmp_path, name) for name in ("publisher", "other")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_signed_digests_list_every_file_by_its_sha256(folder, keys):
    private, public = keys["publisher"]
    assert sign_folder(folder, private) == der_fingerprint(public)
    digests = signed_digests((folder / SIGNATURE_NAME).read_bytes(), load_publisher_key(public))
    assert digests == {
        "manifest.cmlfs": sha256(folder / "manifest.cmlfs"),
        "blobs/" + "ab" * 32: sha256(folder / "blobs" / ("ab" * 32)),
    }


def test_fingerprint_is_openssl_sha256_of_the_der(keys):
    _, public = keys["publisher"]
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(public), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert load_publisher_key(public).fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()


def test_model_signing_verifies_what_cmlfs_signs_and_the_other_way(folder, keys):
    private, public = keys["publisher"]
    sign_folder(folder, private)
    verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
        folder, folder / SIGNATURE_NAME
    )
    (folder / SIGNATURE_NAME).unlink()
    signing.Config().use_elliptic_key_signer(private_key=private).set_hashing_config(
        hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])
    ).sign(folder, folder / SIGNATURE_NAME)
    digests = signed_digests((folder / SIGNATURE_NAME).read_bytes(), load_publisher_key(public))
    assert digests["manifest.cmlfs"] == sha256(folder / "manifest.cmlfs")


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_other_curves_sign_and_name_their_signer(folder, tmp_path, curve):
    private, public = ec_pair(tmp_path, "big", curve)
    sign_folder(folder, private)
    data = (folder / SIGNATURE_NAME).read_bytes()
    assert signer_of(data) == der_fingerprint(public)
    assert "manifest.cmlfs" in signed_digests(data, load_publisher_key(public))


def test_another_key_is_refused_naming_its_fingerprint(folder, keys):
    sign_folder(folder, keys["other"][0])
    trusted = load_publisher_key(keys["publisher"][1])
    with pytest.raises(SignatureError) as refused:
        signed_digests((folder / SIGNATURE_NAME).read_bytes(), trusted)
    message = str(refused.value)
    assert der_fingerprint(keys["other"][1]) in message
    assert trusted.fingerprint in message and "\n" not in message


def _bundle(folder: Path) -> dict:
    return json.loads((folder / SIGNATURE_NAME).read_bytes())


def _payload(bundle: dict) -> dict:
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _with_payload(bundle: dict, payload: dict) -> bytes:
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps(bundle).encode()


def test_a_changed_digest_in_the_payload_fails_the_signature(folder, keys):
    """A key holder who re-encrypts the model cannot list the new manifest's digest under
    the publisher's signature: changing the payload breaks it."""
    private, public = keys["publisher"]
    sign_folder(folder, private)
    bundle = _bundle(folder)
    payload = _payload(bundle)
    for resource in payload["predicate"]["resources"]:
        if resource["name"] == "manifest.cmlfs":
            resource["digest"] = "00" * 32
    with pytest.raises(SignatureError, match="does not verify with the trusted publisher"):
        signed_digests(_with_payload(bundle, payload), load_publisher_key(public))


def _signed_by(private: Path, bundle: dict, payload: bytes) -> bytes:
    """``bundle`` carrying ``payload``, validly signed by ``private`` (DSSE PAE, ECDSA)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private.read_bytes(), None)
    kind = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)
    signature = key.sign(pae, ec.ECDSA(hashes.SHA256()))
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(signature).decode()
    return json.dumps(bundle).encode()


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"[]",
        b"not json",
        b'{"_type": 1}',
        "\u00e9".encode("latin-1"),
    ],
)
def test_a_malformed_payload_signed_by_the_trusted_key_is_a_signature_error(folder, keys, payload):
    """The trusted key vouches for who made the payload, not that it parses."""
    private, public = keys["publisher"]
    sign_folder(folder, private)
    data = _signed_by(private, _bundle(folder), payload)
    with pytest.raises(SignatureError, match="is not a model-signing statement"):
        signed_digests(data, load_publisher_key(public))


def test_flipped_bits_of_the_signature_value_are_refused(folder, keys):
    private, public = keys["publisher"]
    sign_folder(folder, private)
    trusted = load_publisher_key(public)
    bundle = _bundle(folder)
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    for index in range(0, len(raw), 7):
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(flipped).decode()
        with pytest.raises(SignatureError):
            signed_digests(json.dumps(bundle).encode(), trusted)


def _hostile(bundle: dict) -> list[tuple[str, bytes]]:
    cases = [
        ("not JSON", b"{not json"),
        ("empty", b""),
        ("truncated", json.dumps(bundle).encode()[:-40]),
        ("a list", b"[]"),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ]
    extra = json.loads(json.dumps(bundle))
    extra["unexpected"] = 1
    cases.append(("unknown field", json.dumps(extra).encode()))
    media = json.loads(json.dumps(bundle))
    media["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1"
    cases.append(("other media type", json.dumps(media).encode()))
    no_hint = json.loads(json.dumps(bundle))
    no_hint["verificationMaterial"]["publicKey"]["hint"] = ""
    cases.append(("no key hint", json.dumps(no_hint).encode()))
    two = json.loads(json.dumps(bundle))
    two["dsseEnvelope"]["signatures"] *= 2
    cases.append(("two signatures", json.dumps(two).encode()))
    none = json.loads(json.dumps(bundle))
    none["dsseEnvelope"]["signatures"] = []
    cases.append(("no signature", json.dumps(none).encode()))
    return cases


def test_hostile_bundles_are_refused_with_a_signature_error(folder, keys):
    private, public = keys["publisher"]
    sign_folder(folder, private)
    trusted = load_publisher_key(public)
    for what, data in _hostile(_bundle(folder)):
        with pytest.raises(SignatureError) as refused:
            signed_digests(data, trusted)
        assert "\n" not in str(refused.value), what


def _certificate(key, subject: str, issuer_key, issuer: str, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False), critical=True
        )
        .sign(issuer_key, hashes.SHA256())
    )


def test_a_certificate_bundle_is_refused_as_naming_no_public_key(folder, keys, tmp_path):
    """model_signing can sign with a certificate chain offline; cmlfs reads key bundles only
    (its certificate verifier checks the chain at the leaf's notBefore and no identity), and
    says so in one line rather than trusting a chain."""
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    leaf = tmp_path / "leaf.crt"
    leaf.write_bytes(
        _certificate(leaf_key, "publisher", ca_key, "ca", ca=False).public_bytes(Encoding.PEM)
    )
    ca = tmp_path / "ca.crt"
    ca.write_bytes(_certificate(ca_key, "ca", ca_key, "ca", ca=True).public_bytes(Encoding.PEM))
    private = tmp_path / "leaf.pem"
    private.write_bytes(leaf_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    signing.Config().use_certificate_signer(
        private_key=private, signing_certificate=leaf, certificate_chain=[ca]
    ).set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])).sign(
        folder, folder / SIGNATURE_NAME
    )
    verifying.Config().use_certificate_verifier(certificate_chain=[ca]).verify(
        folder, folder / SIGNATURE_NAME
    )  # a valid certificate bundle
    with pytest.raises(SignatureError, match="names no public key") as refused:
        signed_digests(
            (folder / SIGNATURE_NAME).read_bytes(), load_publisher_key(keys["publisher"][1])
        )
    assert "\n" not in str(refused.value)


def test_an_oversized_bundle_is_refused_before_parsing(keys):
    with pytest.raises(SignatureError, match="larger than"):
        signed_digests(b" " * (MAX_SIGNATURE_LEN + 1), load_publisher_key(keys["publisher"][1]))


def test_unusable_keys_are_refused_with_one_line(tmp_path, keys):
    rsa = tmp_path / "rsa.pem"
    rsa.write_bytes(
        generate_rsa(public_exponent=65537, key_size=2048).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"x")
        )
    )
    with pytest.raises(SigningError, match="EC P-256"):
        signing_key_fingerprint(rsa)
    with pytest.raises(SigningError, match="encrypted"):
        signing_key_fingerprint(encrypted)
    with pytest.raises(SigningError, match="not a PEM public key"):
        load_publisher_key(keys["publisher"][0])
    with pytest.raises(SigningError, match="cannot read"):
        load_publisher_key(tmp_path / "missing.pub")


def test_the_signature_is_a_store_object_written_every_push():
    assert check_name(SIGNATURE_NAME) == SIGNATURE_NAME
    assert not content_addressed(SIGNATURE_NAME) and not content_addressed("manifest.cmlfs")
    assert content_addressed("blobs/" + "ab" * 32)


@pytest.mark.parametrize(
    ("older", "newer"),
    [("1", "2"), ("1.2", "1.10"), ("1.9.9", "2"), ("0.1", "0.1.1"), ("2024.12.7", "2024.12.10")],
)
def test_versions_order_part_by_part_as_integers(older, newer):
    assert version_order(older) < version_order(newer)


def test_trailing_zero_parts_are_equal():
    assert version_order("1.2") == version_order("1.2.0") == version_order("1.2.0.0")
    assert version_order("0") == version_order("0.0") == ()


@pytest.mark.parametrize(
    "text", ["", "v1", "1.", ".1", "1..2", "1.2-rc1", " 1", "1 ", "١٢", "1" * 19, "1." * 16 + "1"]
)
def test_versions_that_are_not_dotted_numbers_are_refused(text):
    with pytest.raises(FormatError, match="not a dotted number"):
        version_order(text)


class RecordingStore:
    """A real folder store that records which objects are read, and how much of each."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalStore(root)
        self.read: dict[str, int] = {}

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        self.read[name] = self.read.get(name, 0) + length
        return self.inner.read_range(name, offset, length)

    def read_all(self, name: str, limit: int) -> bytes:
        return read_whole(self, name, limit)


def test_the_mount_check_reads_the_signature_and_manifest_only(tmp_path, keys):
    """Checking a signed store before a mount reads model.sig and the manifest, no blob byte;
    with a key it then opens the manifest it checked."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(300_000))
    (src / "config.json").write_bytes(b"{}")
    store, key = tmp_path / "store", os.urandom(32)
    encrypt_model(src, store, key, EncryptSettings(model_version="2.0"))
    sign_store(store, keys["publisher"][0])
    recording = RecordingStore(store)
    sealed = SealedManifest.parse(recording.read_all(MANIFEST_NAME, MAX_MANIFEST_LEN))
    digests = check_publisher(recording, sealed, load_publisher_key(keys["publisher"][1]))
    assert set(recording.read) == {MANIFEST_NAME, SIGNATURE_NAME}
    assert len(digests) == 3 and digests[MANIFEST_NAME] == sealed.sha256
    check_min_version(open_manifest(sealed.data, key), "2")
    with pytest.raises(IntegrityError, match=r"older than --min-model-version 2\.0\.1"):
        check_min_version(open_manifest(sealed.data, key), "2.0.1")


class RecordingKeySource:
    """A real key file source that counts how often the key is asked for."""

    def __init__(self, path: Path) -> None:
        self.inner = FileKeySource(path)
        self.authenticated = self.inner.authenticated
        self.releases = 0

    def describe(self) -> str:
        return self.inner.describe()

    def fetch_release(self):
        self.releases += 1
        return self.inner.fetch_release()


def test_the_key_is_asked_for_only_after_the_signature_verifies(tmp_path, keys):
    """An unsigned store, one signed by another key and a format 1 store never cause a key
    release; the minimum version is sealed, so it is checked after the release
    (SECURITY.md, "Order, and what it means for rollback")."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(10_000))
    key_file = tmp_path / "model.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    publisher = load_publisher_key(keys["publisher"][1])
    stores = {}
    for name, version, signer in (
        ("unsigned", 2, None),
        ("other", 2, "other"),
        ("format1", 1, "publisher"),
        ("signed", 2, "publisher"),
    ):
        stores[name] = store = tmp_path / name
        settings = EncryptSettings(model_version="1.0", format_version=version)
        encrypt_model(src, store, key_file.read_bytes(), settings)
        if signer is not None:
            sign_store(store, keys[signer][0])
    for name in ("unsigned", "other", "format1"):
        source = RecordingKeySource(key_file)
        with pytest.raises(SignatureError):
            open_model(str(stores[name]), source, publisher=publisher)
        assert source.releases == 0, name
    source = RecordingKeySource(key_file)
    with pytest.raises(IntegrityError, match="older than --min-model-version"):
        open_model(str(stores["signed"]), source, publisher=publisher, min_version="2")
    assert source.releases == 1
    _, manifest, _ = open_model(str(stores["signed"]), source, publisher=publisher)
    assert manifest.version == "1.0" and source.releases == 2
