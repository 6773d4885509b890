"""The demo's support desk: deterministic, varied like real tickets, with a label the text predicts in part."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import psycopg

from devstack.support_desk import Trickle, generate_rows, load_support_desk


def tickets(n: int, seed: int = 3) -> list[tuple]:
    return [row for table, row in generate_rows(n // 5, n, seed) if table == "tickets"]


def test_generation_is_deterministic_and_the_text_varies():
    a, b = tickets(3000), tickets(3000)
    assert a == b and a != tickets(3000, seed=4)
    bodies = [row[3] for row in a if row[3]]
    assert len(set(bodies)) / len(bodies) > 0.95  # not a handful of templates
    words = Counter(word for body in bodies for word in re.findall(r"[a-z]+", body.lower()))
    assert len(words) > 300
    assert {row[5] for row in a} == {1, 2, 3, 4}


def _words(row) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", f"{row[2]} {row[3] or ''}".lower()))


def test_the_text_predicts_the_priority_only_in_part():
    """A naive Bayes bag of words beats always guessing the commonest priority, and stays far from perfect."""
    rows = tickets(6000)
    train, test = rows[:5000], rows[5000:]
    prior = Counter(row[5] for row in train)
    counts: dict[int, Counter] = defaultdict(Counter)
    for row in train:
        counts[row[5]].update(_words(row))
    vocabulary = {w for c in counts.values() for w in c}

    def predict(row) -> int:
        def score(label: int) -> float:
            total = sum(counts[label].values()) + len(vocabulary)
            return math.log(prior[label]) + sum(math.log((counts[label][w] + 1) / total) for w in _words(row))

        return max(prior, key=score)

    accuracy = sum(predict(row) == row[5] for row in test) / len(test)
    baseline = prior.most_common(1)[0][1] / len(train)
    assert baseline + 0.1 < accuracy < 0.85, (baseline, accuracy)


def test_load_is_copy_based_idempotent_and_the_trickle_commits_multi_row_transactions(source_db):
    url = source_db.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA desk_test")
    url_schema = url + "?options=-csearch_path%3Ddesk_test"
    try:
        first = load_support_desk(url_schema, customers=200, tickets=1000)
        assert (first.customers, first.tickets) == (200, 1000) and first.messages > 1000
        again = load_support_desk(url_schema, customers=200, tickets=1000)
        assert again.extra == {"existing": True} and again.messages == first.messages
        trickle = Trickle(url_schema, seed=5)
        did = [trickle.step() for _ in range(10)]
        trickle.close()
        assert all(sum(step.values()) >= 2 for step in did)
        assert sum(step["deletes"] for step in did) >= 0 and trickle.committed["transactions"] == 10
        with psycopg.connect(url_schema) as conn:
            assert conn.execute("SELECT count(*) FROM tickets").fetchone()[0] > 1000
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA desk_test CASCADE")
