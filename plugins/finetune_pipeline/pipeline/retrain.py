"""Whether a published dataset version is worth a training run, and why (the config's ``training.retrain``).

The sync publishes a version every run; training on each would mean hourly training for hourly changes.
What changed between two versions comes from the sync's own running count of CDC events per table
(:attr:`TableVersion.changes_applied`), so no rows are read to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from finetune_pipeline.pipeline.config import RetrainPolicy


@dataclass(frozen=True)
class RetrainDecision:
    train: bool
    reason: str

    def to_dict(self) -> dict:
        return {"train": self.train, "reason": self.reason}


def changed_rows(current, last) -> tuple[int, int]:
    """(rows changed since ``last``, rows ``last`` had). A table rebuilt from a new full load, or new since,
    counts all its rows as changed."""
    changed = 0
    for name, table in current.tables.items():
        before = last.tables.get(name)
        if before is None or before.snapshot_rows != table.snapshot_rows:
            changed += table.rows
        else:
            changed += max(0, table.changes_applied - before.changes_applied)
    return changed, sum(table.rows for table in last.tables.values())


def decide(current, last, last_trained_at: datetime | None, now: datetime, policy: RetrainPolicy) -> RetrainDecision:
    """Train ``current`` (a DatasetVersion) given the last trained one (None: no model yet)?"""
    if last is None:
        return RetrainDecision(True, "no model has been trained yet")
    if current.version == last.version:
        return RetrainDecision(False, f"version {current.version} has a model already")
    changed, base = changed_rows(current, last)
    fraction = changed / max(1, base)
    since = f"since {last.version}, the last trained version"
    if fraction >= policy.min_changed_fraction:
        return RetrainDecision(True, f"{changed} rows changed {since} ({fraction:.1%}, at least "
                                     f"{policy.min_changed_fraction:.1%})")
    hours = (now - last_trained_at).total_seconds() / 3600 if last_trained_at else 0.0
    if changed and policy.max_hours_between is not None and hours >= policy.max_hours_between:
        return RetrainDecision(True, f"{changed} rows changed {since} and {hours:.1f} h have passed (at least "
                                     f"{policy.max_hours_between:g} h)")
    after = "" if policy.max_hours_between is None else f", and {hours:.1f} h of {policy.max_hours_between:g} h"
    return RetrainDecision(False, f"only {changed} rows changed {since} ({fraction:.1%}, under "
                                  f"{policy.min_changed_fraction:.1%}){after} have passed")
