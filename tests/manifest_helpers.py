"""Build a small export folder and its manifest for the landing and task tests."""

from __future__ import annotations

from pathlib import Path

from finetune_pipeline.pipeline.export_manifest import (
    S3_PART_SIZE,
    ExportManifest,
    SlotInfo,
    SourceInfo,
    TableExport,
    describe_file,
    write_manifest,
)


def make_export(export_dir: Path, files: dict[str, bytes], part_size: int = S3_PART_SIZE) -> ExportManifest:
    """Write ``files`` (key -> content) under ``export_dir`` and a manifest describing them."""
    for key, content in files.items():
        path = export_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    tables = sorted({".".join(key.split("/")[:2]) for key in files})
    manifest = ExportManifest(
        engine="postgres",
        snapshot_position="2026-11-26T09:00:00+00:00",
        cdc_start_position="0/1AF7CB8",
        source=SourceInfo(database="appdb", system_identifier="7714226010037540249", timeline=1),
        tables={name: TableExport(rows=1) for name in tables},
        files=[describe_file(export_dir, export_dir / key, part_size) for key in sorted(files)],
        slot=SlotInfo(name="finetune_dms", plugin="test_decoding"),
    )
    write_manifest(export_dir, manifest)
    return manifest


def make_export_of(export_dir: Path, snapshot_position: str) -> ExportManifest:
    """A manifest for the files already under ``export_dir``."""
    keys = sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*.parquet"))
    manifest = ExportManifest(
        engine="postgres", snapshot_position=snapshot_position, cdc_start_position="0/1AF7CB8",
        source=SourceInfo(database="appdb"), tables={".".join(k.split("/")[:2]): TableExport(rows=0) for k in keys},
        files=[describe_file(export_dir, export_dir / key) for key in keys],
        slot=SlotInfo(name="finetune_dms", plugin="test_decoding"),
    )
    write_manifest(export_dir, manifest)
    return manifest
