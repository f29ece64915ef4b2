"""Incremental staging (SPEC §6): after any sequence of incremental runs the warehouse equals a full refresh of
the same data, row for row, in every layer; runs take in only newly loaded files; a change of what staging
computes (placeholder values, staging SQL) rebuilds from raw by itself.

Demo landing files of 40 days arrive in three deliveries, each followed by `privdom run`. The data has late rows
of every source (delivered after their event day, some in a later delivery than their day's), orders and
referrals with versions in several deliveries, a re-delivered file, re-delivered and conflicting events. The
second delivery brings a new month (February 2024: the calendar grows, and every state still in force holds in
one more month), the third stays within it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.test_crash_safety import snapshot

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")
START = dt.date(2024, 1, 1)
DELIVERIES = [(1, 20), (21, 35), (36, 40)]  # days of the batch dates in each delivery, inclusive (day 32: 1 February)
MODELLED_SCHEMAS = ("staging", "intermediate", "marts", "segments")


def _run(data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(PRIVDOM), "--data-dir", str(data_dir), "run", *extra], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _deliver(source_landing: Path, data_dir: Path, first_day: int, last_day: int) -> int:
    """Copy the landing files whose batch date is within the days (undated files go with the last delivery)."""
    from orchestration.ingest.files import batch_date_of

    copied = 0
    for path in sorted(p for p in source_landing.rglob("*") if p.is_file()):
        rel = path.relative_to(source_landing)
        date, _ = batch_date_of(rel.as_posix())
        day = (date - START).days + 1 if date else DELIVERIES[-1][1]
        if first_day <= day <= last_day:
            (data_dir / "landing" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, data_dir / "landing" / rel)
            copied += 1
    return copied


def _modelled(snap: dict[str, list]) -> dict[str, list]:
    return {name: rows for name, rows in snap.items() if name.split(".")[0] in MODELLED_SCHEMAS}


def _query(data_dir: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _execute(data_dir: Path, sql: str, params=None) -> None:
    """One statement that writes data_dir's warehouse (behind the pipeline's back)."""
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    try:
        con.execute(sql, params or [])
    finally:
        con.close()


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    from orchestration.generate import generate

    source = tmp_path_factory.mktemp("all") / "landing"
    generate(source, customers=150, days=40, seed=7, dirty_rate=0.02)
    data_dir = tmp_path_factory.mktemp("incremental")
    (data_dir / "landing").mkdir()
    # tiny batches' quarantine share passes the 5 % limit, which would hold back the exports and fail the run
    (data_dir / "privdom.toml").write_text("max_quarantine_share = 1.0\n", encoding="utf-8")
    for first_day, last_day in DELIVERIES[:-1]:
        assert _deliver(source, data_dir, first_day, last_day)
        _run(data_dir)
    # Before the last delivery, edit an old raw row behind the pipeline's back: the incremental run must not
    # read its file again (it is put back before the full refresh, so both see the same data).
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    try:
        event_id, original = con.execute(
            "select event_id, campaign from staging.stg_channel_events where campaign is not null order by file_id, event_id limit 1"
        ).fetchone()
        con.execute("update raw.channel_events set campaign = 'edited-behind-the-back' where event_id = ?", [event_id])
    finally:
        con.close()
    assert _deliver(source, data_dir, *DELIVERIES[-1])
    day = _run(data_dir)
    # the summary lists what a run built in full (after an upgrade, a changed setting, --full-refresh): an
    # incremental run, nothing
    assert "built in full this run" not in day.stdout, day.stdout
    seen_by_last_run = _query(data_dir, "select campaign from staging.stg_channel_events where event_id = ?", [event_id])[0][0]
    _execute(data_dir, "update raw.channel_events set campaign = ? where event_id = ?", [original, event_id])
    incremental = snapshot(data_dir / "warehouse.duckdb")
    refreshed = _run(data_dir, "--full-refresh")
    rebuilt = refreshed.stdout.split("built in full this run", 1)[1].split("\n\n", 1)[0]
    for step in ("dbt_staging", "dbt_identity_inputs", "dbt_models"):
        assert f"incremental models of {step} are rebuilt from raw: the run has tag" in rebuilt, rebuilt
    assert "identity graph built in full:" in rebuilt and "customer keys assigned to every component:" in rebuilt
    full = snapshot(data_dir / "warehouse.duckdb")
    return data_dir, incremental, full, (event_id, original, seen_by_last_run)


def test_the_history_has_late_rows_across_deliveries(history):
    """The data this test rests on: rows that arrive in a later delivery than their day's, in every source."""
    data_dir, *_ = history
    first_day_of_delivery = " ".join(
        f"when l.batch_date between date '{START + dt.timedelta(a - 1)}' and date '{START + dt.timedelta(b - 1)}' "
        f"then date '{START + dt.timedelta(a - 1)}'"
        for a, b in DELIVERIES
    )
    for source, time_column in (("channel_events", "occurred_at"), ("orders", "updated_at"), ("referrals", "updated_at")):
        (late,) = _query(
            data_dir,
            f"select count(*) from raw.{source} r join raw.ingestion_ledger l on l.file_id = r._file_id "
            f"where cast(timezone('Asia/Shanghai', r.{time_column}) as date) < case {first_day_of_delivery} end",
        )[0]
        assert late > 0, source
    # orders whose versions came in more than one delivery (their rank had to be recomputed)
    (spread,) = _query(
        data_dir,
        "select count(*) from (select order_id from staging.stg_orders__versions "
        "group by order_id having min(batch_date) < ? and max(batch_date) >= ?)",
        [START + dt.timedelta(DELIVERIES[1][0] - 1)] * 2,
    )[0]
    assert spread > 0


