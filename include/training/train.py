"""Fine-tuning entrypoint, the same on every backend (a HyperPod Slurm step, EC2 user data, a laptop).

    python train.py --dataset-uri s3://bucket/datasets --dataset-version v000012 \\
        --output-uri s3://bucket/models/v000012 [--hyperparameters '{"epochs": 3}'] [--checkpoint-dir DIR]

It opens exactly the version it was launched for through the pipeline's reader
(:func:`finetune_pipeline.datasets.reader.open_record`, the one ``python -m finetune_pipeline.datasets read``
uses): the version's record under the dataset prefix names each Iceberg table's metadata file, and the reader
checks every table carries the version's tag. A version that was never published is an error (exit 2), never
a substitute. The nodes need the ``finetune-pipeline`` package (shipped in the training bundle) and read access
to the dataset bucket, not the catalog.

Several ranks (torchrun's ``RANK``/``WORLD_SIZE``, or srun's ``SLURM_PROCID``/``SLURM_NTASKS``): each rank
reads its own share of each table's data files; rank 0 writes the model. ``--checkpoint-dir`` must be on
storage that every restart sees (HyperPod: ``/fsx``): after HyperPod replaces a faulty node,
``srun --auto-resume=1`` runs this again and the trainer resumes from the newest checkpoint there.

Output, written by rank 0 under ``--output-uri``: the trainer's files (the reference trainer writes
``model.safetensors``, ``tokenizer.json``, ``config.json``, ``metrics.json``), then ``_SUCCESS`` (the version
and the metrics) last, so ``_SUCCESS`` means the rest is there. A run whose ``_SUCCESS`` exists ends at once:
a retried job does not train twice.

Plugging in your own trainer: set ``FINETUNE_TRAINER`` to an importable module (ship it in the bundle, or
install it on the nodes) with ``fit(job: TrainingJob) -> dict``: it reads its rows with ``job.read(table,
columns)``, writes its files into ``job.output_dir``, checkpoints into ``job.checkpoint_dir`` and returns the
metrics. ``reference_trainer.py`` beside this file is the default and the example.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_pipeline.pipeline.training_bundle import SUCCESS_MARKER  # shipped in the bundle beside this file

DEFAULT_TRAINER = "reference_trainer"


class TrainingInputError(ValueError):
    """The job was launched with something that can never train (exit 2: retrying cannot help)."""


@dataclass(frozen=True)
class Rank:
    """This process's place in a multi-node job (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Rank:
        environ = os.environ if environ is None else environ
        for rank_name, size_name in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            if size_name in environ:
                rank, size = int(environ.get(rank_name, "0")), int(environ[size_name])
                if size < 1 or not 0 <= rank < size:
                    raise TrainingInputError(f"{rank_name}={rank} is not a rank of {size_name}={size}")
                return cls(rank, size)
        return cls()

    def share(self, files: list[str]) -> list[str]:
        """This rank's files: every ``world_size``-th of the sorted list, so the shares never overlap."""
        return sorted(files)[self.rank :: self.world_size]


@dataclass
class TrainingJob:
    """What a trainer gets: the version, this rank's share of each table's data files, and where to write."""

    version: str
    files: dict[str, list[str]]
    output_dir: Path
    checkpoint_dir: Path | None
    hyperparameters: dict[str, Any]
    rank: Rank = field(default_factory=Rank)
    _tables: dict[str, Any] = field(default_factory=dict, repr=False)

    def read(self, table: str, columns: list[str] | None = None):
        """This rank's rows of ``table`` (a ``pyarrow.Table``): its share of the data files, read through the
        dataset reader so the version's position delete files mask the rows they replaced or deleted."""
        if table not in self.files:
            raise TrainingInputError(f"dataset version {self.version} has no table {table}; it has "
                                     f"{sorted(self.files)}")
        version = self._tables[table]
        if not self.files[table]:
            schema = version.iceberg_table.schema().as_arrow()
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        return version.read_files(self.files[table], columns)

    def log(self, message: str) -> None:
        prefix = f"[rank {self.rank.rank}/{self.rank.world_size}] " if self.rank.world_size > 1 else ""
        print(f"{prefix}{message}", flush=True)


def parse_hyperparameters(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainingInputError(f"--hyperparameters is not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(values, dict):
        raise TrainingInputError(f"--hyperparameters must be a JSON object, got {type(values).__name__}")
    return values


def open_version(dataset_uri: str, version: str):
    """The version's tables through the pipeline's reader (its record; no catalog needed)."""
    import boto3

    from finetune_pipeline.datasets.catalog import AwsAccess
    from finetune_pipeline.datasets.reader import VersionNotFound, open_record
    from finetune_pipeline.datasets.store import store_from_uri

    store, prefix = store_from_uri(dataset_uri)
    access = AwsAccess.from_session(boto3.Session(), endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    try:
        return open_record(store, prefix, version, access)
    except VersionNotFound as error:
        raise TrainingInputError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-uri", required=True, help="the dataset prefix, s3://bucket/datasets")
    parser.add_argument("--dataset-version", required=True, help="the version to train on, e.g. v000012")
    parser.add_argument("--output-uri", required=True, help="where the model goes, s3://bucket/models/<version>")
    parser.add_argument("--hyperparameters", default=None, help="a JSON object for the trainer")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="resume from / write checkpoints here")
    args = parser.parse_args(argv)
    try:
        return train(args)
    except TrainingInputError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2


def train(args: argparse.Namespace) -> int:
    from finetune_pipeline.datasets.store import join_key, store_from_uri

    hyperparameters = parse_hyperparameters(args.hyperparameters)
    rank = Rank.from_environment()
    output_store, output_prefix = store_from_uri(args.output_uri)
    marker = join_key(output_prefix, SUCCESS_MARKER)
    if output_store.exists(marker):
        print(f"{output_store.uri(marker)} exists: version {args.dataset_version} is trained already", flush=True)
        return 0
    version = open_version(args.dataset_uri, args.dataset_version)
    files = {name: rank.share(table.files()) for name, table in sorted(version.tables.items())}
    trainer = importlib.import_module(os.environ.get("FINETUNE_TRAINER", DEFAULT_TRAINER))
    with tempfile.TemporaryDirectory(prefix="finetune-model-") as output_dir:
        job = TrainingJob(version.version, files, Path(output_dir), args.checkpoint_dir, hyperparameters, rank,
                          _tables=version.tables)
        for name, table in sorted(version.tables.items()):
            job.log(f"{name}: {table.rows} rows in {len(table.files())} files (this rank reads "
                    f"{len(files[name])}), snapshot {table.snapshot_id}")
        try:
            metrics = trainer.fit(job)
        except ValueError as error:  # the trainer's own refusal of its input (hyperparameters, labels)
            raise TrainingInputError(str(error)) from None
        if rank.rank == 0:
            publish(output_store, output_prefix, Path(output_dir), {"version": version.version, "metrics": metrics})
            job.log(f"model written to {args.output_uri}: {json.dumps(metrics.get('accuracy'))} held-out accuracy")
    return 0


def publish(store, prefix: str, directory: Path, success: dict[str, Any]) -> None:
    """Upload the trainer's files, then the marker: ``_SUCCESS`` present means the model is whole."""
    from finetune_pipeline.datasets.store import join_key

    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        store.put_file(join_key(prefix, path.relative_to(directory).as_posix()), path)
    store.put_bytes(join_key(prefix, SUCCESS_MARKER), json.dumps(success, indent=2, default=str).encode())


if __name__ == "__main__":
    # Run as a file on the nodes: the trainer module sits beside it.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
