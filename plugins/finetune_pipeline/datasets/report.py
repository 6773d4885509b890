"""A version's report: JSON for machines, one self-contained HTML page (inline SVG, no scripts) for people.

Shows the checks, row counts across versions, null rates per column, and numeric drift against the previous
version (population stability index and mean shift, over the bottom-k samples kept in each profile).
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from finetune_pipeline.datasets.profile import Profile

PSI_ALERT = 0.25


def drift(previous: Profile | None, current: Profile) -> dict[str, dict[str, Any]]:
    """Per numeric column: PSI over the previous sample's deciles, mean shift in previous sds, histograms."""
    out: dict[str, dict[str, Any]] = {}
    if previous is None:
        return out
    for name, cur_values in current.sample.items():
        cur = np.array([v for v in cur_values if v is not None], dtype=float)
        prev = np.array([v for v in previous.sample.get(name, []) if v is not None], dtype=float)
        if cur.size < 2 or prev.size < 2:
            continue
        edges = np.unique(np.quantile(prev, np.linspace(0, 1, 11)))
        if edges.size < 2:
            edges = np.array([prev.min() - 0.5, prev.max() + 0.5])
        inner = edges[1:-1]
        p = np.bincount(np.searchsorted(inner, prev, side="right"), minlength=len(edges) - 1) / prev.size
        c = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(edges) - 1) / cur.size
        eps = 1e-4
        psi = float(np.sum((c - p) * np.log((c + eps) / (p + eps))))
        pm, cm = previous.moments.get(name), current.moments.get(name)
        shift = None
        if pm and cm and pm.std and cm.mean is not None and pm.mean is not None:
            shift = (cm.mean - pm.mean) / pm.std
        lo, hi = float(min(prev.min(), cur.min())), float(max(prev.max(), cur.max()))
        if hi == lo:
            hi = lo + 1.0
        bins = np.linspace(lo, hi, 21)
        out[name] = {
            "psi": round(psi, 6),
            "alert": psi > PSI_ALERT,
            "mean_shift_sd": None if shift is None else round(float(shift), 6),
            "edges": [float(b) for b in bins],
            "previous": (np.histogram(prev, bins)[0] / prev.size).round(6).tolist(),
            "current": (np.histogram(cur, bins)[0] / cur.size).round(6).tolist(),
        }
    return out


def column_summary(profile: Profile) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in profile.nulls:
        entry: dict[str, Any] = {"nulls": profile.nulls[name], "null_rate": round(profile.null_rate(name), 6)}
        m = profile.moments.get(name)
        if m is not None and m.count:
            entry.update(mean=m.mean, std=m.std, min=m.low, max=m.high)
        out[name] = entry
    return out


# ------------------------------------------------------------------------------------------------ SVG


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6 or abs(v) < 1e-2:
        return f"{v:.3g}"
    return f"{v:,.2f}".rstrip("0").rstrip(".")


def svg_line(points: list[tuple[str, float]], width: int = 520, height: int = 180, title: str = "") -> str:
    """A line of values over labelled x positions (row counts across versions)."""
    if not points:
        return ""
    pad_l, pad_b, pad_t = 60, 30, 20
    vals = [v for _, v in points]
    top = max(vals) or 1
    w, h = width - pad_l - 10, height - pad_b - pad_t
    step = w / max(1, len(points) - 1)
    xy = [(pad_l + i * step, pad_t + h - (v / top) * h) for i, (_, v) in enumerate(points)]
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(xy))
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{_e(lbl)}: {int(v):,}</title></circle>'
        for (x, y), (lbl, v) in zip(xy, points, strict=True)
    )
    labels = "".join(
        f'<text x="{x:.1f}" y="{height - 8}" font-size="9" text-anchor="middle">{_e(lbl[-8:])}</text>'
        for i, ((x, _), (lbl, _)) in enumerate(zip(xy, points, strict=True))
        if len(points) <= 12 or i % math.ceil(len(points) / 12) == 0
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f"<title>{_e(title)}</title>"
        f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>'
        f'<text x="{pad_l - 6}" y="{pad_t + 4}" font-size="10" text-anchor="end">{int(top):,}</text>'
        f'<text x="{pad_l - 6}" y="{pad_t + h}" font-size="10" text-anchor="end">0</text>'
        f'<path d="{path}" fill="none" stroke="#2563eb" stroke-width="2"/>{dots}{labels}</svg>'
    )