def test_the_history_gains_a_month_in_its_second_delivery_and_not_in_its_third(history):
    data_dir, *_ = history
    months = [m for (m,) in _query(data_dir, "select period_month from intermediate.int_calendar__months order by 1")]
    assert months == [dt.date(2024, 1, 1), dt.date(2024, 2, 1)]
    first, last = DELIVERIES[1]
    assert (START + dt.timedelta(first - 1)).month == 1 and (START + dt.timedelta(last - 1)).month == 2
    assert {(START + dt.timedelta(day - 1)).month for day in range(DELIVERIES[2][0], DELIVERIES[2][1] + 1)} == {2}


def test_incremental_runs_equal_a_full_refresh_row_for_row(history):
    _, incremental, full, _ = history
    got, expected = _modelled(incremental), _modelled(full)
    assert sorted(got) == sorted(expected)
    assert any(name.startswith("marts.") for name in got) and any(name.startswith("staging.") for name in got)
    for table in expected:
        assert got[table] == expected[table], table
    # raw, the key registry and the rest too (load times and run ids aside), but the identity graph's change
    # log, which records the history of builds by design
    log = [f"identity_state.{t}" for t in ("graph_builds", "graph_changed_components", "graph_consumers")]
    assert {k: v for k, v in incremental.items() if k not in log} == {k: v for k, v in full.items() if k not in log}
    # three deliveries: the graph built in full, then twice incrementally; every reader of its log took in the
    # last build, so the log keeps that build only (the full refresh after them: a fourth build, in full)
    assert [row[:2] for row in incremental["identity_state.graph_builds"]] == [(3, "incremental")]
    assert incremental["identity_state.graph_consumers"] == [
        ("int_channel_events__customers", 3), ("int_components__first_touch", 3), ("int_customer_keys", 3),
        ("int_customers__identifiers", 3), ("int_customers__purchases", 3),
        ("int_customers__relationship_months", 3), ("int_customers__relationships", 3), ("int_orders__customers", 3),
    ]
    assert [row[:2] for row in full["identity_state.graph_builds"]] == [(4, "full")]
    assert full["identity_state.graph_changed_components"] == []


def _without_keys(data_dir: Path, table: str) -> list[tuple]:
    """A table's rows without its customer-key columns (a warehouse built afresh issues keys anew), sorted."""
    columns = [c for (c,) in _query(data_dir, "select column_name from information_schema.columns where table_schema "
                                   "= ? and table_name = ? order by ordinal_position", table.split("."))
               if "key" not in c and c != "_built_at"]
    return _query(data_dir, f"select {', '.join(columns)} from {table} order by all")


