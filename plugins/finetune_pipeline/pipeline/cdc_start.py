"""Where CDC starts, as the published snapshot manifest says: DMS's CdcStartPosition and, for PostgreSQL, the slot.

The export writes, and the bulk transfer publishes at ``<landing>/_snapshot/manifest.json``, the keys read here:
``engine`` (``postgres`` or ``mysql``), ``cdc_start_position`` (exactly what DMS's CdcStartPosition takes: the
slot's consistent-point LSN as PostgreSQL prints it, ``0/1AF7CB8``, or MySQL's ``binlog-file:position``) and, for
PostgreSQL, ``slot`` (``{"name": ..., "plugin": "test_decoding"}``). DMS cannot start a PostgreSQL task at a time
(CHAP_Task.CDC: "PostgreSQL as a source doesn't support a custom CDC start time"), so there is no fallback to
``snapshot_position``: a manifest without these keys is from an export that predates them, and must be redone.

Only the documented keys are read, so the manifest's other members (files, checksums, counts) may grow freely.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# DMS's PluginName for each slot plugin it reads (PostgreSQLSettings.PluginName).
DMS_PLUGIN_NAMES = {"test_decoding": "test-decoding", "pglogical": "pglogical"}
_LSN = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")
_BINLOG = re.compile(r"^[^\s:]+:\d+$")


class CdcStartError(ValueError):
    """The manifest cannot tell where CDC starts; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class CdcStart:
    engine: str
    position: str  # DMS CdcStartPosition
    slot_name: str | None = None  # PostgreSQL only
    plugin: str | None = None  # the slot's plugin, as PostgreSQL names it

    @property
    def dms_plugin_name(self) -> str | None:
        return DMS_PLUGIN_NAMES.get(self.plugin or "")

    def as_dict(self) -> dict:
        return {"engine": self.engine, "cdc_start_position": self.position, "slot_name": self.slot_name,
                "plugin_name": self.dms_plugin_name}  # fmt: skip


def parse_cdc_start(text: str, source: str, engine: str, slot_name: str | None = None) -> CdcStart:
    """
    The CDC start in a manifest's JSON text.

    :param source: Where the text comes from, for the messages.
    :param engine: The configured source engine; the manifest must be of the same.
    :param slot_name: The configured slot name; if given, the manifest's slot must be it.
    :raises CdcStartError: on anything missing or malformed.
    """
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise CdcStartError(f"{source} is not JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise CdcStartError(f"{source} is not a JSON object.")
    redo = "Re-run the snapshot export (it records where CDC starts), then the bulk transfer."
    position = manifest.get("cdc_start_position")
    if not position:
        raise CdcStartError(
            f"{source} has no cdc_start_position. DMS cannot start PostgreSQL CDC at a time, only at an LSN. {redo}"
        )
    found_engine = manifest.get("engine")
    if found_engine != engine:
        raise CdcStartError(f"{source} is an export of a {found_engine!r} source, but source.engine is {engine!r}.")
    if engine == "mysql":
        if not _BINLOG.match(str(position)):
            raise CdcStartError(f"{source}: cdc_start_position {position!r} is not a MySQL binlog-file:position.")
        return CdcStart(engine, str(position))
    if not _LSN.match(str(position)):
        raise CdcStartError(f"{source}: cdc_start_position {position!r} is not a PostgreSQL LSN like 0/1AF7CB8.")
    slot = manifest.get("slot")
    if not isinstance(slot, dict) or not slot.get("name"):
        raise CdcStartError(f"{source} names no replication slot (slot.name): DMS needs the slot the export made.")
    plugin = slot.get("plugin")
    if plugin not in DMS_PLUGIN_NAMES:
        raise CdcStartError(
            f"{source}: slot {slot['name']} was made with {plugin!r}; DMS reads only test_decoding or pglogical "
            f"slots. {redo}"
        )
    if slot_name and slot["name"] != slot_name:
        raise CdcStartError(
            f"{source}: the export made slot {slot['name']}, but source.slot_name is {slot_name}. Use one name."
        )
    return CdcStart(engine, str(position), slot["name"], plugin)
