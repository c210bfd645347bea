"""A store under ``s3://BUCKET/PREFIX`` on AWS S3 or an S3-compatible server (MinIO, Ceph RGW).

Endpoint, region, credentials and addressing style come from the usual AWS
variables and config files (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws/config``), read by boto3,
which also signs requests (SigV4). boto3 is the optional extra ``cmlfs[s3]``.
botocore's own retries are switched off so every store retries the same way
(``RetryPolicy``). Reads are ranged GETs with ``If-Match`` on the ETag first
seen, so an object replaced under a running mount fails its reads.
"""

from pathlib import Path

from cmlfs.errors import StoreError
from cmlfs.stores.base import (
    Identity,
    ObjectChanged,
    ObjectMissing,
    Progress,
    RangedStore,
    StoreSettings,
    check_file_name,
    check_name,
    content_addressed,
    is_object_name,
    system_trust,
)
from cmlfs.stores.http import POOL_SIZE, parse_content_range, tls_error
from cmlfs.stores.retry import RetryPolicy, TransientStoreError

_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
_CHANGED_CODES = frozenset({"412", "PreconditionFailed"})
MULTIPART_CHUNK = 64 * 1024 * 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in ``/`` or empty) of ``s3://BUCKET[/PREFIX]``."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket or any(c in bucket for c in "?#@:") or ".." in prefix.split("/"):
        raise StoreError("an S3 store URL looks like s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _client(config, settings: StoreSettings):
    """boto3's S3 client; a configuration boto3 refuses (an unknown AWS_PROFILE, half the
    credentials, a bad region or endpoint) is one StoreError line, not a traceback."""
    import boto3
    import botocore.session
    from botocore.exceptions import BotoCoreError

    try:
        core = botocore.session.get_session()
        # --store-ca, else $AWS_CA_BUNDLE or the profile's ca_bundle, else the system store
        verify = settings.ca_bundle() or core.get_config_variable("ca_bundle") or system_trust()
        return boto3.session.Session(botocore_session=core).client(
            "s3", config=config, verify=verify
        )
    except BotoCoreError as exc:
        raise StoreError(f"AWS configuration refused: {' '.join(str(exc).split())}") from None
    except ValueError:  # botocore's text quotes the endpoint whole, credentials and all
        raise StoreError(
            "AWS configuration refused: invalid endpoint URL (AWS_ENDPOINT_URL or the "
            "profile's endpoint_url)"
        ) from None


class S3Store(RangedStore):
    """Objects ``PREFIX/manifest.cmlfs``, ``PREFIX/blobs/<sha256>`` and ``PREFIX/model.sig``
    in one bucket."""

    def __init__(self, url: str, settings: StoreSettings, files: bool = False) -> None:
        super().__init__()
        self.files = files  # any object under the prefix, as a folder of files (read-only)
        try:
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:
            raise StoreError("s3:// stores need boto3: pip install 'cmlfs[s3]'") from None
        self.bucket, self.prefix = parse_s3_url(url)
        config = Config(
            connect_timeout=settings.timeout,
            read_timeout=settings.timeout,
            retries={"total_max_attempts": 1},
            max_pool_connections=POOL_SIZE,
        )
        self._client = _client(config, settings)
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK
        )
        self._retry = RetryPolicy(attempts=settings.attempts)
        self.stats = self._retry.stats

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def list(self) -> list[str]:
        def collect() -> list[str]:
            names = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in self._call(
                lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix))
            ):
                for item in page.get("Contents", ()):
                    names.append(item["Key"][len(self.prefix) :])
            return names

        listed = self._retry.call("list", collect)
        if self.files:
            return sorted(n for n in listed if not n.endswith("/"))  # not folder markers
        return sorted(n for n in listed if is_object_name(n))

    def put(self, name: str, source: Path, progress: Progress) -> bool:
        if self.files:
            raise StoreError(f"{self.describe()} is read as a folder of files; it takes no objects")
        size = source.stat().st_size
        key = self._key(name)
        if content_addressed(name) and self._present(name, size):
            progress(size)
            return False

        def upload() -> None:
            from boto3.exceptions import S3UploadFailedError

            try:
                self._call(
                    lambda: self._client.upload_file(
                        str(source), self.bucket, key, Callback=progress, Config=self._transfer
                    )
                )
            except S3UploadFailedError:
                raise TransientStoreError("upload failed") from None

        self._retry.call(name, upload)
        return True

    def commit(self) -> str:
        """Nothing to do: the manifest, put last, is what makes the model visible."""
        return self.describe()

    def close(self) -> None:
        self._client.close()

    def _key(self, name: str) -> str:
        return self.prefix + (check_file_name(name) if self.files else check_name(name))

    def _look_up(self, name: str) -> Identity:
        return self._retry.call(name, lambda: self._head(name))

    def _read(self, name: str, offset: int, length: int, identity: Identity) -> bytes:
        return self._retry.call(name, lambda: self._get(name, offset, length, identity))

    def _present(self, name: str, size: int) -> bool:
        """Whether a blob of this size is already there (blobs are content-addressed)."""
        try:
            return self._retry.call(name, lambda: self._head(name)).size == size
        except ObjectMissing:
            return False

    def _head(self, name: str) -> Identity:
        answer = self._call(
            lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        )
        return Identity(int(answer["ContentLength"]), answer.get("ETag"))

    def _get(self, name: str, offset: int, length: int, identity: Identity) -> bytes:
        extra = {"IfMatch": identity.etag} if identity.etag else {}
        answer = self._call(
            lambda: self._client.get_object(
                Bucket=self.bucket,
                Key=self._key(name),
                Range=f"bytes={offset}-{offset + length - 1}",
                **extra,
            )
        )
        body = answer["Body"]
        try:
            parse_content_range(answer.get("ContentRange"), offset, length, identity.size)
            data = self._call(lambda: body.read(length + 1))
        finally:
            body.close()
        if len(data) != length:
            raise TransientStoreError(f"short body: {len(data)} of {length} bytes")
        return data

    def _call(self, operation):
        """``operation()`` with botocore failures classified into store errors (no secrets)."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
            ResponseStreamingError,
            SSLError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            return operation()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _MISSING_CODES or status == 404:
                raise ObjectMissing("not found") from None
            if code in _CHANGED_CODES or status == 412:
                raise ObjectChanged("object was replaced since it was first read") from None
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise TransientStoreError(f"server answered {status} {code}") from None
            raise StoreError(f"S3 refused the request: {status} {code}") from None
        except NoCredentialsError:
            raise StoreError("no AWS credentials found (AWS_ACCESS_KEY_ID, AWS_PROFILE)") from None
        except SSLError as exc:
            raise tls_error(exc) from None
        except (
            BotoConnectionError,
            HTTPClientError,
            IncompleteReadError,
            ResponseStreamingError,
        ) as exc:
            raise TransientStoreError(type(exc).__name__) from None
        except BotoCoreError as exc:
            raise StoreError(f"S3 client error: {type(exc).__name__}") from None
