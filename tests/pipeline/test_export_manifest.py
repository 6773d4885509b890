"""The snapshot export's manifest: written once, checked against the files on every read."""

from __future__ import annotations

import pytest

from finetune_pipeline.pipeline.export_manifest import MANIFEST_NAME, ExportManifestError, build_manifest, read_manifest


@pytest.fixture
def export(tmp_path):
    (tmp_path / "public" / "customers").mkdir(parents=True)
    (tmp_path / "public" / "customers" / "LOAD00000001.parquet").write_bytes(b"x" * 100)
    (tmp_path / "public" / "tickets").mkdir(parents=True)
    (tmp_path / "public" / "tickets" / "LOAD00000001.parquet").write_bytes(b"y" * 50)
    return tmp_path


def test_manifest_round_trips_and_lists_every_file(export):
    built = build_manifest(export, "2026-11-26T09:00:00+00:00", ["public.customers", "public.tickets"], False)
    read = read_manifest(export)
    assert read == built
    assert [item.key for item in read.files] == ["public/customers/LOAD00000001.parquet",
                                                 "public/tickets/LOAD00000001.parquet"]
    assert read.total_bytes == 150


def test_missing_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ExportManifestError, match=r"manifest.json is missing\. Run the export first"):
        read_manifest(tmp_path)


def test_missing_or_changed_files_are_listed(export):
    build_manifest(export, "2026-11-26T09:00:00+00:00", ["public.customers"], False)
    (export / "public" / "tickets" / "LOAD00000001.parquet").unlink()
    (export / "public" / "customers" / "LOAD00000001.parquet").write_bytes(b"x" * 99)
    with pytest.raises(ExportManifestError) as error:
        read_manifest(export)
    assert "public/tickets/LOAD00000001.parquet: missing" in str(error.value)
    assert "public/customers/LOAD00000001.parquet: 99 bytes on disk, manifest says 100" in str(error.value)


def test_corrupt_manifest_is_a_clear_error(export):
    (export / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ExportManifestError, match="is not a valid export manifest"):
        read_manifest(export)
