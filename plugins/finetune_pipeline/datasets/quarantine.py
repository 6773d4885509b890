"""Move a bad landing file aside, never delete it, with a JSON report next to it saying why."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from finetune_pipeline.datasets.dms_format import DmsFile, DmsFileError
from finetune_pipeline.datasets.store import ObjectStore, join_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantinedFile:
    table: str
    source_key: str
    quarantine_key: str
    report_key: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def quarantine_file(
    store: ObjectStore,
    f: DmsFile,
    error: DmsFileError,
    *,
    table: str,
    quarantine_prefix: str,
    policy: str,
    now: datetime | None = None,
) -> QuarantinedFile:
    """Write the report, then move the file (copy + delete on S3) to <quarantine>/<schema>/<table>/<name>."""
    schema_name, table_name = table.split(".", 1)
    base = join_key(quarantine_prefix, schema_name, table_name, f.name)
    target = base
    n = 1
    # A second bad file of the same name (a DMS rewrite) must not overwrite the first one's evidence.
    while store.exists(target):
        n += 1
        target = f"{base}.{n}"
    report_key = f"{target}.report.json"
    report = {
        "table": table,
        "source_key": f.key,
        "source_uri": store.uri(f.key),
        "quarantine_key": target,
        "kind": f.kind.value,
        "format": f.fmt,
        "size": f.size,
        "etag": f.etag,
        "reason": error.reason,
        "detail": error.detail,
        "policy": policy,
        "quarantined_at": (now or datetime.now(UTC)).isoformat(),
    }
    store.put_bytes(report_key, json.dumps(report, indent=2).encode())
    store.move(f.key, target)
    log.warning("Quarantined %s -> %s: %s", f.key, target, error)
    return QuarantinedFile(table, f.key, target, report_key, error.reason, error.detail)