def svg_bars(items: list[tuple[str, float]], width: int = 520, title: str = "") -> str:
    """Horizontal bars for values in [0, 1] (null rates)."""
    if not items:
        return ""
    row, pad_l = 20, 130
    height = row * len(items) + 10
    w = width - pad_l - 60
    bars = "".join(
        f'<text x="{pad_l - 6}" y="{i * row + 15}" font-size="11" text-anchor="end">{_e(name)}</text>'
        f'<rect x="{pad_l}" y="{i * row + 4}" width="{max(0.0, min(1.0, v)) * w:.1f}" height="{row - 6}" '
        f'fill="{"#dc2626" if v > 0.5 else "#0d9488"}"><title>{_e(name)}: {v:.2%}</title></rect>'
        f'<text x="{pad_l + max(0.0, min(1.0, v)) * w + 4:.1f}" y="{i * row + 15}" font-size="10">'
        f"{v:.1%}</text>"
        for i, (name, v) in enumerate(items)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f"<title>{_e(title)}</title>{bars}</svg>"
    )


def svg_histograms(
    edges: list[float],
    previous: list[float],
    current: list[float],
    title: str = "",
    width: int = 260,
    height: int = 140,
) -> str:
    """Two overlaid histograms (previous grey, current blue) over the same bins."""
    pad_b, pad_t = 22, 16
    h = height - pad_b - pad_t
    n = len(previous)
    bw = (width - 10) / max(1, n)
    top = max([*previous, *current, 1e-9])

    def bars(values: list[float], color: str, opacity: float) -> str:
        return "".join(
            f'<rect x="{5 + i * bw:.1f}" y="{pad_t + h - v / top * h:.1f}" width="{bw - 1:.1f}" '
            f'height="{v / top * h:.1f}" fill="{color}" fill-opacity="{opacity}"/>'
            for i, v in enumerate(values)
        )

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f'<title>{_e(title)}</title><text x="5" y="11" font-size="11">{_e(title)}</text>'
        f"{bars(previous, '#6b7280', 0.5)}{bars(current, '#2563eb', 0.55)}"
        f'<text x="5" y="{height - 6}" font-size="9">{_e(_fmt(edges[0]))}</text>'
        f'<text x="{width - 5}" y="{height - 6}" font-size="9" text-anchor="end">{_e(_fmt(edges[-1]))}</text>'
        "</svg>"
    )


