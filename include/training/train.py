"""Fine-tuning entrypoint run on the training nodes (HyperPod Slurm job step or EC2 user data).

It opens exactly the dataset version it was launched for through the pipeline's reader, the one
``python -m finetune_pipeline.datasets read`` uses (``finetune_pipeline.datasets.reader``): the version's record
under the dataset prefix (``<dataset>/versions/<version>.json``) names each Iceberg table's metadata file; the
reader checks that every table carries the version's tag and plans the data files of the tagged snapshots. So
the nodes need the ``finetune-pipeline`` package and read access to the dataset bucket, not the catalog.

The trainer itself is the organisation's own: set FINETUNE_TRAINER to a module with
``main(files: list[str], output_uri: str)``; it gets the version's Parquet data files.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def dataset_files(dataset_uri: str, version: str) -> list[str]:
    """The data files of every table of ``version``, read through the pipeline's reader."""
    import boto3

    from finetune_pipeline.datasets.catalog import AwsAccess
    from finetune_pipeline.datasets.reader import open_record
    from finetune_pipeline.datasets.store import store_from_uri

    store, prefix = store_from_uri(dataset_uri)
    access = AwsAccess.from_session(boto3.Session(), endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    opened = open_record(store, prefix, version, access)
    for name, table in sorted(opened.tables.items()):
        print(f"{name}: {table.rows} rows in snapshot {table.snapshot_id} of {'.'.join(table.identifier)}", flush=True)
    return opened.files()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset-uri", required=True, help="s3://bucket/datasets")
    parser.add_argument("--dataset-version", required=True, help="the version the pipeline launched this job for")
    parser.add_argument("--output-uri", required=True, help="s3://bucket/models/<run>")
    args = parser.parse_args(argv)

    files = dataset_files(args.dataset_uri, args.dataset_version)
    print(f"training on {len(files)} files of dataset version {args.dataset_version}", flush=True)
    trainer = importlib.import_module(os.environ.get("FINETUNE_TRAINER", "finetune_trainer"))
    trainer.main(files, args.output_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
