"""The source database restarted during CDC, as a crash would: every committed change still lands, once.

The source is the real PostgreSQL (wal_level=logical) the demo runs; DMS is localaws's data plane, which reads
the task's replication slot. An immediate stop leaves the slot at its last checkpoint, so changes that were
decoded but not yet written are decoded again after the restart: none may be lost, and the landed stream,
deduplicated as the merge reads it (by commit order and change sequence), must equal what was committed.
"""

from __future__ import annotations

import boto3
from fault_helpers import Figures
from replication_helpers import make_task, wait_for
from replication_workload import BOTH, SCHEMA, Workload, landed

from localaws import control


def test_the_source_restarted_during_cdc_loses_no_change(localaws, source, restart_source_db, record):
    def client(service: str):
        return boto3.client(service, endpoint_url=localaws.endpoint_url, region_name="us-east-1")

    source.execute(SCHEMA)
    workload = Workload(source)
    dms_timing = control.get_timing(localaws.endpoint_url)["dms"]
    lsn = source.create_slot("dms_slot")
    task = make_task(client("dms"), client("s3"), localaws, dms_timing, source, tables=BOTH,
                     postgres={"SlotName": "dms_slot", "PluginName": "test-decoding"})
    completed = 0
    expected, got = [], []
    try:
        task.start(CdcStartPosition=lsn)
        for _ in range(8):
            workload.transaction()
        task.flush()
        wait_for(lambda: task.files(), what="the first files")
        for _ in range(8):
            workload.transaction()  # decoded, still buffered when the server goes down
        workload.conn.close()
        restart_source_db("immediate")
        workload.reconnect()
        for _ in range(8):
            workload.transaction()
        task.flush()
        expected = workload.expected()
        wait_for(lambda: len(landed(task)) >= len(expected), timeout=60, what="every change after the restart")
        got = landed(task)
        completed = int(task.status() == "running")
    finally:
        workload.conn.close()
        if task.status() in ("starting", "running"):
            task.stop()
        lost = len({change[:3] for change in expected} - {change[:3] for change in got})
        record(Figures("source PostgreSQL stopped immediately (as a crash) during CDC, then restarted", 1,
                       completed, 1, 0, lost, [f"{len(expected)} changes committed, {len(got)} landed"]))
    assert completed == 1
    assert got == expected
