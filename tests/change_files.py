"""Synthetic DMS-format files for the sync's unit tests: public.customers and public.tickets, a full load
and change files after it, deterministic for a given seed.

Test data only: the demo's data comes from a real source database (devstack.support_desk) through the
export and the emulated Snowball.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from finetune_pipeline.datasets.dms_format import OP, SEQ, TS, cdc_file_name, load_file_name, write_dms_file
from finetune_pipeline.datasets.store import ObjectStore, join_key

TIERS = ("free", "pro", "enterprise")
STATUSES = ("open", "pending", "closed")
_FIRST = (
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Radia",
    "Tim",
    "Lin",
    "Sofia",
)
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lee")
_PRODUCTS = ("dashboard", "API", "mobile app", "data export", "SSO login", "webhooks", "billing portal")
# priority -> (category, subject templates, body templates)
CATEGORIES: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    1: (
        "outage",
        (
            "{product} is down",
            "Cannot reach the {product}",
            "{product} returns 500 errors",
        ),
        (
            "Since {time} every request to the {product} fails for our whole team. Production is blocked.",
            "The {product} stopped responding at {time}. None of our users can work. Please escalate.",
        ),
    ),
    2: (
        "billing",
        (
            "Charged twice this month",
            "Invoice amount is wrong",
            "Refund for unused seats",
        ),
        (
            "Our card was charged twice for the {tier} plan on {time}. Please refund the duplicate charge.",
            "The latest invoice lists more seats than we have on the {tier} plan. Can you correct it?",
        ),
    ),
    3: (
        "account",
        (
            "Add a new admin",
            "Change the account owner",
            "Reset two-factor for a user",
        ),
        (
            "Please make our new team lead an admin on the account; the {product} settings are greyed out.",
            "A colleague lost their phone and cannot pass two-factor on the {product}. Can you reset it?",
        ),
    ),
    4: (
        "question",
        (
            "How do I export data?",
            "Is there a limit on the {product}?",
            "Docs for the {product}",
        ),
        (
            "Not urgent: where can I find documentation about rate limits for the {product}?",
            "Just wondering how to schedule a weekly report from the {product}. Thanks!",
        ),
    ),
}

CUSTOMERS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("tier", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
TICKETS_SCHEMA = pa.schema(
    [
        pa.field("ticket_id", pa.int64()),
        pa.field("customer_id", pa.int64()),
        pa.field("subject", pa.string()),
        pa.field("body", pa.string()),
        pa.field("status", pa.string()),
        pa.field("priority", pa.int32()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def dms_sequence(ts: datetime, counter: int) -> str:
    """An $AR_H_CHANGE_SEQ value: YYYYMMDDHHmmSShh (UTC) + 19-digit change number."""
    ts = ts.astimezone(UTC)
    return f"{ts:%Y%m%d%H%M%S}{ts.microsecond // 10000:02d}{counter:019d}"


def _ticket(rng: random.Random, ticket_id: int, customer: dict, updated: datetime) -> dict:
    priority = rng.choice(tuple(CATEGORIES))
    _, subjects, bodies = CATEGORIES[priority]
    fill = {"product": rng.choice(_PRODUCTS), "tier": customer["tier"], "time": f"{updated:%H:%M} UTC"}
    return {
        "ticket_id": ticket_id,
        "customer_id": customer["customer_id"],
        "subject": rng.choice(subjects).format(**fill),
        "body": rng.choice(bodies).format(**fill) if rng.random() > 0.05 else None,
        "status": rng.choices(STATUSES, weights=(5, 2, 3))[0],
        "priority": priority,
        "updated_at": updated,
    }


def _customer(rng: random.Random, customer_id: int, created: datetime) -> dict:
    return {
        "customer_id": customer_id,
        "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "tier": rng.choices(TIERS, weights=(6, 3, 1))[0],
        "created_at": created,
    }


def seed_tables(n_customers: int = 50, n_tickets: int = 200, seed: int = 0) -> dict[str, pa.Table]:
    """The source tables as of the full load, keyed by 'schema.table'."""
    rng = random.Random(seed)
    customers = [
        _customer(rng, i, _EPOCH + timedelta(days=rng.randrange(300), seconds=rng.randrange(86400)))
        for i in range(1, n_customers + 1)
    ]
    tickets = [
        _ticket(rng, i, rng.choice(customers), _EPOCH + timedelta(days=300, minutes=rng.randrange(40000)))
        for i in range(1, n_tickets + 1)
    ]
    return {
        "public.customers": pa.Table.from_pylist(customers, schema=CUSTOMERS_SCHEMA),
        "public.tickets": pa.Table.from_pylist(tickets, schema=TICKETS_SCHEMA),
    }


def as_load(table: pa.Table, load_time: datetime) -> pa.Table:
    """A full-load file's rows: Op=I (IncludeOpForFullLoad), transfer time, no change sequence."""
    n = table.num_rows
    lead = pa.table(
        {
            OP: pa.array(["I"] * n, pa.string()),
            TS: pa.array([load_time] * n, pa.timestamp("us", tz="UTC")),
            SEQ: pa.nulls(n, pa.string()),
        }
    )
    return pa.Table.from_arrays([*lead.columns, *table.columns], names=[OP, TS, SEQ, *table.column_names])


