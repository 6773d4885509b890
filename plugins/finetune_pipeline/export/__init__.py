"""The consistent snapshot export, run on the on-premises host: ``python -m finetune_pipeline.export``.

It imports no Airflow: only :mod:`finetune_pipeline.datasets` (the DMS file format), psycopg and pyarrow.
"""
