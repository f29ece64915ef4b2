"""GX contract validation: its counts by rule equal ingestion's quarantine counts (SPEC §2)."""

from __future__ import annotations

import json

import pytest

from orchestration.contract import CONTRACTS
from orchestration.ingest import ingest_source
from orchestration.quality import build_suite, expectation_specs, mask_phone, validate_contract
from test_ingest_rules import CASES, GOOD, HEADERS


@pytest.mark.parametrize("source", sorted(HEADERS))
def test_gx_counts_equal_quarantine_counts(source, con, settings, land):
    bad = [row for (s, _), (row, _) in CASES.items() if s == source]
    # two files in one run, one validation: a mixed dirty batch plus extra breaks of the same rules
    land(f"{source}/dt=2024-01-31/a.csv", "\n".join([HEADERS[source], GOOD[source], *bad, GOOD[source]]) + "\n")
    land(f"{source}/dt=2024-02-01/b.csv", "\n".join([HEADERS[source], *bad[:5], GOOD[source]]) + "\n")
    report = ingest_source(con, source, settings, "run")
    v = validate_contract(source, report.frame)
    sql_counts = dict(con.execute("SELECT r, count(*) FROM (SELECT unnest(string_split(rules, ',')) AS r FROM raw.quarantine) GROUP BY r").fetchall())
    assert {k: n for k, n in v.unexpected_by_rule.items() if n} == sql_counts
    assert v.unexpected_by_rule == report.quarantine_by_rule
    assert v.evaluated_rows == report.rows_read == len(bad) * 2 - (len(bad) - 5) + 3
    assert not v.success
    assert set(v.examples_by_rule) == set(sql_counts)
    assert all(1 <= len(ex) <= 5 for ex in v.examples_by_rule.values())
    json.dumps(v.to_metadata())  # Dagster metadata must be JSON-serialisable
    # validated in slices of 3 rows (GX sees each slice on its own): the same counts, rows and examples
    sliced = validate_contract(source, report.frame, chunk_rows=3)
    assert sliced.unexpected_by_rule == report.quarantine_by_rule
    assert sliced.examples_by_rule == v.examples_by_rule
    assert [e["unexpected_count"] for e in sliced.expectation_results] == [e["unexpected_count"] for e in v.expectation_results]
    assert sliced.success is False and sliced.evaluated_rows == v.evaluated_rows


def test_clean_batch_passes_and_empty_frame(con, settings, land):
    land("orders/orders_20240131.csv", "\n".join([HEADERS["orders"], GOOD["orders"]]) + "\n")
    report = ingest_source(con, "orders", settings, "run")
    v = validate_contract("orders", report.frame)
    assert v.success and v.evaluated_rows == 1 and not any(v.unexpected_by_rule.values())
    empty = validate_contract("referrals", ingest_source(con, "referrals", settings, "run").frame)
    assert empty.success and empty.evaluated_rows == 0


def test_suite_tags_every_expectation_with_its_rule():
    import great_expectations as gx

    gx.get_context(mode="ephemeral")
    for source, c in CONTRACTS.items():
        suite = build_suite(source)
        tagged = {e.meta["rule"] for e in suite.expectations}
        assert tagged == {r.name for r in c.rules}
        assert len(suite.expectations) == len(expectation_specs(c))


def test_phone_masking_in_examples(con, settings, land):
    land("channel_events/ce_20240131.csv", "\n".join([
        HEADERS["channel_events"],
        "b1,2024-01-31T10:00:00+08:00,wecom,purchase,,,,+86 139-0013-9000,,,",
    ]) + "\n")
    v = validate_contract("channel_events", ingest_source(con, "channel_events", settings, "run").frame)
    assert mask_phone("13800138000") == "138****8000"
    text = json.dumps(v.to_metadata(), ensure_ascii=False)
    assert "13900139000" not in text and "139-0013-9000" not in text
    assert v.unexpected_by_rule["event_type.in_set"] == 1