def seed_changes(
    tables: dict[str, pa.Table],
    snapshot_position: datetime,
    n_files: int = 3,
    changes_per_file: int = 20,
    seed: int = 0,
    time_scale: float = 1.0,
) -> dict[str, list[tuple[datetime, pa.Table]]]:
    """CDC files after the snapshot: inserts, updates (status moves, tier changes) and deletes.

    Returns per table a list of (file time, DMS-format table). Commit times increase from the snapshot,
    1-31 s apart times ``time_scale``.
    """
    rng = random.Random(seed + 1)
    customers = {r["customer_id"]: r for r in tables["public.customers"].to_pylist()}
    tickets = {r["ticket_id"]: r for r in tables["public.tickets"].to_pylist()}
    next_customer = max(customers, default=0) + 1
    next_ticket = max(tickets, default=0) + 1
    clock = snapshot_position.astimezone(UTC)
    counter = 0
    out: dict[str, list[tuple[datetime, pa.Table]]] = {"public.customers": [], "public.tickets": []}
    for _ in range(n_files):
        events: dict[str, list[dict]] = {"public.customers": [], "public.tickets": []}
        for _ in range(changes_per_file):
            clock += timedelta(seconds=rng.randint(1, 30), microseconds=rng.randrange(1_000_000)) * time_scale
            counter += 1
            meta = {OP: "", TS: clock, SEQ: dms_sequence(clock, counter)}
            roll = rng.random()
            if roll < 0.15 or not customers:
                row = _customer(rng, next_customer, clock)
                customers[next_customer] = row
                next_customer += 1
                events["public.customers"].append({**meta, OP: "I", **row})
            elif roll < 0.25:
                cid = rng.choice(sorted(customers))
                row = {**customers[cid], "tier": rng.choice(TIERS)}
                customers[cid] = row
                events["public.customers"].append({**meta, OP: "U", **row})
            elif roll < 0.55 or not tickets:
                row = _ticket(rng, next_ticket, customers[rng.choice(sorted(customers))], clock)
                row["status"] = "open"
                tickets[next_ticket] = row
                next_ticket += 1
                events["public.tickets"].append({**meta, OP: "I", **row})
            elif roll < 0.93:
                tid = rng.choice(sorted(tickets))
                moves = {"open": "pending", "pending": "closed", "closed": "open"}
                row = {**tickets[tid], "status": moves[tickets[tid]["status"]], "updated_at": clock}
                tickets[tid] = row
                events["public.tickets"].append({**meta, OP: "U", **row})
            else:
                tid = rng.choice(sorted(tickets))
                row = tickets.pop(tid)
                events["public.tickets"].append({**meta, OP: "D", **row})
        file_time = clock + timedelta(seconds=1)
        for name, rows in events.items():
            if rows:
                base = CUSTOMERS_SCHEMA if name == "public.customers" else TICKETS_SCHEMA
                schema = pa.schema(
                    [
                        pa.field(OP, pa.string()),
                        pa.field(TS, pa.timestamp("us", tz="UTC")),
                        pa.field(SEQ, pa.string()),
                        *base,
                    ]
                )
                out[name].append((file_time, pa.Table.from_pylist(rows, schema=schema)))
    return out


def write_seed(
    store: ObjectStore,
    landing_prefix: str,
    tables: dict[str, pa.Table],
    changes: dict[str, list[tuple[datetime, pa.Table]]] | None = None,
    *,
    load_time: datetime,
    fmt: str = "parquet",
) -> list[str]:
    """Write LOAD00000001 per table plus the CDC files, laid out as the DMS S3 target does. Returns keys."""
    keys = []
    for name, table in tables.items():
        schema_name, table_name = name.split(".", 1)
        key = join_key(landing_prefix, schema_name, table_name, load_file_name(1, fmt))  # type: ignore[arg-type]
        write_dms_file(store, key, as_load(table, load_time), fmt)  # type: ignore[arg-type]
        keys.append(key)
        for file_time, cdc in (changes or {}).get(name, []):
            key = join_key(landing_prefix, schema_name, table_name, cdc_file_name(file_time, fmt))  # type: ignore[arg-type]
            write_dms_file(store, key, cdc, fmt)  # type: ignore[arg-type]
            keys.append(key)
    return keys
