"""GX contract validation (GX's SQL data source on DuckDB): its counts by rule equal ingestion's quarantine
counts (SPEC §2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

import orchestration.quality as quality
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
    # by hand, from the cases alone: every bad row of file a, the first five again in file b, each counted for
    # its rule (or for every rule it is listed as breaking)
    expected = Counter()
    for i, ((_, rule), (_, breaks)) in enumerate((k, c) for k, c in CASES.items() if k[0] == source):
        for r in breaks or (rule,):
            expected[r] += 2 if i < 5 else 1
    assert {k: n for k, n in v.unexpected_by_rule.items() if n} == dict(expected)


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


def test_a_phone_in_any_column_of_an_example_is_masked(con, settings, land):
    """Shifted columns put phones where no phone belongs (the privacy review found 13912345604 clear in an
    event_type example); every text value of an example is masked, in every spelling the marts' macro knows."""
    land("channel_events/ce_20240131.csv", "\n".join([
        HEADERS["channel_events"],
        "b1,2024-01-31T10:00:00+08:00,139.1234.5605,13912345604,,,,,,,",
        "b2,2024-01-31T10:00:00+08:00,１３９１２３４５６０６,call +86 139 1234 5607,,,,,,,",
    ]) + "\n")
    v = validate_contract("channel_events", ingest_source(con, "channel_events", settings, "run").frame)
    assert v.unexpected_by_rule["event_type.in_set"] == 2 and v.unexpected_by_rule["channel.in_set"] == 2
    text = json.dumps(v.to_metadata(), ensure_ascii=False)
    for clear in ("13912345604", "139.1234.5605", "１３９１２３４５６０６", "139 1234 5607", "1234"):
        assert clear not in text, clear
    for masked in ("139****5604", "139****5605", "139****5606", "call 139****5607"):
        assert masked in text, masked


# channel_events rows as ingestion's frame has them (typed, delivered, helpers), written by hand
_LIMIT = pd.Timestamp("2024-02-02 00:00", tz="Asia/Shanghai")  # batch date 2024-01-31 + 2 days


def _events_frame() -> pd.DataFrame:
    at = pd.Timestamp("2024-01-31 10:00", tz="Asia/Shanghai")
    return pd.DataFrame({
        "_file_id": [7, 7, 7, 7],
        "_row_number": [1, 2, 3, 4],
        "event_id": ["e1", None, "e3", "e4"],
        "event_id__delivered": ["e1", None, "e3", "e4"],
        "occurred_at": [at, at, _LIMIT, at],
        "occurred_at__delivered": ["2024-01-31 10:00"] * 2 + ["2024-02-02 00:00"] + ["2024-01-31 10:00"],
        "channel": ["wecom", "wecom", "wecom", "weibo"],
        "channel__delivered": ["wecom", "wecom", "wecom", "weibo"],
        "event_type": ["add_contact"] * 4,
        "event_type__delivered": ["add_contact"] * 4,
        "phone": pd.array(["13800138000", None, None, None], dtype="string"),
        "phone__delivered": pd.array(["13800138000", None, None, None], dtype="string"),
        "h__row_malformed__flag": [0, 0, 0, 0],
        "h__identifier_required__count": [1, 1, 0, 1],
        "h__batch_limit": [_LIMIT] * 4,
    })


