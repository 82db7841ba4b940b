"""An S3-compatible ObjectStore (AWS S3, MinIO) over boto3.

Every boto3/botocore failure is translated here, in one place, into our exceptions:
`ObjectNotFound` (no such key), `ObjectStoreUnavailable` (network, timeouts, 5xx, throttling — retry
later) or `ObjectStorePermanent` (credentials, permissions, bucket — retrying will not help).

Streamed writes are S3 multipart uploads with a bounded buffer (one part in memory at a time); the
object becomes visible only when the upload is completed on a clean exit, and an error aborts the
upload so nothing partial is left behind.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from common.errors import (
    ConfigError,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStorePermanent,
    ObjectStoreUnavailable,
)
from common.objectstore.base import ObjectStore
from common.objectstore.keys import validate_key, validate_prefix

if TYPE_CHECKING:
    from common.settings import Settings

# S3 needs every part but the last to be >= 5 MiB; 8 MiB keeps memory small and requests few.
DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")
_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys per call

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "XMinioServerNotInitialized",
}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
_PERMISSION_CODES = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}
_BUCKET_CODES = {"NoSuchBucket", "InvalidBucketName"}


def translate_boto_error(exc: BaseException, what: str) -> ObjectStoreError:
    """Our exception for a boto3/botocore error raised while doing `what` (e.g. "get s3://b/k")."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = error.get("Message") or code
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(f"{what}: no such object")
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return ObjectStoreUnavailable(f"{what}: S3 is unavailable or throttling ({code}: {message}); retry later")
        if code in _CREDENTIAL_CODES:
            return ObjectStorePermanent(
                f"{what}: S3 rejected the credentials ({code}); set CONTINUUM_S3_ACCESS_KEY_ID and "
                "CONTINUUM_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) to a valid key pair"
            )
        if code in _BUCKET_CODES:
            return ObjectStorePermanent(
                f"{what}: the bucket does not exist or is invalid ({code}); create it or fix CONTINUUM_STORAGE_URL"
            )
        if code in _PERMISSION_CODES or status == 403:
            return ObjectStorePermanent(
                f"{what}: access denied ({code}); grant the key s3:GetObject/PutObject/ListBucket/DeleteObject "
                "on the bucket or use other credentials"
            )
        return ObjectStorePermanent(f"{what}: S3 refused the request ({code}: {message})")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return ObjectStorePermanent(
            f"{what}: no S3 credentials found; set CONTINUUM_S3_ACCESS_KEY_ID and CONTINUUM_S3_SECRET_ACCESS_KEY"
        )
    # Connection refused/reset, DNS, timeouts, truncated bodies: the network, not the request.
    if isinstance(
        exc,
        (
            bx.EndpointConnectionError,
            bx.ConnectionError,
            bx.HTTPClientError,
            bx.ResponseStreamingError,
            bx.IncompleteReadError,
        ),
    ):
        return ObjectStoreUnavailable(f"{what}: cannot reach S3 ({exc}); check CONTINUUM_S3_ENDPOINT_URL and the network")
    if isinstance(exc, bx.ParamValidationError):
        return ObjectStorePermanent(f"{what}: invalid request ({exc})")
    if isinstance(exc, bx.BotoCoreError):
        return ObjectStoreUnavailable(f"{what}: S3 client error ({exc.__class__.__name__}: {exc})")
    raise TypeError(f"not a boto error: {exc!r}")


def _is_boto_error(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, (BotoCoreError, ClientError))


