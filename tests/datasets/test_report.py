"""Reports: drift against the previous version, and a self-contained HTML page with inline SVG."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pyarrow as pa
import yaml
from ds_helpers import T0, item_events, item_load, put_cdc, put_load

from finetune_pipeline.datasets.contracts import parse_contract
from finetune_pipeline.datasets.profile import Profile, profile_table
from finetune_pipeline.datasets.report import drift, render_html
from finetune_pipeline.datasets.sync import run_sync

CONTRACT = parse_contract(
    yaml.safe_load("""
table: s.t
primary_key: [id]
columns:
  - {name: id, type: int64, nullable: false}
  - {name: x, type: float64}
""")
)


def _profile(values) -> Profile:
    return profile_table(pa.table({"id": list(range(len(values))), "x": values}), CONTRACT)


def test_drift_flags_a_shifted_distribution():
    base = [float(i % 100) for i in range(5000)]
    same = _profile(base)
    shifted = _profile([v + 60 for v in base])
    assert drift(same, _profile(base))["x"]["psi"] < 0.01
    moved = drift(same, shifted)["x"]
    assert moved["alert"] and moved["psi"] > 1 and moved["mean_shift_sd"] > 1.5
    assert len(moved["edges"]) == len(moved["previous"]) + 1
    assert drift(None, shifted) == {}


def test_profiles_merge_like_one_table():
    values = [float(i) for i in range(3000)]
    whole = _profile(values)
    table = pa.table({"id": list(range(3000)), "x": values})
    merged = Profile()
    for piece in (table.slice(0, 1000), table.slice(1000, 2000)):
        merged.add(profile_table(piece, CONTRACT))
    assert merged.sample_hashes == whole.sample_hashes and merged.sample == whole.sample
    assert merged.moments["x"].mean == whole.moments["x"].mean
    assert Profile.from_json(json.loads(json.dumps(merged.to_json()))).sample == merged.sample


def test_sync_report_html_is_self_contained(store, spec):
    now = T0 + timedelta(hours=1)
    put_load(store, item_load([(i, f"n{i}", i % 50, "new" if i % 3 else None) for i in range(1, 300)]))
    run_sync(store, spec, now=now)
    put_cdc(store, item_events([("U", 5, 1, i, f"m{i}", 900, "done") for i in range(1, 200)]), 6)
    result = run_sync(store, spec, now=now)
    report = json.loads(store.get_bytes(result.report_keys["json"]))
    table = report["tables"]["shop.items"]
    assert table["columns"]["status"]["null_rate"] > 0
    assert table["drift"]["qty"]["alert"]
    assert [h["row_counts"]["shop.items"] for h in report["history"]] == [299, 299]
    html = store.get_bytes(result.report_keys["html"]).decode()
    assert html.startswith("<!doctype html>") and html.count("<svg") >= 3
    assert not re.search(r"<script|<link|src=\"http", html)  # no external resources


def test_html_escapes_values():
    report = {
        "version": "v1",
        "status": "blocked",
        "created_at": "now",
        "previous_version": None,
        "dataset_prefix": "ds",
        "tables": {},
        "quarantined": [],
        "history": [],
        "checks": [
            {
                "table": "<t>",
                "name": "x",
                "severity": "blocking",
                "passed": False,
                "detail": "<script>alert(1)</script>",
                "samples": [],
            }
        ],
    }
    html = render_html(report)
    assert "<script>" not in html and "&lt;script&gt;" in html
