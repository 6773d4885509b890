"""Data logic of the DMS -> S3 -> versioned Iceberg dataset sync (plain Python, no Airflow imports).

Imports are lazy so that importing the package (e.g. from a DAG file) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_sync": "sync",
    "SyncSpec": "sync",
    "SyncResult": "sync",
    "LocalStore": "store",
    "S3Store": "store",
    "ObjectStore": "store",
    "store_from_uri": "store",
    "TableContract": "contracts",
    "ContractError": "contracts",
    "load_contract": "contracts",
    "load_contracts": "contracts",
    "CheckResult": "validate",
    "validate_parquet": "validate",
    "publishable": "validate",
    "read_events": "dms_format",
    "write_dms_file": "dms_format",
    "cdc_file_name": "dms_format",
    "load_file_name": "dms_format",
    "DmsFileError": "dms_format",
    "merge_events": "merge",
    "CatalogSpec": "catalog",
    "AwsAccess": "catalog",
    "CatalogError": "catalog",
    "open_version": "reader",
    "published_versions": "reader",
    "DatasetVersion": "reader",
    "VersionNotFound": "reader",
    "QuarantinedFile": "quarantine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
