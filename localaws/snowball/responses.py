"""The Snowball job management API: AWS JSON 1.1 with ``X-Amz-Target: AWSIESnowballJobManagementService.*``.

Request and response members follow botocore's ``snowball`` service model; errors use AWS's JSON error
format with the modelled exception names, so boto3 raises ``client.exceptions.<Name>``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from urllib.parse import parse_qs

from localaws.snowball.models import IMPORT_STATES, Job, SnowballBackend, SnowballError
from localaws.wsgi import (
    Response,
    json_response,
    new_request_id,
    read_body,
    request_account,
    request_region,
    s3_error,
)

log = logging.getLogger(__name__)

TARGET_PREFIX = "AWSIESnowballJobManagementService."
CONTENT_TYPE = "application/x-amz-json-1.1"
MANIFEST_PATH = "/_localaws/snowball/manifest/"
DEFAULT_PAGE_SIZE = 100


class SnowballResponses:
    """Dispatches one Snowball API request to the backend and renders the answer."""

    def __init__(self, backend: SnowballBackend):
        self.backend = backend
        self._operations = {
            "CreateAddress": self.create_address,
            "DescribeAddress": self.describe_address,
            "DescribeAddresses": self.describe_addresses,
            "CreateJob": self.create_job,
            "DescribeJob": self.describe_job,
            "ListJobs": self.list_jobs,
            "UpdateJob": self.update_job,
            "CancelJob": self.cancel_job,
            "GetJobManifest": self.get_job_manifest,
            "GetJobUnlockCode": self.get_job_unlock_code,
        }

    def handle(self, environ: dict) -> Response:
        operation = environ.get("HTTP_X_AMZ_TARGET", "")[len(TARGET_PREFIX) :]
        handler = self._operations.get(operation)
        if handler is None:
            return _error("UnknownOperationException", f"localaws does not implement Snowball {operation}.")
        try:
            params = json.loads(read_body(environ) or b"{}")
        except ValueError:
            return _error("SerializationException", "The request body is not valid JSON.")
        account, region = request_account(environ), request_region(environ)
        try:
            result = handler(account, region, params, environ)
        except SnowballError as error:
            log.info("Snowball %s refused: %s %s", operation, error.code, error.message)
            return _error(error.code, error.message)
        response = json_response(result, content_type=CONTENT_TYPE)
        response.headers.append(("x-amzn-RequestId", new_request_id()))
        return response

    # Addresses

    def create_address(self, account: str, region: str, params: dict, environ: dict) -> dict:
        address = self.backend.create_address(account, region, params.get("Address") or {})
        return {"AddressId": address.address_id}

    def describe_address(self, account: str, region: str, params: dict, environ: dict) -> dict:
        return {
            "Address": self.backend.get_address(account, region, _required(params, "AddressId")).to_dict()
        }

    def describe_addresses(self, account: str, region: str, params: dict, environ: dict) -> dict:
        page, token = _paginate(self.backend.list_addresses(account, region), params)
        return _drop_none({"Addresses": [address.to_dict() for address in page], "NextToken": token})

    # Jobs

    def create_job(self, account: str, region: str, params: dict, environ: dict) -> dict:
        return {"JobId": self.backend.create_job(account, region, params).job_id}

    def describe_job(self, account: str, region: str, params: dict, environ: dict) -> dict:
        job = self.backend.get_job(account, region, _required(params, "JobId"))
        return {"JobMetadata": self._job_metadata(job)}

    def list_jobs(self, account: str, region: str, params: dict, environ: dict) -> dict:
        page, token = _paginate(self.backend.list_jobs(account, region), params)
        entries = []
        for job in page:
            entries.append(
                _drop_none(
                    {
                        "JobId": job.job_id,
                        "JobState": self.backend.state(job)[0],
                        "IsMaster": False,
                        "JobType": job.fields["JobType"],
                        "SnowballType": job.fields["SnowballType"],
                        "CreationDate": job.created_at.timestamp(),
                        "Description": job.fields.get("Description"),
                    }
                )
            )
        return _drop_none({"JobListEntries": entries, "NextToken": token})

    def update_job(self, account: str, region: str, params: dict, environ: dict) -> dict:
        _required(params, "JobId")
        self.backend.update_job(account, region, params)
        return {}

    def cancel_job(self, account: str, region: str, params: dict, environ: dict) -> dict:
        self.backend.cancel_job(account, region, _required(params, "JobId"))
        return {}

    def get_job_manifest(self, account: str, region: str, params: dict, environ: dict) -> dict:
        job_id = _required(params, "JobId")
        query = self.backend.manifest_query(account, region, job_id)
        base = f"{environ.get('wsgi.url_scheme', 'http')}://{environ['HTTP_HOST']}"
        return {"ManifestURI": f"{base}{MANIFEST_PATH}{job_id}?{query}"}

    def get_job_unlock_code(self, account: str, region: str, params: dict, environ: dict) -> dict:
        return {"UnlockCode": self.backend.unlock_code(account, region, _required(params, "JobId"))}

    def _job_metadata(self, job: Job) -> dict:
        state, fraction = self.backend.state(job)
        metadata = {
            **job.fields,
            "JobId": job.job_id,
            "JobState": state,
            "CreationDate": job.created_at.timestamp(),
            "ShippingDetails": self._shipping_details(job, state),
        }
        metadata.pop("ShippingOption", None)  # JobMetadata carries it inside ShippingDetails
        if state in ("InProgress", "Complete"):
            total_bytes, total_objects = job.device_totals
            metadata["DataTransferProgress"] = {
                "BytesTransferred": int(total_bytes * fraction),
                "ObjectsTransferred": int(total_objects * fraction),
                "TotalBytes": total_bytes,
                "TotalObjects": total_objects,
            }
        return metadata

    @staticmethod
    def _shipping_details(job: Job, state: str) -> dict:
        details: dict = {"ShippingOption": job.fields["ShippingOption"]}
        if state == "Cancelled":
            return details
        position = IMPORT_STATES.index(state)
        outbound, inbound = job.tracking_numbers
        if position >= IMPORT_STATES.index("InTransitToCustomer"):
            delivered = position >= IMPORT_STATES.index("WithCustomer")
            details["OutboundShipment"] = {
                "Status": "Delivered" if delivered else "InTransit",
                "TrackingNumber": outbound,
            }
        if position >= IMPORT_STATES.index("InTransitToAWS"):
            delivered = position >= IMPORT_STATES.index("WithAWSSortingFacility")
            details["InboundShipment"] = {
                "Status": "Delivered" if delivered else "InTransit",
                "TrackingNumber": inbound,
            }
        return details


def manifest_response(backend: SnowballBackend, environ: dict) -> Response:
    """Serve a manifest URL returned by GetJobManifest (S3-style XML error when expired or forged)."""
    job_id = environ.get("PATH_INFO", "")[len(MANIFEST_PATH) :]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        body = backend.manifest(
            job_id, query.get("X-Amz-Date", [""])[0], query.get("X-Amz-Signature", [""])[0]
        )
    except (SnowballError, ValueError) as error:
        message = error.message if isinstance(error, SnowballError) else "The manifest URL is not valid."
        return s3_error(403, "AccessDenied", message)
    return Response(200, body, [("Content-Type", "application/octet-stream")])


def _paginate(items: list, params: dict) -> tuple[list, str | None]:
    """One page of ``items`` from ``MaxResults``/``NextToken``; the token is an opaque offset."""
    start = 0
    if params.get("NextToken"):
        try:
            start = int(base64.urlsafe_b64decode(params["NextToken"]).decode().removeprefix("offset:"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise SnowballError("InvalidNextTokenException", "The NextToken is not valid.") from None
        if not 0 <= start <= len(items):
            raise SnowballError("InvalidNextTokenException", "The NextToken is not valid.")
    size = params.get("MaxResults") or DEFAULT_PAGE_SIZE
    end = start + size
    token = base64.urlsafe_b64encode(f"offset:{end}".encode()).decode() if end < len(items) else None
    return items[start:end], token


def _required(params: dict, name: str) -> str:
    value = params.get(name)
    if not value:
        raise SnowballError("InvalidResourceException", f"{name} is required.")
    return value


def _drop_none(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None}


def _error(code: str, message: str) -> Response:
    response = json_response({"__type": code, "Message": message}, status=400, content_type=CONTENT_TYPE)
    response.headers.append(("x-amzn-RequestId", new_request_id()))
    return response