class _S3Reader(io.RawIOBase):
    """A read-only stream over a `get_object` body that translates network errors while reading."""

    def __init__(self, body: Any, what: str):
        self._body = body
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            data = self._body.read(len(buffer))
        except (Urllib3Error, OSError) as exc:  # a reset or timeout mid-body: the network, so retryable
            raise ObjectStoreUnavailable(f"{self._what}: connection broke while reading ({exc}); retry later") from exc
        except Exception as exc:
            if _is_boto_error(exc):
                raise translate_boto_error(exc, self._what) from exc
            raise
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _MultipartWriter(io.RawIOBase):
    """A write-only stream that uploads `part_size` chunks as S3 multipart parts.

    At most one part (plus the caller's current write) is held in memory. The upload starts lazily, so
    a small object is one `put_object`. `finish()` completes, `abort()` discards; the store's
    `open_write` calls exactly one of them.
    """

    def __init__(self, store: "S3ObjectStore", full_key: str, what: str, part_size: int):
        self._store = store
        self._key = full_key
        self._what = what
        self._part_size = part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed S3 object writer")
        view = memoryview(data).cast("B")
        self._buffer += view
        self._position += len(view)
        while len(self._buffer) >= self._part_size:
            # One copy of the part (slicing a bytearray and then bytes() would make two).
            with memoryview(self._buffer) as whole:
                part = bytes(whole[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload_part(part)
            del part
        return len(view)

    def _upload_part(self, chunk: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        with self._store._errors(self._what):
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
            number = len(self._parts) + 1
            response = client.upload_part(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
            )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        # When botocore computed a part checksum (AWS default), completion must repeat it.
        part.update({name: response[name] for name in _PART_CHECKSUMS if name in response})
        self._parts.append(part)

    def finish(self) -> None:
        """Make the object visible: one put for a small object, else upload the tail and complete."""
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            with self._store._errors(self._what):
                client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            with self._store._errors(self._what):
                client.complete_multipart_upload(
                    Bucket=bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
                )
        self._buffer = bytearray()
        super().close()

    def abort(self) -> None:
        """Discard the parts uploaded so far; best effort (S3 lifecycle rules reap what this misses)."""
        self._buffer = bytearray()
        if self._upload_id is not None:
            try:
                self._store.client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id)
            except Exception:  # noqa: BLE001 - the original error matters more than a failed cleanup
                pass
        super().close()

    def close(self) -> None:
        # Closing (e.g. by a wrapping TextIOWrapper) must not complete the upload: only a clean exit
        # from `open_write` does. Further writes are refused.
        super().close()


class S3ObjectStore(ObjectStore):
    """Objects under `s3://bucket/prefix`; keys given to the methods are relative to the prefix."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, part_size: int = DEFAULT_PART_SIZE):
        if not bucket:
            raise ConfigError("S3 storage URL needs a bucket: s3://bucket/prefix")
        if client is None:
            raise ConfigError("S3ObjectStore needs a boto3 S3 client; build one with S3ObjectStore.from_settings")
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"S3 multipart part size must be at least {MIN_PART_SIZE} bytes")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.client = client
        self.part_size = part_size
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    @classmethod
    def from_settings(cls, settings: "Settings", *, max_attempts: int = 5, part_size: int = DEFAULT_PART_SIZE,
                      connect_timeout: float = 10) -> "S3ObjectStore":
        """The store `settings.storage_url` names, with endpoint, region and credentials from settings.

        Credentials: CONTINUUM_S3_* first, then AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; when neither is
        set, boto3's own chain (instance profile, SSO, ~/.aws) decides.
        """
        import boto3
        from botocore.config import Config

        parts = urlsplit(settings.resolved_storage_url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"not an S3 storage URL: {settings.resolved_storage_url!r} (expected s3://bucket/prefix)")
        endpoint = settings.s3_endpoint_url or None
        config_kwargs: dict[str, Any] = {
            "region_name": settings.s3_region_name(),
            # standard mode retries throttling, 5xx and connection errors with jittered backoff.
            "retries": {"max_attempts": max_attempts, "mode": "standard"},
            "connect_timeout": connect_timeout,
            "read_timeout": 120,
            "max_pool_connections": 16,
        }
        if endpoint:
            # MinIO and most S3-compatible servers serve buckets by path, not by virtual-host DNS names,
            # and many do not implement the newer default CRC checksum trailers.
            config_kwargs["s3"] = {"addressing_style": "path"}
            config_kwargs["request_checksum_calculation"] = "when_required"
            config_kwargs["response_checksum_validation"] = "when_required"
        key, secret = settings.s3_credentials()
        credentials = {"aws_access_key_id": key, "aws_secret_access_key": secret} if key and secret else {}
        # A private session: boto3's default session is process-global state we do not want to share.
        session = boto3.session.Session()
        client = session.client("s3", endpoint_url=endpoint, config=Config(**config_kwargs), **credentials)
        return cls(parts.netloc, parts.path, client, part_size=part_size)

    # -- helpers -------------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _what(self, verb: str, key: str) -> str:
        return f"{verb} {self.url}/{key}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except ObjectStoreError:
            raise
        except Exception as exc:
            if _is_boto_error(exc):
                raise translate_boto_error(exc, what) from exc
            raise

    # -- ObjectStore ---------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._errors(self._what("put", key)):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        full = self._full(key)
        what = self._what("get", key)
        with self._errors(what):
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        reader = io.BufferedReader(_S3Reader(body, what), buffer_size=1 << 20)
        with reader:
            yield reader  # type: ignore[misc]

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        full = self._full(key)
        writer = _MultipartWriter(self, full, self._what("put", key), self.part_size)
        try:
            yield writer  # type: ignore[misc]
        except BaseException:
            writer.abort()
            raise
        try:
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        with self._errors(f"list {self.url}/{prefix}"):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                keys.extend(item["Key"][len(root) :] for item in page.get("Contents", ()))
        # S3 already returns UTF-8 binary order; sorting keeps the contract for servers that do not.
        return iter(sorted(keys))

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            with self._errors(self._what("head", key)):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors(self._what("delete", key)):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix` in batches of 1000 (one request each, not one per key)."""
        keys = list(self.list(prefix))
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            with self._errors(f"delete {self.url}/{prefix}*"):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True},
                )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise ObjectStorePermanent(
                    f"delete {self.url}/{first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
                )
        return len(keys)
