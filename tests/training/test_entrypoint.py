"""The training entrypoint on a dataset the sync published: the version it names, the model, its marker."""

from __future__ import annotations

import importlib
import json
import random
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from change_files import TICKETS_SCHEMA, seed_tables, write_seed

from devstack.support_desk import TIERS, compose_ticket
from finetune_pipeline.datasets.catalog import CatalogSpec
from finetune_pipeline.datasets.store import LocalStore
from finetune_pipeline.datasets.sync import SyncSpec, run_sync

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def demo_tickets(n: int, seed: int = 11) -> pa.Table:
    """Tickets as the demo's support desk writes them (its text, its priorities)."""
    rng = random.Random(seed)
    rows = []
    for ticket_id in range(1, n + 1):
        ticket = compose_ticket(rng, rng.choice(TIERS), T0 - timedelta(days=1))
        rows.append({"ticket_id": ticket_id, "customer_id": 1 + ticket_id % 40, "subject": ticket["subject"],
                     "body": ticket["body"], "status": "open", "priority": ticket["priority"],
                     "updated_at": T0 - timedelta(days=1)})
    return pa.Table.from_pylist(rows, schema=TICKETS_SCHEMA)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A published version of the demo dataset: 6,000 tickets in several data files."""
    root = tmp_path_factory.mktemp("training")
    store = LocalStore(root / "bucket")
    tables = {"public.customers": seed_tables(40, 0)["public.customers"], "public.tickets": demo_tickets(6000)}
    write_seed(store, "landing", tables, load_time=T0 + timedelta(minutes=3))
    spec = SyncSpec(landing_prefix="landing", dataset_prefix="datasets", contracts_dir=REPO / "include" / "contracts",
                    catalog=CatalogSpec(uri=f"sqlite:///{root}/catalog.db", warehouse=store.location("warehouse")),
                    snapshot_position=T0, rows_per_bucket=1000)  # several data files, so ranks can share them
    first = run_sync(store, spec, now=T0 + timedelta(hours=1))
    assert first.published, [check.to_dict() for check in first.failed_checks]
    return store, first.version


@pytest.fixture
def train(monkeypatch):
    # include/training/ ships to the nodes as files: import it as train.py's own __main__ would.
    monkeypatch.syspath_prepend(str(REPO / "include" / "training"))
    monkeypatch.delenv("FINETUNE_TRAINER", raising=False)
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    return importlib.import_module("train")


def arguments(store: LocalStore, version: str, output: Path, *extra: str) -> list[str]:
    return ["--dataset-uri", str(store.root / "datasets"), "--dataset-version", version, "--output-uri",
            str(output), *extra]


def test_it_fine_tunes_on_the_version_and_beats_both_baselines(dataset, train, tmp_path, capsys):
    store, version = dataset
    output = tmp_path / "models" / version
    assert train.main(arguments(store, version, output, "--hyperparameters", '{"epochs": 3}',
                                "--checkpoint-dir", str(tmp_path / "checkpoints"))) == 0
    assert sorted(path.name for path in output.iterdir()) == [
        "_SUCCESS", "config.json", "metrics.json", "model.safetensors", "tokenizer.json"]
    success = json.loads((output / "_SUCCESS").read_text())
    metrics = success["metrics"]
    print(f"\n{metrics['rows']} rows: accuracy {metrics['accuracy']:.3f}, zero-shot "
          f"{metrics['baselines']['zero_shot']:.3f}, majority {metrics['baselines']['majority']:.3f}, "
          f"{metrics['seconds']} s")
    assert success["version"] == version
    assert sum(metrics["rows"].values()) == 6000  # every ticket of the version, no other
    # The demo's priorities follow the text only in part (the tier and agents' relabelling do not show).
    assert metrics["accuracy"] > metrics["baselines"]["majority"] + 0.03
    assert metrics["accuracy"] > metrics["baselines"]["zero_shot"] + 0.1
    out = capsys.readouterr().out
    assert "public.tickets: 6000 rows" in out and "epoch 3/3" in out
    # A retried job whose model is whole does not train again.
    assert train.main(arguments(store, version, output)) == 0
    assert "is trained already" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hyperparameters", "{epochs: 3}"], "--hyperparameters is not JSON"),
        (["--hyperparameters", "[3]"], "must be a JSON object, got list"),
        (["--hyperparameters", '{"epochs": -3}'], r"out of range: \['epochs'\]"),
        (["--hyperparameters", '{"epoch": 3}'], "unknown hyperparameters"),
    ],
)
def test_bad_hyperparameters_end_with_a_clear_error_and_no_model(dataset, train, tmp_path, capsys, extra, message):
    store, version = dataset
    assert train.main(arguments(store, version, tmp_path / "model", *extra)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "model").exists()


def test_a_version_that_was_never_published_is_an_error_not_a_substitute(dataset, train, tmp_path, capsys):
    store, _ = dataset
    assert train.main(arguments(store, "v000099", tmp_path / "model")) == 2
    assert "no record of dataset version v000099" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_the_ranks_read_disjoint_shares_that_cover_every_file(train, world_size):
    files = [f"s3://b/data/{name}.parquet" for name in "qwertyuiop"]
    shares = [train.Rank(rank, world_size).share(files) for rank in range(world_size)]
    assert sorted(f for share in shares for f in share) == sorted(files)
    assert len({f for share in shares for f in share}) == len(files)


def test_the_rank_comes_from_torchrun_or_srun(train):
    assert train.Rank.from_environment({}) == train.Rank(0, 1)
    assert train.Rank.from_environment({"RANK": "2", "WORLD_SIZE": "4"}) == train.Rank(2, 4)
    assert train.Rank.from_environment({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == train.Rank(1, 2)
    with pytest.raises(train.TrainingInputError, match="RANK=4 is not a rank of WORLD_SIZE=4"):
        train.Rank.from_environment({"RANK": "4", "WORLD_SIZE": "4"})


def test_each_rank_reads_only_its_share_of_the_rows(dataset, train, tmp_path, monkeypatch):
    store, version = dataset
    seen: dict[int, set] = {}

    class Trainer:
        @staticmethod
        def fit(job):
            seen[job.rank.rank] = set(job.read("public.tickets", ["ticket_id"]).column("ticket_id").to_pylist())
            (job.output_dir / "weights.bin").write_bytes(b"\0")
            return {"accuracy": 1.0}

    monkeypatch.setitem(sys.modules, "fake_trainer", Trainer)
    monkeypatch.setenv("FINETUNE_TRAINER", "fake_trainer")
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert train.main(arguments(store, version, tmp_path / f"out{rank}")) == 0
    assert seen[0] and seen[1] and not seen[0] & seen[1] and len(seen[0] | seen[1]) == 6000
    # Only rank 0 writes the model and its marker.
    assert (tmp_path / "out0" / "_SUCCESS").exists() and not (tmp_path / "out1").exists()
