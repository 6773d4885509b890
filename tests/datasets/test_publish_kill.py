"""A run killed with SIGKILL mid-write publishes nothing, and running again publishes correctly.

Kill points: while a data file is being written, while the report is written, inside the catalog commit
(the new metadata file written, the catalog's pointer not yet swapped), and between the commits of a
two-table dataset, where the version is on one table only and must stay unpublished until the next run
completes it under the same number.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from ds_helpers import (
    ITEMS_YAML,
    T0,
    iceberg_table,
    item_events,
    item_load,
    published_rows,
    put_cdc,
    put_load,
    versions,
)

from finetune_pipeline.datasets.catalog import load
from finetune_pipeline.datasets.iceberg_tables import referenced_files
from finetune_pipeline.datasets.reader import VersionNotFound, open_version
from finetune_pipeline.datasets.sync import run_sync

# Runs one sync in a child process that kills itself (SIGKILL, no cleanup) at a chosen point of the write.
CHILD = r"""
import os, signal, sys
from datetime import datetime
from finetune_pipeline.datasets import iceberg_tables
from finetune_pipeline.datasets.catalog import CatalogSpec
from finetune_pipeline.datasets.store import LocalStore
from finetune_pipeline.datasets.sync import SyncSpec, run_sync

root, contracts, point, now, uri, warehouse = sys.argv[1:7]
now = datetime.fromisoformat(now)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "data":
    real_add = iceberg_tables.DataFileWriter.add
    def add(self, table):
        real_add(self, table.slice(0, max(1, table.num_rows // 2)))
        self._flush()  # written now, not gathered into a later row group
        self._stream.flush()
        die()  # half a data file written, never closed
    iceberg_tables.DataFileWriter.add = add
elif point == "report":
    real_put = LocalStore.put_bytes
    def put(self, key, data):
        if key.endswith("report.html"):
            die()
        real_put(self, key, data)
    LocalStore.put_bytes = put
elif point == "commit":
    from pyiceberg.catalog.sql import SqlCatalog
    real_write = SqlCatalog._write_metadata
    def write(*args, **kwargs):
        real_write(*args, **kwargs)
        die()  # the new metadata file is written, the catalog still points at the old one
    SqlCatalog._write_metadata = staticmethod(write)
elif point == "between":
    real_commit = iceberg_tables.TableWrite.commit
    def commit(self, **kwargs):
        snapshot_id = real_commit(self, **kwargs)
        die()  # the first table carries the version, the second does not
    iceberg_tables.TableWrite.commit = commit

spec = SyncSpec(landing_prefix="landing", dataset_prefix="ds", contracts_dir=contracts,
                snapshot_position="2026-11-26T09:00:00+00:00", catalog=CatalogSpec(uri=uri, warehouse=warehouse))
run_sync(LocalStore(root), spec, now=now)
print("finished without being killed")
"""

NOW = T0 + timedelta(hours=1)


def _killed_run(store, spec, contracts_dir, point: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(store.root), str(contracts_dir), point, NOW.isoformat(),
         spec.catalog.uri, spec.catalog.warehouse],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr


def _unreferenced(store, spec, tables=("shop.items",)) -> list[str]:
    needed = set()
    for t in tables:
        needed |= {store.key_of(f) for f in referenced_files(iceberg_table(spec, t))}
    return [i.key for i in store.list_after("warehouse/") if i.key.endswith((".parquet", ".avro"))
            and i.key not in needed]  # fmt: skip


@pytest.mark.parametrize("point", ["data", "report", "commit"])
def test_kill_mid_write_publishes_nothing(store, spec, contracts_dir, point):
    spec = spec.model_copy(update={"dataset_prefix": "ds"})
    put_load(store, item_load([(i, f"n{i}", i, "new") for i in range(1, 51)]))
    first = run_sync(store, spec, now=NOW)
    before = iceberg_table(spec).metadata_location
    rows_before = published_rows(store, spec)
    changes = [("U", 5, 1, 3, "three", 3, "done"), ("D", 6, 2, 4, "x", 1, "new"), ("I", 7, 3, 99, "new", 9, "new")]
    put_cdc(store, item_events(changes), 8)

    _killed_run(store, spec, contracts_dir, point)
    assert iceberg_table(spec).metadata_location == before
    assert versions(spec) == [first.version]
    assert published_rows(store, spec) == rows_before
    if point != "report":
        assert _unreferenced(store, spec)  # what the killed run wrote is there, but nothing references it

    # The retry: same version number, the right rows, and (grace 0) the killed run's files cleaned up.
    again = run_sync(store, spec.model_copy(update={"orphan_file_grace": timedelta(0)}), now=NOW)
    assert again.published and again.previous_version == first.version and again.version == "v000002"
    rows = published_rows(store, spec)
    assert len(rows) == 50 and rows[3]["name"] == "three" and 4 not in rows and rows[99]["name"] == "new"
    table = iceberg_table(spec)
    assert sorted(n for n, r in table.refs().items() if r.snapshot_ref_type.value == "tag") == ["v000001", "v000002"]
    assert len(table.snapshots()) == 2
    assert _unreferenced(store, spec) == []


def test_kill_between_table_commits_leaves_the_version_unpublished(store, spec, contracts_dir):
    (contracts_dir / "shop.parts.yaml").write_text(ITEMS_YAML.replace("shop.items", "shop.parts"))
    spec = spec.model_copy(update={"dataset_prefix": "ds"})
    both = ("shop.items", "shop.parts")
    for path in ("shop/items", "shop/parts"):
        put_load(store, item_load([(i, f"n{i}", i, "new") for i in range(1, 21)]), table_path=path)
    first = run_sync(store, spec, now=NOW)
    assert first.version == "v000001" and set(first.row_counts) == set(both)
    for path in ("shop/items", "shop/parts"):
        put_cdc(store, item_events([("U", 5, 1, 3, "three", 3, "done")]), 8, table_path=path)

    _killed_run(store, spec, contracts_dir, "between")
    # The first table (in name order) carries v000002, the second does not: not published.
    tags = {t: set(iceberg_table(spec, t).refs()) - {"main"} for t in both}
    assert tags == {"shop.items": {"v000001", "v000002"}, "shop.parts": {"v000001"}}
    assert versions(spec) == ["v000001"]
    catalog = load(spec.catalog)
    assert open_version(catalog, "finetune").version == "v000001"
    with pytest.raises(VersionNotFound, match=r"v000002 is not published: tables \['shop.parts'\] lack its tag"):
        open_version(catalog, "finetune", "v000002")
    assert published_rows(store, spec, "shop.parts")[3]["name"] == "n3"

    # More changes land; the next run first completes v000002 (only the lagging table is committed).
    put_cdc(store, item_events([("U", 20, 2, 4, "four", 4, "done")]), 21, table_path="shop/items")
    completed = run_sync(store, spec, now=NOW)
    assert completed.published and completed.version == "v000002" and completed.previous_version == "v000001"
    assert versions(spec) == ["v000001", "v000002"]
    assert len(iceberg_table(spec, "shop.items").snapshots()) == 2  # v000002 was not committed twice
    for t in both:
        assert published_rows(store, spec, t, version="v000002")[3]["name"] == "three"
    assert published_rows(store, spec, "shop.items", version="v000002")[4]["name"] == "n4"

    # The change to shop.items that waited goes into the next version.
    then = run_sync(store, spec, now=NOW)
    assert then.published and then.version == "v000003"
    assert published_rows(store, spec, "shop.items")[4]["name"] == "four"
    assert published_rows(store, spec, "shop.parts")[3]["name"] == "three"
