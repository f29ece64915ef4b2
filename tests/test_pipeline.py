"""End to end, as a user runs it: `privdom generate` then `privdom run`, twice, through the console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from orchestration.contract import SOURCES

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")


def _privdom(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PRIVDOM), "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=900
    )


def _snapshot(warehouse: Path) -> dict[str, object]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        out = {}
        for table in ("raw.ingestion_ledger", "raw.quarantine", *(f"raw.{s}" for s in SOURCES)):
            out[table] = con.execute(f"select count(*) from {table}").fetchone()[0]
        out["ledger"] = con.execute(
            "select source, file_path, content_sha256, status, rows_read, rows_loaded, rows_quarantined "
            "from raw.ingestion_ledger order by file_id"
        ).fetchall()
        out["quarantine_by_rule"] = dict(
            con.execute("select source || ':' || rule, count(*) from raw.quarantine group by 1").fetchall()
        )
        return out
    finally:
        con.close()


def _run_id(run: subprocess.CompletedProcess) -> str:
    import re

    return re.search(r"privdom run ([0-9a-f]{8}): succeeded", run.stdout).group(1)


def _keep_run_results(data_dir: Path, run: subprocess.CompletedProcess) -> None:
    """Copy the run's dbt results (target/<step>-<run id[:7]>-<hash>/run_results.json) to
    <data dir>/dbt-run-results/ at once: every data directory's runs share dbt_project/target/, whose steps keep
    their 10 newest invocation folders, and the test files run beside this one (pytest-xdist) run pipelines too."""
    import shutil

    from orchestration.settings import DBT_PROJECT_DIR

    run_id = _run_id(run)
    kept = data_dir / "dbt-run-results"
    kept.mkdir(exist_ok=True)
    for d in (DBT_PROJECT_DIR / "target").glob(f"dbt_*-{run_id[:7]}-*"):
        if (d / "run_results.json").exists():
            shutil.copy2(d / "run_results.json", kept / f"{d.name}.json")


def _run_results(data_dir: Path, run: subprocess.CompletedProcess, step: str = "dbt_") -> list[dict]:
    """The results of the run's dbt steps whose name starts with `step`, as _keep_run_results kept them."""
    import json

    run_id = _run_id(run)
    return [
        json.loads(f.read_text(encoding="utf-8"))
        for f in sorted((data_dir / "dbt-run-results").glob(f"{step}*-{run_id[:7]}-*.json"))
    ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo")
    from orchestration.generate import generate

    summary = generate(data_dir / "landing", customers=400, days=150, seed=7, dirty_rate=0.02)
    first = _privdom(data_dir, "run")
    assert first.returncode == 0, first.stdout + first.stderr
    _keep_run_results(data_dir, first)
    snapshot = _snapshot(data_dir / "warehouse.duckdb")
    second = _privdom(data_dir, "run")
    assert second.returncode == 0, second.stdout + second.stderr
    _keep_run_results(data_dir, second)
    return summary, data_dir, first, snapshot, second


def test_run_prints_a_summary_with_where_the_results_are(demo):
    _, data_dir, first, _, _ = demo
    assert "succeeded" in first.stdout
    # the demo's dirty rows include a shared phone: its warning says what that is, not only the check's name
    (shared,) = [line for line in first.stdout.splitlines() if "· no_shared_identifiers" in line]
    assert "identity_max_degree = 20" in shared and "merge no customers" in shared, shared
    assert str(data_dir / "warehouse.duckdb") in first.stdout
    assert "staging.stg_orders" in first.stdout
    # the run log opens with the settings the run used (a misspelled PRIVDOM_ variable is not among them)
    import json

    log = sorted((data_dir / "logs").glob("run-*.log"))[0].read_text(encoding="utf-8").splitlines()[0]
    assert log.startswith("privdom settings: ")
    used = json.loads(log.removeprefix("privdom settings: "))
    assert used["activation_window_days"] == 30 and used["max_quarantine_share"] == 0.05


def test_ledger_lists_every_landing_file(demo):
    _, data_dir, _, snapshot, _ = demo
    landing = data_dir / "landing"
    delivered = {
        str(p.relative_to(landing))
        for p in landing.rglob("*")
        if p.is_file() and not p.name.startswith((".", "_"))
    }
    assert {row[1] for row in snapshot["ledger"]} == delivered
    statuses = {row[1]: row[3] for row in snapshot["ledger"]}
    assert list(statuses.values()).count("duplicate") == 1
    for bad in demo[0].bad_files:
        assert statuses[bad] == "rejected"
    for _, _, _, status, read, loaded, quarantined in snapshot["ledger"]:
        assert read == loaded + quarantined


def test_a_rejected_file_is_a_warning_naming_it(demo):
    """A file that cannot be read is rejected (SPEC §2): the source's files_readable check warns and names it,
    in the summary (and the UI's checks), not only in the ledger and the log."""
    from collections import Counter

    summary, _, first, _, second = demo
    assert summary.bad_files
    for source, n in Counter(path.split("/")[0] for path in summary.bad_files).items():
        (line,) = [line for line in first.stdout.splitlines() if f"raw/{source} · files_readable" in line]
        assert line.strip().startswith("[WARN]") and f"{n} file{'s' if n != 1 else ''} rejected, nothing of" in line, line
        assert any(bad in line for bad in summary.bad_files), line
    assert "files_readable" not in second.stdout  # the second run read no new file


def test_injected_dirty_rows_are_quarantined_with_their_rule(demo):
    summary, _, _, snapshot, _ = demo
    quarantined = snapshot["quarantine_by_rule"]
    injected = {k: v for k, v in summary.dirty_rows_by_rule.items() if v}
    assert injected, "the generator injected no dirty rows"
    for rule, count in injected.items():
        # A dirty row copied into the re-delivered duplicate file is not loaded twice, so <= count.
        assert 1 <= quarantined.get(rule, 0) <= count, rule
    assert set(quarantined) <= set(injected), "rows quarantined for rules the generator did not break"


def test_the_contract_check_counts_rule_breaks_and_rows_apart(demo):
    """A row may break several rules: the GX check's line says how many rule breaks and, apart, how many rows
    were quarantined (it used to call the rule breaks rows)."""
    _, _, first, snapshot, _ = demo
    per_source: dict[str, int] = {}
    for source, _, _, status, _, _, quarantined in snapshot["ledger"]:
        per_source[source] = per_source.get(source, 0) + quarantined
    lines = [line for line in first.stdout.splitlines() if "· contract_expectations" in line]
    assert lines, first.stdout
    for source, rows in per_source.items():
        line = next((line for line in lines if f"raw/{source} ·" in line), None)
        if not rows:
            assert line is None, line
            continue
        assert line is not None and "rule break" in line, (source, lines)
        assert line.endswith(f"as the quarantine counts them ({rows:,} row{'s' if rows != 1 else ''} quarantined)"), line


def test_second_run_adds_nothing_and_loses_nothing(demo):
    _, data_dir, _, snapshot, second = demo
    assert second.returncode == 0, second.stdout + second.stderr
    assert _snapshot(data_dir / "warehouse.duckdb") == snapshot


def test_two_runs_of_the_same_code_store_one_job_snapshot(demo):
    # the warm dbt client's path, new each run, was in the dbt resource's config: every run stored a new job and
    # execution-plan snapshot (~21 KB) in Dagster's runs.db, which deleting runs never frees (long-horizon review)
    import sqlite3

    _, data_dir, *_ = demo
    con = sqlite3.connect(data_dir / "dagster" / "history" / "runs.db")
    try:
        runs = con.execute("select count(*), count(distinct snapshot_id) from runs").fetchone()
        snapshots = con.execute("select count(*) from snapshots").fetchone()[0]
    finally:
        con.close()
    assert runs == (2, 1)
    assert snapshots == 2  # the job's and its execution plan's


def test_each_dbt_step_clears_its_untested_mark_once_its_evaluations_are_dagsters(demo):
    from orchestration import dbt as dbt_runner

    _, data_dir, *_ = demo
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(f"select count(*) from {dbt_runner.UNTESTED_TABLE}").fetchone() == (0,)  # written, cleared


def test_staging_holds_current_states(demo):
    _, data_dir, _, _, _ = demo
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        for table, key in (("stg_channel_events", "event_id"), ("stg_orders", "order_id"), ("stg_referrals", "referral_id")):
            rows, keys = con.execute(f"select count(*), count(distinct {key}) from staging.{table}").fetchone()
            assert rows == keys > 0, table
        raw_orders = con.execute("select count(distinct order_id) from raw.orders").fetchone()[0]
        assert con.execute("select count(*) from staging.stg_orders").fetchone()[0] == raw_orders
    finally:
        con.close()


def test_no_clear_phone_in_marts_or_segments(demo):
    """SPEC §3/§5: marts and segments carry masked phones and SHA-256 only."""
    _, data_dir, _, _, _ = demo
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        columns = con.execute(
            "select table_schema, table_name, column_name from information_schema.columns "
            "where table_schema in ('marts', 'segments') and data_type = 'VARCHAR'"
        ).fetchall()
        assert columns, "no marts tables were built"
        for schema, table, column in columns:
            leaks = con.execute(
                f'select count(*) from "{schema}"."{table}" where regexp_matches("{column}", \'(^|[^0-9a-fA-F])1[3-9][0-9]{{9}}([^0-9a-fA-F]|$)\')'
            ).fetchone()[0]
            assert leaks == 0, f"{schema}.{table}.{column} holds clear phone numbers"
        masked = con.execute("select count(*) from marts.dim_customers where phone_masked is not null").fetchone()[0]
        assert masked > 0
    finally:
        con.close()


def test_dim_customers_reconciles_with_staged_orders_to_the_cent(demo):
    _, data_dir, _, _, _ = demo
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        dim, staged = con.execute(
            """
            select
                (select sum(net_revenue) from marts.dim_customers),
                (select sum(gross_amount - discount_amount - refund_amount) from staging.stg_orders
                 where status in ('paid', 'shipped', 'completed', 'refunded', 'partially_refunded'))
            """
        ).fetchone()
        assert dim == staged and dim > 0
        rows, keys = con.execute("select count(*), count(distinct customer_key) from marts.dim_customers").fetchone()
        assert rows == keys
    finally:
        con.close()


def test_every_mart_is_built_non_empty_and_plausible(demo):
    """SPEC §4 on the demo data: every metric table has rows, and their figures hang together."""
    _, data_dir, first, _, _ = demo
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        for table in ("fct_orders", "fct_aarrr_funnel", "fct_cohort_retention", "fct_private_domain_triangle", "fct_referrals", "fct_fission_summary"):
            assert con.execute(f"select count(*) from marts.{table}").fetchone()[0] > 0, table
            assert f"marts.{table}" in first.stdout
        customers, acquired = con.execute(
            "select (select count(*) from marts.dim_customers), "
            "(select sum(acquired) from marts.fct_aarrr_funnel where acquisition_channel = 'all')"
        ).fetchone()
        assert customers == acquired
        # the demo spans several months with referrals: a baseline exists and its index is exactly 1.0
        baseline = con.execute(
            "select triangle_area_index from marts.fct_private_domain_triangle "
            "where acquisition_channel = 'all' and period_month = baseline_month"
        ).fetchall()
        assert baseline == [(1.0,)]
        generations = con.execute("select max(generation) from marts.fct_referrals").fetchone()[0]
        assert generations >= 2
        conversions = con.execute("select sum(conversions) from marts.fct_fission_summary where mechanism = 'all'").fetchone()[0]
        assert conversions > 0
    finally:
        con.close()


def test_every_mart_column_is_described_in_dbt_docs(demo):
    """BI users read the column descriptions in dbt docs: no mart column goes undocumented."""
    import json

    from orchestration.dbt import MANIFEST_PATH

    _, data_dir, _, _, _ = demo
    manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    documented = {
        node["name"]: {name for name, col in node["columns"].items() if col.get("description")}
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model" and node["schema"] == "marts"
    }
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        columns = con.execute(
            "select table_name, column_name from information_schema.columns where table_schema = 'marts'"
        ).fetchall()
    finally:
        con.close()
    undocumented = sorted(f"{t}.{c}" for t, c in columns if c not in documented.get(t, set()))
    assert not undocumented, undocumented
    assert set(documented) == {t for t, _ in columns}


def test_every_table_and_column_of_the_bi_copy_carries_its_description(demo):
    """BI users of the published copy see each table's and column's dbt docs as DuckDB comments (DBeaver and
    other SQL clients show them), the schema segments included: Python writes it, and its sources
    (models/segments/__sources.yml) document it. Every column of a published table has one."""
    _, data_dir, _, _, _ = demo
    con = duckdb.connect(str(data_dir / "bi" / "warehouse.duckdb"), read_only=True)
    try:
        tables = con.execute(
            "select schema_name || '.' || table_name, coalesce(comment, '') from duckdb_tables() order by 1"
        ).fetchall()
        columns = con.execute(
            "select schema_name || '.' || table_name || '.' || column_name, coalesce(comment, '') "
            "from duckdb_columns() where not internal order by 1"
        ).fetchall()
        (members_acquired,) = con.execute(
            "select comment from duckdb_columns() where schema_name = 'segments' and table_name = 'segment_members' "
            "and column_name = 'acquired_at'"
        ).fetchone()
    finally:
        con.close()
    assert {t for t, _ in tables} >= {"marts.dim_customers", "segments.segment_members", "segments.segment_definitions"}
    assert [t for t, comment in tables if not comment] == []
    assert [c for c, comment in columns if not comment] == []
    # a column segment_members repeats from dim_customers says so, with dim_customers' text
    assert members_acquired.startswith("As marts.dim_customers.acquired_at at computed_at: When the customer was first touched")
    # the phone's hash is left out of the copy (beside phone_masked it is the phone: docs/privacy.md)
    assert [c for c, _ in columns if c.endswith(".phone_sha256")] == []


def _columns(data_dir: Path, where: str) -> list[tuple[str, str]]:
    """(schema.table.column, type) of the demo warehouse's columns that match `where`, sorted."""
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(
            "select table_schema || '.' || table_name || '.' || column_name, data_type from information_schema.columns "
            f"where {where} order by 1"
        ).fetchall()
    finally:
        con.close()


def test_no_column_a_bi_tool_reads_is_a_hugeint(demo):
    """DECISIONS: counts are BIGINT. DuckDB's sum() of integers is a HUGEINT, which the BI copy's Parquet
    writes as a DOUBLE and many drivers cannot read: dim_customers.points_redeemed and referrals_converted_12m
    were both."""
    _, data_dir, _, _, _ = demo
    wide = _columns(data_dir, "data_type in ('HUGEINT', 'UHUGEINT')")
    assert not wide, wide


def test_money_in_every_mart_is_decimal_18_2(demo):
    """Money is DECIMAL(18,2) in every mart (a sum of them is DECIMAL(38,2) on DuckDB, (28,2) on Spark: each
    published money column casts). Without the cast only the slow Spark parity test noticed (contributor review)."""
    _, data_dir, _, _, _ = demo
    decimals = _columns(data_dir, "table_schema = 'marts' and data_type like 'DECIMAL%'")
    assert decimals and all(kind == "DECIMAL(18,2)" for _, kind in decimals), decimals


def test_every_segment_is_exported_after_a_run_and_a_rerun_on_the_same_data_keeps_it(demo):
    """SPEC §6: exports/<segment>/<export_id>/ with its files and manifest, LATEST written last."""
    import hashlib
    import json

    from orchestration.segments import load_segment_definitions

    _, data_dir, first, _, second = demo
    assert "segment exports" in first.stdout
    exports = data_dir / "exports"
    names = [d.name for d in load_segment_definitions(data_dir, {})]
    assert len(names) == 6
    for name in names:
        latest = (exports / name / "LATEST").read_text(encoding="utf-8").strip()
        folder = exports / name / latest
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["segment"] == name and manifest["export_id"] == latest
        for f in manifest["files"]:
            assert hashlib.sha256((folder / f["name"]).read_bytes()).hexdigest() == f["sha256"]
        assert (folder / f"{name}.csv").read_bytes().startswith(b"\xef\xbb\xbf")
        # the second run, on the same data, kept this export (exports are idempotent): one export, all adds
        assert sorted(p.name for p in (exports / name).iterdir() if not p.name.startswith(".")) == sorted([latest, "LATEST"])
        assert manifest["previous_export_id"] is None
        assert (manifest["adds"], manifest["removes"]) == (manifest["row_count"], 0)
        assert manifest["row_count"] == len([p for p in (folder / f"{name}.csv").read_text(encoding="utf-8-sig").splitlines()[1:] if p])
        # the summaries say which run wrote LATEST: its adds and removes are against the export before it
        for run, mark in ((first, "new"), (second, "kept")):
            (line,) = [line for line in run.stdout.splitlines() if line.split()[:2] == [name, latest]]
            assert line.split()[-1] == mark, (mark, line)


def test_the_dbt_unit_tests_pass_on_the_built_warehouse_and_privdom_run_skips_them(demo):
    """`privdom run` builds with --exclude-resource-type unit_test (unit tests check the SQL, not the data);
    the hand-worked dbt unit tests run here instead, all of them, against the demo's warehouse (they read the
    parents' column types from it)."""
    import json

    from orchestration import dbt as dbt_runner
    from orchestration.settings import DBT_PROJECT_DIR, load_settings

    _, data_dir, first, _, second = demo
    builds = _run_results(data_dir, first) + _run_results(data_dir, second)  # one per dbt step and run
    assert len(builds) >= 3
    ran = {r["unique_id"] for build in builds for r in build["results"]}
    assert not [u for u in ran if u.startswith("unit_test.")], "a pipeline build ran unit tests"

    settings = load_settings(data_dir)
    out = data_dir / "dbt-unit-tests"
    env = {**os.environ, **settings.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}  # not this process's env
    proc = subprocess.run(
        [str(dbt_runner.dbt_executable()), "test", "--select", "test_type:unit", "--target-path", str(out),
         *dbt_runner.dbt_vars_arg(settings)],
        cwd=DBT_PROJECT_DIR, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = json.loads((out / "run_results.json").read_text())["results"]
    defined = sum(
        len((yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("unit_tests") or [])
        for p in (DBT_PROJECT_DIR / "models").rglob("*.yml")
    )
    assert defined >= 20
    assert len(results) == defined and all(r["status"] == "pass" for r in results)


def test_event_id_conflicts_warns_with_every_event_id_delivered_with_other_content(demo):
    """SPEC §2: the `event_id_conflicts` data test (a warning) counts the event_ids delivered again with
    different content. Expected count worked out here from the raw rows' content columns, not their hashes."""
    from orchestration.contract import contract

    _, data_dir, first, _, _ = demo
    results = [
        r
        for build in _run_results(data_dir, first, "dbt_staging")
        for r in build["results"]
        if r["unique_id"] == "test.privdom.event_id_conflicts"
    ]
    assert len(results) == 1
    content = ", ".join(c.name for c in contract("channel_events").columns)
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        expected = con.execute(
            f"select count(*) from (select event_id, count(distinct ({content})) as contents "
            "from raw.channel_events group by event_id) where contents > 1"
        ).fetchone()[0]
        redelivered_same = con.execute(
            f"select count(*) from (select event_id from raw.channel_events group by event_id "
            f"having count(*) > 1 and count(distinct ({content})) = 1)"
        ).fetchone()[0]
    finally:
        con.close()
    assert expected > 0 and redelivered_same > 0  # the demo has both: conflicts and identical re-deliveries
    assert results[0]["status"] == "warn" and results[0]["failures"] == expected