def test_an_unloaded_file_leaves_the_marts_as_if_never_delivered(history, tmp_path, monkeypatch, dbt_manifest):
    """`privdom unload` of an orders file, then a plain `privdom run`: every dbt step rebuilds from raw, the graph
    builds in full, and the marts equal a warehouse built afresh from every landing file but that one (keys
    aside: a fresh warehouse issues them anew). In between, a run of only the intermediate and marts assets (picked
    in the UI, or a UI run going on when the unload came): built from staging that still held the file's rows, its
    steps must record no fingerprint, or the next run stays incremental there and keeps the rows (the unload
    review: 36 unloaded events stayed in int_channel_events__customers, 28 customers differed)."""
    import dagster as dg

    data_dir = _copy(history, tmp_path)
    (path, rows), = _query(data_dir, "select file_path, rows_loaded from raw.ingestion_ledger where source = 'orders' "
                                     "and status = 'loaded' order by rows_loaded desc, file_id limit 1")
    (file_id,), = _query(data_dir, "select file_id from raw.ingestion_ledger where file_path = ?", [path])
    assert rows > 0 and _query(data_dir, "select count(*) from staging.stg_orders__versions where file_id = ?", [file_id]) != [(0,)]
    unloaded = subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "unload", path], capture_output=True, text=True, timeout=300)
    assert unloaded.returncode == 0, unloaded.stdout + unloaded.stderr
    assert f"{path} (file_id" in unloaded.stdout and f"{rows:,} rows of raw.orders" in unloaded.stdout

    monkeypatch.setenv("PRIVDOM_HOME", str(data_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    from orchestration.definitions import build_definitions

    job = build_definitions().resolve_implicit_global_asset_job_def()
    later = [k for k in job.asset_layer.asset_graph.get_all_asset_keys() if k.path[0] in ("intermediate", "marts")]
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, asset_selection=later, raise_on_error=False).success
    assert _query(data_dir, "select step, fingerprint from raw.dbt_incremental_state order by step") == [
        (step, "unloaded: files were taken out of raw") for step in ("dbt_identity_inputs", "dbt_models", "dbt_staging")]

    day = _run(data_dir)
    rebuilt = day.stdout.split("built in full this run", 1)[1].split("\n\n", 1)[0]
    for step in ("dbt_staging", "dbt_identity_inputs", "dbt_models"):
        assert f"incremental models of {step} are rebuilt from raw: files were taken out of raw (privdom unload)" in rebuilt, rebuilt
    assert "identity graph built in full:" in rebuilt
    assert "1 file(s) unloaded" in day.stdout
    assert _query(data_dir, "select count(*) from staging.stg_orders__versions where file_id = ?", [file_id]) == [(0,)]

    fresh = tmp_path / "fresh"
    source_landing = history[0] / "landing"
    shutil.copytree(source_landing, fresh / "landing", ignore=lambda folder, names: [
        n for n in names if (Path(folder) / n).relative_to(source_landing).as_posix() == path])
    assert not (fresh / "landing" / path).exists() and (source_landing / path).exists()
    (fresh / "privdom.toml").write_text("max_quarantine_share = 1.0\n", encoding="utf-8")
    _run(fresh)
    for table in ("marts.fct_aarrr_funnel", "marts.fct_cohort_retention", "marts.fct_private_domain_triangle",
                  "marts.fct_fission_summary", "marts.fct_orders", "marts.fct_referrals", "marts.dim_customers"):
        assert _without_keys(data_dir, table) == _without_keys(fresh, table), table


def test_a_full_build_of_the_graph_makes_its_readers_compute_everything_again(history, tmp_path):
    """identity_max_degree is not in the dbt fingerprint: changing it rebuilds the identity graph in full while
    the dbt models stay incremental. Every reader of the graph's log must then compute all its rows again
    (identity_state.full_recompute, asked when the SQL runs or, in int_channel_events__customers, when the
    model is compiled), or rows keep the customer_keys of the old components."""
    data_dir = _copy(history, tmp_path)
    before = dict(_query(data_dir, "select event_id, customer_key from intermediate.int_channel_events__customers"))
    (data_dir / "privdom.toml").write_text("max_quarantine_share = 1.0\nidentity_max_degree = 1\n", encoding="utf-8")
    _run(data_dir)
    assert _query(data_dir, "select mode from identity_state.graph_builds order by build_seq desc limit 1") == [("full",)]
    incremental = _modelled(snapshot(data_dir / "warehouse.duckdb"))
    _run(data_dir, "--full-refresh")
    full = _modelled(snapshot(data_dir / "warehouse.duckdb"))
    for table in full:
        assert incremental[table] == full[table], table
    after = dict(_query(data_dir, "select event_id, customer_key from intermediate.int_channel_events__customers"))
    assert sum(before[e] != after[e] for e in before) > 0  # the new degree did change customers


def test_staging_models_are_incremental(history):
    data_dir, *_ = history
    materialized = _query(
        data_dir,
        "select table_name, table_type from information_schema.tables where table_schema = 'staging' order by 1",
    )
    assert [name for name, _ in materialized] == [
        "stg_channel_events", "stg_orders", "stg_orders__versions", "stg_referrals", "stg_referrals__versions",
    ]
    manifest = json.loads((Path(__file__).parents[1] / "dbt_project" / "target" / "manifest.json").read_text())
    kinds = {n["name"]: n["config"]["materialized"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert {kinds[name] for name, _ in materialized} == {"incremental"}


def test_a_run_reads_only_files_loaded_since_the_last_build(history):
    _, _, _, (event_id, original, seen_by_last_run) = history
    assert seen_by_last_run == original  # the edited old row was not read again


def test_a_change_of_the_placeholder_values_rebuilds_staging_from_raw(history):
    """No --full-refresh needed: the next run sees that what staging computes changed."""
    data_dir, *_ = history
    member_id = _query(
        data_dir, "select member_id from staging.stg_orders where member_id is not null order by order_id limit 1"
    )[0][0]
    (data_dir / "privdom.toml").write_text(
        f'max_quarantine_share = 1.0\nplaceholder_block_list = ["{member_id}"]\n', encoding="utf-8"
    )
    log = _run(data_dir)
    assert _query(data_dir, "select count(*) from staging.stg_orders where member_id = ?", [member_id])[0][0] == 0
    assert _query(data_dir, "select count(*) from staging.stg_orders__versions where member_id = ?", [member_id])[0][0] == 0
    assert log.returncode == 0


# ------------------------------------------------------------------------------------------------ data tests
# After a successful staging build, its data tests on the 10M-row tables look only at what newer files
# brought (macros/data_tests/privdom_rows_to_test.sql; docs/DECISIONS.md).
def _copy(history, tmp_path: Path) -> Path:
    data_dir, *_ = history
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("landing"))
    (copy / "landing").mkdir()
    return copy


def _mark(data_dir: Path) -> tuple[int, object]:
    return _query(
        data_dir,
        "select tested_through_file_id, recorded_at from raw.dbt_incremental_state where step = 'dbt_staging'",
    )[0]


def _dbt(data_dir: Path, command: str, select: str, *, all_rows: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """`dbt <command> --select ...` by hand on data_dir's warehouse, with privdom's vars and profile env
    (privdom_test_all_rows too, with all_rows): the process and its target directory."""
    from orchestration import dbt as dbt_runner
    from orchestration.settings import DBT_PROJECT_DIR, load_settings

    settings = load_settings(data_dir)
    dbt_vars = {**settings.dbt_vars(), **({"privdom_test_all_rows": True} if all_rows else {})}
    out = data_dir / f"dbt-{command}"
    env = {**os.environ, **settings.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    proc = subprocess.run(
        [str(dbt_runner.dbt_executable()), command, "--select", select, "--target-path", str(out),
         "--vars", json.dumps(dbt_vars)],
        cwd=DBT_PROJECT_DIR, capture_output=True, text=True, timeout=600, env=env,
    )
    return proc, out


def _dbt_test(data_dir: Path, select: str, *, all_rows: bool = False) -> dict[str, tuple[str, int]]:
    """`dbt test --select ...` on data_dir's warehouse: {test name: (status, failures)}."""
    proc, out = _dbt(data_dir, "test", select, all_rows=all_rows)
    results = json.loads((out / "run_results.json").read_text())["results"]
    assert results, proc.stdout[-3000:] + proc.stderr[-2000:]
    return {r["unique_id"].split(".")[2]: (r["status"], r["failures"]) for r in results}


def test_a_successful_staging_build_records_the_newest_file_it_tested(history):
    data_dir, *_ = history
    (newest,) = _query(data_dir, "select max(file_id) from raw.ingestion_ledger")[0]
    assert _mark(data_dir)[0] == newest


def test_staging_tests_look_at_the_keys_of_rows_from_newer_files(history, tmp_path):
    data_dir = _copy(history, tmp_path)
    through, _ = _mark(data_dir)
    unique = "unique_stg_channel_events_event_id"
    identified = "at_least_one_not_null_stg_channel_events_openid__unionid__wecom_external_userid__phone__member_id"
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    try:
        event_id = con.execute("select min(event_id) from staging.stg_channel_events").fetchone()[0]
        # a second row of an old event_id, and a row without any identifier, both from a file already tested
        con.execute("insert into staging.stg_channel_events select * replace ('no-identifier' as event_id, null as openid, "
                    "null as unionid, null as wecom_external_userid, null as phone, null as member_id) "
                    "from staging.stg_channel_events where event_id = ?", [event_id])
        con.execute("insert into staging.stg_channel_events select * from staging.stg_channel_events where event_id = ?",
                    [event_id])
    finally:
        con.close()
    selection = f"{unique} {identified}"
    assert _dbt_test(data_dir, selection) == {unique: ("pass", 0), identified: ("pass", 0)}
    assert _dbt_test(data_dir, selection, all_rows=True) == {unique: ("fail", 1), identified: ("fail", 1)}
    # the same rows as if a newer file had brought them: the duplicate's old twin is found through its key
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    try:
        con.execute("update staging.stg_channel_events set file_id = ? where event_id in (?, 'no-identifier') "
                    "and rowid in (select max(rowid) from staging.stg_channel_events where event_id in (?, 'no-identifier') "
                    "group by event_id)", [through + 1, event_id, event_id])
        assert con.execute("select count(*) from staging.stg_channel_events where file_id > ?", [through]).fetchone()[0] == 2
    finally:
        con.close()
    assert _dbt_test(data_dir, selection) == {unique: ("fail", 1), identified: ("fail", 1)}


def _built_mark(data_dir: Path):
    return _query(data_dir, "select tested_built_at from raw.dbt_incremental_state where step = 'dbt_models'")[0][0]


def test_a_successful_dbt_models_build_records_the_newest_stamp_it_tested(history):
    data_dir, *_ = history
    (newest,) = _query(data_dir, "select max(_built_at) from intermediate.int_channel_events__customers")[0]
    assert newest is not None and _built_mark(data_dir) == newest
    # stamped when the dbt_models command started (every dbt command takes its own run_started_at), so after the
    # step before it had ended, within the run's hold on the warehouse; not when the run's warm dbt server did
    ((inputs_done,),) = _query(
        data_dir, "select recorded_at at time zone 'UTC' from raw.dbt_incremental_state where step = 'dbt_identity_inputs'")
    assert newest > inputs_done


def test_a_build_stamps_its_rows_after_what_the_tests_covered_even_with_the_clock_set_back(history, tmp_path):
    """The recorded stamp lies in the future (a clock set back since, a data directory moved to a machine
    whose clock is behind): a build's rows are stamped just after it, so its tests still look at them."""
    data_dir = _copy(history, tmp_path)
    future = _built_mark(data_dir) + dt.timedelta(days=400)
    _execute(data_dir, "update raw.dbt_incremental_state set tested_built_at = ? where step = 'dbt_models'", [future])
    # an event of a file newer than any the model holds, which an incremental build takes in
    _execute(data_dir, "insert into staging.stg_channel_events select * replace ('planted-event' as event_id, "
             "file_id + 1000 as file_id) from staging.stg_channel_events where event_id = "
             "(select min(event_id) from staging.stg_channel_events)")
    proc, _ = _dbt(data_dir, "run", "int_channel_events__customers")
    assert proc.returncode == 0, proc.stdout[-3000:]
    stamps = _query(data_dir, "select _built_at from intermediate.int_channel_events__customers where event_id = 'planted-event'")
    assert stamps == [(future + dt.timedelta(microseconds=1),)]


def test_the_events_uniqueness_test_looks_at_rows_written_since_the_last_build_that_passed(history, tmp_path):
    """int_channel_events__customers rewrites old rows too (a changed component's events), which no file_id
    tells apart: its uniqueness test looks at the keys of rows stamped after the last successful dbt_models
    build's newest stamp."""
    data_dir = _copy(history, tmp_path)
    mark = _built_mark(data_dir)
    unique = "unique_int_channel_events__customers_event_id"
    event_id = _query(data_dir, "select min(event_id) from intermediate.int_channel_events__customers")[0][0]
    # a second row of an old event, stamped as an earlier build would have: that build's tests saw it
    _execute(data_dir, "insert into intermediate.int_channel_events__customers select * replace (cast(? as timestamp) "
             "as _built_at) from intermediate.int_channel_events__customers where event_id = ?",
             [mark - dt.timedelta(days=1), event_id])
    assert _dbt_test(data_dir, unique) == {unique: ("pass", 0)}
    assert _dbt_test(data_dir, unique, all_rows=True) == {unique: ("fail", 1)}
    # the same row as if a build after the last successful one (which then failed) had written it: its old twin
    # is found through the key
    _execute(data_dir, "update intermediate.int_channel_events__customers set _built_at = ? where rowid = "
             "(select max(rowid) from intermediate.int_channel_events__customers where event_id = ?)",
             [mark + dt.timedelta(seconds=1), event_id])
    assert _dbt_test(data_dir, unique) == {unique: ("fail", 1)}


def test_event_id_conflicts_after_a_build_reports_those_newer_files_bring(history, tmp_path):
    data_dir = _copy(history, tmp_path)
    through, _ = _mark(data_dir)
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    try:
        (before,) = con.execute(  # event_ids with more than one content (every contract column: the test's rule)
            "select count(*) from (select event_id from (select distinct * exclude (_file_id, _batch_date, _row_number, "
            "_row_hash, _loaded_at) from raw.channel_events) group by event_id having count(*) > 1)").fetchone()
        # an event delivered once, delivered again by a newer file with other content
        event_id = con.execute("select min(event_id) from raw.channel_events where event_id in "
                               "(select event_id from raw.channel_events group by event_id having count(*) = 1)").fetchone()[0]
        # (with the same _row_hash: the test compares contents, not the fingerprint)
        con.execute("insert into raw.channel_events select * replace (? as _file_id, 'other content' as campaign) "
                    "from raw.channel_events where event_id = ?", [through + 1, event_id])
    finally:
        con.close()
    assert before > 0  # the history has conflicts of its own, all in files already tested
    assert _dbt_test(data_dir, "event_id_conflicts") == {"event_id_conflicts": ("warn", 1)}
    assert _dbt_test(data_dir, "event_id_conflicts", all_rows=True) == {"event_id_conflicts": ("warn", before + 1)}


def _materialize_only(data_dir: Path, tmp_path: Path, monkeypatch, key: list[str]):
    """A Dagster run of the pipeline's job that materializes one asset of a dbt step (a part of the step, as an
    asset picked in the UI), on data_dir."""
    import dagster as dg

    monkeypatch.setenv("PRIVDOM_HOME", str(data_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    from orchestration.definitions import build_definitions

    job = build_definitions().resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        return job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(key)], raise_on_error=False)


def test_a_staging_build_of_some_of_its_assets_leaves_the_record_as_it_was(history, tmp_path, monkeypatch, dbt_manifest):
    """A build that does not run all of staging's models and tests (an asset picked in the UI, checks turned
    off, a re-execution from a failure) must not move the record past files whose rows it did not test."""
    data_dir = _copy(history, tmp_path)
    # as if the last whole build had tested only the first file: every later file is still to test
    _execute(data_dir, "update raw.dbt_incremental_state set tested_through_file_id = 1 where step = 'dbt_staging'")
    _, recorded_at = _mark(data_dir)
    assert _materialize_only(data_dir, tmp_path, monkeypatch, ["staging", "stg_orders__versions"]).success
    through, recorded_again = _mark(data_dir)
    # the build succeeded, but records nothing: neither what the tests have covered nor the fingerprint (it did
    # not rebuild every incremental model of the step)
    assert (through, recorded_again) == (1, recorded_at)


def test_a_rebuild_from_raw_that_did_not_finish_is_rebuilt_again_whatever_the_settings_then(history, tmp_path, monkeypatch,
                                                                                           dbt_manifest, capfd):
    """A build under a changed window rebuilt int_customers__purchases from raw and stopped there (a review: a
    later model failed; here: only that model is built, as from the UI). With the window put back, the next run
    matched the old record, stayed incremental and kept the purchases computed under the other window: 32
    customers' activation differed from a fresh build. The record now says the rebuild did not finish."""
    from orchestration import dbt as dbt_runner

    data_dir = _copy(history, tmp_path)
    # (the history's last whole build under the settings the copy has: other tests of this module change them)
    before = snapshot(data_dir / "warehouse.duckdb")
    settings = (data_dir / "privdom.toml").read_text(encoding="utf-8")
    (data_dir / "privdom.toml").write_text(settings + "activation_window_days = 1\n", encoding="utf-8")
    capfd.readouterr()
    assert _materialize_only(data_dir, tmp_path, monkeypatch, ["intermediate", "int_customers__purchases"]).success
    assert _query(data_dir, "select fingerprint from raw.dbt_incremental_state where step = 'dbt_models'") == [(dbt_runner.INCOMPLETE,)]
    # the run's log says what it rebuilt: only what was selected (it said the step's incremental models, UI review)
    logged = " ".join(capfd.readouterr().err.split())
    assert ("the selected incremental models of dbt_models are rebuilt from raw (the SQL of the incremental models, "
            "or the vars their rows depend on, changed since the last build); the step's others keep what they hold "
            "until its next whole build") in logged, logged[-3000:]
    (data_dir / "privdom.toml").write_text(settings, encoding="utf-8")
    _run(data_dir)
    after = snapshot(data_dir / "warehouse.duckdb")
    for table in ("intermediate.int_customers__purchases", "marts.dim_customers", "marts.fct_aarrr_funnel"):
        assert after[table] == before[table], table
    assert _query(data_dir, "select fingerprint from raw.dbt_incremental_state where step = 'dbt_models'")[0][0] != dbt_runner.INCOMPLETE


def _graph_marks(data_dir: Path) -> dict[str, int]:
    return dict(_query(data_dir, "select consumer, build_seq from identity_state.graph_consumers"))


def test_a_dbt_models_build_of_some_of_its_assets_leaves_the_graph_marks_as_they_were(history, tmp_path, monkeypatch,
                                                                                        dbt_manifest):
    """A Dagster build of part of dbt_models computes its incremental models from tables the run may not have
    rebuilt (here: int_customers__purchases without int_customers__keyed, a table every whole build rebuilds):
    their places in the graph's change log stay, so that the next whole build computes those customers again."""
    data_dir = _copy(history, tmp_path)
    # as if purchases had taken in no build after the second (the readers it reads: all of them)
    _execute(data_dir, "update identity_state.graph_consumers set build_seq = 2 where consumer = 'int_customers__purchases'")
    before = _graph_marks(data_dir)
    # as if the last whole build's tests had covered rows up to a day before the newest stamp
    _execute(data_dir, "update raw.dbt_incremental_state set tested_built_at = tested_built_at - interval 1 day "
             "where step = 'dbt_models'")
    built = _built_mark(data_dir)
    assert _materialize_only(data_dir, tmp_path, monkeypatch, ["intermediate", "int_customers__purchases"]).success
    assert _graph_marks(data_dir) == before and before["int_customers__purchases"] == 2
    # nor does it move the record of what dbt_models' tests have covered
    assert _built_mark(data_dir) == built


def test_a_reader_takes_in_the_graph_only_as_far_as_the_readers_it_read(history, tmp_path):
    """A dbt build of int_customers__purchases alone (by hand), after int_orders__customers has taken in only
    the build before the newest: purchases' place is that earlier build too, so what the orders take in later
    reaches it."""
    data_dir = _copy(history, tmp_path)
    newest = _query(data_dir, "select max(build_seq) from identity_state.graph_builds")[0][0]
    assert _graph_marks(data_dir)["int_customers__purchases"] == newest
    _execute(data_dir, "update identity_state.graph_consumers set build_seq = ? where consumer = 'int_orders__customers'",
             [newest - 1])
    proc, _ = _dbt(data_dir, "run", "int_customers__purchases")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    marks = _graph_marks(data_dir)
    assert marks["int_customers__purchases"] == newest - 1 and marks["int_orders__customers"] == newest - 1


def test_a_reader_built_after_a_reader_it_read_was_forgotten_computes_everything_next_time(history, tmp_path):
    """int_orders__customers forgotten by the graph's log (a reader 30 builds behind is, and the log may then drop
    builds it never took in), then int_customers__purchases built alone by hand: purchases gets no place either
    (not 0, which would take in only the builds the log still keeps), so its next build computes everything."""
    data_dir = _copy(history, tmp_path)
    _execute(data_dir, "delete from identity_state.graph_consumers where consumer = 'int_orders__customers'")
    proc, _ = _dbt(data_dir, "run", "int_customers__purchases")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "int_customers__purchases" not in _graph_marks(data_dir)
    assert _query(data_dir, "select identity_state.full_recompute('int_customers__purchases')") == [(True,)]


def test_a_failed_staging_build_keeps_its_rows_in_the_next_tests(history, tmp_path):
    data_dir = _copy(history, tmp_path)
    through, recorded_at = _mark(data_dir)
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    try:
        con.execute("insert into staging.stg_channel_events select * replace (? as file_id) "
                    "from staging.stg_channel_events where event_id = (select min(event_id) from staging.stg_channel_events)",
                    [through + 1])
    finally:
        con.close()
    for _ in range(2):  # the second run still sees the row the first one failed on
        result = subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "run"], capture_output=True, text=True, timeout=900)
        assert result.returncode != 0
        assert "unique_stg_channel_events_event_id" in result.stdout + result.stderr
        assert _mark(data_dir) == (through, recorded_at)


def test_a_value_added_to_the_placeholder_list_leaves_out_the_rows_it_unidentifies(tmp_path):
    """A value added to placeholder_block_list applies to all history on the next run (docs/DECISIONS.md): rows
    loaded before, whose only identifier it is, are left out of staging as ingestion would now quarantine them
    (identifier.required, referrer.required). The run succeeds (the staging test "at least one identifier"
    failed every run after the change) and the metrics equal those of a fresh build of the same files under the
    new list, where ingestion quarantined those rows; an event first delivered with only that value and again
    with a real identifier keeps the identified delivery, as the fresh build's first loaded one."""
    from orchestration.generate import generate
    from tests.test_ingest_rules import HEADERS

    extra = {
        "channel_events/blockme_20240105.csv": [
            "xb1,2024-01-05 10:00,official_account,follow,oBLOCKME,,,,,blk,",
            "xb2,2024-01-05 11:00,official_account,engage,oBLOCKME,,,,,blk,",
        ],
        "channel_events/blockme_20240106.csv": ["xb1,2024-01-05 10:00,official_account,follow,oREAL1,,,,,again,"],
        "orders/blockme_20240105.csv": ["xo1,2024-01-05 12:00,2024-01-05 11:00,2024-01-05 11:05,paid,mini_program,99.00,0,0,0,,oBLOCKME,,,,"],
        "referrals/blockme_20240105.csv": ["xr1,2024-01-05 12:00,2024-01-05 09:00,share_link,clicked,,oBLOCKME,,ro_x,,,,,0"],
    }
    landing = tmp_path / "landing"
    generate(landing, customers=60, days=12, seed=3, dirty_rate=0.02)
    for rel, rows in extra.items():
        (landing / rel).write_text("\n".join([HEADERS[rel.split("/")[0]], *rows]) + "\n", encoding="utf-8")
    before = "max_quarantine_share = 1.0\n"
    after = before + 'placeholder_block_list = ["oblockme"]\n'
    incremental, fresh = tmp_path / "incremental", tmp_path / "fresh"
    for data_dir, settings in ((incremental, before), (fresh, after)):
        shutil.copytree(landing, data_dir / "landing")
        (data_dir / "privdom.toml").write_text(settings, encoding="utf-8")
        _run(data_dir)
    assert _query(incremental, "select count(*) from staging.stg_orders where openid = 'oBLOCKME'") == [(1,)]
    (incremental / "privdom.toml").write_text(after, encoding="utf-8")
    _run(incremental)  # failed before: every run after the change
    for data_dir in (incremental, fresh):
        assert _query(data_dir, "select campaign, openid from staging.stg_channel_events where event_id like 'xb%'") == [("again", "oREAL1")]
        assert _query(data_dir, "select count(*) from staging.stg_orders__versions where order_id = 'xo1'") == [(0,)]
        assert _query(data_dir, "select count(*) from staging.stg_referrals__versions where referral_id = 'xr1'") == [(0,)]
    # the rows stay in raw, loaded under the old list: nothing is lost
    assert _query(incremental, "select count(*) from raw.orders where order_id = 'xo1'") == [(1,)]
    assert _query(fresh, "select count(*) from raw.quarantine where original_row like '%oBLOCKME%'") == [(4,)]
    # customer keys are numbered in the order customers appear, so compare what does not name one
    for table in ("fct_aarrr_funnel", "fct_cohort_retention", "fct_private_domain_triangle", "fct_fission_summary"):
        sql = f"select * from marts.{table} order by all"
        assert _query(incremental, sql) == _query(fresh, sql), table
    count = "select count(*), sum(net_revenue), count(*) filter (where is_reachable) from marts.dim_customers"
    assert _query(incremental, count) == _query(fresh, count)
