"""The consistent snapshot export, run on the on-premises host: ``python -m finetune_pipeline.export``.

It imports no Airflow: only :mod:`finetune_pipeline.datasets` (the DMS file format), psycopg and pyarrow.
"""
import os
import sys

from finetune_pipeline.export.without_numpy import refuse_numpy

# Arrow's buffers from jemalloc rather than Arrow's default mimalloc, chosen before pyarrow loads (it reads
# this once); a user's own setting wins. Measured on the 2-core machine: mimalloc hands freed pages back and
# the kernel zeroes them again (as transparent huge pages) for the next block, a sixth of the export's CPU;
# glibc's malloc kept its arenas growing with the table (300 MiB peak at 0.5M rows, 362 at 4M, and still
# rising within a run); jemalloc stayed flat (350-387 MiB) for the same CPU.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
refuse_numpy()

from finetune_pipeline.export.cli import main  # noqa: E402  (after the allocator is chosen and numpy refused)

sys.exit(main())