def test_sql_validation_reports_broken_rows_on_one_kept_connection():
    """Without GX keeping one DuckDB connection (quality._persist_duckdb_connections) every SQL metric comes back
    empty and nothing would be counted: this frame's broken rows must be reported, by rule and by row."""
    v = validate_contract("channel_events", _events_frame())  # a pandas frame: written to Parquet, same SQL path
    assert {k: n for k, n in v.unexpected_by_rule.items() if n} == {
        "event_id.required": 1,  # row 2
        "identifier.required": 1,  # row 3: no identifier
        "timestamp.after_batch": 1,  # row 3: at the limit, not before it
        "channel.in_set": 1,  # row 4
    }
    assert v.evaluated_rows == 4 and v.success is False
    assert [(e["_file_id"], e["_row_number"]) for e in v.examples_by_rule["timestamp.after_batch"]] == [(7, 3)]
    assert v.examples_by_rule["timestamp.after_batch"][0]["occurred_at"] == "2024-02-02T00:00:00+08:00"
    from great_expectations.execution_engine import sqlalchemy_execution_engine as see

    assert "duckdb" in see._PERSISTED_CONNECTION_DIALECTS
    quality._persist_duckdb_connections()  # idempotent
    assert sum(d == "duckdb" for d in see._PERSISTED_CONNECTION_DIALECTS) == 1


def test_without_a_kept_connection_validation_fails_loudly(monkeypatch):
    from great_expectations.execution_engine import sqlalchemy_execution_engine as see

    quality._persist_duckdb_connections()
    monkeypatch.setattr(see, "_PERSISTED_CONNECTION_DIALECTS", tuple(d for d in see._PERSISTED_CONNECTION_DIALECTS if d != "duckdb"))
    monkeypatch.setattr(quality, "_persist_duckdb_connections", lambda: None)
    with pytest.raises(RuntimeError, match="persisted connection"):
        validate_contract("channel_events", _events_frame())
    # and were that check gone, GX's nested metric errors ("list index out of range") still stop it
    monkeypatch.setattr(quality, "_check_persisted", lambda engine: None)
    with pytest.raises(RuntimeError, match="list index out of range"):
        validate_contract("channel_events", _events_frame())


def test_a_nested_metric_error_raises():
    """GX reports a SQL metric's error inside exception_info, keyed by metric id, and marks the expectation as
    failed with no count: validation must raise instead of counting 0."""
    frame = _events_frame()
    frame["h__identifier_required__count"] = ["1", "1", "x", "1"]  # text: DuckDB cannot compare it with 1
    with pytest.raises(RuntimeError, match=r"identifier\.required.*MetricConfigurationID.*Cannot compare"):
        validate_contract("channel_events", frame)
    assert quality._metric_errors({"raised_exception": False, "exception_message": None}) == []
    assert quality._metric_errors({"m1": {"raised_exception": False}, "m2": {"raised_exception": True, "exception_message": "boom"}}) == ["m2: boom"]


def test_null_unless_value_counts_like_the_quarantine(con, settings, land):
    """referee.required applies unless status is invited: a NULL status is not invited (SQL's NOT IN alone would
    skip those rows)."""
    t = "2024-01-31 12:00,2024-01-30 09:00,share_link"
    land("referrals/referrals_20240131.csv", "\n".join([
        HEADERS["referrals"],
        f"n1,{t},,m1,,,,,,,,0",  # no status, no referee: status.required, referee.required
        f"n2,{t},invited,m1,,,,,,,,0",  # invited, no referee: fine
        f"n3,{t}, Invited ,m1,,,,,,,,0",  # the same once trimmed and lower-cased: fine
        f"n4,{t},registered,m1,,,,,,,,0",  # referee.required
        f"n5,{t},bogus,m1,,,,,,,,0",  # status.in_set, referee.required
        f"n6,{t},,m1,,,ro1,,,,,0",  # status.required
        f"n7,{t},,m1,,,null,,,,,0",  # a placeholder is no referee: status.required, referee.required
    ]) + "\n")
    report = ingest_source(con, "referrals", settings, "run")
    v = validate_contract("referrals", report.frame)
    report.frame.close()
    assert {k: n for k, n in v.unexpected_by_rule.items() if n} == {
        "status.required": 3, "referee.required": 4, "status.in_set": 1}
    assert v.unexpected_by_rule == report.quarantine_by_rule
    assert [e["referral_id"] for e in v.examples_by_rule["referee.required"]] == ["n1", "n4", "n5", "n7"]


