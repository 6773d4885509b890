"""The consistent snapshot export, run on the on-premises host: ``python -m finetune_pipeline.export``.

It imports no Airflow: only :mod:`finetune_pipeline.datasets` (the DMS file format), psycopg and pyarrow.
"""
import os
import sys

# Arrow's buffers from glibc's malloc rather than Arrow's default mimalloc, chosen before pyarrow loads (it
# reads this once). mimalloc hands freed pages back to the kernel, which zeroes them again (as transparent
# huge pages) when the next block is parsed: a sixth of the export's CPU under perf on the 2-core machine;
# glibc keeps them, and the peak RSS was ~80 MiB lower (benchmarks/bench_export.py). An explicit choice wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from finetune_pipeline.export.cli import main  # noqa: E402  (after the allocator is chosen)

sys.exit(main())
