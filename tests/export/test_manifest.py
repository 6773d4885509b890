"""The manifest's checksums: S3's single-part and multipart ETags, computed in one read of the file."""

from __future__ import annotations

import hashlib
import os

from finetune_pipeline.export.manifest import file_checksums

MIB = 1024 * 1024


def test_a_file_of_several_parts_has_s3s_multipart_etag(tmp_path):
    data = os.urandom(12 * MIB + 123)
    path = tmp_path / "LOAD00000001.parquet"
    path.write_bytes(data)
    sums = file_checksums(path, part_size=5 * MIB)
    parts = [data[i:i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    digests = b"".join(hashlib.md5(part).digest() for part in parts)
    assert sums["etag"] == f"{hashlib.md5(digests).hexdigest()}-3"
    assert sums["md5"] == hashlib.md5(data).hexdigest() and sums["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_file_smaller_than_a_part_has_its_md5_as_etag(tmp_path):
    data = os.urandom(5 * MIB - 1)
    path = tmp_path / "LOAD00000001.parquet"
    path.write_bytes(data)
    sums = file_checksums(path, part_size=5 * MIB)
    assert sums["etag"] == sums["md5"] == hashlib.md5(data).hexdigest()
    # Exactly one part's size is uploaded in parts (multipart_threshold = part_size): one part, "-1".
    path.write_bytes(data + b"x")
    one_part = hashlib.md5(hashlib.md5(data + b"x").digest()).hexdigest()
    assert file_checksums(path, part_size=5 * MIB)["etag"] == f"{one_part}-1"