def test_a_row_failing_two_expectations_of_one_rule_counts_once(con, settings, land, monkeypatch):
    """timestamp.after_batch has one expectation per timestamp column of orders. Where two or more of them
    find rows, validation lists those rules' rows whole (a second, COMPLETE validation of those rules only)
    and counts a row once; where one does, its count is the rule's."""
    limit_broken = "2024-02-03 00:00:00"  # after the batch limit of 2024-01-31's files (2024-02-02 00:00)
    rows = [GOOD["orders"].replace("g1,", f"ok{i},") for i in range(7)]
    cols = HEADERS["orders"].split(",")

    def order(order_id, **values):
        fields = GOOD["orders"].split(",")
        fields[0] = order_id
        for name, value in values.items():
            fields[cols.index(name)] = value
        return ",".join(fields)

    rows[1] = order("t1", updated_at=limit_broken, paid_at=limit_broken)  # two of the rule's expectations
    rows[4] = order("t2", updated_at=limit_broken)  # one
    rows[5] = order("t4", created_at="2024-01-31 09:00:00", paid_at=limit_broken)  # paid_at only
    rows[6] = order("t3", updated_at=limit_broken, created_at="2024-02-02 23:00:00", paid_at=limit_broken)  # three
    rows.append(order("x1", channel="carrier_pigeon"))  # channel.in_set: one expectation, one row
    land("orders/orders_20240131.csv", "\n".join([HEADERS["orders"], *rows]) + "\n")
    report = ingest_source(con, "orders", settings, "run")
    calls = []
    real = quality._results

    def spy(*args, **kwargs):
        calls.append((sorted({(e.meta or {}).get("rule") for e in args[3].expectations}), kwargs.get("complete")))
        return real(*args, **kwargs)

    monkeypatch.setattr(quality, "_results", spy)
    v = validate_contract("orders", report.frame)
    report.frame.close()
    # four rows: not the largest expectation's count (3), nor the sum (3 + 1 + 3)
    assert {k: n for k, n in v.unexpected_by_rule.items() if n} == {"timestamp.after_batch": 4, "channel.in_set": 1}
    assert v.unexpected_by_rule == report.quarantine_by_rule
    assert [e["order_id"] for e in v.examples_by_rule["timestamp.after_batch"]] == ["t1", "t2", "t4", "t3"]
    assert [e["order_id"] for e in v.examples_by_rule["channel.in_set"]] == ["x1"]
    by_expectation = {e["column"]: e["unexpected_count"] for e in v.expectation_results if e["rule"] == "timestamp.after_batch"}
    assert by_expectation == {"h__batch_limit vs updated_at": 3, "h__batch_limit vs created_at": 1, "h__batch_limit vs paid_at": 3}
    assert calls[1:] == [(["timestamp.after_batch"], True)] and calls[0][1] is False


def test_the_memory_limit_reaches_gx_duckdb_connection():
    """GX's DuckDB runs under the setting duckdb_memory_limit, like every other DuckDB privdom opens (the
    statements GX's connection executes are watched through SQLAlchemy's events)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[str] = []

    def watch(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", watch)
    try:
        v = validate_contract("channel_events", _events_frame(), memory_limit="64MB")
    finally:
        event.remove(Engine, "before_cursor_execute", watch)
    assert "SET memory_limit = '64MB'" in seen
    assert v.unexpected_by_rule["channel.in_set"] == 1  # and the validation ran under it


def test_gx_import_leaves_scipy_stats_lazy_until_used(tmp_path):
    """GX imports scipy.stats for expectations privdom does not use; _context registers it as a lazy module
    first (~0.35 s of every run). It must stay unexecuted through GX's import and work when first used."""
    code = textwrap.dedent(
        """
        import sys, types
        assert "scipy.stats" not in sys.modules and "great_expectations" not in sys.modules
        from orchestration import quality
        quality._context()
        print(type(sys.modules["scipy.stats"]) is types.ModuleType)
        # the expectation that pulled it in still works: it runs scipy.stats on first use
        from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl
        print(round(kl.stats.entropy([0.5, 0.5], [0.9, 0.1]), 4))
        print(type(sys.modules["scipy.stats"]) is types.ModuleType, sys.modules["scipy.stats"] is kl.stats)
        """
    )
    # a script, not `python -c`: pyspark (imported by GX) takes a main module without __file__ for its doctests
    # and exits the process with status 0
    script = tmp_path / "lazy_stats.py"
    script.write_text(code, encoding="utf-8")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    # 0.5·ln(0.5/0.9) + 0.5·ln(0.5/0.1) = 0.5·(−0.5878) + 0.5·1.6094 = 0.5108
    assert done.stdout.split() == ["False", "0.5108", "True", "True"]


