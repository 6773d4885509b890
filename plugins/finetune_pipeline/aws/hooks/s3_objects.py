"""Single S3 objects (``boto3.client("s3")``): a create-only PUT, a GET that tells "absent" apart, a listing."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.exceptions import ClientError

# GetObject of a key that does not exist: NoSuchKey (404) with s3:ListBucket, AccessDenied (403) without.
MISSING_CODES = frozenset({"NoSuchKey", "404"})


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")`` (no leading or trailing slash)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


class S3ObjectHook(AwsBaseHook):
    """
    Read and write single S3 objects; a thin wrapper around ``boto3.client("s3")``.

    The provider's ``S3Hook`` has no conditional write, which is what makes a job spec exactly-once:
    ``PutObject`` with ``If-None-Match: *`` (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html).

    .. seealso::
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3.html
    """

    # PutObject(IfNoneMatch="*") on a key that exists: 412 PreconditionFailed. Two such PUTs racing on one
    # key: one wins, the other may get 409 ConditionalRequestConflict, to be retried (then it gets 412).
    PRECONDITION_FAILED = "PreconditionFailed"
    CONDITIONAL_CONFLICT = "ConditionalRequestConflict"

    def __init__(self, *args, **kwargs) -> None:
        kwargs["client_type"] = "s3"
        super().__init__(*args, **kwargs)

    def put_object(
        self, bucket: str, key: str, body: bytes, *, if_none_match: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """
        Write an object; with ``if_none_match``, only if no object has this key (else 412 is raised).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3/client/put_object.html
        """
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        return self.conn.put_object(Bucket=bucket, Key=key, Body=body, **kwargs)

    def get_object_body(self, bucket: str, key: str) -> bytes | None:
        """
        Read an object's bytes; ``None`` if there is no such key.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3/client/get_object.html
        """
        try:
            response = self.conn.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in MISSING_CODES:
                return None
            raise
        return response["Body"].read()

    @staticmethod
    def error_code(error: BaseException) -> str | None:
        """The S3 error code of a ``ClientError`` (``PreconditionFailed``...), else ``None``."""
        if isinstance(error, ClientError):
            return error.response.get("Error", {}).get("Code")
        return None
