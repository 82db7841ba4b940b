"""boto3/botocore errors become our exceptions: retryable vs permanent, each message naming the fix.

Throttling and 5xx answers cannot be provoked on demand from a test S3 server, so the translation is
checked here on the real botocore exception objects S3 answers are parsed into.
"""

from __future__ import annotations

import pytest
from botocore import exceptions as bx

from common.errors import ObjectNotFound, ObjectStorePermanent, ObjectStoreUnavailable, PermanentError, RetryableError
from common.objectstore.s3 import translate_boto_error


def client_error(code: str, status: int) -> bx.ClientError:
    response = {"Error": {"Code": code, "Message": f"{code} message"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bx.ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("error", "expected", "fix"),
    [
        (client_error("NoSuchKey", 404), ObjectNotFound, "no such object"),
        (client_error("404", 404), ObjectNotFound, "no such object"),
        (client_error("SlowDown", 503), ObjectStoreUnavailable, "retry later"),
        (client_error("Throttling", 400), ObjectStoreUnavailable, "retry later"),
        (client_error("RequestTimeout", 400), ObjectStoreUnavailable, "retry later"),
        (client_error("InternalError", 500), ObjectStoreUnavailable, "retry later"),
        (client_error("SomethingNew", 502), ObjectStoreUnavailable, "retry later"),
        (client_error("TooManyRequests", 429), ObjectStoreUnavailable, "retry later"),
        (client_error("AccessDenied", 403), ObjectStorePermanent, "grant the key"),
        (client_error("InvalidAccessKeyId", 403), ObjectStorePermanent, "CONTINUUM_S3_ACCESS_KEY_ID"),
        (client_error("SignatureDoesNotMatch", 403), ObjectStorePermanent, "CONTINUUM_S3_SECRET_ACCESS_KEY"),
        (client_error("NoSuchBucket", 404), ObjectStorePermanent, "CONTINUUM_STORAGE_URL"),
        (client_error("InvalidArgument", 400), ObjectStorePermanent, "refused"),
        (bx.NoCredentialsError(), ObjectStorePermanent, "CONTINUUM_S3_ACCESS_KEY_ID"),
        (bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ObjectStoreUnavailable, "CONTINUUM_S3_ENDPOINT_URL"),
        (bx.ConnectTimeoutError(endpoint_url="http://10.0.0.1"), ObjectStoreUnavailable, "CONTINUUM_S3_ENDPOINT_URL"),
        (bx.ReadTimeoutError(endpoint_url="http://10.0.0.1"), ObjectStoreUnavailable, "CONTINUUM_S3_ENDPOINT_URL"),
        (bx.IncompleteReadError(actual_bytes=1, expected_bytes=2), ObjectStoreUnavailable, "cannot reach"),
    ],
)
def test_translation(error, expected, fix):
    translated = translate_boto_error(error, "get s3://bucket/key")
    assert type(translated) is expected
    assert fix in str(translated)
    assert str(translated).startswith("get s3://bucket/key")
    assert "\n" not in str(translated)
    retryable = expected is ObjectStoreUnavailable
    assert isinstance(translated, RetryableError) is retryable
    assert isinstance(translated, PermanentError) is not retryable