def test_validation_works_in_a_process_whose_main_module_has_no_file():
    """Dagster's run workers (UI, sensor, schedule and backfill runs) are spawned with a bare `-c` main module,
    which PySpark, imported by GX, takes for a doctest run: it called sys.exit(0), and every such run that
    validated new rows failed with `SystemExit: 0`. `python -c` is the same kind of process. PySpark's
    FutureWarning about pandas is not printed either."""
    code = textwrap.dedent(
        """
        import pathlib, sys, tempfile
        import duckdb
        from orchestration.ingest import ingest_source
        from orchestration.quality import validate_contract
        from orchestration.settings import load_settings
        from tests.test_ingest_rules import CASES, GOOD, HEADERS
        settings = load_settings(pathlib.Path(tempfile.mkdtemp()) / "data")
        path = settings.landing_dir / "orders" / "orders_20240131.csv"
        path.parent.mkdir(parents=True)
        path.write_text("\\n".join([HEADERS["orders"], GOOD["orders"], CASES[("orders", "gross_amount.type")][0]]) + "\\n")
        report = ingest_source(duckdb.connect(), "orders", settings, "run")
        v = validate_contract("orders", report.frame)
        print(v.evaluated_rows, *sorted(k for k, n in v.unexpected_by_rule.items() if n))
        """
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    # one good row and one whose gross amount is not a whole number of cents
    assert (done.returncode, done.stdout.split()) == (0, ["2", "gross_amount.type"]), done.stderr
    assert "Skipping doctests" not in done.stderr and "FutureWarning" not in done.stderr, done.stderr


def test_a_thread_that_asks_for_gx_while_another_imports_it_gets_the_whole_module():
    """Python lists a module in sys.modules when its import starts: a second thread that took it from there got a
    module without its names (GX's validation runs in a thread beside the load). It waits for the import."""
    code = textwrap.dedent(
        """
        import sys, threading, time
        from orchestration import quality
        first = threading.Thread(target=quality._import_gx)
        first.start()
        while "great_expectations" not in sys.modules:
            time.sleep(0.0005)
        gx = quality._import_gx()
        print(hasattr(gx, "get_context"), hasattr(gx, "ExpectationSuite"))
        first.join()
        """
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert (done.returncode, done.stdout.split()) == (0, ["True", "True"]), done.stderr


def test_a_quarantine_share_within_the_limit_warns_with_its_figures():
    """The WARN result of quarantine_share said nothing in the run summary ("[WARN] raw/orders · quarantine_share"):
    it names the rows, the share, the limit and the rules; above the limit it fails; none quarantined passes."""
    import dagster as dg

    from orchestration.defs.ingest import quarantine_share_check
    from orchestration.ingest import FileResult, SourceIngestReport

    report = SourceIngestReport("orders", "run", rows_read=400, rows_loaded=396, rows_quarantined=4,
                                quarantine_by_rule={"paid_at.required": 1, "gross_amount.type": 3, "status.in_set": 0})
    report.files = [FileResult("orders/orders_20240530.csv", "loaded", 7, None, rows_read=300, rows_loaded=297, rows_quarantined=3),
                    FileResult("orders/orders_20240529.csv", "loaded", 6, None, rows_read=100, rows_loaded=99, rows_quarantined=1)]
    warn = quarantine_share_check(report, 0.05)
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    # the steward review: the warning named no file and no way to the rows
    assert warn.description == ("4 of this run's 400 new rows (1.00%) were quarantined, within the 5.00% limit; "
                                "by rule: gross_amount.type 3, paid_at.required 1; in orders/orders_20240530.csv 3, "
                                "orders/orders_20240529.csv 1 (`privdom quarantine` lists them)")
    error = quarantine_share_check(report, 0.005)
    assert error.severity == dg.AssetCheckSeverity.ERROR
    # from the runbook review: a blocked run named neither the rules, nor the files, nor what the next run does
    assert error.description == ("4 of this run's 400 new rows (1.00%) were quarantined, above the 0.50% limit; "
                                 "by rule: gross_amount.type 3, paid_at.required 1; in orders/orders_20240530.csv 3, "
                                 "orders/orders_20240529.csv 1: exports and syncs wait, and the next run exports without "
                                 "these rows; to count them, deliver them corrected before it, under a new name "
                                 "(`privdom quarantine --csv` writes them out), or pause the schedule")
    clean = SourceIngestReport("orders", "run", rows_read=400, rows_loaded=400)
    assert quarantine_share_check(clean, 0.05).passed and quarantine_share_check(clean, 0.05).description is None


def test_the_columns_check_warns_of_files_with_a_likely_renamed_column():
    import dagster as dg

    from orchestration.defs.ingest import columns_check
    from orchestration.ingest import FileResult, SourceIngestReport

    note = "orders/a_20240131.csv: no discount_amount (default used) beside discount, which the contract does not know: a renamed column?"
    files = [FileResult("orders/a_20240131.csv", "loaded", 1, None, columns_note=note),
             FileResult("orders/b_20240131.csv", "loaded", 2, None),
             FileResult("orders/c_20240131.csv", "loaded", 3, None, columns_note="orders/c_20240131.csv: ...")]
    warn = columns_check(SourceIngestReport("orders", "run", files=files))
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    assert warn.description == f"2 files loaded with columns unlike the contract's (a renamed column, an amount as a 32-bit float): {note} (and 1 more: see this check's metadata)"
    assert warn.metadata["files_noted"].value == [note, "orders/c_20240131.csv: ..."]
    clean = columns_check(SourceIngestReport("orders", "run", files=files[1:2]))
    assert clean.passed and clean.description is None


def test_a_data_directory_with_a_colon_after_a_space_validates(tmp_path, con):
    """GX runs the query over the parts as SQLAlchemy text(), where ` :v2` is a bind parameter: the parts of a
    data directory `brand :v2` were read as `brand NULL/...`, and every source's validation failed."""
    from orchestration.settings import load_settings

    settings = load_settings(tmp_path / "brand :v2")
    path = settings.landing_dir / "orders" / "orders_20240131.csv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join([HEADERS["orders"], GOOD["orders"]]) + "\n", encoding="utf-8")
    report = ingest_source(con, "orders", settings, "run")
    v = validate_contract("orders", report.frame)
    assert v.success and v.evaluated_rows == 1


def test_a_quarantine_share_exactly_at_the_limit_warns_and_does_not_block():
    """SPEC §2: above max_quarantine_share the blocking check fails; at or below it, it warns. 5 of 100 rows is
    exactly the default 5 %: a warning, exports go on; 6 of 100 is above it: an error."""
    import dagster as dg

    from orchestration.defs.ingest import quarantine_share_check
    from orchestration.ingest import SourceIngestReport

    at_limit = SourceIngestReport("orders", "run", rows_read=100, rows_loaded=95, rows_quarantined=5,
                                  quarantine_by_rule={"gross_amount.type": 5})
    result = quarantine_share_check(at_limit, 0.05)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    above = SourceIngestReport("orders", "run", rows_read=100, rows_loaded=94, rows_quarantined=6,
                               quarantine_by_rule={"gross_amount.type": 6})
    assert quarantine_share_check(above, 0.05).severity == dg.AssetCheckSeverity.ERROR
    # just above: the share shows the digits that tell it from the limit (the gate review saw "5,001 of this
    # run's 100,000 new rows (5.00%) were quarantined, above the 5.00% limit")
    just_above = SourceIngestReport("orders", "run", rows_read=100_000, rows_loaded=94_999, rows_quarantined=5_001,
                                    quarantine_by_rule={"gross_amount.type": 5_001})
    assert quarantine_share_check(just_above, 0.05).description.startswith(
        "5,001 of this run's 100,000 new rows (5.001%) were quarantined, above the 5.00% limit;")
    assert "(5.00%) were quarantined, within the 5.00% limit" in result.description


def test_rows_re_sent_unchanged_from_earlier_files_are_left_out_of_the_quarantine_share(con, settings, land):
    """A feed that sends every order of the last days again each day (the windowed re-delivery review): day 2's
    file re-sends day 1's 100 rows beside 10 new ones, 5 of them bad. The share is 5 of the 10 new rows (50 %,
    blocking), not 5 of 110 (4.55 %, which let the exports go); day 3 re-sends day 2's 110 rows, the 5 bad ones
    quarantined again, beside 10 new good ones: 0 of 10, where 5 of 120 (4.17 %) kept warning of day 2's rows.
    Every row is still loaded or quarantined (rows read = loaded + quarantined)."""
    import dagster as dg

    from orchestration.defs.ingest import quarantine_share_check

    header = "order_id,updated_at,created_at,status,gross_amount,openid,paid_at\n"

    def rows(prefix, n, amount="12.50"):
        return "".join(f"{prefix}{i},2024-01-0{day} 11:00:00+08,2024-01-0{day} 09:00:00+08,paid,{amount},o{prefix}{i},"
                       f"2024-01-0{day} 10:00:00+08\n" for i in range(n))

    day = 1
    day1 = rows("A", 100)
    land("orders/orders_20240101.csv", header + day1)
    first = ingest_source(con, "orders", settings, "run1")
    assert (first.rows_read, first.rows_resent, first.quarantined_share) == (100, 0, 0.0)
    day = 2
    day2 = day1 + rows("B", 5) + rows("C", 5, amount="-5.00")
    land("orders/orders_20240102.csv", header + day2)
    second = ingest_source(con, "orders", settings, "run2")
    assert (second.rows_read, second.rows_loaded, second.rows_quarantined) == (110, 105, 5)
    assert (second.rows_resent, second.rows_resent_quarantined, second.quarantined_share) == (100, 0, 0.5)
    blocked = quarantine_share_check(second, 0.05)
    assert blocked.severity == dg.AssetCheckSeverity.ERROR and not blocked.passed
    assert blocked.description.startswith("5 of this run's 10 new rows (50.00%) were quarantined (100 rows re-sent "
                                          "unchanged from earlier files left out, 0 of them quarantined again), above")
    day = 3
    land("orders/orders_20240103.csv", header + day2 + rows("D", 10))
    third = ingest_source(con, "orders", settings, "run3")
    assert (third.rows_read, third.rows_quarantined, third.rows_resent, third.rows_resent_quarantined) == (120, 5, 110, 5)
    assert third.quarantined_share == 0.0
    passed = quarantine_share_check(third, 0.05)
    assert passed.passed and passed.description == (
        "no new row quarantined: the 5 quarantined were re-sent unchanged from earlier files, and judged there "
        "(`privdom quarantine` lists them once)")
    # the same files in one run: each content judged once, where it first came
    con.execute("delete from raw.orders; delete from raw.quarantine; delete from raw.ingestion_ledger")
    once = ingest_source(con, "orders", settings, "run4")
    assert (once.rows_read, once.rows_quarantined, once.rows_resent, once.rows_resent_quarantined) == (330, 10, 210, 5)
    assert once.quarantined_share == 5 / 120
