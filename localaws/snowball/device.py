"""S3 on a simulated Snowball device, at ``{endpoint_url}/_localaws/snowball-device/{JobId}``.

Talk to it with a normal boto3 S3 client whose ``endpoint_url`` is that URL, with path-style addressing
(``Config(s3={"addressing_style": "path"})``). The device holds the job's target buckets (from its
``S3Resources``) and answers only while the job is ``WithCustomer``, as a real device is only on site then.
Writes outside the job's buckets or ``KeyRange`` are refused. Everything else is moto's own S3, run
against a hidden per-device bucket (see :mod:`localaws.snowball.storage`), so checksums, multipart
uploads and ranges behave as they do against S3.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from localaws.snowball import storage
from localaws.snowball.models import Job, SnowballBackend
from localaws.wsgi import Response, WsgiApp, call_app, s3_error

DEVICE_PREFIX = "/_localaws/snowball-device/"
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


class SnowballDevice:
    """Checks a device request against its job, then forwards it to moto's S3."""

    def __init__(self, backend: SnowballBackend, moto_app: WsgiApp):
        self.backend = backend
        self.moto_app = moto_app

    def handle(self, environ: dict) -> Response:
        # PATH_INFO arrives latin-1 decoded (PEP 3333); S3 keys are UTF-8.
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")[len(DEVICE_PREFIX) :]
        job_id, _, rest = path.partition("/")
        job = self.backend.find_job(job_id)
        if job is None:
            return s3_error(404, "NoSuchJob", f"There is no Snowball job {job_id}, so no device to talk to.")
        state = self.backend.state(job)[0]
        if state != "WithCustomer":
            return s3_error(
                409,
                "InvalidJobState",
                f"The device of Snowball job {job_id} only accepts requests while the job is WithCustomer; "
                f"the job is {state}.",
            )
        method = environ.get("REQUEST_METHOD", "GET")
        bucket, _, key = rest.partition("/")
        if not bucket:
            if method == "GET":
                return self._list_buckets(job)
            return s3_error(405, "MethodNotAllowed", f"{method} is not allowed on the device root.")
        if bucket not in job.buckets:
            return s3_error(
                404,
                "NoSuchBucket",
                f"Bucket {bucket} is not on the device of job {job_id}; "
                f"its buckets are {', '.join(job.buckets)}.",
                BucketName=bucket,
            )
        if not key and method in ("PUT", "DELETE"):
            return s3_error(
                403, "AccessDenied", "The buckets on a Snowball device are fixed by its job's S3Resources."
            )
        if key and method in ("PUT", "POST"):
            if environ.get("HTTP_X_AMZ_COPY_SOURCE"):
                return s3_error(501, "NotImplemented", "CopyObject is not supported on the simulated device.")
            if not job.allows_key(bucket, key):
                return s3_error(
                    403,
                    "AccessDenied",
                    f"Key {key!r} is outside the S3Resources KeyRange for bucket {bucket} "
                    f"of Snowball job {job_id}.",
                    Key=key,
                )
        return self._forward(environ, job, bucket, bool(key), method)

    def _forward(self, environ: dict, job: Job, bucket: str, has_key: bool, method: str) -> Response:
        hidden = storage.ensure_device_bucket(job.job_id, job.region, bucket)
        prefix = f"{DEVICE_PREFIX}{job.job_id}/{bucket}"
        forwarded = dict(environ)
        forwarded["PATH_INFO"] = f"/{hidden}{environ['PATH_INFO'][len(prefix) :]}"
        for name in ("RAW_URI", "REQUEST_URI"):  # moto matches S3 keys against the raw, still-encoded path
            raw = environ.get(name, "")
            if raw.startswith(prefix):
                forwarded[name] = f"/{hidden}{raw[len(prefix) :]}"
            else:
                forwarded.pop(name, None)
        forwarded["HTTP_X_MOTO_ACCOUNT_ID"] = storage.DEVICE_ACCOUNT_ID
        response = call_app(self.moto_app, forwarded)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        object_data = method == "GET" and has_key and response.status < 300 and "uploadId" not in query
        if object_data or hidden.encode() not in response.body:
            return response
        # Listings, multipart results and errors name the bucket: show the customer's name, not ours.
        return response.with_body(response.body.replace(hidden.encode(), bucket.encode()))

    @staticmethod
    def _list_buckets(job: Job) -> Response:
        created = job.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        buckets = "".join(
            f"<Bucket><Name>{name}</Name><CreationDate>{created}</CreationDate></Bucket>"
            for name in job.buckets
        )
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListAllMyBucketsResult xmlns="{S3_XMLNS}">'
            f"<Owner><ID>{job.account_id}</ID><DisplayName>snowball</DisplayName></Owner>"
            f"<Buckets>{buckets}</Buckets></ListAllMyBucketsResult>"
        )
        return Response(200, xml.encode(), [("Content-Type", "application/xml")])
