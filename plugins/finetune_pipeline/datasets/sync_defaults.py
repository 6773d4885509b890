"""The defaults of a sync, in one place: the sync itself, the pipeline's config and the CLI read them here.

Kept apart from :mod:`.sync` so that the pipeline's config can read them at DAG parse time without
importing the data logic (pyarrow and friends).
"""

from __future__ import annotations

from datetime import timedelta

from finetune_pipeline.datasets.dms_target import CDC_MAX_BATCH_INTERVAL_SECONDS

# Published versions kept: each table keeps the tagged snapshots of the newest ones; older snapshots are
# expired after a successful publish, then the files no kept snapshot references.
RETENTION_VERSIONS = 10
# An unreferenced file is deleted only once it is older than this and older than the newest commit: a writer
# that has written files but not committed them yet (a slow sync, another engine retrying its commit) must
# never lose them. Longer than any sync may run.
ORPHAN_FILE_GRACE = timedelta(hours=24)
# How far behind the watermark discovery looks again for change files that landed late.
LATE_FILE_GRACE = timedelta(minutes=10)
# DMS names a CDC file when it opens it and uploads it up to CdcMaxBatchInterval later: a window shorter
# than twice that would skip files DMS writes on a normal day.
MIN_LATE_FILE_GRACE = timedelta(seconds=2 * CDC_MAX_BATCH_INTERVAL_SECONDS)
# How far behind the watermark each sync lists again for files that landed after the last sync but are named
# before the grace window; the state keeps the names of the files taken that far back (a day of DMS's
# one-minute files is ~40 KB). A file landing later than this after its name is not seen: widen it (or
# rebuild) if DMS can be that late.
LATE_FILE_AUDIT = timedelta(days=1)

# Keys are bucketed into key ranges (single integer keys) or hash buckets of about this many rows. Each
# bucket a delta touches costs a read of its key column and one more data file and delete file, so a delta
# spread over old keys (as real change streams are, in part) costs about the number of buckets: fewer, larger
# buckets keep it cheap. Size costs no memory: a bucket is rewritten (past merge_on_read.MAX_MASKED_SHARE
# masked rows) in pieces of MERGE_MEMORY_BYTES.
ROWS_PER_BUCKET = 4_000_000
# Data files are rolled over at about this many bytes on disk (a bucket's files stay in the tens of MB).
TARGET_FILE_BYTES = 64 * 2**20
# A bucket with fewer rows than this in its data files is rewritten whole by every delta that touches it,
# never merged on read: rewriting it costs little, and merging on read gives it one more data file and a
# delete file for every reader to open. When a larger bucket is merged on read: merge_on_read.py.
MERGE_ON_READ_MIN_ROWS = 10_000
# Target input size of one in-memory merge.
MERGE_MEMORY_BYTES = 128 * 2**20

# The Iceberg catalog when the config names none: pyiceberg's SqlCatalog on a local SQLite file.
CATALOG_KIND = "sql"
CATALOG_NAME = "finetune"
# The catalog namespace (a Glue database, an S3 Tables namespace) that holds the dataset's tables.
NAMESPACE = "finetune"
# How long the "Validation report" link (a presigned S3 URL) stays valid: SigV4's maximum, 7 days. A URL
# signed with temporary credentials (an instance role) stops working when they expire, often sooner.
REPORT_LINK_EXPIRY = timedelta(days=7)
