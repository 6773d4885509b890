"""The snapshot export's manifest, as the pipeline reads it: the model lives with the export.

The export runs on premises without Airflow (:mod:`finetune_pipeline.export`), so the manifest's model and
its checksums are defined there; this module is the pipeline's name for them. See
:mod:`finetune_pipeline.export.manifest` for the fields and for how the import is verified by checksum.
"""

from __future__ import annotations

from finetune_pipeline.export.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    S3_PART_SIZE,
    ExportedFile,
    ExportManifest,
    ExportManifestError,
    SlotInfo,
    SourceInfo,
    TableExport,
    describe_file,
    file_checksums,
    read_manifest,
    s3_part_size,
    write_manifest,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "S3_PART_SIZE",
    "ExportManifest",
    "ExportManifestError",
    "ExportedFile",
    "SlotInfo",
    "SourceInfo",
    "TableExport",
    "describe_file",
    "file_checksums",
    "read_manifest",
    "s3_part_size",
    "write_manifest",
]
