"""The defaults of a sync, in one place: the sync itself, the pipeline's config and the CLI read them here.

Kept apart from :mod:`.sync` so that the pipeline's config can read them at DAG parse time without
importing the data logic (pyarrow and friends).
"""

from __future__ import annotations

from datetime import timedelta

from finetune_pipeline.datasets.dms_target import CDC_MAX_BATCH_INTERVAL_SECONDS

# Published versions kept; older ones are deleted after a successful publish.
RETENTION_VERSIONS = 10
# How far behind the watermark discovery looks again for change files that landed late.
LATE_FILE_GRACE = timedelta(minutes=10)
# DMS names a CDC file when it opens it and uploads it up to CdcMaxBatchInterval later: a window shorter
# than twice that would skip files DMS writes on a normal day.
MIN_LATE_FILE_GRACE = timedelta(seconds=2 * CDC_MAX_BATCH_INTERVAL_SECONDS)
