"""A run killed with SIGKILL mid-write never changes ``current``, and running again publishes correctly."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from ds_helpers import T0, item_events, item_load, published_rows, put_cdc, put_load

from finetune_pipeline.datasets.publish import read_current
from finetune_pipeline.datasets.sync import run_sync

# Runs one sync in a child process that kills itself (SIGKILL, no cleanup) at a chosen point of the write.
CHILD = r"""
import os, shutil, signal, sys
from datetime import datetime
from finetune_pipeline.datasets import store as store_mod
from finetune_pipeline.datasets.store import LocalStore
from finetune_pipeline.datasets.sync import SyncSpec, run_sync

root, contracts, point, now = sys.argv[1], sys.argv[2], sys.argv[3], datetime.fromisoformat(sys.argv[4])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "part":
    real_copy = shutil.copyfileobj
    def half_copy(src, dst, length=0):
        dst.write(src.read(max(1, os.fstat(src.fileno()).st_size // 2)))
        dst.flush()
        die()
    store_mod.shutil.copyfileobj = half_copy
elif point == "report":
    real_put = LocalStore.put_bytes
    def put(self, key, data):
        if key.endswith("report.html"):
            die()
        real_put(self, key, data)
    LocalStore.put_bytes = put
elif point == "current":
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith("/current"):
            die()  # the new manifest is fully written to its temp file but not yet renamed
        real_replace(src, dst)
    store_mod.os.replace = replace

spec = SyncSpec(landing_prefix="landing", dataset_prefix="ds", contracts_dir=contracts,
                snapshot_position="2026-11-26T09:00:00+00:00")
run_sync(LocalStore(root), spec, now=now)
print("finished without being killed")
"""


@pytest.mark.parametrize("point", ["part", "report", "current"])
def test_kill_mid_write_leaves_current_unchanged(store, spec, contracts_dir, point):
    now = T0 + timedelta(hours=1)
    spec = spec.model_copy(update={"dataset_prefix": "ds"})
    put_load(store, item_load([(i, f"n{i}", i, "new") for i in range(1, 51)]))
    first = run_sync(store, spec, now=now)
    before = store.get_bytes("ds/current")
    put_cdc(
        store,
        item_events(
            [
                ("U", 5, 1, 3, "three", 3, "done"),
                ("D", 6, 2, 4, "x", 1, "new"),
                ("I", 7, 3, 99, "new", 9, "new"),
            ]
        ),
        8,
    )

    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(store.root),
            str(contracts_dir),
            point,
            now.isoformat(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert store.get_bytes("ds/current") == before
    assert read_current(store, "ds").version == first.version
    # Nothing the killed run wrote is visible as an object (temp files are dot-files).
    leftovers = [i.key for i in store.list_after("ds/")]
    assert all("/." not in k for k in leftovers)

    again = run_sync(store, spec, now=now)
    assert again.published and again.previous_version == first.version
    rows = published_rows(store, spec)
    assert len(rows) == 50 and rows[3]["name"] == "three" and 4 not in rows and rows[99]["name"] == "new"
    # Only the published versions remain; the killed attempt's folder was reused or removed.
    versions = sorted(d.rstrip("/").rsplit("/", 1)[-1] for d in store.list_dirs("ds/versions"))
    assert versions == sorted([first.version, again.version])