# ------------------------------------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px} table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f5f5f5}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.ok{background:#15803d}.bad{background:#b91c1c}.warn{background:#b45309}.muted{color:#666;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:8px}
"""


def render_html(report: dict[str, Any]) -> str:
    """Self-contained HTML for a report dict built by ``build_report``."""
    status = report["status"]
    badge = {"published": "ok", "blocked": "bad"}.get(status, "warn")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Dataset report {_e(report['version'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Dataset version {_e(report['version'])} <span class='badge {badge}'>{_e(status)}</span></h1>",
        f"<div class='muted'>created {_e(report['created_at'])} &middot; previous "
        f"{_e(report.get('previous_version') or 'none')} &middot; {_e(report['dataset_prefix'])}</div>",
    ]
    checks = sorted(report["checks"], key=lambda c: (c["passed"], c["severity"] != "blocking", c["table"]))
    failed = [c for c in checks if not c["passed"]]
    parts.append(f"<h2>Checks ({len(checks) - len(failed)} passed, {len(failed)} failed)</h2>")
    parts.append(
        "<table><tr><th>table</th><th>check</th><th>severity</th><th>result</th><th>detail</th></tr>"
    )
    for c in checks:
        cls = "ok" if c["passed"] else ("bad" if c["severity"] == "blocking" else "warn")
        sample = f"<div class='muted'>e.g. {_e(c['samples'])}</div>" if c.get("samples") else ""
        parts.append(
            f"<tr><td>{_e(c['table'])}</td><td>{_e(c['name'])}</td><td>{_e(c['severity'])}</td>"
            f"<td><span class='badge {cls}'>{'pass' if c['passed'] else 'fail'}</span></td>"
            f"<td>{_e(c['detail'])}{sample}</td></tr>"
        )
    parts.append("</table>")
    if report["quarantined"]:
        parts.append(
            "<h2>Quarantined files</h2><table><tr><th>file</th><th>moved to</th><th>reason</th></tr>"
        )
        for q in report["quarantined"]:
            parts.append(
                f"<tr><td>{_e(q['source_key'])}</td><td>{_e(q['quarantine_key'])}</td>"
                f"<td>{_e(q['reason'])}: {_e(q['detail'])}</td></tr>"
            )
        parts.append("</table>")
    for name, t in report["tables"].items():
        parts.append(f"<h2>{_e(name)}</h2>")
        ev = t.get("events", {})
        parts.append(
            f"<div>{t['rows']:,} rows &middot; {t.get('tombstones', 0):,} tombstones &middot; "
            f"{t.get('applied_files', 0)} new file(s) &middot; events I {ev.get('I', 0):,} / "
            f"U {ev.get('U', 0):,} / D {ev.get('D', 0):,}, {ev.get('dropped_before_snapshot', 0):,} at or "
            f"before the snapshot, {ev.get('superseded', 0):,} superseded within the run (not spilled) &middot; "
            f"buckets rewritten {t.get('buckets_rewritten', 0)}, kept {t.get('buckets_kept', 0)} &middot; data files "
            f"added {t.get('data_files_added', 0)}, removed {t.get('data_files_removed', 0)}"
            + (f" &middot; columns added {_e(', '.join(t['columns_added']))}" if t.get("columns_added") else "")
            + (" &middot; nothing new: the version is recorded on the table unchanged" if t.get("carried") else "")
            + "</div>"
        )
        points = [
            (h["version"], h["row_counts"].get(name, 0)) for h in report["history"] if name in h["row_counts"]
        ]
        parts.append("<h3>Row count across versions</h3>" + svg_line(points, title=f"{name} rows"))
        cols = t.get("columns", {})
        parts.append(
            "<h3>Null rate per column</h3>"
            + svg_bars([(c, v["null_rate"]) for c, v in cols.items()], title=f"{name} null rates")
        )
        numeric = {c: v for c, v in cols.items() if "mean" in v}
        if numeric:
            parts.append("<table><tr><th>column</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>")
            for c, v in numeric.items():
                parts.append(
                    f"<tr><td>{_e(c)}</td>"
                    + "".join(
                        f"<td>{_e(_fmt(v[k]) if v[k] is not None else '')}</td>"
                        for k in ("mean", "std", "min", "max")
                    )
                    + "</tr>"
                )
            parts.append("</table>")
        d = t.get("drift", {})
        if d:
            parts.append(
                "<h3>Drift against the previous version</h3><div class='muted'>grey: previous, "
                f"blue: this version; PSI above {PSI_ALERT} is flagged</div><div class='grid'>"
            )
            for c, v in d.items():
                shift = "" if v["mean_shift_sd"] is None else f", shift {v['mean_shift_sd']:+.2f} sd"
                flag = " (drift)" if v["alert"] else ""
                parts.append(
                    svg_histograms(
                        v["edges"], v["previous"], v["current"], title=f"{c}: PSI {v['psi']:.3f}{shift}{flag}"
                    )
                )
            parts.append("</div>")
        elif report.get("previous_version"):
            parts.append("<div class='muted'>No numeric drift to show.</div>")
    parts.append("</body></html>")
    return "".join(parts)


def build_report(
    *,
    version: str,
    status: str,
    dataset_prefix: str,
    previous_version: str | None,
    tables: dict[str, dict[str, Any]],
    checks: list[dict[str, Any]],
    quarantined: list[dict[str, Any]],
    history: list[dict[str, Any]],
    created_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "version": version,
        "status": status,
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
        "dataset_prefix": dataset_prefix,
        "previous_version": previous_version,
        "tables": tables,
        "checks": checks,
        "quarantined": quarantined,
        "history": history,
    }
