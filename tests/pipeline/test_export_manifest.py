"""The snapshot export's manifest: written last, checked against the files on every read."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from manifest_helpers import make_export

from finetune_pipeline.pipeline.export_manifest import (
    MANIFEST_NAME,
    ExportManifestError,
    file_checksums,
    read_manifest,
    s3_part_size,
)

MIB = 1024 * 1024


@pytest.fixture
def export(tmp_path):
    files = {"public/customers/LOAD00000001.parquet": b"x" * 100, "public/tickets/LOAD00000001.parquet": b"y" * 50}
    return tmp_path, make_export(tmp_path, files)


def test_manifest_round_trips_and_lists_every_file(export):
    directory, built = export
    read = read_manifest(directory)
    assert read == built
    assert [item.key for item in read.files] == ["public/customers/LOAD00000001.parquet",
                                                 "public/tickets/LOAD00000001.parquet"]
    assert read.total_bytes == 150
    assert read.slot.plugin == "test_decoding" and read.cdc_start_position == "0/1AF7CB8"
    assert read.table_names == ["public.customers", "public.tickets"]


def test_checksums_are_what_s3_reports(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    sums = file_checksums(path, part_size=5 * MIB)
    assert sums["sha256"] == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert sums["md5"] == sums["etag"] == hashlib.md5(b"abc" * 1000).hexdigest()
    assert base64.b64decode(sums["crc32"]) == zlib.crc32(b"abc" * 1000).to_bytes(4, "big")
    # Past 10,000 parts s3transfer doubles the part size; the manifest's ETag follows it.
    assert s3_part_size(100_000 * MIB, 5 * MIB) == 10 * MIB


def test_missing_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ExportManifestError, match=r"manifest.json is missing\. Run the export first"):
        read_manifest(tmp_path)


def test_missing_or_changed_files_are_listed(export):
    directory, _ = export
    (directory / "public" / "tickets" / "LOAD00000001.parquet").unlink()
    (directory / "public" / "customers" / "LOAD00000001.parquet").write_bytes(b"x" * 99)
    with pytest.raises(ExportManifestError) as error:
        read_manifest(directory)
    assert "public/tickets/LOAD00000001.parquet: missing" in str(error.value)
    assert "public/customers/LOAD00000001.parquet: 99 bytes on disk, manifest says 100" in str(error.value)


def test_corrupt_or_old_manifests_are_a_clear_error(export):
    directory, _ = export
    (directory / MANIFEST_NAME).write_text('{"snapshot_position": "x", "files": [], "seed_data": true}')
    with pytest.raises(ExportManifestError, match="format_version None, expected 2"):
        read_manifest(directory)
    (directory / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ExportManifestError, match="is not a valid export manifest"):
        read_manifest(directory)
