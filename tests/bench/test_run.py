"""bench/run.py --only: one section of the report rewritten, the others kept."""

from __future__ import annotations

import run


def test_replace_sections_keeps_the_others_and_appends_new_ones():
    report = "# Benchmarks\n\n## Serve\n\nkept\n\n## Failover\n\nold\nold\n\n## Replication\n\nkept too\n"
    out = run.replace_sections(report, {"Failover": ["new", ""], "Extra": ["more"]})
    assert out == ("# Benchmarks\n\n## Serve\n\nkept\n\n## Failover\n\nnew\n\n## Replication\n\nkept too\n"
                   "\n## Extra\n\nmore\n")
